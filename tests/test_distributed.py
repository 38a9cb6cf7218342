"""A real two-process launch (`accelerate launch`, gloo on CPU): sharded scoring is identical on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import mars_args, tiny_rows
from datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_round_matches_single_process(tmp_path, minilm_path):
    script = ROOT / "tests" / "scripts" / "two_rank_round.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # `--multi_gpu` selects accelerate's torchrun launcher; with `use_cpu=True` in the training arguments the two
    # processes form a gloo group on CPU (accelerate's own multi-CPU launcher needs MPI).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(script), minilm_path, str(tmp_path / "two")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["margins"] == ranks[1]["margins"]  # bit-identical on every rank
    assert ranks[0]["train_pairs"] == ranks[1]["train_pairs"] == 32
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4  # 32 pairs / (4 per device * 2 ranks)
    synthetic = (tmp_path / "two" / "mars" / "round_1" / "synthetic.jsonl").read_text().splitlines()
    assert len(synthetic) == 16

    # The same round in one process: the same margins (up to float noise from different batch padding).
    from trl_mars.trainer import MarsRewardTrainer
    import trl_mars.trainer as trainer_module

    captured = {}
    original = trainer_module.score_margins

    def recording(*args, **kwargs):
        margins, chosen = original(*args, **kwargs)
        if kwargs.get("desc", "").startswith("MARS round"):
            captured.setdefault("margins", margins)
        return margins, chosen

    trainer_module.score_margins = recording
    try:
        single = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "one", num_train_epochs=1,
                                                               mars_strategy="mars_nosem"),
                                   train_dataset=Dataset.from_list(tiny_rows(16)))
        single.train()
    finally:
        trainer_module.score_margins = original
    np.testing.assert_allclose(captured["margins"], ranks[0]["margins"], rtol=1e-4, atol=1e-5)
