"""scripts/pregenerate_won.py: two processes generate West-of-N's candidates into a grid's cache, then the compare
cell finds every one of them there and generates nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import tiny_rows
from tiny_models import save_tiny_llama

from trl_mars.augment.cache import AugmentationCache
from trl_mars.augment.packaged import PACKAGED_MINILM

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "won_tiny"


def _grid(tmp_path: Path) -> Path:
    data = tmp_path / "pairs.jsonl"
    rows = [{**row, "prompt": f"{row['prompt']} (case {i})"} for i, row in enumerate(tiny_rows(16))]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    llama = save_tiny_llama(tmp_path / "llama")
    config = {
        "datasets": [str(data)], "strategies": [VARIANT], "seeds": [1], "eval_fraction": 0.25,
        "variants": {VARIANT: {"mars_strategy": "won", "mars_won_generator": "causal_lm", "mars_won_model": llama,
                               "mars_won_candidates": 3, "mars_budget_ratio": 1.5, "mars_warmup_epochs": 0}},
        "model_name_or_path": PACKAGED_MINILM, "output_dir": str(tmp_path / "grid"), "num_train_epochs": 1,
        "per_device_train_batch_size": 8, "max_length": 48, "mars_max_new_tokens": 6, "save_strategy": "no",
        "report_to": "none", "bf16": False, "disable_tqdm": True, "mars_embedding_model": PACKAGED_MINILM,
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_shards_fill_the_cache_the_cell_then_reads(tmp_path):
    config = _grid(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = [sys.executable, str(ROOT / "scripts" / "pregenerate_won.py"), "--config", str(config)]
    shards = [subprocess.Popen(script + ["--shard", str(k), "--shards", "2"], cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(2)]
    outputs = [shard.communicate() for shard in shards]
    for shard, (out, err) in zip(shards, outputs):
        assert shard.returncode == 0, err[-3000:]
    # 12 training prompts; ratio 1.5 gives 6 of them 2 draws (6 candidates) and 6 one draw (3): shard k takes
    # prompts k, k+2, ... so each shard asks for 6 prompts
    assert all("6 prompts' candidates in the cache" in out for out, _ in outputs)
    with AugmentationCache(tmp_path / "grid" / "cache") as cache:
        generated = len(cache)
    assert generated == 6 * 6 + 6 * 3

    compare = subprocess.run([sys.executable, str(ROOT / "recipes" / "compare.py"), "--config", str(config)],
                             cwd=ROOT, env=env, capture_output=True, text=True)
    assert compare.returncode == 0, compare.stderr[-3000:]
    with AugmentationCache(tmp_path / "grid" / "cache") as cache:
        assert len(cache) == generated  # the cell asked for nothing the shards had not made
    summary = json.loads((tmp_path / "grid" / "cells" / "pairs" / VARIANT / "seed_1" / "mars" / "summary.json")
                         .read_text())
    assert summary["rounds"][0]["synthetic_pairs_added"] > 0


def test_a_cell_that_does_not_sample_candidates_is_refused(tmp_path):
    config = _grid(tmp_path)
    plain = subprocess.run([sys.executable, str(ROOT / "scripts" / "pregenerate_won.py"), "--config", str(config),
                            "--strategies", "uniform"], cwd=ROOT, capture_output=True, text=True)
    assert plain.returncode != 0 and "does not sample West-of-N candidates" in plain.stderr
    shard = subprocess.run([sys.executable, str(ROOT / "scripts" / "pregenerate_won.py"), "--config", str(config),
                            "--shard", "2", "--shards", "2"], cwd=ROOT, capture_output=True, text=True)
    assert shard.returncode != 0 and "--shard 2 is not one of 0..1" in shard.stderr
