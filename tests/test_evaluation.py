"""Evaluation metrics against hand-computed values, and scoring a saved reward model as the trainer encodes it."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from trl_mars.eval.evaluation import (
    REWARDBENCH_SECTIONS,
    REWARDBENCH_WEIGHTS,
    evaluate_margins,
    majority_baseline,
    pairwise_metrics,
    rewardbench_sections,
)

# Nine pairs over six RewardBench subsets and one subset RewardBench does not have.
SUBSETS = ["alpacaeval-easy", "alpacaeval-easy", "mt-bench-easy", "xstest-should-respond", "xstest-should-respond",
           "donotanswer", "math-prm", "hep-python", "my-own-subset"]
MARGINS = [2.0, -1.0, 1.0, 3.0, 1.0, -2.0, 4.0, -1.0, 0.0]  # the last is a tie: counts as wrong


def test_pairwise_metrics_by_hand():
    report = pairwise_metrics(MARGINS)
    assert report["n"] == 9
    assert report["accuracy"] == pytest.approx(5 / 9)  # 2, 1, 3, 1, 4 are > 0; the tie is not
    mean = 7 / 9
    std = math.sqrt(sum((m - mean) ** 2 for m in MARGINS) / 9)  # population std
    assert report["margin_mean"] == pytest.approx(mean)
    assert report["margin_std"] == pytest.approx(std)
    assert report["snr"] == pytest.approx(mean / std)
    assert pairwise_metrics([1.5, 1.5])["snr"] is None  # no spread, no SNR
    with pytest.raises(ValueError, match="margin 1 is nan"):
        pairwise_metrics([1.0, float("nan")])


def test_rewardbench_sections_weighted_by_official_counts():
    report = evaluate_margins(MARGINS, SUBSETS)
    assert report["subsets"]["alpacaeval-easy"] == {"accuracy": 0.5, "n": 2, "margin_mean": 0.5}
    assert report["subsets"]["my-own-subset"]["accuracy"] == 0.0
    chat = Fraction(100 * 1, 2) + 28 * 1  # alpacaeval-easy 0.5 x 100, mt-bench-easy 1.0 x 28
    chat /= 100 + 28
    safety = Fraction(250 * 1 + 136 * 0, 250 + 136)
    reasoning = Fraction(984 * 1 + 164 * 0, 984 + 164)  # math-prm counted as 984 (it has 447 examples)
    assert reasoning == Fraction(6, 7)
    assert set(report["sections"]) == {"Chat", "Safety", "Reasoning"}  # no Chat Hard subset present
    assert report["sections"]["Chat"] == pytest.approx(float(chat))
    assert report["sections"]["Safety"] == pytest.approx(float(safety))
    assert report["sections"]["Reasoning"] == pytest.approx(float(reasoning))
    assert report["average"] == pytest.approx(float((chat + safety + reasoning) / 3))


def test_section_tables_cover_the_official_subsets():
    subsets = [name for names in REWARDBENCH_SECTIONS.values() for name in names]
    assert len(subsets) == len(set(subsets)) == 23 == len(REWARDBENCH_WEIGHTS)
    assert sum(REWARDBENCH_WEIGHTS[n] for n in REWARDBENCH_SECTIONS["Reasoning"] if n.startswith("hep-")) == 984
    sections, average = rewardbench_sections({"helpful_base": 0.9})
    assert sections == {} and average is None  # nothing from RewardBench: no sections, no average


def test_majority_baseline():
    train = ["gpt"] * 7 + ["tulu"] * 3
    baseline = majority_baseline(train, ["gpt", "tulu", "gpt", "gpt"])
    assert baseline == {"label": "gpt", "accuracy": 0.75, "n": 4}
    assert majority_baseline([], ["gpt"]) is None
