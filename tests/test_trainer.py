"""End-to-end tests of MarsRewardTrainer on the real packaged MiniLM backbone (CPU, offline, tiny data)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import mars_args, tiny_rows
from datasets import Dataset

from trl_mars import MarsRewardConfig
from trl_mars.data.preferences import PreferenceDataError
from trl_mars.training.trainer import MarsRewardTrainer


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_none_strategy_matches_reward_trainer(tmp_path, minilm_path, tiny_dataset, tiny_eval_dataset):
    """mars_strategy='none' is plain Bradley-Terry training: same losses and eval metrics as trl.RewardTrainer."""
    from trl import RewardConfig, RewardTrainer

    common = dict(per_device_train_batch_size=4, per_device_eval_batch_size=8, num_train_epochs=2,
                  learning_rate=5e-5, max_length=64, logging_steps=1, save_strategy="no", report_to="none",
                  bf16=False, activation_checkpointing=False, seed=0, eos_token="[SEP]")
    reference = RewardTrainer(minilm_path, args=RewardConfig(output_dir=str(tmp_path / "trl"), **common),
                              train_dataset=tiny_dataset, eval_dataset=tiny_eval_dataset)
    reference.train()
    ours = MarsRewardTrainer(minilm_path,
                             args=MarsRewardConfig(output_dir=str(tmp_path / "mars"), mars_strategy="none", **common),
                             train_dataset=tiny_dataset, eval_dataset=tiny_eval_dataset)
    ours.train()
    assert len(losses(ours)) == len(losses(reference)) == 8
    np.testing.assert_allclose(losses(ours), losses(reference), rtol=1e-5, atol=1e-6)
    ref_eval, our_eval = reference.evaluate(), ours.evaluate()
    for key in ("eval_loss", "eval_accuracy", "eval_margin"):
        assert our_eval[key] == pytest.approx(ref_eval[key], rel=1e-5, abs=1e-6)
    assert not (tmp_path / "mars" / "mars").exists()  # no rounds, no evidence


def test_mars_rounds_leave_evidence(tmp_path, minilm_path, tiny_dataset, tiny_eval_dataset):
    args = mars_args(tmp_path, mars_strategy="mars", num_train_epochs=2, mars_budget_ratio=2.0,
                     mars_margin_mode="signed")
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=tiny_dataset, eval_dataset=tiny_eval_dataset)
    trainer.train()
    n, budget = 16, 32
    mars_dir = tmp_path / "mars"
    for round_index in (1, 2):
        allocation = read_jsonl(mars_dir / f"round_{round_index}" / "allocation.jsonl")
        assert [row["index"] for row in allocation] == list(range(n))
        assert sum(row["budget"] for row in allocation) == budget
        assert math.isclose(sum(row["prob"] for row in allocation), 1.0, rel_tol=1e-9)
        for row in allocation:
            assert set(row) >= {"index", "margin", "prob", "budget", "n_chosen", "n_rejected", "semantic_distance",
                                "semantic_label", "refined"}
            assert row["n_chosen"] == row["budget"] // 2 and row["n_chosen"] + row["n_rejected"] == row["budget"]
            assert row["semantic_label"] is None  # labels only choose what a refiner rewrites: none here
            assert row["refined"] is None  # no refiner configured
        # A lower margin never gets a smaller budget (signed allocation, largest remainder).
        ordered = sorted(allocation, key=lambda row: row["margin"])
        assert all(a["budget"] >= b["budget"] for a, b in zip(ordered, ordered[1:]))
        synthetic = read_jsonl(mars_dir / f"round_{round_index}" / "synthetic.jsonl")
        assert len(synthetic) == budget
        for row in synthetic:
            assert set(row) == {"prompt", "chosen", "rejected", "source_index", "round", "operation", "backend"}
            assert row["round"] == round_index and row["backend"] == "lexical"
            assert row["operation"] in ("paraphrase_chosen", "paraphrase_rejected", "paraphrase_both")
            source = tiny_rows(16)[row["source_index"]]
            assert row["prompt"] == source["prompt"]
            assert (row["chosen"], row["rejected"]) != (source["chosen"], source["rejected"])
        per_source = {}
        for row in synthetic:
            per_source[row["source_index"]] = per_source.get(row["source_index"], 0) + 1
        assert per_source == {row["index"]: row["budget"] for row in allocation if row["budget"]}
    summary = json.loads((mars_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for entry in summary["rounds"]:
        assert entry["budget"] == budget and entry["synthetic_pairs_added"] == budget
        assert set(entry["margin"]) >= {"mean", "std", "snr", "fraction_negative"}
        assert {"score", "allocate", "paraphrase", "sample", "tokenize", "train_epoch"} <= set(entry["timings"])
        assert 0 < entry["allocation_entropy"] <= entry["allocation_entropy_uniform"] + 1e-9
    assert [e["when"] for e in summary["eval"]] == ["before training", "after epoch 1 (round 1)",
                                                   "after epoch 2 (round 2)"]
    assert "semantic" not in summary
    # One schedule over growing epochs: 48 pairs then 80 pairs, batch 4.
    assert len(trainer.train_dataset) == n + 2 * budget
    assert trainer.state.global_step == trainer.state.max_steps == 48 // 4 + 80 // 4
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    logged = [entry for entry in trainer.mars_callback.log_history if "mars/round" in entry]
    assert [entry["mars/round"] for entry in logged] == [1, 2]
    assert not any(key.startswith("mars/") or key.endswith("_pairwise_accuracy")
                   for entry in trainer.state.log_history for key in entry)  # Trainer's entries only


def test_uniform_strategy_spreads_budget_evenly(tmp_path, minilm_path, tiny_dataset):
    args = mars_args(tmp_path, mars_strategy="uniform", num_train_epochs=1, mars_budget_ratio=2.5)
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=tiny_dataset)
    trainer.train()
    allocation = read_jsonl(tmp_path / "mars" / "round_1" / "allocation.jsonl")
    budgets = [row["budget"] for row in allocation]
    assert sum(budgets) == 40 and set(budgets) == {2, 3}
    assert all(row["semantic_label"] is None for row in allocation)  # only "mars" computes labels


def test_original_epoch_size_keeps_plain_training_step_count(tmp_path, minilm_path, tiny_dataset):
    """mars_epoch_size='original': D^t grows as usual, but each epoch draws 16 of its pairs, so 3 epochs of batch 4 take
    12 steps (as plain training does) and the LR still ends at 0; a run resumed after epoch 1 ends at the same step."""
    args = mars_args(tmp_path / "full", num_train_epochs=3, mars_strategy="mars_nosem", mars_epoch_size="original",
                     save_strategy="epoch")
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=tiny_dataset)
    trainer.train()
    added = trainer._mars_callback.added
    assert sorted(added) == [1, 2, 3] and len(trainer.train_dataset) == 16 + sum(added.values()) > 16 + 40
    assert trainer.state.global_step == trainer.state.max_steps == 3 * 16 // 4
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in checkpoints] == [4, 8, 12]

    resumed = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "resumed", num_train_epochs=3,
                                                            mars_strategy="mars_nosem", mars_epoch_size="original"),
                                train_dataset=tiny_dataset)
    resumed.train(resume_from_checkpoint=str(checkpoints[0]))
    assert resumed.state.global_step == 12 and len(resumed.train_dataset) == len(trainer.train_dataset)


def test_library_defaults_warm_up_one_epoch_and_keep_plain_training_step_count(tmp_path, minilm_path, tiny_dataset,
                                                                                caplog):
    defaults = {f.name: f.default for f in dataclasses.fields(MarsRewardConfig)
                if f.name in ("mars_warmup_epochs", "mars_epoch_size")}
    assert defaults == {"mars_warmup_epochs": 1, "mars_epoch_size": "original"}
    trainer = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path, num_train_epochs=2, **defaults),
                                train_dataset=tiny_dataset)
    trainer.train()
    summary = json.loads((tmp_path / "mars" / "summary.json").read_text())
    assert [(r["round"], r["epoch"]) for r in summary["rounds"]] == [(1, 2)]  # epoch 1 is plain training
    assert trainer.state.global_step == trainer.state.max_steps == 2 * 16 // 4

    with caplog.at_level(logging.WARNING, logger="trl_mars"):
        MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "one", num_train_epochs=1, **defaults),
                          train_dataset=tiny_dataset)
    assert "no round will run" in caplog.text


def test_original_epoch_size_refuses_a_non_random_sampler(tmp_path):
    with pytest.raises(ValueError, match="train_sampling_strategy"):
        mars_args(tmp_path, mars_epoch_size="original", train_sampling_strategy="group_by_length")


def test_resume_lands_in_the_right_round(tmp_path, minilm_path, tiny_dataset):
    """A run resumed from the checkpoint after epoch 1 rebuilds D^1, runs rounds 2-3 and ends where the full run ends."""
    full = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "full", num_train_epochs=3, save_strategy="epoch",
                                                         mars_strategy="mars_nosem"),
                             train_dataset=tiny_dataset)
    full.train()
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [int(p.name.split("-")[1]) for p in checkpoints] == [8, 20, 36]  # 32, 48, 64 pairs per epoch
    first = checkpoints[0]
    state = json.loads((first / "mars_state.json").read_text())
    assert [entry["round"] for entry in state["completed_rounds"]] == [1]

    resumed = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "resumed", num_train_epochs=3,
                                                            mars_strategy="mars_nosem"),
                                train_dataset=tiny_dataset)
    resumed.train(resume_from_checkpoint=str(first))
    assert resumed.state.global_step == full.state.global_step == 36
    assert not (tmp_path / "resumed" / "mars" / "round_1").exists()  # round 1 came from the checkpoint
    for round_index in (2, 3):
        a = read_jsonl(tmp_path / "full" / "mars" / f"round_{round_index}" / "allocation.jsonl")
        b = read_jsonl(tmp_path / "resumed" / "mars" / f"round_{round_index}" / "allocation.jsonl")
        np.testing.assert_allclose([r["margin"] for r in a], [r["margin"] for r in b], rtol=1e-4, atol=1e-5)
        assert [r["budget"] for r in a] == [r["budget"] for r in b]
    # Round 3 may come out a pair short: a tuple whose few variants were all used in rounds 1-2 is not repeated.
    added = sum(entry["num_synthetic"] for entry in full.mars_callback.completed)
    assert 16 * 4 - 2 <= 16 + added <= 16 * 4
    assert len(resumed.train_dataset) == len(full.train_dataset) == 16 + added


def test_long_examples_are_truncated_not_dropped(tmp_path, minilm_path):
    rows = tiny_rows(8)
    rows[0] = {**rows[0], "prompt": "Please read this long context. " * 40}
    args = mars_args(tmp_path, mars_strategy="none", max_length=64, num_train_epochs=1)
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=Dataset.from_list(rows))
    assert len(trainer.train_dataset) == 8
    assert trainer._mars_truncated["train"] == 1
    ids = trainer.train_dataset[0]["chosen_ids"]
    tokenizer = trainer.processing_class
    assert len(ids) == 64 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    # The end of the response survives.
    assert tokenizer.decode(ids).endswith("what works for you. [SEP]")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda rows: [{k: v for k, v in r.items() if k != "chosen"} for r in rows], r"column 'chosen'.*missing"),
        (lambda rows: [{**r, "chosen": None} if i == 3 else r for i, r in enumerate(rows)],
         r"row 3, column 'chosen': the value is missing"),
        (lambda rows: [{**r, "rejected": "  "} if i == 5 else r for i, r in enumerate(rows)],
         r"row 5, column 'rejected': the text is empty"),
        (lambda rows: [{**r, "rejected": r["chosen"]} if i == 2 else r for i, r in enumerate(rows)],
         r"row 2.*identical"),
        (lambda rows: [{"prompt": r["prompt"], "preferred": r["chosen"], "rejected": r["rejected"]} for r in rows],
         r"rename_column\('preferred', 'chosen'\)"),
    ],
)
def test_bad_input_fails_before_the_model_loads(tmp_path, mutate, match):
    dataset = Dataset.from_list(mutate(tiny_rows(8)))
    # The model path does not exist: reaching the model loader would raise OSError, not our error.
    with pytest.raises(PreferenceDataError, match=match):
        MarsRewardTrainer("/nonexistent/model", args=mars_args(tmp_path), train_dataset=dataset)


def test_non_string_values_and_empty_datasets_are_rejected(tmp_path):
    numbers = Dataset.from_list([{"prompt": "p", "chosen": 1, "rejected": 2}])
    with pytest.raises(PreferenceDataError, match=r"row 0, column 'chosen': expected a string"):
        MarsRewardTrainer("/nonexistent/model", args=mars_args(tmp_path), train_dataset=numbers)
    empty = Dataset.from_list(tiny_rows(2)).select([])
    with pytest.raises(PreferenceDataError, match="no rows"):
        MarsRewardTrainer("/nonexistent/model", args=mars_args(tmp_path), train_dataset=empty)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"mars_strategy": "boosting"}, "mars_strategy"),
        ({"mars_adaboost_beta": -0.1}, "mars_adaboost_beta"),
        ({"mars_won_candidates": 1}, "mars_won_candidates"),
        ({"mars_won_generator": "sampler"}, "mars_won_generator"),
        # (won with causal_lm and no mars_won_model is valid now: the packaged SmolLM2 is its default)
        ({"mars_chat_extra_body": "not json"}, "mars_chat_extra_body"),
        ({"mars_strategy": "adaboost", "max_steps": 10}, "epochs"),
        ({"mars_paraphraser": "gpt"}, "mars_paraphraser"),
        ({"mars_tau": 0.0}, "mars_tau"),
        ({"mars_tau": -1.0}, "mars_tau"),
        ({"mars_budget_ratio": -0.5}, "mars_budget_ratio"),
        ({"max_steps": 10}, "epochs"),
    ],
)
def test_bad_config_is_rejected(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        mars_args(tmp_path, **overrides)


def test_reward_config_is_refused_with_a_fix(tmp_path, tiny_dataset):
    from trl import RewardConfig

    with pytest.raises(TypeError, match="MarsRewardConfig"):
        MarsRewardTrainer("/nonexistent/model", args=RewardConfig(output_dir=str(tmp_path), bf16=False),
                          train_dataset=tiny_dataset)


def test_conversational_and_implicit_prompt_formats(tmp_path, minilm_path):
    """TRL's other dataset formats run through MARS rounds and keep their format in synthetic rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    conversational = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in tiny_rows(8)])
    trainer = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "conv", num_train_epochs=1,
                                                            mars_strategy="mars_nosem"),
                                train_dataset=conversational, processing_class=tokenizer)
    trainer.train()
    synthetic = read_jsonl(tmp_path / "conv" / "mars" / "round_1" / "synthetic.jsonl")
    assert len(synthetic) == 8
    assert all(isinstance(row["chosen"], list) and row["chosen"][0]["role"] == "assistant" for row in synthetic)

    implicit = Dataset.from_list([{"chosen": r["prompt"] + " " + r["chosen"], "rejected": r["prompt"] + " " + r["rejected"]}
                                  for r in tiny_rows(8)])
    trainer = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "implicit", num_train_epochs=1,
                                                            mars_strategy="mars_nosem"),
                                train_dataset=implicit)
    trainer.train()
    synthetic = read_jsonl(tmp_path / "implicit" / "mars" / "round_1" / "synthetic.jsonl")
    assert all(row["prompt"].startswith("Can you give me") for row in synthetic)
