"""A newcomer's first run: start-up checks, clean errors, Path model ids, LoRA heads, --help, cores, console."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import mars_args, tiny_rows

from trl_mars import MarsRewardTrainer
from trl_mars.augment.model_source import ModelSourceError
from trl_mars.training.config import PACKAGED_MINILM, MarsRewardConfig
from trl_mars.training.preflight import PreflightError, check_models, check_pretrained

ROOT = Path(__file__).resolve().parents[1]
UNCACHED_HUB_ID = "trl-mars-tests/no-such-encoder"  # a valid Hub id that no cache holds


def _recipe_env(**extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", **extra}


def _bad_file(tmp_path):
    rows = tiny_rows(6)
    del rows[3]["chosen"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


# ------------------------------------------------------------------ clean errors


def test_data_error_is_one_message_without_traceback(tmp_path):
    command = [sys.executable, str(ROOT / "recipes" / "mars_rm.py"), "--dataset_name", str(_bad_file(tmp_path)),
               "--eval_fraction", "0", "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(command, env=_recipe_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert "[MARS] error: train dataset, row 3, column 'chosen'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_data_error_under_accelerate_launch_has_no_traceback(tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file",
               str(ROOT / "accelerate_configs" / "cpu.yaml"), str(ROOT / "recipes" / "mars_rm.py"),
               "--dataset_name", str(_bad_file(tmp_path)), "--eval_fraction", "0", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, env=_recipe_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "[MARS] error: train dataset, row 3, column 'chosen'" in output
    assert "Traceback" not in output
    # the cpu config answers what accelerate would otherwise guess (only its CPU thread count note remains)
    assert "`--num_processes` was set" not in output and "`--mixed_precision` was set" not in output


def test_config_error_is_one_message(tmp_path):
    command = [sys.executable, str(ROOT / "recipes" / "mars_rm.py"), "--mars_tau", "0", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, env=_recipe_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert "`mars_tau` must be a finite number > 0" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------ start-up checks


def test_unloadable_embedder_fails_at_construction_with_the_fix(tmp_path, minilm_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("TRL_MARS_TEST_KEY", "x")  # a refiner: the run needs the embedder
    args = mars_args(tmp_path, mars_embedding_model=UNCACHED_HUB_ID, mars_refiner="chat",
                     mars_chat_api_key_env="TRL_MARS_TEST_KEY")
    start = time.perf_counter()
    with pytest.raises(PreflightError) as error:
        MarsRewardTrainer(model=minilm_path, args=args, train_dataset=tiny_dataset)
    assert time.perf_counter() - start < 30  # no download retries
    message = str(error.value)
    assert "mars_embedding_model" in message and UNCACHED_HUB_ID in message
    assert PACKAGED_MINILM in message  # the fix
    assert not list(tmp_path.glob("mars/round_*")) and not (tmp_path / "mars" / "summary.json").exists()


def test_every_model_the_run_needs_is_checked(tmp_path, minilm_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PreflightError, match="`model='trl-mars-tests/no-such-encoder'`"):
        check_models(UNCACHED_HUB_ID, mars_args(tmp_path))
    with pytest.raises(PreflightError, match="mars_paraphraser='lexical'"):
        check_models(minilm_path, mars_args(tmp_path, mars_paraphraser="seq2seq",
                                            mars_paraphraser_model=UNCACHED_HUB_ID))
    monkeypatch.delenv("TRL_MARS_TEST_KEY", raising=False)
    with pytest.raises(PreflightError, match="TRL_MARS_TEST_KEY"):
        check_models(minilm_path, mars_args(tmp_path, mars_refiner="chat", mars_chat_api_key_env="TRL_MARS_TEST_KEY"))
    # injected back-ends are the caller's business; strategy 'none' needs no embedder
    check_models(minilm_path, mars_args(tmp_path, mars_embedding_model=UNCACHED_HUB_ID), embedder=object())
    check_models(minilm_path, mars_args(tmp_path, mars_embedding_model=UNCACHED_HUB_ID, mars_strategy="none"))


def test_only_the_models_the_config_needs_are_checked(tmp_path, minilm_path, monkeypatch):
    # (was the factory's own check; `check_models` is now the one entry point)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def config(**kwargs):
        return MarsRewardConfig(output_dir=str(tmp_path), report_to=[], **kwargs)

    check_models(minilm_path, config(mars_embedding_model=PACKAGED_MINILM))
    check_models(minilm_path, config(mars_strategy="uniform", mars_embedding_model="org/never-used"))  # not needed
    # the embedder only picks the pairs a refiner rewrites: without one it is neither checked nor loaded
    check_models(minilm_path, config(mars_embedding_model="org/not-cached"))
    monkeypatch.setenv("TRL_MARS_TEST_KEY", "x")
    with pytest.raises(ModelSourceError, match="mars_embedding_model"):
        check_models(minilm_path, config(mars_embedding_model="org/not-cached", mars_refiner="chat",
                                         mars_chat_api_key_env="TRL_MARS_TEST_KEY"))
    with pytest.raises(ModelSourceError, match="mars_paraphraser_model"):
        check_models(minilm_path, config(mars_embedding_model=PACKAGED_MINILM, mars_paraphraser="seq2seq",
                                         mars_paraphraser_model="org/not-cached-t5"))


def test_a_model_error_is_one_clean_line(capsys, monkeypatch):
    # the back-ends' model check and the trainer's start-up check raise one type, which the recipes print as one line
    from trl_mars.augment.embedding import check_embedding_model
    from trl_mars.cli.arguments import (
        EXIT_SETUP_ERROR,
        TRACEBACK_ENV,
        exit_on_setup_error,
    )

    assert PreflightError is ModelSourceError and issubclass(ModelSourceError, ValueError)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info, exit_on_setup_error():
        check_embedding_model(UNCACHED_HUB_ID)
    assert exit_info.value.code == EXIT_SETUP_ERROR
    first_line = capsys.readouterr().err.splitlines()[0]
    assert first_line.startswith(f"[MARS] error: `mars_embedding_model='{UNCACHED_HUB_ID}'`")
    assert PACKAGED_MINILM in first_line


def test_local_folders_are_checked_for_a_saved_model(tmp_path, minilm_path):
    check_pretrained(Path(minilm_path), setting="model", fix="")
    check_pretrained(PACKAGED_MINILM, setting="model", fix="")
    with pytest.raises(PreflightError, match="no saved model"):
        check_pretrained(tmp_path, setting="model", fix="Fix it.")
    with pytest.raises(PreflightError, match="no such folder"):
        check_pretrained(str(tmp_path / "a" / "b"), setting="model", fix="Fix it.")


# ------------------------------------------------------------------ Path ids


def test_path_model_and_embedder_train(tmp_path, minilm_path, tiny_dataset, tiny_eval_dataset):
    args = mars_args(tmp_path, num_train_epochs=1, mars_embedding_model=Path(minilm_path))
    trainer = MarsRewardTrainer(model=Path(minilm_path), args=args, train_dataset=tiny_dataset,
                                eval_dataset=tiny_eval_dataset)
    trainer.train()
    summary = json.loads((tmp_path / "mars" / "summary.json").read_text())
    assert summary["config"]["mars_embedding_model"] == minilm_path
    assert summary["rounds"][0]["synthetic_pairs_added"] == len(tiny_dataset)
    assert "semantic" not in summary  # no refiner, so no semantic labels and no embedder loaded


# ------------------------------------------------------------------ PEFT


def test_lora_config_is_passed_as_given_unless_peft_cannot_apply_it(tmp_path, minilm_path, tiny_dataset, caplog):
    from peft import LoraConfig
    from trl import ModelConfig, get_peft_config

    def build(name, peft_config):
        args = mars_args(tmp_path / name, num_train_epochs=1, mars_strategy="none", learning_rate=1e-2)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trl_mars"):
            return MarsRewardTrainer(model=minilm_path, args=args, train_dataset=tiny_dataset, peft_config=peft_config)

    # no task type (a bare LoraConfig): as given, as RewardTrainer uses it; only the adapters train, and we say so
    trainer = build("as_given", LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    assert any("reward head stays at its random initialisation" in r.getMessage() for r in caplog.records)
    trainable = [name for name, param in trainer.model.named_parameters() if param.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any("modules_to_save" in name for name, _ in trainer.model.named_parameters())

    # CAUSAL_LM (TRL's get_peft_config) makes PEFT fail on a sequence classifier: a SEQ_CLS copy, with a warning
    causal = get_peft_config(ModelConfig(use_peft=True, lora_r=4, lora_alpha=8,
                                         lora_target_modules=["query", "value"]))
    assert causal.task_type == "CAUSAL_LM"
    trainer = build("causal", causal)
    assert causal.task_type == "CAUSAL_LM"  # the caller's config is not changed
    assert any("task_type='SEQ_CLS'" in r.getMessage() for r in caplog.records)
    head = trainer.model.base_model.model.classifier.modules_to_save["default"].weight
    initial = head.detach().clone()
    trainer.train()
    assert not torch.equal(head.detach(), initial)  # the head trains

    # SEQ_CLS: as given, no warning
    build("seq_cls", LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]))
    assert not caplog.records


# ------------------------------------------------------------------ --help, cores, console


def test_help_leads_with_mars_and_shows_both_defaults():
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "mars_rm.py"), "--help"], env=_recipe_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    text = result.stdout
    assert len(text.split("\n", 1)[0]) < 120  # a short usage line, not every option
    sections = [line for line in text.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert sections[0] == "MARS: strategy and allocation:"
    assert sections[-1].startswith("Training (transformers.TrainingArguments")
    assert text.index("--mars_tau") < text.index("--dataset_name") < text.index("--learning_rate")
    budget = text[text.index("--mars_budget_ratio"):text.index("--mars_margin_mode")]
    assert "(default: 1.0; library default: 5.0)" in " ".join(budget.split())


def test_every_mars_field_is_in_one_help_section():
    import dataclasses

    from trl_mars import MarsRewardConfig
    from trl_mars.training.config import MARS_HELP_SECTIONS

    listed = [name for names in MARS_HELP_SECTIONS.values() for name in names]
    fields = [f.name for f in dataclasses.fields(MarsRewardConfig) if f.name.startswith("mars_")]
    assert sorted(listed) == sorted(fields)


def test_cpu_threads_undo_accelerates_single_thread_default(monkeypatch):
    from trl_mars.training.console import cpu_threads

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert cpu_threads() == cores and torch.get_num_threads() == cores
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
        assert cpu_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's explicit choice
        assert cpu_threads() is None
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # outside accelerate, 1 is the user's choice too
        assert cpu_threads() is None
        assert cpu_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_new_head_load_report_is_one_line(minilm_path, caplog):
    from transformers import AutoModelForSequenceClassification

    from trl_mars.training.console import explain_new_head_report

    explain_new_head_report()
    with caplog.at_level(logging.INFO, logger="transformers.modeling_utils"):
        AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "transformers.modeling_utils"]
    assert not any("MISSING" in m for m in messages)
    report = [m for m in messages if "new reward head" in m]
    assert len(report) == 1 and "\n" not in report[0]
    assert "classifier.weight" in report[0] and "classifier.bias" in report[0]
