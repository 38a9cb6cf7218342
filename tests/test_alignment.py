"""The alignment recipe end to end on CPU: a tiny random Llama policy, LoRA, RLOO and GRPO steps, a MiniLM reward."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TOPICS
from tiny_models import build_tokenizer, save_minilm_reward_model, save_tiny_llama

from trl_mars.align.alignment import (
    PPO_INSTALL_HINT,
    load_prompts,
    prepare_prompts,
    requested_trainer,
    truncate_prompt,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("align")
    prompts = root / "prompts.jsonl"
    with open(prompts, "w", encoding="utf-8") as handle:
        for topic in TOPICS[:8]:
            handle.write(json.dumps({"prompt": f"Can you give me one useful tip about {topic}?"}) + "\n")
    return {
        "policy": save_tiny_llama(root / "policy"),
        "reward": save_minilm_reward_model(root / "reward", minilm_path),
        "prompts": str(prompts),
    }


def tiny_run_args(assets, output_dir, trainer: str) -> list[str]:
    return [
        "--trainer", trainer,
        "--model_name_or_path", assets["policy"],
        "--reward_model_name_or_path", assets["reward"],
        "--dataset_name", assets["prompts"],
        "--output_dir", str(output_dir),
        "--max_prompt_length", "32",
        "--max_completion_length", "8",
        "--per_device_train_batch_size", "4",
        "--num_generations", "2",
        "--max_steps", "2",
        "--learning_rate", "1e-2",
        "--lora_target_modules", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
        "--save_strategy", "no",
        "--logging_steps", "1",
        "--bf16", "false",
        "--activation_checkpointing", "false",
        "--seed", "0",
    ]


@pytest.mark.parametrize("trainer", ["rloo", "grpo"])
def test_lora_policy_trains_and_reloads(assets, tmp_path, trainer):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    from trl_mars.align.alignment import main

    output = tmp_path / trainer
    result = main(tiny_run_args(assets, output, trainer))
    args = result.args
    assert (args.beta, args.epsilon, args.max_completion_length) == (0.02, 0.2, 8)  # paper KL/clip, CLI length
    assert isinstance(result.model, PeftModel)
    assert result.state.global_step == 2
    logged = [entry for entry in result.state.log_history if "rewards/mars_reward/mean" in entry]
    assert len(logged) == 2 and all(entry["rewards/mars_reward/mean"] == entry["rewards/mars_reward/mean"]
                                    for entry in logged)  # a real (non-NaN) reward at each step
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"}
    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(output))
    name = next(n for n, _ in reloaded.named_parameters() if "lora_B" in n)
    saved = dict(reloaded.named_parameters())[name]
    assert saved.abs().sum() > 0  # LoRA B starts at zero: non-zero means the steps updated it and it was saved
    live = dict(result.model.named_parameters())[name]
    torch.testing.assert_close(saved.detach(), live.detach().cpu())
    base = AutoModelForCausalLM.from_pretrained(assets["policy"])
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert not torch.allclose(reloaded(input_ids=ids).logits, base(input_ids=ids).logits)


def test_prompts_are_made_chat_and_keep_their_end(tmp_path):
    tokenizer = build_tokenizer()
    long_prompt = " ".join(["tea"] * 50) + " Can you give me one useful tip about chess?"
    cut = truncate_prompt(long_prompt, tokenizer, 10)
    assert cut.endswith("tip about chess?") and len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 10
    conversation = [{"role": "user", "content": " ".join(["bread"] * 40)},
                    {"role": "assistant", "content": "Sure."},
                    {"role": "user", "content": "one useful tip about maps?"}]
    kept = truncate_prompt(conversation, tokenizer, 20)
    assert kept == [{"role": "user", "content": "one useful tip about maps?"}]  # oldest turns dropped first
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": long_prompt}) + "\n" + json.dumps({"prompt": "tip about soup?"}) + "\n")
    prepared = prepare_prompts(load_prompts(str(path)), tokenizer, max_prompt_length=16)
    first = prepared[0]["prompt"]
    assert first[0]["role"] == "user"
    length = len(tokenizer.apply_chat_template(first, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"])
    assert length <= 16 and first[0]["content"].endswith("chess?")


def test_bad_prompts_fail_early_with_row_and_fix(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "hi"}) + "\n")
    with pytest.raises(ValueError, match="no 'prompt' column.*Fix: rename"):
        load_prompts(str(path))
    path.write_text(json.dumps({"instruction": "hi"}) + "\n")  # AlpacaEval's column name is accepted
    assert load_prompts(str(path))["prompt"] == ["hi"]
    path.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": "  "}) + "\n")
    with pytest.raises(ValueError, match="row 1, column 'prompt'.*Fix"):
        load_prompts(str(path))


def test_trainer_choice_and_ppo_without_it(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("trainer: grpo\n")
    assert requested_trainer(["--config", str(config)]) == "grpo"
    assert requested_trainer(["--config", str(config), "--trainer", "rloo"]) == "rloo"
    assert requested_trainer([]) == "rloo"
    with pytest.raises(SystemExit, match="choose one of"):
        requested_trainer(["--trainer=dpo"])
    try:
        from trl.experimental.ppo import PPOTrainer  # noqa: F401
    except ImportError:
        from trl_mars.align.alignment import main

        with pytest.raises(SystemExit) as stop:
            main(["--trainer", "ppo", "--dataset_name", "x", "--output_dir", str(tmp_path)])
        assert 'pip install "trl-mars[ppo]"' in str(stop.value)
        assert "trl>=1.0,<1.13" in PPO_INSTALL_HINT
    else:  # pragma: no cover - an environment with the ppo extra
        pytest.skip("this TRL has PPOTrainer")


def test_ppo_route_where_trl_has_it(assets, tmp_path):
    """TRL's actor-critic PPO (TRL 1.0-1.12 only; skipped on TRL >= 1.13). Run it without a second environment:
    pip download --no-deps trl==1.12.0 -d /tmp/trl112 && unzip -q -o /tmp/trl112/trl-1.12.0-*.whl -d /tmp/trl112
    PYTHONPATH=/tmp/trl112:$PWD python -m pytest -q tests/test_alignment.py -k ppo
    """
    pytest.importorskip("trl.experimental.ppo", reason="this TRL has no PPOTrainer (removed in 1.13)")
    from tiny_models import save_tiny_llama

    from trl_mars.align.alignment import main

    reward = save_tiny_llama(tmp_path / "decoder_rm", num_labels=1, seed=1)  # PPO needs the policy's tokenizer
    with pytest.raises(ValueError, match="does not share the policy's tokenizer"):
        main(["--trainer", "ppo", "--model_name_or_path", assets["policy"], "--reward_model_name_or_path",
              assets["reward"], "--dataset_name", assets["prompts"], "--output_dir", str(tmp_path / "x"),
              "--bf16", "false"])
    trainer = main(["--trainer", "ppo", "--model_name_or_path", assets["policy"], "--reward_model_name_or_path",
                    reward, "--dataset_name", assets["prompts"], "--output_dir", str(tmp_path / "ppo"),
                    "--response_length", "8", "--per_device_train_batch_size", "2", "--total_episodes", "4",
                    "--num_ppo_epochs", "1", "--local_rollout_forward_batch_size", "2", "--bf16", "false",
                    "--save_strategy", "no", "--max_prompt_length", "32", "--lora_target_modules", "q_proj",
                    "v_proj", "--missing_eos_penalty", "1.0"])
    assert (trainer.args.kl_coef, trainer.args.cliprange) == (0.02, 0.2)
    assert trainer.state.global_step == 2
    assert (tmp_path / "ppo" / "adapter_config.json").is_file()
