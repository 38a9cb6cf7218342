"""Drop-in behaviour: what a working `trl.RewardTrainer` script sees must not change when it swaps in
`MarsRewardTrainer` (issue 14). Tiny random Llama reward models on a word-level tokenizer, CPU, offline."""

from __future__ import annotations

import json
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import mars_args, tiny_rows
from datasets import Dataset
from tiny_models import save_tiny_llama

from trl_mars import MarsRewardConfig
from trl_mars.data.preferences import PreferenceDataError, validate_preference_dataset
from trl_mars.mars.scoring import NonFiniteRewardsError, score_sequences
from trl_mars.training.trainer import MarsRewardTrainer

_COMMON = dict(per_device_train_batch_size=4, per_device_eval_batch_size=8, num_train_epochs=2, learning_rate=1e-3,
               max_length=64, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
               activation_checkpointing=False, seed=0)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), num_labels=1)


@pytest.fixture
def pairs():
    return Dataset.from_list(tiny_rows(16))


@pytest.fixture
def eval_pairs():
    return Dataset.from_list(tiny_rows(24)[16:])


def _reward_trainer(model, output_dir, train, eval_dataset=None, **kwargs):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(output_dir), **{**_COMMON, **kwargs.pop("args", {})})
    return RewardTrainer(model, args=args, train_dataset=train, eval_dataset=eval_dataset, **kwargs)


def _mars_trainer(model, output_dir, train, eval_dataset=None, **kwargs):
    args = MarsRewardConfig(output_dir=str(output_dir), mars_paraphraser="lexical",
                            **{**_COMMON, **kwargs.pop("args", {})})
    return MarsRewardTrainer(model, args=args, train_dataset=train, eval_dataset=eval_dataset, **kwargs)


def _entry_keys(log_history):
    return [sorted(entry) for entry in log_history]


# ------------------------------------------------------------------ 1. LoRA and the reward head


def test_peft_config_gives_reward_trainers_parameters(tmp_path, llama_dir, pairs):
    from peft import LoraConfig

    def lora():
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])

    reference = _reward_trainer(llama_dir, tmp_path / "trl", pairs, peft_config=lora())
    expected = {name: param.requires_grad for name, param in reference.model.named_parameters()}
    for strategy in ("none", "mars"):
        given = lora()
        ours = _mars_trainer(llama_dir, tmp_path / strategy, pairs, peft_config=given,
                             args={"mars_strategy": strategy})
        assert {name: p.requires_grad for name, p in ours.model.named_parameters()} == expected
        assert given.task_type is None and given.modules_to_save is None  # the caller's config, untouched
    # the layout TRL's tests read: the head is a base parameter, not a modules_to_save copy
    assert "base_model.model.score.weight" in expected and not expected["base_model.model.score.weight"]


