"""Every alignment YAML parses for its route, and the offline config runs under a real `accelerate launch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_models import save_minilm_reward_model

from trl_mars.align.alignment import (
    ALIGN_DEFAULTS,
    AlignScriptArguments,
    config_class,
    hh_transcript_to_messages,
)

ROOT = Path(__file__).resolve().parents[1]
ALIGN_CONFIGS = sorted(p for p in (ROOT / "recipes").glob("*/*/config_*.yaml") if p.parent.name in ("rloo", "grpo"))


def test_there_are_configs_for_both_paper_policies():
    models = {p.parent.parent.name for p in ALIGN_CONFIGS}
    assert {"tinyllama-1.1b-chat", "llama-3.2-1b-instruct", "smollm2-135m-instruct"} <= models
    for model in ("tinyllama-1.1b-chat", "llama-3.2-1b-instruct"):
        names = {p.name for p in ALIGN_CONFIGS if p.parent.parent.name == model and p.parent.name == "rloo"}
        assert names == {"config_pku_saferlhf.yaml", "config_hh_rlhf.yaml", "config_ultrafeedback.yaml"}


@pytest.mark.parametrize("path", ALIGN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_config_parses_with_paper_settings(path):
    from trl import ModelConfig, TrlParser

    trainer = yaml.safe_load(path.read_text())["trainer"]
    assert trainer == path.parent.name
    parser = TrlParser((AlignScriptArguments, config_class(trainer), ModelConfig))
    parser.set_defaults_with_config(**ALIGN_DEFAULTS)
    # bf16 is checked against the hardware while parsing: this CPU machine has none
    script_args, args, model_args = parser.parse_args_and_config(args=["--config", str(path), "--bf16", "false"])
    assert script_args.trainer == trainer
    assert (args.beta, args.epsilon) == (0.02, 0.2)
    assert model_args.use_peft and (model_args.lora_r, model_args.lora_alpha) == (16, 32)
    assert set(model_args.lora_target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    if path.name != "config_offline.yaml":  # the offline config is sized for a CPU
        assert (script_args.max_prompt_length, args.max_completion_length) == (512, 192)
        assert args.per_device_train_batch_size % args.num_generations == 0


def test_hh_transcripts_become_chat_turns():
    text = "\n\nHuman: How do I cook rice?\n\nAssistant: Boil it.\n\nHuman: How long?\n\nAssistant:"
    assert hh_transcript_to_messages(text) == [{"role": "user", "content": "How do I cook rice?"},
                                               {"role": "assistant", "content": "Boil it."},
                                               {"role": "user", "content": "How long?"}]


@pytest.mark.slow
def test_offline_smollm2_rloo_recipe_under_accelerate_launch(tmp_path, minilm_path):
    """The offline recipe as documented (packaged SmolLM2-135M-Instruct policy, shipped prompts), 2 RLOO steps on
    a few prompts with short completions, the reward model pointed at a fresh MiniLM reward model."""
    from safetensors.torch import load_file

    from trl_mars.augment.packaged import PACKAGED_SMOLLM2, resolve_packaged_model

    config = ROOT / "recipes" / "smollm2-135m-instruct" / "rloo" / "config_offline.yaml"
    assert yaml.safe_load(config.read_text())["model_name_or_path"] == PACKAGED_SMOLLM2
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    reward = save_minilm_reward_model(tmp_path / "reward", minilm_path)
    output = tmp_path / "aligned"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu.yaml"), str(ROOT / "recipes" / "ppo_align.py"),
               "--config", str(config), "--reward_model_name_or_path", reward, "--output_dir", str(output),
               "--max_steps", "2", "--max_train_prompts", "4", "--per_device_train_batch_size", "4",
               "--num_generations", "2", "--max_completion_length", "8"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "aligned policy (rloo) saved to" in done.stdout
    adapter = json.loads((output / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["base_model_name_or_path"] == resolve_packaged_model(PACKAGED_SMOLLM2)
    weights = load_file(str(output / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().max() > 0 for w in lora_b)  # LoRA B starts at zero: the policy was updated


def test_shipped_alignment_prompts_are_the_script_output_and_hold_out_64(tmp_path):
    import importlib.util

    from trl_mars.align.alignment import align_prompt_files

    spec = importlib.util.spec_from_file_location("make_align_prompts", ROOT / "scripts" / "make_align_prompts.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(tmp_path)
    shipped = align_prompt_files()
    for split, path in shipped.items():
        assert (tmp_path / f"align_prompts_{split}.jsonl").read_bytes() == Path(path).read_bytes()
    prompts = {split: [json.loads(line)["prompt"] for line in Path(path).read_text().splitlines()]
               for split, path in shipped.items()}
    assert len(prompts["heldout"]) == 64 and len(prompts["train"]) == 320
    assert not set(prompts["heldout"]) & set(prompts["train"])
