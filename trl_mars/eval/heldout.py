"""Held-out report: pairwise accuracy and margin SNR of the current model on the eval set(s).

Scored with the round's fast margin scorer (no loss, length-sorted batches, sharded across ranks). When Trainer
already evaluates every epoch (`eval_strategy="epoch"`), the report reads that evaluation's metrics instead of
scoring the set a second time (accuracy and mean margin; `evaluate` does not compute the SNR).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.preferences import column_values
from ..mars.allocation import margin_statistics
from ..mars.scoring import score_margins


def named_eval_datasets(eval_dataset) -> list[tuple[str, Any]]:
    """[(name, dataset)]: "eval" for a single set, "eval_<key>" for a dict of sets (Trainer's metric prefixes)."""
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, dict):
        return [(f"eval_{key}" if key != "eval" else key, value) for key, value in eval_dataset.items()]
    return [("eval", eval_dataset)]


def score_heldout(trainer, dataset, *, name: str, when: str, batch_size: int) -> dict[str, Any]:
    """Scores every pair of a tokenised eval set; the record for summary.json (identical on every rank)."""
    margins, _ = score_margins(trainer.model_wrapped, column_values(dataset, "chosen_ids"),
                               column_values(dataset, "rejected_ids"),
                               pad_token_id=trainer.processing_class.pad_token_id, batch_size=batch_size,
                               accelerator=trainer.accelerator, desc=f"Scoring {name} pairs", allow_nonfinite=True)
    record = {"when": when, "dataset": name, "global_step": trainer.state.global_step, "source": "scorer"}
    nonfinite = int((~np.isfinite(margins)).sum())
    if nonfinite:  # a diverged model: report it as NaN figures, as Trainer's evaluation would, instead of failing
        return {**record, "accuracy": float("nan"), "n": int(margins.size), "mean": float("nan"), "snr": None,
                "nonfinite": nonfinite}
    return {**record, "accuracy": float(np.mean(margins > 0)), **margin_statistics(margins)}


def from_evaluate(metrics: dict[str, float], *, name: str, when: str, global_step: int) -> dict[str, Any] | None:
    """The same record built from `Trainer.evaluate` metrics (None when they lack the accuracy)."""
    accuracy = metrics.get(f"{name}_accuracy")
    if accuracy is None:
        return None
    return {"when": when, "dataset": name, "accuracy": float(accuracy), "mean": metrics.get(f"{name}_margin"),
            "snr": None, "n": None, "global_step": global_step, "source": "evaluate"}


def figures(record: dict[str, Any]) -> dict[str, float]:
    prefix = record["dataset"]
    snr = record.get("snr")
    return {f"{prefix}_pairwise_accuracy": record["accuracy"],
            f"{prefix}_margin_snr": snr if snr is not None else float("nan")}
