"""Margin-aware budget allocation (MARS steps 1-3): margins -> probabilities -> integer budgets.

Pure numpy, no torch, so it is cheap to import and easy to property-test. The pieces:

* `allocation_probabilities`: q_i = softmax(-tau * x_i) with x = margin ("signed", paper v2) or |margin|
  ("absolute", paper v1). q is the unique maximiser of -E_Q[x] - (1/tau) KL(Q || uniform), so tau -> 0 recovers
  uniform augmentation and a larger tau concentrates the budget on low-margin (or mis-ranked) pairs.
* `integer_budgets`: B * q turned into integers that sum to exactly B.
* `split_budget`: b_i -> (n_i+, n_i-) paraphrases of the chosen / rejected response (paper eq. 3).
* `uniform_budgets`, `adaboost_weights`: the baselines' counterparts.
* `allocate`: all of the above for one round, returned as an `Allocation`.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np

MARGIN_MODES = ("signed", "absolute")
MARGIN_SCALES = ("none", "std")
ROUNDING_METHODS = ("largest_remainder", "multinomial")
ALLOCATION_STRATEGIES = ("mars", "mars_nosem", "uniform")

__all__ = [
    "ALLOCATION_STRATEGIES",
    "MARGIN_MODES",
    "MARGIN_SCALES",
    "ROUNDING_METHODS",
    "Allocation",
    "adaboost_weights",
    "allocate",
    "allocation_entropy",
    "allocation_probabilities",
    "cap_probabilities",
    "integer_budgets",
    "margin_statistics",
    "split_budget",
    "total_budget",
    "uniform_budgets",
]


# ----------------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------------


def _as_margins(margins: Any, name: str = "margins") -> np.ndarray:
    """A finite, non-empty, 1-D float64 copy of `margins`; the error names the first bad index."""
    arr = np.array(margins, dtype=np.float64)  # copy: callers' arrays are never mutated or aliased
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D (one value per preference pair), got shape {arr.shape}.")
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty: there is nothing to allocate over.")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"`{name}` must be finite; index {i} is {arr[i]!r} ({bad.size} non-finite value(s) in total). "
            "A NaN/inf margin usually means the reward model diverged or a score overflowed."
        )
    return arr


def _as_probs(probs: Any) -> np.ndarray:
    """Validated probabilities, renormalised so float drift cannot break an exact integer sum later."""
    arr = np.array(probs, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`probs` must be a non-empty 1-D array, got shape {arr.shape}.")
    bad = np.flatnonzero(~np.isfinite(arr) | (arr < 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"`probs` must be finite and >= 0; index {i} is {arr[i]!r}.")
    s = float(arr.sum())
    if not abs(s - 1.0) <= 1e-6:
        raise ValueError(f"`probs` must sum to 1 (within 1e-6), got {s!r}.")
    return arr / s


def _as_count(value: Any, name: str) -> int:
    """A non-negative Python int; floats and bools are refused so a fractional budget never sneaks in."""
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int, got a bool.")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} {value!r}.") from None
    if out < 0:
        raise ValueError(f"`{name}` must be >= 0, got {out}.")
    return out


def _check_tau(tau: float, name: str = "tau", allow_zero: bool = False) -> float:
    try:
        t = float(tau)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a real number, got {tau!r}.") from None
    ok = math.isfinite(t) and (t >= 0 if allow_zero else t > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be finite and {bound}, got {tau!r}.")
    return t


def _softmax_neg(x: np.ndarray, tau: float) -> np.ndarray:
    """softmax(-tau * x) without overflow.

    Shifting by min(x) (the log-sum-exp trick) makes every exponent <= 0 with at least one exactly 0, so the
    denominator is >= 1 and nothing overflows; a difference that overflows to inf just gives a weight of 0.
    """
    with np.errstate(over="ignore"):
        z = -tau * (x - x.min())
    w = np.exp(z)
    return w / w.sum()


def _allocation_scores(margins: np.ndarray, mode: str, scale: str = "none") -> np.ndarray:
    """x_i fed to softmax(-tau * x): the margin (signed) or |margin| (absolute), optionally divided by std(margins).

    Dividing by the standard deviation (not centring: a shift changes nothing for "signed" and would move the
    decision boundary away from 0 for "absolute") makes tau mean the same whatever the margins' scale: a reward
    model that has memorised its training pairs has margins of +-10, and tau = 0.5 on those hands almost the whole
    budget to a handful of pairs.
    """
    if mode not in MARGIN_MODES:
        raise ValueError(f"`mode` must be one of {MARGIN_MODES}, got {mode!r}.")
    if scale not in MARGIN_SCALES:
        raise ValueError(f"`scale` must be one of {MARGIN_SCALES}, got {scale!r}.")
    if scale == "std":
        # Divide by the largest |margin| first: the std of tiny margins (1e-157) squares into subnormal floats and
        # loses digits, which made the result depend on the margins' scale. m / std(m) is unchanged by it.
        peak = float(np.abs(margins).max()) if margins.size else 0.0
        unit = margins / peak if peak > 0 else margins
        spread = float(unit.std())
        margins = unit / spread if spread > 0 else np.zeros_like(margins)
    return margins if mode == "signed" else np.abs(margins)


def cap_probabilities(probs: Any, max_share: float | None) -> np.ndarray:
    """Caps every q_i at `max_share / N` and hands the excess to the uncapped tuples in proportion to their q.

    `max_share` is a multiple of the uniform share 1/N (4.0: no tuple gets more than 4x what uniform gives it);
    None leaves q as it is. Water-filling: repeated until no tuple is over the cap, so the result is the closest
    distribution to q (in KL) with every entry <= cap; order is preserved (q_i >= q_j stays so). `max_share` must
    be >= 1, since a cap below the uniform share cannot sum to 1.
    """
    q = _as_probs(probs)
    if max_share is None:
        return q
    share = float(max_share)
    if not (math.isfinite(share) and share >= 1.0):
        raise ValueError(f"`max_share` must be >= 1 (a multiple of the uniform share 1/N) or None, got {max_share!r}.")
    cap = share / q.size
    capped = np.zeros(q.size, dtype=bool)
    for _ in range(q.size):
        over = (q > cap * (1 + 1e-12)) & ~capped
        if not over.any():
            break
        capped |= over
        free = ~capped
        mass_left = 1.0 - cap * capped.sum()
        q = np.where(capped, cap, q)
        if free.any() and q[free].sum() > 0:
            q[free] = q[free] * (mass_left / q[free].sum())
    return q / q.sum()


# ----------------------------------------------------------------------------------------------------------------
# allocation
# ----------------------------------------------------------------------------------------------------------------


def allocation_probabilities(
    margins: Any, tau: float, mode: str = "signed", scale: str = "none", max_share: float | None = None
) -> np.ndarray:
    """q_i = exp(-tau * x_i) / sum_j exp(-tau * x_j), computed stably (log-sum-exp).

    `mode="signed"` (paper v2) uses x = margin, so mis-ranked pairs (margin < 0) get the most budget;
    `mode="absolute"` (paper v1) uses x = |margin|, treating confidently wrong pairs like confidently right ones.
    `scale="std"` divides the margins by their standard deviation first; `max_share` caps any q_i at
    `max_share / N` (see `cap_probabilities`). Both default to off, which is the paper's rule.
    Margins of any magnitude (e.g. +-1e4 with tau=0.5) give finite probabilities summing to 1.
    """
    x = _allocation_scores(_as_margins(margins), mode, scale)
    return cap_probabilities(_softmax_neg(x, _check_tau(tau)), max_share)


def integer_budgets(
    probs: Any,
    total: int,
    method: str = "largest_remainder",
    rng: np.random.Generator | None = None,
    *,
    tiebreak: Any | None = None,
) -> np.ndarray:
    """Integer budgets b_i >= 0 with sum(b) == total exactly, from probabilities q (b_i ~ total * q_i).

    * ``"largest_remainder"`` (Hamilton's method, deterministic, the default): b_i = floor(total * q_i), then the
      ``total - sum(b)`` (< N) leftover units go one each to the largest fractional parts. Ties are broken by
      larger q, then by larger `tiebreak` (optional, e.g. -margin so the lower margin wins), then by lower index.
      Each b_i is floor or ceil of total * q_i, and it is monotone: q_i > q_j implies b_i >= b_j (equal floors
      mean a larger fractional part; a larger floor is already >= the other's ceiling).
    * ``"multinomial"``: ``rng.multinomial(total, q)`` with a `numpy.random.Generator` (required): unbiased,
      E[b_i] = total * q_i, but random and not monotone; reproducible for a seeded generator.

    `probs` must be non-negative and sum to 1 within 1e-6 (it is renormalised before use).
    """
    q = _as_probs(probs)
    total = _as_count(total, "total")
    n = q.size
    if method == "multinomial":
        if not isinstance(rng, np.random.Generator):
            raise TypeError(
                "`method='multinomial'` needs `rng`, a numpy.random.Generator (e.g. np.random.default_rng(seed)), "
                f"got {type(rng).__name__}."
            )
        return rng.multinomial(total, q).astype(np.int64)
    if method != "largest_remainder":
        raise ValueError(f"`method` must be one of {ROUNDING_METHODS}, got {method!r}.")

    if tiebreak is None:
        tb = np.zeros(n)
    else:
        tb = np.asarray(tiebreak, dtype=np.float64)
        if tb.shape != q.shape:
            raise ValueError(f"`tiebreak` must have shape {q.shape}, got {tb.shape}.")
    exact = total * q
    floors = np.floor(exact)
    frac = exact - floors  # exact in floating point, and monotone in `exact` among equal floors
    budgets = floors.astype(np.int64)
    # Priority: largest fractional part, then larger q, then larger tiebreak, then lower index (lexsort: last key
    # is the primary one; it is stable, so the index order survives as the final tie-breaker).
    order = np.lexsort((-tb, -q, -frac))
    remainder = total - int(budgets.sum())
    if remainder > 0:
        # Normally 0 <= remainder < n; full passes cover float pathologies with astronomically large totals.
        budgets += remainder // n
        budgets[order[: remainder % n]] += 1
    elif remainder < 0:  # only reachable through float rounding with totals near 2**52: take from the back
        for i in order[::-1]:
            if remainder == 0:
                break
            take = min(int(budgets[i]), -remainder)
            budgets[i] -= take
            remainder += take
    return budgets


def split_budget(budgets: Any) -> tuple[Any, Any]:
    """(n_chosen, n_rejected) = (floor(b / 2), b - floor(b / 2)) (paper eq. 3).

    The rejected side gets the odd unit, so a budget of 1 paraphrases the rejected response. Works element-wise
    on arrays (returns int64 arrays) and on a single int (returns ints).
    """
    b = np.asarray(budgets)
    if b.dtype.kind not in "iu" and b.size:
        raise TypeError(f"`budgets` must be integers, got dtype {b.dtype}.")
    b = b.astype(np.int64)
    if np.any(b < 0):
        raise ValueError("`budgets` must be >= 0.")
    n_chosen = b // 2
    n_rejected = b - n_chosen
    if b.ndim == 0:
        return int(n_chosen), int(n_rejected)
    return n_chosen, n_rejected


def uniform_budgets(n: int, total: int) -> np.ndarray:
    """The 'uniform' baseline: `total` spread as evenly as possible over `n` tuples, summing to `total`.

    Every tuple gets total // n; the total % n leftover units go to the lowest indices (0, 1, ...), so budgets
    differ by at most 1 and the result is deterministic.
    """
    n = _as_count(n, "n")
    total = _as_count(total, "total")
    if n == 0:
        raise ValueError("`n` must be >= 1.")
    budgets = np.full(n, total // n, dtype=np.int64)
    budgets[: total % n] += 1
    return budgets


def total_budget(num_pairs: int, ratio: float) -> int:
    """B = round(ratio * N), rounding halves up (2.5 -> 3).

    The product is taken in decimal on the ratio as written (str(0.15) == "0.15"), so 0.15 * 10 = 1.5 -> 2
    rather than falling to 1 because the binary float 0.15 is a hair below 0.15. Paper: ratio 5 (5000 per 1000).
    """
    n = _as_count(num_pairs, "num_pairs")
    r = _check_tau(ratio, "ratio", allow_zero=True)
    return int((Decimal(str(r)) * n).to_integral_value(rounding=ROUND_HALF_UP))


# ----------------------------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------------------------


def allocation_entropy(probs: Any) -> float:
    """Shannon entropy of q in nats (0 log 0 = 0): ln N for uniform, 0 when one tuple takes everything."""
    q = _as_probs(probs)
    nz = q[q > 0]
    return float(max(0.0, -np.sum(nz * np.log(nz))))


def margin_statistics(margins: Any) -> dict[str, Any]:
    """JSON-ready summary of margins: n, mean, std (population, ddof=0), snr = mean/std, fraction_negative, min, max.

    `snr` (the paper's margin signal-to-noise ratio) is None when all margins are equal (std == 0); constant
    margins get std exactly 0.0 rather than a float-noise value that would make the SNR explode.
    """
    m = _as_margins(margins)
    mean = float(m.mean())
    lo, hi = float(m.min()), float(m.max())
    std = 0.0 if lo == hi else float(m.std())
    return {
        "n": int(m.size),
        "mean": mean,
        "std": std,
        "snr": (mean / std) if std > 0 else None,
        "fraction_negative": float(np.mean(m < 0)),
        "min": lo,
        "max": hi,
    }


def adaboost_weights(margins: Any, beta: float) -> np.ndarray:
    """AdaBoost-style per-example loss weights: w_i proportional to exp(-beta * margin_i), normalised to mean 1.

    Equals N * softmax(-beta * margin), computed stably; beta = 0 gives all ones (plain training).
    """
    m = _as_margins(margins)
    return m.size * _softmax_neg(m, _check_tau(beta, "beta", allow_zero=True))


# ----------------------------------------------------------------------------------------------------------------
# one round
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Allocation:
    """The allocation of one round: per-tuple margins, probabilities, budgets and the chosen/rejected split."""

    margins: np.ndarray
    probs: np.ndarray
    budgets: np.ndarray
    n_chosen: np.ndarray
    n_rejected: np.ndarray

    @property
    def total(self) -> int:
        """Total synthetic-pair budget of the round (sum of `budgets`)."""
        return int(self.budgets.sum())


def allocate(
    margins: Any,
    *,
    total: int,
    tau: float = 0.5,
    mode: str = "signed",
    strategy: str = "mars",
    method: str = "largest_remainder",
    rng: np.random.Generator | None = None,
    scale: str = "none",
    max_share: float | None = None,
) -> Allocation:
    """Margins -> `Allocation` for one round.

    "mars" and "mars_nosem" share the softmax allocation (they differ only in the semantic refinement, elsewhere);
    with `method="largest_remainder"`, ties in q go to the lower allocation score (margin or |margin|), so a
    higher score never gets a larger budget. "uniform" ignores the margins (still validated and recorded):
    q = 1/N and `uniform_budgets`, whatever `tau`, `mode`, `method` say. `scale` and `max_share` are passed to
    `allocation_probabilities` (both off by default: the paper's rule).
    """
    if strategy not in ALLOCATION_STRATEGIES:
        raise ValueError(f"`strategy` must be one of {ALLOCATION_STRATEGIES}, got {strategy!r}.")
    m = _as_margins(margins)
    n = m.size
    if strategy == "uniform":
        probs = np.full(n, 1.0 / n)
        budgets = uniform_budgets(n, total)
    else:
        x = _allocation_scores(m, mode, scale)
        probs = cap_probabilities(_softmax_neg(x, _check_tau(tau)), max_share)
        budgets = integer_budgets(probs, total, method=method, rng=rng, tiebreak=-x)
    n_chosen, n_rejected = split_budget(budgets)
    return Allocation(margins=m, probs=probs, budgets=budgets, n_chosen=n_chosen, n_rejected=n_rejected)
