"""One round as a pure function of `RoundInputs`, with the real lexical back-end (no model, no Trainer)."""

from __future__ import annotations

from collections import Counter

import numpy as np
from conftest import OneVariantParaphraser, tiny_rows

from trl_mars.augment.base import RefinementResult
from trl_mars.augment.lexical import LexicalParaphraser
from trl_mars.mars.rounds import RoundInputs, pair_key, run_round


class SuffixRefiner:
    """Accepts a rewrite of the rejected response for every even tuple (a deterministic stand-in for the LLM)."""

    name = "suffix"

    def refine(self, requests):
        return [RefinementResult(index=r.index, chosen=r.chosen, rejected=r.rejected + " Whatever.",
                                 distance=r.distance, new_distance=r.distance + 0.1, accepted=r.index % 2 == 0,
                                 rewritten="rejected" if r.index % 2 == 0 else None, attempts=1, reason="test")
                for r in requests]


def inputs(round_index, **overrides) -> RoundInputs:
    originals = tiny_rows(8)
    kwargs = dict(round_index=round_index, originals=originals, margins=np.linspace(-1, 1, len(originals)),
                  paraphraser=LexicalParaphraser(seed=0), budget_ratio=3.0, seed=0)
    kwargs.update(overrides)
    return RoundInputs(**kwargs)


def keys(rows):
    return [(row["source_index"], pair_key(row["chosen"], row["rejected"])) for row in rows]


def test_rounds_never_repeat_a_pair_already_trained_on():
    used, refinements = {}, {}
    seen = {(i, pair_key(r["chosen"], r["rejected"])) for i, r in enumerate(tiny_rows(8))}
    for round_index in (1, 2, 3):
        result = run_round(inputs(round_index, used_pairs=used, refinements=refinements))
        new = keys(result.synthetic_rows)
        assert len(new) == len(set(new)) == result.summary.budget == 24
        assert not seen & set(new), f"round {round_index} repeated a pair"
        seen |= set(new)
        assert {k for i, s in used.items() for k in ((i, key) for key in s)} == seen


def test_a_refined_pair_is_added_with_operation_refined():
    labels = ["low"] * 8
    result = run_round(inputs(1, refiner=SuffixRefiner(), labels=labels, distances=np.full(8, 0.1)))
    rows = result.synthetic_rows
    refined = [row for row in rows if row["operation"] == "refined"]
    assert sorted(row["source_index"] for row in refined) == [0, 2, 4, 6]  # every accepted rewrite with budget
    for row in refined:
        source = tiny_rows(8)[row["source_index"]]
        assert row["chosen"] == source["chosen"] and row["rejected"] == source["rejected"] + " Whatever."
    others = Counter(row["operation"] for row in rows if row["source_index"] == 0 and row["operation"] != "refined")
    assert set(others) <= {"refine_rejected+paraphrase_chosen", "refine_rejected+paraphrase_rejected",
                           "refine_rejected+paraphrase_both"}
    assert result.summary.synthetic_pairs_added == 24


def test_budget_a_pool_cannot_fill_moves_and_the_evidence_says_where():
    # One variant per side: every pool holds 3 candidates; tuples given more budget shed it to the others.
    result = run_round(inputs(1, paraphraser=OneVariantParaphraser(), budget_ratio=2.0,
                              margins=np.linspace(-3, 3, 8)))
    rows = {row["index"]: row for row in result.allocation_rows}
    assert all(row["pairs_added"] <= 3 for row in rows.values())
    moved_out = sum(row["budget_moved_out"] for row in rows.values())
    moved_in = sum(row["budget_moved_in"] for row in rows.values())
    assert moved_out == result.summary.budget_moved > 0
    assert 0 < moved_in <= moved_out  # moved to tuples with spare candidates; the rest is reported short
    for row in rows.values():
        assert row["pairs_added"] == row["budget"] - row["budget_moved_out"] + row["budget_moved_in"]
    assert result.summary.synthetic_pairs_added == 16 - (moved_out - moved_in)
    assert result.summary.pairs_short_of_budget == moved_out - moved_in
    assert result.summary.tuples_short_of_budget == sum(1 for row in rows.values() if row["budget_moved_out"])

    # A second round: the 3 candidates per tuple are spent, the back-end has nothing new, so the round is short.
    used = {}
    run_round(inputs(1, paraphraser=OneVariantParaphraser(), budget_ratio=3.0, used_pairs=used))
    second = run_round(inputs(2, paraphraser=OneVariantParaphraser(), budget_ratio=3.0, used_pairs=used))
    assert second.summary.synthetic_pairs_added == 0 and second.summary.pairs_short_of_budget == 24


def test_generation_goes_through_the_map_once_per_distinct_request():
    calls = []

    def recording_map(fn, items):
        calls.append(list(items))
        return fn(items)

    result = run_round(inputs(1, generate_map=recording_map))
    requested = [item for call in calls for item in call]
    assert len(requested) == len(set(requested))  # each (text, n) generated once
    assert result.summary.synthetic_pairs_added == 24
