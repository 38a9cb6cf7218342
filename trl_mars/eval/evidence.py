"""Evidence of every round on disk, for a person and for a script (docs/evidence.md).

`<output_dir>/mars/round_<t>/allocation.jsonl` (one row per original tuple), `round_<t>/synthetic.jsonl` (one row
per added pair, with provenance) and `mars/summary.json` (per-round figures, held-out reports, config). The same
per-round figures go to the trainer's loggers as `mars/*` scalars and to the console as one readable line.
Files are written atomically (temp file + rename), so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..mars.strategies import RoundSummary


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_json(path: Path, payload: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default), encoding="utf-8")
    tmp.replace(path)


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Evidence:
    """The run's evidence directory and its summary (held in memory, rewritten whole after each change)."""

    def __init__(self, directory: Path, summary: dict[str, Any] | None = None):
        self.directory = Path(directory)
        self.summary: dict[str, Any] = summary or {"rounds": [], "eval": []}

    def round_dir(self, round_index: int) -> Path:
        return self.directory / f"round_{round_index}"

    def write_round(self, summary: RoundSummary | dict[str, Any], allocation_rows, synthetic_rows) -> None:
        """The round's files, and its entry in the summary (replacing an earlier entry of the same round)."""
        entry = summary.to_dict() if isinstance(summary, RoundSummary) else summary
        write_jsonl(self.round_dir(entry["round"]) / "allocation.jsonl", allocation_rows)
        write_jsonl(self.round_dir(entry["round"]) / "synthetic.jsonl", synthetic_rows)
        self.summary["rounds"] = [r for r in self.summary["rounds"] if r["round"] != entry["round"]] + [entry]

    def last_round(self) -> dict[str, Any] | None:
        return self.summary["rounds"][-1] if self.summary["rounds"] else None

    def add_eval(self, record: dict[str, Any]) -> None:
        self.summary["eval"].append(record)

    def write_summary(self, **sections: Any) -> None:
        self.summary.update(sections)
        write_json(self.directory / "summary.json", self.summary)


def round_figures(summary: RoundSummary, train_pairs: int) -> dict[str, float]:
    """The round's figures as flat `mars/*` scalars for `report_to` loggers (TensorBoard, W&B, ...)."""
    margin = summary.margin
    figures = {
        "mars/round": summary.round,
        "mars/margin_mean": margin["mean"],
        "mars/margin_std": margin["std"],
        "mars/margin_snr": margin["snr"] if margin["snr"] is not None else math.nan,
        "mars/fraction_negative": margin["fraction_negative"],
        "mars/allocation_entropy": summary.allocation_entropy,
        "mars/synthetic_pairs_added": summary.synthetic_pairs_added,
        "mars/budget_moved": summary.budget_moved or 0,
        "mars/train_pairs": train_pairs,
    }
    figures.update({f"mars/time_{k}": v for k, v in (summary.timings or {}).items()})
    return figures


def round_line(summary: RoundSummary, train_pairs: int, seconds: float) -> str:
    """One line per round for the person watching the console."""
    margin = summary.margin
    moved = summary.budget_moved or 0
    short = summary.pairs_short_of_budget
    notes = "".join([f", {moved} budget moved" if moved else "", f", {short} short of budget" if short else ""])
    fidelity = summary.backend.get("paraphraser_stats", {})
    if "fidelity_kept" in fidelity:  # cumulative over the run, like every back-end counter
        notes += (f", fidelity filter kept {fidelity['fidelity_kept']} paraphrases, dropped "
                  f"{fidelity['fidelity_too_far']} too far + {fidelity['fidelity_near_copy']} near-copies (run total)")
    if summary.weights is not None:  # adaboost: the round changes loss weights, not data
        weights = summary.weights
        notes += (f", loss weights {weights['min']:.2f}..{weights['max']:.2f} "
                  f"(effective sample size {weights['effective_sample_size']:.0f})")
    return (f"[MARS] round {summary.round} (epoch {summary.epoch}): train margin mean {margin['mean']:+.3f}, "
            f"{margin['fraction_negative']:.0%} mis-ranked, allocation entropy {summary.allocation_entropy:.2f}/"
            f"{summary.allocation_entropy_uniform:.2f}, +{summary.synthetic_pairs_added} synthetic pairs{notes} "
            f"-> {train_pairs} training pairs ({seconds:.1f}s)")


def eval_line(record: dict[str, Any]) -> str:
    snr = record.get("snr")
    mean = record.get("mean")
    return (f"[MARS] {record['when']}: {record['dataset']} pairwise accuracy {record['accuracy']:.3f}, margin SNR "
            f"{'n/a' if snr is None else f'{snr:.3f}'} (mean {'n/a' if mean is None else f'{mean:+.3f}'}"
            + (f", n={record['n']})" if record.get("n") is not None else ")")
            + (f"; {record['nonfinite']} pairs with NaN/inf rewards: training has diverged" if record.get("nonfinite")
               else ""))
