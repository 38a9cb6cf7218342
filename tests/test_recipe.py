"""The recipe as a user runs it: TrlParser with YAML + CLI overrides, a local JSONL file, real subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import tiny_rows

from trl_mars import MarsRewardConfig

ROOT = Path(__file__).resolve().parents[1]


def test_every_mars_field_has_help_and_is_settable_from_yaml(tmp_path):
    from trl import ModelConfig, TrlParser

    from trl_mars.cli.recipe import MarsScriptArguments

    mars_fields = [f for f in dataclasses.fields(MarsRewardConfig) if f.name.startswith("mars_")]
    assert len(mars_fields) >= 20
    for f in mars_fields:
        assert len(f.metadata.get("help", "")) > 20, f"{f.name} has no help text"
    overrides = {"output_dir": str(tmp_path), "bf16": False, "mars_tau": 1.25, "mars_budget_ratio": 3.0,
                 "mars_margin_mode": "absolute", "mars_budget_rounding": "multinomial", "mars_rounds": 2,
                 "mars_warmup_epochs": 1, "mars_paraphraser": "seq2seq", "mars_paraphrase_prompts": True,
                 "mars_num_beams": 6, "mars_refiner": "chat", "mars_label_check": "judge", "mars_harm_check": "none",
                 "mars_chat_base_url": "http://127.0.0.1:9/v1", "mars_cache_dir": str(tmp_path / "cache"),
                 "mars_truncation": "drop", "mars_strategy": "uniform", "num_train_epochs": 4}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(overrides))
    parser = TrlParser((MarsScriptArguments, MarsRewardConfig, ModelConfig))
    _, args, _ = parser.parse_args_and_config(["--config", str(config), "--mars_tau", "2.0"])
    for key, value in overrides.items():
        expected = 2.0 if key == "mars_tau" else value  # the CLI wins over the YAML
        assert getattr(args, key) == expected, key


def test_recipe_runs_with_yaml_and_cli_overrides(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in tiny_rows(20)) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "dataset_name": str(data), "eval_fraction": 0.2, "output_dir": str(tmp_path / "out"),
        "num_train_epochs": 2, "per_device_train_batch_size": 8, "max_length": 64, "mars_budget_ratio": 0.5,
        "mars_strategy": "mars",
    }))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "recipes" / "mars_rm.py"), "--config", str(config),
               "--num_train_epochs", "1", "--mars_tau", "1.0", "--mars_warmup_epochs", "0"]  # a round in 1 epoch
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "[MARS] before training: eval pairwise accuracy" in output
    assert "[MARS] round 1 (epoch 1)" in output
    assert "reward model saved to" in output
    summary = json.loads((tmp_path / "out" / "mars" / "summary.json").read_text())
    assert summary["config"]["mars_tau"] == 1.0  # CLI override of the default
    assert len(summary["rounds"]) == 1  # --num_train_epochs 1 overrode the YAML's 2
    assert summary["rounds"][0]["num_original_pairs"] == 16  # 20 rows, 20% held out
    assert summary["rounds"][0]["budget"] == 8
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_recipe_rejects_a_bad_file_before_loading_a_model(tmp_path):
    data = tmp_path / "bad.jsonl"
    rows = tiny_rows(6)
    rows[4]["rejected"] = ""
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, str(ROOT / "recipes" / "mars_rm.py"), "--dataset_name", str(data),
               "--eval_fraction", "0", "--model_name_or_path", "/nonexistent/model", "--output_dir",
               str(tmp_path / "out")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert "train dataset, row 4, column 'rejected': the text is empty." in result.stderr
