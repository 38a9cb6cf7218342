"""Launched by tests/test_distributed.py with `accelerate launch --num_processes 2`: one round on the margins the
loss recorded (`mars_margin_source="training"`). Each rank writes the margins round 1 allocated on and how many
pairs r^{t-1} had to rescore, so the test can check that every rank's records were gathered."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import mars_args, tiny_rows  # noqa: E402
from datasets import Dataset  # noqa: E402

import trl_mars.training.services as services_module  # noqa: E402
from trl_mars.cli.shutdown import end_processes  # noqa: E402
from trl_mars.training.trainer import MarsRewardTrainer  # noqa: E402


def main(model_path: str, output_dir: str) -> None:
    rescored = []
    original = services_module.score_margins

    def counting_score_margins(chosen_ids, *args, **kwargs):
        if kwargs.get("desc", "").startswith("MARS round"):
            rescored.append(len(chosen_ids))
        return original(chosen_ids, *args, **kwargs)

    services_module.score_margins = counting_score_margins
    args = mars_args(output_dir, num_train_epochs=2, mars_warmup_epochs=1, mars_strategy="uniform",
                     mars_margin_source="training", ddp_backend="gloo", use_cpu=True)
    trainer = MarsRewardTrainer(model_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)))
    seen = []
    trainer.mars_callback.after_scoring = lambda round_index, margins: seen.append(margins.tolist())
    trainer.train()
    rank = trainer.accelerator.process_index
    record = {"rank": rank, "world": trainer.accelerator.num_processes, "margins": seen, "rescored": rescored}
    Path(output_dir, f"rank_{rank}.json").write_text(json.dumps(record))
    end_processes(trainer.accelerator)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
