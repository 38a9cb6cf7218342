"""A real two-process launch (`accelerate launch`, gloo on CPU): sharded scoring and sharded generation give every
rank the same rows as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _failure_report(stderr: str) -> str:
    """What a failed launch said that matters: its lines naming an error or a signal (a rank's own message sits
    between the progress bars and the launcher's traceback), then the end."""
    telling = [line for line in stderr.splitlines()
               if any(word in line for word in ("rror", "xception", "terminate", "abort", "Signal", "Traceback"))]
    return "\n".join(telling[:60]) + "\n...\n" + stderr[-2000:]


def _launch_two_ranks(script: str, minilm_path: str, output_dir: Path) -> list[dict]:
    """Runs tests/scripts/<script> on two ranks and returns what each rank wrote."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # `--multi_gpu` selects accelerate's torchrun launcher; with `use_cpu=True` in the training arguments the two
    # processes form a gloo group on CPU (accelerate's own multi-CPU launcher needs MPI).
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(ROOT / "tests" / "scripts" / script), minilm_path,
               str(output_dir)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, _failure_report(result.stderr)
    return [json.loads((output_dir / f"rank_{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_round_matches_single_process(tmp_path, minilm_path):
    ranks = _launch_two_ranks("two_rank_round.py", minilm_path, tmp_path / "two")
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["margins"] == ranks[1]["margins"]  # bit-identical on every rank
    assert ranks[0]["train_pairs"] == ranks[1]["train_pairs"] == 32
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 4  # 32 pairs / (4 per device * 2 ranks)
    assert ranks[0]["train_digest"] == ranks[1]["train_digest"]  # every rank trains on the same rows
    assert ranks[0]["texts_paraphrased"] > 0 and ranks[1]["texts_paraphrased"] > 0  # generation is sharded

    # The same round in one process: the same synthetic rows, in the same order, and each text generated once.
    sys.path.insert(0, str(ROOT / "tests" / "scripts"))
    from two_rank_round import main

    main(minilm_path, str(tmp_path / "one"), distributed=False)
    single = json.loads((tmp_path / "one" / "rank_0.json").read_text())
    two_rows = (tmp_path / "two" / "mars" / "round_1" / "synthetic.jsonl").read_text()
    one_rows = (tmp_path / "one" / "mars" / "round_1" / "synthetic.jsonl").read_text()
    assert len(two_rows.splitlines()) == 16 and two_rows == one_rows
    assert single["train_digest"] == ranks[0]["train_digest"]
    assert ranks[0]["texts_paraphrased"] + ranks[1]["texts_paraphrased"] == single["texts_paraphrased"]
    np.testing.assert_allclose(single["margins"], ranks[0]["margins"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_gather_the_training_margins(tmp_path, minilm_path):
    ranks = _launch_two_ranks("two_rank_training_margins.py", minilm_path, tmp_path / "two")
    assert [r["world"] for r in ranks] == [2, 2]
    # Each rank trained on half of every batch; the round read both halves: all 16 pairs, none rescored.
    assert ranks[0]["margins"] == ranks[1]["margins"] and len(ranks[0]["margins"]) == 1
    assert len(ranks[0]["margins"][0]) == 16 and not np.isnan(ranks[0]["margins"][0]).any()
    assert ranks[0]["rescored"] == ranks[1]["rescored"] == []
