"""The candidate pair pool of one tuple (MARS step 6) and seeded sampling from it.

A tuple with chosen variants 0..C and rejected variants 0..R (index 0 is the original, or refined, text; k >= 1 is
the k-th paraphrase) yields every (c, r) combination except (0, 0), the original pair itself, which is already in
the data: (C + 1)(R + 1) - 1 candidates.

Why the pool always covers the budget: with n+ = floor(b/2) chosen and n- = b - n+ rejected paraphrases,
(n+ + 1)(n- + 1) - 1 = n+ * n- + n+ + n- = n+ * n- + b >= b, because n+ * n- >= 0 (equality iff b <= 1).
Only a back-end that returns fewer variants than asked can make the pool smaller than b; then `sample_pairs`
returns the whole pool and the caller reports the shortfall.
"""

from __future__ import annotations

import numpy as np

from .allocation import _as_count

__all__ = ["OPERATIONS", "operation_for", "pool_size", "sample_pairs"]

OPERATIONS = ("paraphrase_chosen", "paraphrase_rejected", "paraphrase_both")


def pool_size(n_chosen: int, n_rejected: int) -> int:
    """(n_chosen + 1)(n_rejected + 1) - 1: all (chosen variant, rejected variant) pairs minus the original pair."""
    return (_as_count(n_chosen, "n_chosen") + 1) * (_as_count(n_rejected, "n_rejected") + 1) - 1


def sample_pairs(
    num_chosen_variants: int,
    num_rejected_variants: int,
    budget: int,
    rng: np.random.Generator | int,
) -> list[tuple[int, int]]:
    """Sample min(budget, pool size) distinct (c, r) candidates without replacement, never (0, 0).

    c in 0..num_chosen_variants and r in 0..num_rejected_variants (0 = original/refined text, k >= 1 = the k-th
    paraphrase). `rng` is a `numpy.random.Generator` or an int seed. Indices are drawn in the flattened pool with
    `rng.choice(size, k, replace=False)` and decoded, so a 2501 x 2501 pool is never materialised. The result is
    sorted by (c, r), so it depends only on which candidates were drawn: same seed, same list.
    """
    c_max = _as_count(num_chosen_variants, "num_chosen_variants")
    r_max = _as_count(num_rejected_variants, "num_rejected_variants")
    budget = _as_count(budget, "budget")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        rng = np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"`rng` must be a numpy.random.Generator or an int seed, got {type(rng).__name__}.")
    size = (c_max + 1) * (r_max + 1) - 1
    k = min(budget, size)
    if k == 0:
        return []
    flat = np.sort(rng.choice(size, size=k, replace=False)) + 1  # +1 skips flat index 0, the pair (0, 0)
    cs, rs = np.divmod(flat, r_max + 1)  # row-major over the (C + 1) x (R + 1) grid: sorted flat == sorted (c, r)
    return [(int(c), int(r)) for c, r in zip(cs, rs)]


def operation_for(c: int, r: int) -> str:
    """Provenance label of candidate (c, r): which side(s) were paraphrased. (0, 0) is the original, not a candidate."""
    c = _as_count(c, "c")
    r = _as_count(r, "r")
    if c > 0 and r > 0:
        return "paraphrase_both"
    if c > 0:
        return "paraphrase_chosen"
    if r > 0:
        return "paraphrase_rejected"
    raise ValueError("(0, 0) is the original pair, not a synthetic candidate.")
