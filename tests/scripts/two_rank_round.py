"""Launched by tests/test_distributed.py with `accelerate launch --num_processes 2`: one MARS round on 2 ranks.

Each rank writes the margins it computed for the round and the size of its training set, so the test can check
that sharded scoring gives every rank the same array and that all ranks train on the same grown dataset.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import mars_args, tiny_rows  # noqa: E402
from datasets import Dataset  # noqa: E402

import trl_mars.trainer as trainer_module  # noqa: E402
from trl_mars.trainer import MarsRewardTrainer  # noqa: E402


def main(model_path: str, output_dir: str) -> None:
    captured = {}
    original = trainer_module.score_margins

    def recording_score_margins(*args, **kwargs):
        margins, chosen = original(*args, **kwargs)
        if kwargs.get("desc", "").startswith("MARS round"):
            captured.setdefault("margins", margins.tolist())
        return margins, chosen

    trainer_module.score_margins = recording_score_margins
    args = mars_args(output_dir, num_train_epochs=1, mars_strategy="mars_nosem", mars_scoring_batch_size=3,
                     ddp_backend="gloo", use_cpu=True)
    trainer = MarsRewardTrainer(model_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)))
    trainer.train()
    rank = trainer.accelerator.process_index
    record = {"rank": rank, "world": trainer.accelerator.num_processes, "margins": captured["margins"],
              "train_pairs": len(trainer.train_dataset), "global_step": trainer.state.global_step}
    Path(output_dir, f"rank_{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
