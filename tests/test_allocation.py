"""Tests for trl_mars.mars.allocation: hand-computed examples, validation, and property tests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from trl_mars.mars.allocation import (
    Allocation,
    adaboost_weights,
    allocate,
    allocation_entropy,
    allocation_probabilities,
    cap_probabilities,
    integer_budgets,
    margin_statistics,
    split_budget,
    total_budget,
    uniform_budgets,
)

FAST = settings(max_examples=150, deadline=None)

margin_lists = st.lists(
    st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False), min_size=1, max_size=40
)
taus = st.floats(min_value=1e-3, max_value=5.0)
totals = st.integers(min_value=0, max_value=20_000)


@st.composite
def prob_vectors(draw):
    # Arbitrary non-negative weights (some exactly 0, some repeated) normalised to sum 1.
    w = draw(
        st.lists(
            st.one_of(st.just(0.0), st.just(1.0), st.floats(min_value=0, max_value=1e6)), min_size=1, max_size=40
        )
    )
    w = np.asarray(w, dtype=np.float64)
    if w.sum() == 0:
        w[0] = 1.0
    return w / w.sum()


# ------------------------------------------------------------------------------------------------------------------
# hand-computed examples
# ------------------------------------------------------------------------------------------------------------------


def test_softmax_two_pairs_by_hand():
    # tau = 0.5, margins [0, 2 ln 3]: exp(-0.5 * 0) = 1, exp(-0.5 * 2 ln 3) = exp(-ln 3) = 1/3.
    # Sum = 4/3, so q = [1 / (4/3), (1/3) / (4/3)] = [3/4, 1/4].
    q = allocation_probabilities([0.0, 2 * math.log(3)], tau=0.5)
    np.testing.assert_allclose(q, [0.75, 0.25], rtol=1e-12)


def test_largest_remainder_by_hand():
    # total 10, q = [3/4, 1/4]: exact shares [7.5, 2.5], floors [7, 2] (sum 9), 1 unit left.
    # Fractional parts tie (0.5, 0.5); the tie goes to the larger q (index 0) -> [8, 2].
    b = integer_budgets([0.75, 0.25], 10)
    assert b.tolist() == [8, 2] and b.dtype == np.int64
    # Same numbers reached from margins through `allocate`.
    alloc = allocate([0.0, 2 * math.log(3)], total=10, tau=0.5)
    assert alloc.budgets.tolist() == [8, 2]
    # split of 8 -> (4, 4), of 2 -> (1, 1)
    assert alloc.n_chosen.tolist() == [4, 1] and alloc.n_rejected.tolist() == [4, 1]

    # q = [0.5, 0.3, 0.2], total 7: shares [3.5, 2.1, 1.4], floors [3, 2, 1] (sum 6), 1 left;
    # largest fractional part is 0.5 (index 0) -> [4, 2, 1].
    assert integer_budgets([0.5, 0.3, 0.2], 7).tolist() == [4, 2, 1]

    # q = [0.25] * 4, total 6: shares 1.5 each, floors 1 (sum 4), 2 left; everything ties, so the lowest
    # indices win -> [2, 2, 1, 1].
    assert integer_budgets([0.25] * 4, 6).tolist() == [2, 2, 1, 1]


def test_signed_vs_absolute_by_hand():
    # margins [-2, 0, 2], tau 0.5. Signed: weights [e^1, e^0, e^-1] -> the mis-ranked pair (-2) gets the most.
    e = math.e
    q = allocation_probabilities([-2.0, 0.0, 2.0], tau=0.5, mode="signed")
    np.testing.assert_allclose(q, np.array([e, 1.0, 1 / e]) / (e + 1 + 1 / e), rtol=1e-12)
    # Absolute: weights [e^-1, 1, e^-1] -> the pair with margin 0 gets the most, +-2 tie.
    q = allocation_probabilities([-2.0, 0.0, 2.0], tau=0.5, mode="absolute")
    np.testing.assert_allclose(q, np.array([1 / e, 1.0, 1 / e]) / (1 + 2 / e), rtol=1e-12)


def test_split_budget_by_hand():
    # floor(7/2) = 3 chosen, 7 - 3 = 4 rejected; 1 -> (0, 1); 0 -> (0, 0).
    assert split_budget(7) == (3, 4)
    assert split_budget(1) == (0, 1)
    assert split_budget(0) == (0, 0)
    nc, nr = split_budget(np.array([0, 1, 2, 7, 10]))
    assert nc.tolist() == [0, 0, 1, 3, 5] and nr.tolist() == [0, 1, 1, 4, 5]


def test_uniform_budgets_by_hand():
    # 10 over 4: 10 // 4 = 2 each, 10 % 4 = 2 leftover units to indices 0 and 1.
    assert uniform_budgets(4, 10).tolist() == [3, 3, 2, 2]
    assert uniform_budgets(3, 0).tolist() == [0, 0, 0]
    assert uniform_budgets(2, 1).tolist() == [1, 0]


def test_total_budget_by_hand():
    assert total_budget(1000, 5.0) == 5000  # paper: 5000 per 1000 tuples
    assert total_budget(3, 0.5) == 2  # 1.5 -> 2 (half up)
    assert total_budget(1, 2.5) == 3  # 2.5 -> 3 (half up, not banker's 2)
    assert total_budget(10, 0.15) == 2  # 1.5 in decimal -> 2
    assert total_budget(7, 0.0) == 0
    assert total_budget(0, 5) == 0
    assert total_budget(3, 0.4) == 1  # 1.2 -> 1


def test_entropy_by_hand():
    assert allocation_entropy([0.25] * 4) == pytest.approx(math.log(4))
    assert allocation_entropy([1.0, 0.0]) == 0.0
    # [3/4, 1/4]: -(0.75 ln 0.75 + 0.25 ln 0.25)
    assert allocation_entropy([0.75, 0.25]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_margin_statistics_by_hand():
    # [-1, 1, 3]: mean 1, population variance (4 + 0 + 4) / 3 = 8/3, snr = 1 / sqrt(8/3), 1 of 3 negative.
    s = margin_statistics([-1.0, 1.0, 3.0])
    assert s["mean"] == pytest.approx(1.0)
    assert s["std"] == pytest.approx(math.sqrt(8 / 3))
    assert s["snr"] == pytest.approx(1 / math.sqrt(8 / 3))
    assert s["fraction_negative"] == pytest.approx(1 / 3)
    assert (s["min"], s["max"], s["n"]) == (-1.0, 3.0, 3)
    json.dumps(s)  # plain Python types only
    assert all(type(v) in (float, int) for v in s.values())


def test_margin_statistics_constant_margins_have_no_snr():
    s = margin_statistics([0.1, 0.1, 0.1])  # np.std would give ~1e-17 here
    assert s["std"] == 0.0 and s["snr"] is None
    json.dumps(s)


def test_adaboost_weights_by_hand():
    # beta 1, margins [0, ln 3]: raw weights [1, 1/3], mean 2/3 -> normalised to mean 1: [1.5, 0.5].
    w = adaboost_weights([0.0, math.log(3)], beta=1.0)
    np.testing.assert_allclose(w, [1.5, 0.5], rtol=1e-12)
    np.testing.assert_array_equal(adaboost_weights([3.0, -2.0, 7.0], beta=0.0), [1.0, 1.0, 1.0])
    w = adaboost_weights([-1e4, 0.0, 1e4], beta=2.0)  # stable at extreme margins
    assert np.all(np.isfinite(w)) and w.mean() == pytest.approx(1.0)


def test_allocate_strategies():
    margins = [-3.0, 0.0, 1.0, 10.0]
    mars = allocate(margins, total=20, tau=0.5, strategy="mars")
    nosem = allocate(margins, total=20, tau=0.5, strategy="mars_nosem")
    uni = allocate(margins, total=21, tau=0.5, strategy="uniform")
    assert isinstance(mars, Allocation)
    np.testing.assert_array_equal(mars.budgets, nosem.budgets)
    assert mars.total == 20 and mars.budgets[0] == mars.budgets.max()
    np.testing.assert_array_equal(mars.n_chosen + mars.n_rejected, mars.budgets)
    np.testing.assert_array_equal(uni.probs, [0.25] * 4)
    assert uni.budgets.tolist() == [6, 5, 5, 5]  # 21 = 4 * 5 + 1, the extra unit to index 0
    np.testing.assert_array_equal(uni.margins, margins)
    multi = allocate(margins, total=20, method="multinomial", rng=np.random.default_rng(0))
    assert multi.total == 20


# ------------------------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_margin_names_index(bad):
    with pytest.raises(ValueError, match="index 2"):
        allocation_probabilities([0.0, 1.0, bad, 3.0], tau=0.5)
    with pytest.raises(ValueError, match="index 2"):
        margin_statistics([0.0, 1.0, bad])


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau"):
        allocation_probabilities([0.0, 1.0], tau=tau)


def test_other_validation():
    with pytest.raises(ValueError, match="empty"):
        allocation_probabilities([], tau=0.5)
    with pytest.raises(ValueError, match="1-D"):
        allocation_probabilities([[0.0, 1.0]], tau=0.5)
    with pytest.raises(ValueError, match="mode"):
        allocation_probabilities([0.0], tau=0.5, mode="relative")
    with pytest.raises(ValueError, match="method"):
        integer_budgets([1.0], 3, method="round")
    with pytest.raises(TypeError, match="Generator"):
        integer_budgets([1.0], 3, method="multinomial")
    with pytest.raises(ValueError, match=">= 0"):
        integer_budgets([1.0], -1)
    with pytest.raises(TypeError):
        integer_budgets([1.0], 2.5)
    with pytest.raises(ValueError, match="sum to 1"):
        integer_budgets([0.5, 0.6], 3)
    with pytest.raises(ValueError, match="index 1"):
        integer_budgets([1.5, -0.5], 3)
    with pytest.raises(ValueError):
        split_budget([3, -1])
    with pytest.raises(ValueError):
        uniform_budgets(0, 5)
    with pytest.raises(ValueError):
        total_budget(10, -1.0)
    with pytest.raises(ValueError, match="strategy"):
        allocate([0.0], total=1, strategy="adaboost")


# ------------------------------------------------------------------------------------------------------------------
# properties
# ------------------------------------------------------------------------------------------------------------------


@FAST
@given(prob_vectors(), totals, st.integers(0, 2**32 - 1))
def test_budgets_sum_exactly(q, total, seed):
    b = integer_budgets(q, total)
    assert b.dtype == np.int64 and b.sum() == total and np.all(b >= 0)
    # Hamilton: every budget is the floor or the ceiling of its exact share.
    exact = total * q
    assert np.all(b >= np.floor(exact)) and np.all(b <= np.floor(exact) + 1)
    bm = integer_budgets(q, total, method="multinomial", rng=np.random.default_rng(seed))
    assert bm.sum() == total and np.all(bm >= 0)
    assert np.all(bm[q == 0] == 0)
    # Same seed, same draw.
    np.testing.assert_array_equal(bm, integer_budgets(q, total, method="multinomial", rng=np.random.default_rng(seed)))


@FAST
@given(prob_vectors(), totals)
def test_largest_remainder_monotone_in_probability(q, total):
    b = integer_budgets(q, total)
    order = np.argsort(q, kind="stable")
    # Along increasing q, budgets never decrease wherever q strictly increases.
    for lo, hi in zip(order[:-1], order[1:]):
        if q[hi] > q[lo]:
            assert b[hi] >= b[lo]


@FAST
@given(margin_lists, taus, totals, st.sampled_from(["signed", "absolute"]))
def test_higher_margin_never_gets_more(margins, tau, total, mode):
    alloc = allocate(margins, total=total, tau=tau, mode=mode)
    assert alloc.budgets.sum() == total
    x = np.asarray(margins) if mode == "signed" else np.abs(margins)
    i, j = np.meshgrid(np.arange(len(x)), np.arange(len(x)), indexing="ij")
    higher = x[i] > x[j]
    # Strict: a higher allocation score (margin, or |margin|) never gets a larger budget, even when q ties in floats.
    assert np.all(alloc.budgets[i][higher] <= alloc.budgets[j][higher])
    assert np.all(alloc.probs[i][higher] <= alloc.probs[j][higher])


@FAST
@given(margin_lists, st.integers(0, 5000))
def test_tiny_tau_is_uniform(margins, total):
    n = len(margins)
    q = allocation_probabilities(margins, tau=1e-9)
    np.testing.assert_allclose(q, np.full(n, 1 / n), rtol=1e-6)
    b = allocate(margins, total=total, tau=1e-9).budgets
    assert b.sum() == total and b.max() - b.min() <= 1


@FAST
@given(margin_lists, taus)
def test_absolute_mode_symmetric_in_sign(margins, tau):
    m = np.asarray(margins)
    signs = np.where(np.arange(m.size) % 2 == 0, 1.0, -1.0)  # flip every other sign too
    q = allocation_probabilities(m, tau, mode="absolute")
    np.testing.assert_array_equal(q, allocation_probabilities(-m, tau, mode="absolute"))
    np.testing.assert_array_equal(q, allocation_probabilities(m * signs, tau, mode="absolute"))


@FAST
@given(
    st.lists(st.floats(min_value=-1e300, max_value=1e300, allow_nan=False), min_size=1, max_size=30),
    st.floats(min_value=1e-6, max_value=1e3),
    st.sampled_from(["signed", "absolute"]),
)
def test_probabilities_finite_at_extreme_margins(margins, tau, mode):
    q = allocation_probabilities(margins, tau, mode=mode)
    assert np.all(np.isfinite(q)) and np.all(q >= 0)
    assert q.sum() == pytest.approx(1.0, abs=1e-12)
    assert allocate(margins, total=1000, tau=tau, mode=mode).budgets.sum() == 1000


def test_extreme_margins_concrete():
    # tau 0.5 * 1e4 = 5000: exp(5000) overflows a naive softmax; stable version puts all mass on -1e4.
    q = allocation_probabilities([-1e4, 0.0, 1e4], tau=0.5)
    np.testing.assert_allclose(q, [1.0, 0.0, 0.0], atol=1e-300)
    q = allocation_probabilities([1e4, 1e4], tau=0.5)
    np.testing.assert_array_equal(q, [0.5, 0.5])
    q = allocation_probabilities([-1e308, 1e308], tau=2.0)  # the difference overflows to inf: weight 0, no NaN
    np.testing.assert_array_equal(q, [1.0, 0.0])


@FAST
@given(st.integers(1, 200), totals)
def test_uniform_budgets_property(n, total):
    b = uniform_budgets(n, total)
    assert b.sum() == total and b.max() - b.min() <= 1
    assert np.all(np.diff(b) <= 0)  # extras at the lowest indices


@FAST
@given(prob_vectors())
def test_entropy_bounds(q):
    h = allocation_entropy(q)
    assert -1e-12 <= h <= math.log(len(q)) + 1e-9


@FAST
@given(st.integers(0, 10_000))
def test_split_budget_property(b):
    nc, nr = split_budget(b)
    assert nc + nr == b and 0 <= nr - nc <= 1


# ------------------------------------------------------------- margin scale and budget cap (our additions)


def test_cap_probabilities_hand_computed():
    # cap = 1.5 / 3 = 0.5: the first tuple gives up 0.2, shared 2:1 by the others.
    q = cap_probabilities([0.7, 0.2, 0.1], 1.5)
    np.testing.assert_allclose(q, [0.5, 0.2 + 0.2 * 2 / 3, 0.1 + 0.2 / 3])


def test_cap_probabilities_water_fills_until_nothing_is_over():
    # After the first pass the second tuple would be over the cap too: both end at the cap.
    q = cap_probabilities([0.6, 0.3, 0.05, 0.05], 1.2)  # cap 0.3
    np.testing.assert_allclose(q, [0.3, 0.3, 0.2, 0.2])


def test_cap_probabilities_off_and_bad_values():
    np.testing.assert_allclose(cap_probabilities([0.7, 0.3], None), [0.7, 0.3])
    with pytest.raises(ValueError, match="max_share"):
        cap_probabilities([0.7, 0.3], 0.5)


@given(
    st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=40),
    st.floats(1.0, 10.0),
)
def test_cap_probabilities_properties(margins, share):
    q = allocation_probabilities(margins, 0.5)
    capped = cap_probabilities(q, share)
    assert capped.sum() == pytest.approx(1.0)
    assert capped.max() <= share / len(margins) + 1e-9
    # order is preserved: a tuple that had more probability never ends with less
    order = np.argsort(q, kind="stable")
    assert np.all(np.diff(capped[order]) >= -1e-12)


def test_std_scale_hand_computed():
    margins = np.array([-2.0, 0.0, 2.0])
    x = margins / margins.std()  # std = sqrt(8/3)
    expected = np.exp(-0.5 * x) / np.exp(-0.5 * x).sum()
    np.testing.assert_allclose(allocation_probabilities(margins, 0.5, scale="std"), expected)
    # absolute mode keeps 0 as the decision boundary (no centring): the pair nearest 0 gets the most, not the
    # pair nearest the mean margin (index 1 here), as a z-score would make it.
    absolute = allocation_probabilities([0.1, 5.0, 6.0, 7.0], 0.5, mode="absolute", scale="std")
    assert int(np.argmax(absolute)) == 0


@given(st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=30), st.floats(0.01, 100.0))
@example(margins=[0.0, 1.1010403867087485e-157], factor=0.03125)  # tiny margins: the std underflowed
def test_std_scale_makes_tau_scale_free(margins, factor):
    m = np.array(margins)
    a = allocation_probabilities(m, 0.5, scale="std")
    b = allocation_probabilities(m * factor, 0.5, scale="std")
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_allocate_passes_scale_and_cap():
    out = allocate([-10.0, 0.0, 1.0, 2.0, 10.0], total=50, tau=0.5, max_share=2.0)
    assert out.total == 50
    assert out.budgets.max() <= 20  # 2x the uniform share of 10
    with pytest.raises(ValueError, match="scale"):
        allocate([0.0, 1.0], total=2, scale="zscore")
