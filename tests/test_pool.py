"""Tests for trl_mars.mars.pool: pool size, seeded sampling of candidate pairs, operation labels."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_mars.mars.allocation import split_budget
from trl_mars.mars.pool import operation_for, pool_size, sample_pairs

FAST = settings(max_examples=150, deadline=None)


def test_pool_size_by_hand():
    # b = 7 -> (n+, n-) = (3, 4): (3 + 1)(4 + 1) - 1 = 20 - 1 = 19 >= 7.
    assert split_budget(7) == (3, 4)
    assert pool_size(3, 4) == 19
    assert pool_size(0, 0) == 0  # only the original pair: nothing to sample
    assert pool_size(0, 1) == 1  # b = 1: (0, 1) only
    assert pool_size(1, 1) == 3  # (0, 1), (1, 0), (1, 1)
    with pytest.raises(ValueError):
        pool_size(-1, 2)


@given(st.integers(0, 100_000))
def test_pool_covers_budget(b):
    # (n+ + 1)(n- + 1) - 1 = n+ n- + b >= b.
    nc, nr = split_budget(b)
    assert pool_size(nc, nr) == nc * nr + b >= b


def test_sample_pairs_by_hand():
    # One paraphrase each side: the pool is exactly {(0, 1), (1, 0), (1, 1)}, returned sorted.
    assert sample_pairs(1, 1, 3, np.random.default_rng(0)) == [(0, 1), (1, 0), (1, 1)]
    assert sample_pairs(1, 1, 10, 0) == [(0, 1), (1, 0), (1, 1)]  # budget > pool: the whole pool (shortfall)
    assert sample_pairs(0, 0, 5, 0) == []
    assert sample_pairs(3, 4, 0, 0) == []
    assert sample_pairs(2, 0, 2, 0) == [(1, 0), (2, 0)]


@FAST
@given(st.integers(0, 30), st.integers(0, 30), st.integers(0, 100), st.integers(0, 2**32 - 1))
def test_sample_pairs_properties(nc, nr, budget, seed):
    pairs = sample_pairs(nc, nr, budget, np.random.default_rng(seed))
    assert len(pairs) == min(budget, pool_size(nc, nr))
    assert len(set(pairs)) == len(pairs)
    assert (0, 0) not in pairs
    assert all(0 <= c <= nc and 0 <= r <= nr for c, r in pairs)
    assert pairs == sorted(pairs)
    assert pairs == sample_pairs(nc, nr, budget, np.random.default_rng(seed))  # reproducible
    assert pairs == sample_pairs(nc, nr, budget, seed)  # int seed == default_rng(seed)
    for c, r in pairs:
        assert operation_for(c, r) in {"paraphrase_chosen", "paraphrase_rejected", "paraphrase_both"}


@FAST
@given(st.integers(0, 60), st.integers(0, 2**32 - 1))
def test_sample_pairs_with_split_budget_is_never_short(b, seed):
    nc, nr = split_budget(b)
    assert len(sample_pairs(nc, nr, b, seed)) == b


def test_sample_pairs_huge_pool_is_fast():
    # b = 5000 -> (2500, 2500): 2501 * 2501 - 1 = 6,255,000 candidates; only 5000 indices are drawn.
    t0 = time.perf_counter()
    pairs = sample_pairs(2500, 2500, 5000, np.random.default_rng(1))
    assert time.perf_counter() - t0 < 2.0
    assert len(pairs) == len(set(pairs)) == 5000 and (0, 0) not in pairs
    assert all(0 <= c <= 2500 and 0 <= r <= 2500 for c, r in pairs)


def test_different_seeds_differ():
    assert sample_pairs(50, 50, 20, 1) != sample_pairs(50, 50, 20, 2)


def test_operation_for():
    assert operation_for(2, 0) == "paraphrase_chosen"
    assert operation_for(0, 3) == "paraphrase_rejected"
    assert operation_for(1, 1) == "paraphrase_both"
    with pytest.raises(ValueError):
        operation_for(0, 0)
    with pytest.raises(ValueError):
        operation_for(-1, 1)


def test_sample_pairs_validation():
    with pytest.raises(TypeError):
        sample_pairs(2, 2, 2, None)
    with pytest.raises(ValueError):
        sample_pairs(2, 2, -1, 0)
    with pytest.raises(TypeError):
        sample_pairs(2.0, 2, 1, 0)
