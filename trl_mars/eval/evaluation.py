"""Evaluating a reward model on preference pairs: pairwise accuracy, margins, RewardBench sections.

Two layers, kept apart:

* pure metrics over margins (`pairwise_metrics`, `subset_metrics`, `rewardbench_sections`, `evaluate_margins`),
  cheap to import and tested against hand-computed values;
* scoring a saved reward model (`load_reward_model` of `trl_mars.eval.modeling`, `score_pairs`), which encodes every
  pair exactly as `MarsRewardTrainer` does for training (`tokenize_pair`, then keep-the-end truncation) and scores
  with the batched, length-sorted `trl_mars.mars.scoring.score_margins`.

Definitions. A pair is ranked correctly when its margin r(x, y+) - r(x, y-) is strictly positive (a tie counts as
wrong, as in RewardBench). Margin SNR = mean / std (population std; None when all margins are equal), the paper's
signal-to-noise ratio.

RewardBench (allenai/reward-bench, split "filtered"): a section score is the accuracy of its subsets weighted by
each subset's official example count, with math-prm counted as 984 so that maths weighs as much as the code
subsets (as the official leaderboard does). We compute sections over the subsets present only, and the average
over the sections present; the official leaderboard's "Prior Sets" section is not included.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .modeling import load_reward_model  # torch-free at import, like the metrics

# Official section mapping of RewardBench (docs/usage.md, "Evaluating a reward model").
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
# Example counts used as weights inside a section; math-prm has 447 examples but is counted as 984.
REWARDBENCH_WEIGHTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134,
    "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46, "refusals-dangerous": 100,
    "refusals-offensive": 100, "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "math-prm": 984, "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164,
    "hep-rust": 164,
}
REWARDBENCH_DATASET = "allenai/reward-bench"
REWARDBENCH_SPLIT = "filtered"


# ----------------------------------------------------------------------------------------------------------------
# pure metrics
# ----------------------------------------------------------------------------------------------------------------


def _margins_array(margins: Any) -> np.ndarray:
    array = np.asarray(margins, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"margin {int(bad[0])} is {float(array[bad[0]])!r}: the reward model produced a non-finite score "
                         "(diverged weights or an overflow in half precision).")
    return array


def pairwise_metrics(margins: Any) -> dict[str, Any]:
    """{n, accuracy, margin_mean, margin_std, snr} of margins r(x, y+) - r(x, y-); a tie counts as wrong."""
    m = _margins_array(margins)
    if m.size == 0:
        return {"n": 0, "accuracy": None, "margin_mean": None, "margin_std": None, "snr": None}
    mean = float(m.mean())
    std = 0.0 if m.min() == m.max() else float(m.std())
    return {"n": int(m.size), "accuracy": float(np.mean(m > 0)), "margin_mean": mean, "margin_std": std,
            "snr": mean / std if std > 0 else None}


def subset_metrics(margins: Any, subsets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per-subset {accuracy, n, margin_mean}, subsets in order of first appearance."""
    m = _margins_array(margins)
    if len(subsets) != m.size:
        raise ValueError(f"got {m.size} margins but {len(subsets)} subset names.")
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(subsets):
        picked = m[[i for i, s in enumerate(subsets) if s == name]]
        out[str(name)] = {"accuracy": float(np.mean(picked > 0)), "n": int(picked.size),
                          "margin_mean": float(picked.mean())}
    return out


def rewardbench_sections(subset_accuracy: Mapping[str, float]) -> tuple[dict[str, float], float | None]:
    """(section scores, their average) over the RewardBench subsets present in `subset_accuracy`.

    Each section is the example-count-weighted mean accuracy of its subsets (`REWARDBENCH_WEIGHTS`); a section
    none of whose subsets is present is left out, and so is its share of the average.
    """
    sections: dict[str, float] = {}
    for section, names in REWARDBENCH_SECTIONS.items():
        present = [name for name in names if name in subset_accuracy]
        if not present:
            continue
        total = sum(REWARDBENCH_WEIGHTS[name] for name in present)
        sections[section] = sum(REWARDBENCH_WEIGHTS[name] * float(subset_accuracy[name]) for name in present) / total
    average = float(np.mean(list(sections.values()))) if sections else None
    return sections, average


def evaluate_margins(margins: Any, subsets: Sequence[str] | None = None) -> dict[str, Any]:
    """The evaluation report of `recipes/eval_rm.py`: overall metrics, per-subset results, RewardBench sections.

    Keys: accuracy, margin_mean, margin_std, snr, n, subsets {name: {accuracy, n, margin_mean}}, sections
    {section: score}, average (mean of the sections present, None when no RewardBench subset is present).
    """
    report = pairwise_metrics(margins)
    report["subsets"] = subset_metrics(margins, subsets) if subsets is not None else {}
    accuracies = {name: values["accuracy"] for name, values in report["subsets"].items()}
    report["sections"], report["average"] = rewardbench_sections(accuracies)
    return report