def test_peft_head_in_target_modules_trains(tmp_path, llama_dir, pairs):
    from peft import LoraConfig

    trainer = _mars_trainer(llama_dir, tmp_path, pairs, args={"mars_strategy": "none", "num_train_epochs": 1},
                            peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "score"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any("score.lora_" in name for name in before)
    assert all(not torch.equal(value, after[name]) for name, value in before.items() if "lora_B" in name)


# ------------------------------------------------------------------ 2. log history


def test_none_log_history_is_reward_trainers(tmp_path, llama_dir, pairs, eval_pairs):
    evaluation = {"eval_strategy": "steps", "eval_steps": 3}
    reference = _reward_trainer(llama_dir, tmp_path / "trl", pairs, {"a": eval_pairs, "b": eval_pairs},
                                args=evaluation)
    reference.train()
    ours = _mars_trainer(llama_dir, tmp_path / "none", pairs, {"a": eval_pairs, "b": eval_pairs},
                         args={**evaluation, "mars_strategy": "none"})
    ours.train()
    assert _entry_keys(ours.state.log_history) == _entry_keys(reference.state.log_history)
    assert "eval_a_loss" in ours.state.log_history[-3] and "eval_b_loss" in ours.state.log_history[-2]
    assert ours.mars_callback.log_history == []  # no held-out report, no rounds: nothing of ours anywhere
    assert ours.evaluate(eval_pairs)["eval_loss"] == pytest.approx(reference.evaluate(eval_pairs)["eval_loss"],
                                                                   rel=1e-5)


def test_mars_figures_leave_trainers_entries_in_place(tmp_path, llama_dir, pairs, eval_pairs):
    evaluation = {"eval_strategy": "steps", "eval_steps": 3}
    reference = _reward_trainer(llama_dir, tmp_path / "trl", pairs, eval_pairs, args=evaluation)
    reference.train()
    # the default schedule: one plain epoch, then a round; epochs keep the original size, so the steps match
    ours = _mars_trainer(llama_dir, tmp_path / "mars", pairs, eval_pairs, args=evaluation)
    ours.train()
    assert _entry_keys(ours.state.log_history) == _entry_keys(reference.state.log_history)
    assert not any(key.startswith("mars/") or key.endswith("_pairwise_accuracy")
                   for entry in ours.state.log_history for key in entry)
    ours_keys = {key for entry in ours.mars_callback.log_history for key in entry}
    assert {"mars/round", "eval_pairwise_accuracy", "eval_margin_snr"} <= ours_keys
    summary = json.loads((tmp_path / "mars" / "mars" / "summary.json").read_text())
    assert [e["when"] for e in summary["eval"]][0] == "before training"


# ------------------------------------------------------------------ 3. tool calls

TOOL_TEMPLATE = (
    "{% if tools %}<s> system : tools {% for t in tools %}{{ t['function']['name'] }} {% endfor %}</s> {% endif %}"
    "{% for m in messages %}<s> {{ m['role'] }} : "
    "{% if m['content'] %}{{ m['content'] }} {% endif %}"
    "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}call {{ c['function']['name'] }} "
    "{% endfor %}{% endif %}</s> {% endfor %}"
)
TOOLS = [{"type": "function", "function": {"name": "tea", "description": "Tea facts.",
                                           "parameters": {"type": "object", "properties": {}}}}]


def _tool_rows(n):
    rows = []
    for row in tiny_rows(n):
        call = {"type": "function", "function": {"name": "tea", "arguments": {"topic": "tea"}}}
        rows.append({
            "prompt": [{"role": "user", "content": row["prompt"], "tool_calls": None},
                       {"role": "assistant", "content": None, "tool_calls": [call]},
                       {"role": "tool", "content": "tea is a drink", "tool_calls": None}],
            "chosen": [{"role": "assistant", "content": row["chosen"], "tool_calls": None}],
            "rejected": [{"role": "assistant", "content": row["rejected"], "tool_calls": None}],
            "tools": json.dumps(TOOLS),
        })
    return Dataset.from_list(rows)


def test_tool_call_turns_pass_validation():
    rows = _tool_rows(2)
    validate_preference_dataset(rows, require_text=True)
    broken = [{"role": "assistant", "content": None, "tool_calls": None}]
    with pytest.raises(PreferenceDataError, match="message 0 has NoneType content"):
        validate_preference_dataset(Dataset.from_list([{"chosen": broken, "rejected": [
            {"role": "assistant", "content": "x", "tool_calls": None}]}]))


@pytest.mark.parametrize("strategy", ["none", "mars"])
def test_tool_call_data_trains(tmp_path, llama_dir, strategy):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.chat_template = TOOL_TEMPLATE
    tools_header = tokenizer("<s> system : tools tea </s>", add_special_tokens=False)["input_ids"]
    train = _tool_rows(16)
    trainer = _mars_trainer(llama_dir, tmp_path, train, processing_class=tokenizer,
                            args={"mars_strategy": strategy, "max_length": 256, "mars_budget_ratio": 1.0})
    trainer.train()
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    rows = trainer.train_dataset
    assert len(rows) == (16 if strategy == "none" else 32)
    for ids in rows["chosen_ids"][:] + rows["rejected_ids"][:]:  # synthetic pairs see the tools too
        assert ids[: len(tools_header)] == tools_header


# ------------------------------------------------------------------ 4. deprecated pre-tokenised columns


def _legacy_tokenised(pairs, llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    return pairs.map(lambda x: {"chosen_input_ids": tokenizer(x["prompt"] + x["chosen"])["input_ids"],
                                "rejected_input_ids": tokenizer(x["prompt"] + x["rejected"])["input_ids"]},
                     remove_columns=pairs.column_names)


def test_legacy_input_ids_columns_train_with_trls_warning(tmp_path, llama_dir, pairs):
    data = _legacy_tokenised(pairs, llama_dir)
    with pytest.warns(FutureWarning, match="will not be supported in v1"):
        trainer = _mars_trainer(llama_dir, tmp_path, data, args={"mars_strategy": "none", "num_train_epochs": 1})
    assert {"chosen_ids", "rejected_ids"} <= set(trainer.train_dataset.column_names)
    assert not {"chosen_input_ids", "rejected_input_ids"} & set(trainer.train_dataset.column_names)
    trainer.train()


def test_pretokenised_data_under_augmentation_is_refused_by_design(tmp_path, llama_dir, pairs):
    data = _legacy_tokenised(pairs, llama_dir)
    with pytest.raises(PreferenceDataError, match="MARS paraphrases text.*mars_strategy='none'"):
        _mars_trainer(llama_dir, tmp_path, data)


def test_streaming_or_max_steps_under_augmentation_are_refused_by_design(tmp_path, pairs):
    with pytest.raises(ValueError, match="tied to epochs"):
        MarsRewardConfig(output_dir=str(tmp_path), max_steps=3)
    with pytest.raises(PreferenceDataError, match="map-style.*mars_strategy='none'"):
        validate_preference_dataset(pairs.to_iterable_dataset(), require_text=True)


# ------------------------------------------------------------------ 5. no args, no embedder


def test_no_args_builds_the_default_config_and_trains_offline(tmp_path, llama_dir, pairs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trainer = MarsRewardTrainer(llama_dir, train_dataset=pairs)
    assert trainer.args.mars_strategy == "mars" and trainer.args.mars_refiner == "none"
    assert {"trl", "reward-trainer"} <= set(trainer.model.model_tags)
    trainer.train()
    assert trainer.mars_callback.embedder is None  # the default never loads all-mpnet-base-v2
    allocation = [json.loads(line) for line in (trainer.mars_dir / "round_1" / "allocation.jsonl").read_text()
                  .splitlines()]
    assert all(row["semantic_label"] is None for row in allocation)


def test_a_refiner_needs_the_embedder_and_says_offline(tmp_path, llama_dir, pairs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRL_MARS_DROPIN_KEY", "x")
    args = mars_args(tmp_path, mars_refiner="chat", mars_chat_api_key_env="TRL_MARS_DROPIN_KEY",
                     mars_embedding_model="trl-mars-tests/not-cached-embedder")
    with pytest.raises(ValueError, match="mars_embedding_model.*HF_HUB_OFFLINE"):
        MarsRewardTrainer(llama_dir, args=args, train_dataset=pairs)


# ------------------------------------------------------------------ 6. diverged training


class _Accelerator:
    num_processes, process_index, is_local_main_process = 1, 0, False
    device = torch.device("cpu")

    @staticmethod
    def autocast():
        return torch.autocast("cpu", enabled=False)


def test_nonfinite_rewards_name_the_cause(tmp_path, llama_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(llama_dir, num_labels=1)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteRewardsError, match="diverged.*learning_rate"):
        score_sequences(model, [[1, 2, 3], [4, 5]], pad_token_id=0, batch_size=2, accelerator=_Accelerator())
    rewards = score_sequences(model, [[1, 2, 3]], pad_token_id=0, batch_size=2, accelerator=_Accelerator(),
                              allow_nonfinite=True)
    assert np.isnan(rewards).all()


def test_a_diverged_model_skips_its_rounds_and_finishes(tmp_path, llama_dir, pairs, eval_pairs, caplog):
    """Decision: a round whose margins are NaN is skipped (recorded, warned); training finishes as RewardTrainer
    does, with NaN losses, instead of stopping."""
    trainer = _mars_trainer(llama_dir, tmp_path, pairs, eval_pairs,
                            args={"mars_warmup_epochs": 0, "num_train_epochs": 2})
    with torch.no_grad():
        trainer.model.score.weight.fill_(float("nan"))
    with caplog.at_level(logging.WARNING, logger="trl_mars"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert trainer.state.global_step == trainer.state.max_steps == 8
    assert len(trainer.train_dataset) == 16  # nothing added
    summary = json.loads((tmp_path / "mars" / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert all("NaN or infinite rewards" in r["skipped"] and r["synthetic_pairs_added"] == 0
               for r in summary["rounds"])
    assert any("round 1 skipped" in r.getMessage() and "diverged" in r.getMessage() for r in caplog.records)
    assert all(e["nonfinite"] == 8 for e in summary["eval"])  # the held-out report says NaN, and why
