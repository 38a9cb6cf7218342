"""Launched by tests/test_distributed.py with `accelerate launch --num_processes 2` (and once in-process with
world 1): one MARS round. Each rank writes the margins it computed, how many texts it paraphrased, and a digest of
its grown training set, so the test can check that scoring and generation are sharded and that every rank ends
with the same rows as a single process."""

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import mars_args, tiny_rows  # noqa: E402
from datasets import Dataset  # noqa: E402

import trl_mars.training.services as services_module  # noqa: E402
from trl_mars.augment.lexical import LexicalParaphraser  # noqa: E402
from trl_mars.cli.shutdown import end_processes  # noqa: E402
from trl_mars.data.preferences import column_values  # noqa: E402
from trl_mars.training.trainer import MarsRewardTrainer  # noqa: E402


class CountingParaphraser(LexicalParaphraser):
    """The lexical back-end, counting the texts this process was asked to paraphrase."""

    texts_paraphrased = 0

    def paraphrase(self, texts, n):
        self.texts_paraphrased += len(texts)
        return super().paraphrase(texts, n)


def main(model_path: str, output_dir: str, distributed: bool = True) -> None:
    captured = {}
    original = services_module.score_margins

    def recording_score_margins(*args, **kwargs):
        margins, chosen = original(*args, **kwargs)
        if kwargs.get("desc", "").startswith("MARS round"):
            captured.setdefault("margins", margins.tolist())
        return margins, chosen

    services_module.score_margins = recording_score_margins
    extra = dict(ddp_backend="gloo", use_cpu=True) if distributed else {}
    # "uniform": budgets do not depend on margins, so float noise between 1 and 2 ranks cannot change the rows.
    args = mars_args(output_dir, num_train_epochs=1, mars_strategy="uniform", mars_scoring_batch_size=3, **extra)
    paraphraser = CountingParaphraser(seed=args.effective_mars_seed)
    trainer = MarsRewardTrainer(model_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)),
                                paraphraser=paraphraser)
    trainer.train()
    services_module.score_margins = original
    rank = trainer.accelerator.process_index
    digest = hashlib.sha256(json.dumps([column_values(trainer.train_dataset, "chosen_ids"),
                                        column_values(trainer.train_dataset, "rejected_ids")])
                            .encode()).hexdigest()
    record = {"rank": rank, "world": trainer.accelerator.num_processes, "margins": captured["margins"],
              "train_pairs": len(trainer.train_dataset), "global_step": trainer.state.global_step,
              "texts_paraphrased": paraphraser.texts_paraphrased, "train_digest": digest}
    Path(output_dir, f"rank_{rank}.json").write_text(json.dumps(record))
    end_processes(trainer.accelerator)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
