"""One MARS augmentation round, from margins to synthetic rows (docs/architecture.md, steps 2-6), read top to bottom.

`run_round(RoundInputs)` is the whole round (`MarsStrategy` runs it as the 'mars', 'mars_nosem' and 'uniform'
strategies of `trl_mars.mars.strategies`); each stage is a named block timed into `inputs.timings`:

    allocate  (steps 2-3)  margins -> q_i -> integer budgets b_i, split n_i+ / n_i-
    refine    (step 5)     low-distance tuples with budget: rewrite once per run, keep only improving rewrites
    generate  (step 6)     n_i+ chosen and n_i- rejected paraphrases (and prompts, when asked), top-ups
    sample    (step 6)     b_i new pairs per tuple from its candidate pool, budget moved where a pool is too small

Scoring the margins (step 1) and growing the dataset (step 7) need the model and the training set, so the caller
(`MarsAugmentationCallback`) does them; semantic labels (step 4) are computed once per run and passed in.

Choices of ours beyond the paper, each named where it happens:
- a round never adds a pair already in the training data: `used_pairs` holds, per tuple, every (chosen, rejected)
  response pair already trained on (the original and earlier rounds' pairs), and sampling draws only from the rest
  of the pool (asking the back-end for more variants when too little is left);
- an accepted refinement adds the refined pair itself (operation "refined"): the pool's (0, 0) is that pair;
- budget a tuple cannot fill moves to tuples with spare candidates, highest q first, and the evidence says where
  (`budget_moved_out` / `budget_moved_in`);
- text generation goes through `inputs.generate_map`, which the trainer shards across ranks; every distinct
  (text, n) request is generated once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..augment.base import RefinementRequest, paraphrase_requests
from ..data.preferences import prompt_text, response_text, with_response_text
from .allocation import (
    Allocation,
    allocate,
    allocation_entropy,
    margin_statistics,
    total_budget,
)
from .pool import operation_for, pool_size, sample_pairs
from .strategies import (
    RoundInputs,
    RoundResult,
    RoundServices,
    RoundStrategy,
    RoundSummary,
)

logger = logging.getLogger("trl_mars")
# How many paraphrased prompt variants a tuple gets at most when `mars_paraphrase_prompts` is on.
PROMPT_VARIANTS = 2


def pair_key(chosen: str, rejected: str) -> str:
    """Identity of a (chosen, rejected) response pair in `used_pairs` (response texts; prompts are not compared)."""
    return json.dumps([chosen, rejected], ensure_ascii=False)


class MarsStrategy(RoundStrategy):
    """'mars', 'mars_nosem' and 'uniform': the round of this module (allocation by `inputs.strategy`).

    With `mars_weight_originals`, the round also returns loss weights N q_i for the original tuples (mean 1), so
    the low-margin tuples that get the budget also weigh more in the loss.
    """

    @classmethod
    def uses_semantic_labels(cls, args) -> bool:
        # the labels only choose which pairs the refiner rewrites; without one nothing reads them
        return args.mars_strategy == "mars" and args.mars_refiner != "none"

    @classmethod
    def sets_loss_weights(cls, args) -> bool:
        return bool(args.mars_weight_originals)

    def run(self, inputs: RoundInputs, services: RoundServices) -> RoundResult:
        result = run_round(inputs)
        if self.sets_loss_weights(self.args):
            probs = np.asarray(result.allocation.probs, dtype=np.float64)
            result.loss_weights = probs * probs.size
        return result


@dataclass
class _Tuple:
    """The variants of one augmented tuple; index 0 of each list is the base (original or refined) text."""

    chosen: list[str]
    rejected: list[str]
    prompts: list[Any]
    granted: int
    refined_pair: bool = False  # the accepted rewrite is itself a new pair

    def excluded(self, used: set[str]) -> set[tuple[int, int]]:
        """Pool cells (c, r) whose response pair was already trained on ((0, 0) is never in the pool)."""
        c_at = {text: c for c, text in enumerate(self.chosen)}
        r_at = {text: r for r, text in enumerate(self.rejected)}
        cells = set()
        for key in used:
            chosen, rejected = json.loads(key)
            if chosen in c_at and rejected in r_at and (c_at[chosen], r_at[rejected]) != (0, 0):
                cells.add((c_at[chosen], r_at[rejected]))
        return cells

    def capacity(self, used: set[str]) -> int:
        return (pool_size(len(self.chosen) - 1, len(self.rejected) - 1) - len(self.excluded(used))
                + int(self.refined_pair))


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def run_round(inputs: RoundInputs) -> RoundResult:
    """Runs steps 2-6 of round `inputs.round_index` and returns its rows and evidence."""
    originals, refinements, timings = inputs.originals, inputs.refinements, inputs.timings
    n = len(originals)
    budget = total_budget(n, inputs.budget_ratio)
    used = {i: inputs.used_pairs.setdefault(i, set()) for i in range(n)}
    for i in range(n):  # the original pair is always in the training data
        used[i].add(pair_key(response_text(originals[i]["chosen"]), response_text(originals[i]["rejected"])))

    # allocate (steps 2-3): q_i from the margins, b_i = B q_i as integers summing to B, n_i+ = floor(b_i / 2).
    with _timed(timings, "allocate"):
        allocation = allocate(inputs.margins, total=budget, tau=inputs.tau, mode=inputs.margin_mode,
                              scale=inputs.margin_scale, max_share=inputs.max_budget_share,
                              strategy=inputs.strategy, method=inputs.rounding,
                              rng=np.random.default_rng([inputs.seed, inputs.round_index]))
    budgets = allocation.budgets
    active = [i for i in range(n) if budgets[i] > 0]

    # refine (step 5): low-distance tuples that get budget, each once per run.
    with _timed(timings, "refine"):
        if inputs.refiner is not None and inputs.labels is not None and inputs.distances is not None:
            pending = [RefinementRequest(index=i, prompt=prompt_text(originals[i]["prompt"]),
                                         chosen=response_text(originals[i]["chosen"]),
                                         rejected=response_text(originals[i]["rejected"]),
                                         distance=float(inputs.distances[i]))
                       for i in active if inputs.labels[i] == "low" and i not in refinements]
            for result in inputs.generate_map(inputs.refiner.refine, pending):
                refinements[result.index] = result

    def base_text(i: int, side: str) -> str:
        result = refinements.get(i)
        if result is not None and result.accepted:
            return result.chosen if side == "chosen" else result.rejected
        return response_text(originals[i][side])

    # generate (step 6): n_i+ chosen and n_i- rejected paraphrases per tuple, prompts when asked.
    with _timed(timings, "paraphrase"):
        requests: list[tuple[str, int]] = []
        for i in active:
            requests.append((base_text(i, "chosen"), int(allocation.n_chosen[i])))
            requests.append((base_text(i, "rejected"), int(allocation.n_rejected[i])))
            if inputs.paraphrase_prompts:
                prompt = originals[i]["prompt"]
                requests.append((response_text(prompt) if prompt else "",
                                 min(PROMPT_VARIANTS, int(budgets[i])) if prompt else 0))
        variants = _paraphrase(inputs, requests)
        per_tuple = 3 if inputs.paraphrase_prompts else 2
        tuples: dict[int, _Tuple] = {}
        for position, i in enumerate(active):
            block = variants[position * per_tuple : (position + 1) * per_tuple]
            refined = refinements.get(i)
            refined_pair = (refined is not None and refined.accepted
                            and pair_key(base_text(i, "chosen"), base_text(i, "rejected")) not in used[i])
            tuples[i] = _Tuple(
                chosen=_distinct([base_text(i, "chosen"), *block[0]]),
                rejected=_distinct([base_text(i, "rejected"), *block[1]]),
                prompts=[originals[i]["prompt"]] + ([with_response_text(originals[i]["prompt"], text)
                                                     for text in block[2]] if inputs.paraphrase_prompts else []),
                granted=int(budgets[i]), refined_pair=refined_pair)
        _top_up(inputs, tuples, used)

    # sample (step 6): b_i pairs per tuple that the training data does not hold yet; move what cannot be filled.
    with _timed(timings, "sample"):
        moved_out, moved_in = _move_budget(inputs.round_index, allocation, tuples, used)
        rows: list[dict[str, Any]] = []
        for i, item in tuples.items():
            rng = np.random.default_rng([inputs.seed, inputs.round_index, i])
            rows.extend(_sample_tuple(inputs, i, item, used[i], rng))
        for row in rows:
            used[row["source_index"]].add(pair_key(response_text(row["chosen"]), response_text(row["rejected"])))

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
            "budget_moved_out": moved_out.get(i, 0),
            "budget_moved_in": moved_in.get(i, 0),
            "pairs_added": int(added[i]),
            "semantic_distance": None if inputs.distances is None else float(inputs.distances[i]),
            "semantic_label": None if inputs.labels is None else inputs.labels[i],
            "refined": None if result is None else bool(result.accepted),
        })
    summary = RoundSummary(
        round=inputs.round_index,
        num_original_pairs=n,
        margin=margin_statistics(allocation.margins),
        allocation_entropy=allocation_entropy(allocation.probs),
        allocation_entropy_uniform=float(np.log(n)) if n else 0.0,
        budget=budget,
        synthetic_pairs_added=len(rows),
        pairs_short_of_budget=budget - len(rows),
        budget_moved=sum(moved_out.values()),
        tuples_short_of_budget=len(moved_out),
        tuples_given_moved_budget=len(moved_in),
        tuples_augmented=len(active),
        operations=dict(sorted(_count(row["operation"] for row in rows).items())),
    )
    return RoundResult(round=inputs.round_index, allocation=allocation, allocation_rows=allocation_rows,
                       synthetic_rows=rows, summary=summary, timings=timings)


def _distinct(texts: list[str]) -> list[str]:
    """Drops repeated texts (a paraphrase equal to the base or to another variant would duplicate pairs)."""
    seen: set[str] = set()
    return [t for t in texts if not (t in seen or seen.add(t))]


def _paraphrase(inputs: RoundInputs, requests: Sequence[tuple[str, int]]) -> list[list[str]]:
    """Paraphrases (text, n) requests; each distinct request is generated once, sharded by `generate_map`."""
    unique = sorted({(text, n) for text, n in requests if n > 0}, key=lambda r: (r[1], r[0]))

    def generate(shard: list[tuple[str, int]]) -> list[list[str]]:
        return paraphrase_requests(inputs.paraphraser, shard)

    answers = dict(zip(unique, inputs.generate_map(generate, unique)))
    return [answers.get((text, n), []) if n > 0 else [] for text, n in requests]


def _top_up(inputs: RoundInputs, tuples: dict[int, _Tuple], used: dict[int, set[str]]) -> None:
    """Asks for more variants of a tuple whose pool (minus pairs already trained on) cannot fill its budget.

    More variants are asked of the side that has more (a very short answer may have no paraphrase at all); each
    extra variant on one side adds (other side's variants + 1) candidates. What still cannot be filled is moved.
    """
    requests, targets = [], []
    for i, item in tuples.items():
        deficit = item.granted - item.capacity(used[i])
        if deficit <= 0:
            continue
        have_c, have_r = len(item.chosen) - 1, len(item.rejected) - 1
        side, have, other = ("chosen", have_c, have_r) if have_c >= have_r else ("rejected", have_r, have_c)
        requests.append((getattr(item, side)[0], have + math.ceil(deficit / (other + 1))))
        targets.append((i, side))
    for (i, side), texts in zip(targets, _paraphrase(inputs, requests)):
        variants = getattr(tuples[i], side)
        variants[:] = _distinct([*variants, *texts])


def _move_budget(round_index: int, allocation: Allocation, tuples: dict[int, _Tuple],
                 used: dict[int, set[str]]) -> tuple[dict[int, int], dict[int, int]]:
    """Caps each tuple at its capacity and gives the excess to tuples with spare candidates, highest q first."""
    moved_out: dict[int, int] = {}
    moved_in: dict[int, int] = {}
    capacity = {i: item.capacity(used[i]) for i, item in tuples.items()}
    for i, item in tuples.items():
        if item.granted > capacity[i]:
            moved_out[i] = item.granted - capacity[i]
            item.granted = capacity[i]
    deficit = sum(moved_out.values())
    if deficit:
        logger.warning("Round %d: %d pairs could not be drawn from their tuples' pools (too few new variants); "
                       "moving them to tuples with spare candidates.", round_index, deficit)
        for i in sorted(tuples, key=lambda i: (-allocation.probs[i], i)):
            extra = min(deficit, capacity[i] - tuples[i].granted)
            if extra > 0:
                tuples[i].granted += extra
                moved_in[i] = extra
                deficit -= extra
            if not deficit:
                break
    return moved_out, moved_in


def _sample_tuple(inputs: RoundInputs, i: int, item: _Tuple, used: set[str], rng: np.random.Generator):
    """Rows for tuple i: the refined pair first (when new), then pool cells never trained on, seeded."""
    original = inputs.originals[i]
    refined = inputs.refinements.get(i)
    prefix = f"refine_{refined.rewritten}+" if refined is not None and refined.accepted else ""
    cells: list[tuple[int, int] | None] = []
    want = item.granted
    if item.refined_pair and want > 0:
        cells.append(None)  # the refined pair itself, (0, 0) after the rewrite
        want -= 1
    excluded = item.excluded(used)
    num_c, num_r = len(item.chosen) - 1, len(item.rejected) - 1
    drawn = [cell for cell in sample_pairs(num_c, num_r, min(want + len(excluded), pool_size(num_c, num_r)), rng)
             if cell not in excluded]
    if len(drawn) > want:  # a uniform subset of a uniform sample is uniform
        drawn = [drawn[k] for k in sorted(rng.choice(len(drawn), size=want, replace=False))]
    cells.extend(drawn)
    rows = []
    for cell in cells:
        if cell is None:
            c = r = 0
            operation = "refined"
        else:
            c, r = cell
            operation = prefix + operation_for(c, r)
        prompt_index = int(rng.integers(len(item.prompts)))
        if prompt_index:
            operation += "+prompt"
        rows.append({
            "prompt": item.prompts[prompt_index],
            "chosen": with_response_text(original["chosen"], item.chosen[c]),
            "rejected": with_response_text(original["rejected"], item.rejected[r]),
            "source_index": i,
            "round": inputs.round_index,
            "operation": operation,
            "backend": inputs.paraphraser.name,
        })
    return rows


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return counts
