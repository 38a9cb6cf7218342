"""One MARS augmentation round, from margins to synthetic rows (DESIGN.md 1, steps 2-6).

Kept apart from the trainer so it can be read, tested and reused without a `Trainer`: the trainer scores the
margins and feeds the rows back into training; this module decides what the rows are.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .allocation import Allocation, allocate, allocation_entropy, margin_statistics, total_budget
from .augment.base import Paraphraser, RefinementRequest, RefinementResult, Refiner
from .augment.pool import operation_for, pool_size, sample_pairs
from .data import prompt_text, response_text, with_response_text

logger = logging.getLogger("trl_mars")
# How many paraphrased prompt variants a tuple gets at most when `mars_paraphrase_prompts` is on.
PROMPT_VARIANTS = 2


@dataclass
class RoundResult:
    """Everything one round produced; `summary` is what goes into summary.json and the trainer's logger."""

    round: int
    allocation: Allocation
    allocation_rows: list[dict[str, Any]]
    synthetic_rows: list[dict[str, Any]]
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    """Adds the wall time of the block to `timings[stage]`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _paraphrase_grouped(paraphraser: Paraphraser, requests: Sequence[tuple[str, int]]) -> list[list[str]]:
    """Paraphrases (text, n) requests, one back-end call per distinct n (the protocol takes a single n)."""
    by_n: dict[int, list[int]] = defaultdict(list)
    for position, (_, n) in enumerate(requests):
        if n > 0:
            by_n[n].append(position)
    out: list[list[str]] = [[] for _ in requests]
    for n in sorted(by_n):
        positions = by_n[n]
        variants = paraphraser.paraphrase([requests[p][0] for p in positions], n)
        for position, texts in zip(positions, variants):
            out[position] = list(texts)[:n]
    return out


def run_round(
    *,
    round_index: int,
    originals: Sequence[dict[str, Any]],
    margins: np.ndarray,
    strategy: str,
    tau: float,
    margin_mode: str,
    budget_ratio: float,
    rounding: str,
    seed: int,
    paraphraser: Paraphraser,
    paraphrase_prompts: bool = False,
    distances: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    refiner: Refiner | None = None,
    refinements: dict[int, RefinementResult] | None = None,
    timings: dict[str, float] | None = None,
) -> RoundResult:
    """Runs steps 2-6 for one round.

    `originals` are explicit-prompt rows (prompt/chosen/rejected, text or chat messages). `refinements` carries
    rewrites across rounds: a tuple is refined at most once per run (the cache makes a re-run free anyway), and
    later rounds paraphrase the kept rewrite. Budgets that a tuple's candidate pool cannot fill (a back-end
    returned fewer variants than asked) are moved to tuples with spare candidates, highest q first, so a round
    adds exactly B pairs whenever the pools allow it.
    """
    timings = {} if timings is None else timings
    stage = partial(_timed, timings)
    refinements = {} if refinements is None else refinements
    n = len(originals)
    budget = total_budget(n, budget_ratio)

    with stage("allocate"):
        rng = np.random.default_rng([seed, round_index])
        allocation = allocate(margins, total=budget, tau=tau, mode=margin_mode, strategy=strategy,
                              method=rounding, rng=rng)
    budgets = allocation.budgets

    # Step 5: rewrite low-distance pairs that get budget (strategy "mars" with a refiner only).
    with stage("refine"):
        if refiner is not None and labels is not None and distances is not None:
            pending = [i for i in range(n) if budgets[i] > 0 and labels[i] == "low" and i not in refinements]
            if pending:
                requests = [
                    RefinementRequest(index=i, prompt=prompt_text(originals[i]["prompt"]),
                                      chosen=response_text(originals[i]["chosen"]),
                                      rejected=response_text(originals[i]["rejected"]), distance=float(distances[i]))
                    for i in pending
                ]
                for result in refiner.refine(requests):
                    refinements[result.index] = result

    def base_text(i: int, side: str) -> str:
        result = refinements.get(i)
        if result is not None and result.accepted:
            return result.chosen if side == "chosen" else result.rejected
        return response_text(originals[i][side])

    # Step 6: paraphrase n+ chosen and n- rejected variants per tuple (and prompts, when asked).
    active = [i for i in range(n) if budgets[i] > 0]
    with stage("paraphrase"):
        requests: list[tuple[str, int]] = []
        for i in active:
            requests.append((base_text(i, "chosen"), int(allocation.n_chosen[i])))
            requests.append((base_text(i, "rejected"), int(allocation.n_rejected[i])))
            if paraphrase_prompts:
                requests.append((response_text(originals[i]["prompt"]) if originals[i]["prompt"] else "",
                                 min(PROMPT_VARIANTS, int(budgets[i])) if originals[i]["prompt"] else 0))
        variants = _paraphrase_grouped(paraphraser, requests)

    with stage("sample"):
        per_request = 3 if paraphrase_prompts else 2
        chosen_variants: dict[int, list[str]] = {}
        rejected_variants: dict[int, list[str]] = {}
        prompt_variants: dict[int, list[Any]] = {}
        for position, i in enumerate(active):
            block = variants[position * per_request : (position + 1) * per_request]
            chosen_variants[i] = [base_text(i, "chosen"), *block[0]]
            rejected_variants[i] = [base_text(i, "rejected"), *block[1]]
            prompt_variants[i] = [originals[i]["prompt"]] + (
                [with_response_text(originals[i]["prompt"], text) for text in block[2]] if paraphrase_prompts else [])
        granted = {i: int(budgets[i]) for i in active}
        _top_up(paraphraser, active, granted, chosen_variants, rejected_variants)
        capacity = {i: pool_size(len(chosen_variants[i]) - 1, len(rejected_variants[i]) - 1) for i in active}
        deficit = sum(max(0, granted[i] - capacity[i]) for i in active)
        for i in active:
            granted[i] = min(granted[i], capacity[i])
        if deficit:
            logger.warning("Round %d: the back-end returned too few variants for %d pairs; moving them to tuples "
                           "with spare candidates.", round_index, deficit)
            for i in sorted(active, key=lambda i: (-allocation.probs[i], i)):
                extra = min(deficit, capacity[i] - granted[i])
                granted[i] += extra
                deficit -= extra
                if not deficit:
                    break

        rows: list[dict[str, Any]] = []
        for i in active:
            pair_rng = np.random.default_rng([seed, round_index, i])
            for c, r in sample_pairs(len(chosen_variants[i]) - 1, len(rejected_variants[i]) - 1, granted[i], pair_rng):
                operation = operation_for(c, r)
                prompt_index = int(pair_rng.integers(len(prompt_variants[i])))
                if prompt_index:
                    operation += "+prompt"
                result = refinements.get(i)
                if result is not None and result.accepted:
                    operation = f"refine_{result.rewritten}+{operation}"
                rows.append({
                    "prompt": prompt_variants[i][prompt_index],
                    "chosen": with_response_text(originals[i]["chosen"], chosen_variants[i][c]),
                    "rejected": with_response_text(originals[i]["rejected"], rejected_variants[i][r]),
                    "source_index": i,
                    "round": round_index,
                    "operation": operation,
                    "backend": paraphraser.name,
                })

    added = defaultdict(int)
    for row in rows:
        added[row["source_index"]] += 1
    allocation_rows = []
    for i in range(n):
        result = refinements.get(i)
        allocation_rows.append({
            "index": i,
            "margin": float(allocation.margins[i]),
            "prob": float(allocation.probs[i]),
            "budget": int(budgets[i]),
            "n_chosen": int(allocation.n_chosen[i]),
            "n_rejected": int(allocation.n_rejected[i]),
            "pairs_added": int(added[i]),
            "semantic_distance": None if distances is None else float(distances[i]),
            "semantic_label": None if labels is None else labels[i],
            "refined": None if result is None else bool(result.accepted),
        })
    summary = {
        "round": round_index,
        "num_original_pairs": n,
        "margin": margin_statistics(allocation.margins),
        "allocation_entropy": allocation_entropy(allocation.probs),
        "allocation_entropy_uniform": float(np.log(n)) if n else 0.0,
        "budget": budget,
        "synthetic_pairs_added": len(rows),
        "pairs_short_of_budget": budget - len(rows),
        "tuples_augmented": len(active),
        "operations": dict(sorted(_count(row["operation"] for row in rows).items())),
    }
    return RoundResult(round=round_index, allocation=allocation, allocation_rows=allocation_rows,
                       synthetic_rows=rows, summary=summary, timings=timings)


def _top_up(paraphraser: Paraphraser, active: Sequence[int], granted: dict[int, int],
            chosen_variants: dict[int, list[str]], rejected_variants: dict[int, list[str]]) -> None:
    """Asks for more variants of the side that has them when the other side came back short.

    A tuple whose rejected text has no paraphrase (a very short answer, say) has a pool of only n+ candidates. Asking
    for n+ + d chosen variants (d = the deficit) refills it, so the budget stays where the allocation put it. Variants
    are added in place; what still cannot be filled is redistributed by the caller.
    """
    requests: list[tuple[str, int]] = []
    targets: list[tuple[int, str]] = []
    for i in active:
        have_c, have_r = len(chosen_variants[i]) - 1, len(rejected_variants[i]) - 1
        deficit = granted[i] - pool_size(have_c, have_r)
        if deficit <= 0:
            continue
        side, have, other = ("chosen", have_c, have_r) if have_c >= have_r else ("rejected", have_r, have_c)
        # Each extra variant on `side` adds (other + 1) candidates.
        extra = math.ceil(deficit / (other + 1))
        variants = chosen_variants if side == "chosen" else rejected_variants
        requests.append((variants[i][0], have + extra))
        targets.append((i, side))
    if not requests:
        return
    for (i, side), texts in zip(targets, _paraphrase_grouped(paraphraser, requests)):
        variants = chosen_variants if side == "chosen" else rejected_variants
        seen = set(variants[i])
        variants[i].extend(text for text in texts if text not in seen and not seen.add(text))


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return counts


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes atomically (temp file + rename) so a crash never leaves a half-written evidence file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_json(path: Path, payload: Any) -> None:
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