def majority_baseline(train_labels: Iterable[str], eval_labels: Sequence[str]) -> dict[str, Any] | None:
    """Accuracy of always preferring the response of the label most often chosen in train (e.g. its generator).

    For AlpacaEval-style pairs where one side is always the same model and that model wins most comparisons, a
    reward model can score this much by recognising its style alone. None when there are no labels.
    """
    counts: dict[str, int] = {}
    for label in train_labels:
        counts[label] = counts.get(label, 0) + 1
    if not counts or not eval_labels:
        return None
    majority = max(counts, key=lambda label: (counts[label], label))
    return {"label": majority, "accuracy": float(np.mean([label == majority for label in eval_labels])),
            "n": len(eval_labels)}


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table of an `evaluate_margins` report, for the terminal."""
    lines = [f"{'subset':<28} {'n':>6} {'accuracy':>9} {'margin':>8}"]
    for name, values in report.get("subsets", {}).items():
        lines.append(f"{name:<28} {values['n']:>6} {_fmt(values['accuracy']):>9} {_fmt(values['margin_mean'], '+.3f'):>8}")
    lines.append(f"{'all':<28} {report['n']:>6} {_fmt(report['accuracy']):>9} {_fmt(report['margin_mean'], '+.3f'):>8}")
    lines.append(f"margin SNR (mean/std): {_fmt(report['snr'])}")
    if report.get("sections"):
        lines.append("RewardBench sections (example-count weighted, subsets present only):")
        for section, score in report["sections"].items():
            lines.append(f"  {section:<12} {score:.3f}")
        lines.append(f"  {'average':<12} {report['average']:.3f}")
    return "\n".join(lines)


def write_report(report: Mapping[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------
# scoring a reward model
# ----------------------------------------------------------------------------------------------------------------


def encode_pairs(dataset, tokenizer, max_length: int | None) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of every pair, encoded as `MarsRewardTrainer` encodes training pairs.

    Implicit prompts are extracted (`to_explicit_prompt`), each side is tokenised by `tokenize_pair` and sequences
    longer than `max_length` lose the start of the prompt (`truncate_keep_end`), as with the trainer's default
    `mars_truncation="keep_end"`.
    """
    from ..data.preferences import (
        column_values,
        to_explicit_prompt,
        tokenize_pair,
        truncate_keep_end,
        validate_preference_dataset,
    )

    validate_preference_dataset(dataset, name="evaluation")
    dataset = to_explicit_prompt(dataset)
    columns = [c for c in ("prompt", "chosen", "rejected", "tools", "chat_template_kwargs") if c in dataset.column_names]
    values = {c: column_values(dataset, c) for c in columns}
    special = set(tokenizer.all_special_ids)
    chosen, rejected = [], []
    for row in range(len(dataset)):
        encoded = tokenize_pair({c: values[c][row] for c in columns}, tokenizer)
        for side, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
            ids = encoded[side]
            out.append(truncate_keep_end(ids, max_length, special) if max_length else list(ids))
    return chosen, rejected


def score_pairs(model, tokenizer, dataset, *, max_length: int | None, batch_size: int = 64,
                accelerator=None) -> np.ndarray:
    """Margins r(x, y+) - r(x, y-) of every pair in `dataset` (text columns prompt/chosen/rejected)."""
    from ..mars.scoring import LocalAccelerator, score_margins

    chosen, rejected = encode_pairs(dataset, tokenizer, max_length)
    if accelerator is None:
        accelerator = LocalAccelerator(next(model.parameters()).device, show_progress=True)

    margins, _ = score_margins(model, chosen, rejected, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size,
                               accelerator=accelerator, desc="Scoring evaluation pairs")
    return margins


def __getattr__(name: str):
    # This module's single-process accelerator is `scoring.LocalAccelerator` now; the old name still resolves, lazily,
    # so that importing the metrics does not import torch.
    if name == "SingleProcessScorer":
        from ..mars.scoring import LocalAccelerator

        return LocalAccelerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------------------------
# the eval_rm recipe as importable code
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class EvalRewardModelArguments:
    """Arguments of `recipes/eval_rm.py` (TrlParser: YAML via --config, CLI flags)."""

    model_name_or_path: str = field(
        metadata={"help": "Folder of a reward model saved by MarsRewardTrainer (a full model, or a LoRA adapter "
                          "folder with adapter_config.json: its base is loaded and the adapter merged)."})
    dataset_name: str = field(
        metadata={"help": "A Hub dataset id (e.g. allenai/reward-bench) or a local .json/.jsonl file with prompt, "
                          "chosen, rejected and optionally subset fields (RewardBench's format)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str | None = field(
        default=None, metadata={"help": "Split to score. Default: 'filtered' for allenai/reward-bench, else 'test'; "
                                        "a local file is scored whole."})
    output_json: str | None = field(default=None, metadata={"help": "Where to write the report as JSON."})
    max_length: int | None = field(
        default=512, metadata={"help": "Token limit per sequence; longer pairs lose the start of the prompt, as in "
                                       "training (mars_truncation=keep_end). Use the value the model was trained "
                                       "with."})
    batch_size: int = field(default=64, metadata={"help": "Pairs per forward pass."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Score only a seeded subset of this many pairs (quick checks)."})
    pku_preference: str = field(
        default="better", metadata={"help": "PKU-SafeRLHF only: 'better' (more helpful) or 'safer' response as "
                                            "chosen.", "choices": ["better", "safer"]})
    device: str | None = field(default=None, metadata={"help": "torch device. Default: cuda when available, else cpu."})


def run_evaluation(args: EvalRewardModelArguments) -> dict[str, Any]:
    """Loads the model and data, scores every pair, prints the table, writes the JSON; returns the report."""
    from ..data.preferences import load_evaluation_dataset, take_subset

    dataset = load_evaluation_dataset(args.dataset_name, split=args.dataset_split,
                                      dataset_config=args.dataset_config, pku_preference=args.pku_preference)
    dataset = take_subset(dataset, args.max_samples)
    model, tokenizer = load_reward_model(args.model_name_or_path, device=args.device)
    margins = score_pairs(model, tokenizer, dataset, max_length=args.max_length, batch_size=args.batch_size)
    subsets = dataset["subset"][:] if "subset" in dataset.column_names else None
    report = {"model": args.model_name_or_path, "dataset": args.dataset_name,
              **evaluate_margins(margins, list(subsets) if subsets is not None else None)}
    print(format_report(report))
    if args.output_json:
        write_report(report, args.output_json)
        print(f"report written to {args.output_json}")
    return report
