"""How sharp MARS's allocation is on real round-1 margins, for several tau / margin scalings / caps.

Reads the margins a real run scored at a round (`mars/round_<t>/allocation.jsonl` of any MARS, uniform or AdaBoost
cell: every strategy scores the same margins on the same seed) and allocates the run's budget with
`trl_mars.mars.allocation.allocate` under each setting, without training anything. Per setting: the entropy of q against
ln N (uniform), the largest budget, how many tuples get nothing, and the share of the budget that goes to
mis-ranked pairs (margin < 0) and to the lowest-margin tenth. When the allocation is nearly uniform, MARS and
uniform augmentation add the same kind of pairs and cannot differ by more than noise.

    python benchmarks/bench_allocation_sharpness.py \
        outputs/compare-cpu-local/cells/hh_rlhf_harmless_dev/mars/seed_1/mars/round_1/allocation.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from trl_mars.mars.allocation import allocate, allocation_entropy

SETTINGS = [  # (label, tau, scale, max_share)
    ("paper: tau 0.5, raw margins", 0.5, "none", None),
    ("tau 2", 2.0, "none", None),
    ("tau 5", 5.0, "none", None),
    ("tau 0.5, std-scaled", 0.5, "std", None),
    ("tau 1, std-scaled", 1.0, "std", None),
    ("tau 2, std-scaled", 2.0, "std", None),
    ("tau 2, std-scaled, cap 4x uniform", 2.0, "std", 4.0),
]


def sharpness(margins: np.ndarray, budget: int, tau: float, scale: str, max_share: float | None) -> dict:
    allocation = allocate(margins, total=budget, tau=tau, scale=scale, max_share=max_share)
    budgets = np.asarray(allocation.budgets)
    low_tenth = margins <= np.quantile(margins, 0.1)
    return {"entropy": allocation_entropy(allocation.probs), "max_budget": int(budgets.max()),
            "tuples_without_budget": int((budgets == 0).sum()),
            "share_misranked": float(budgets[margins < 0].sum() / budget),
            "share_lowest_tenth": float(budgets[low_tenth].sum() / budget)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("allocation", nargs="+", help="allocation.jsonl files (one table each)")
    parser.add_argument("--budget-ratio", type=float, default=1.0, help="synthetic pairs per original pair")
    args = parser.parse_args()
    for path in args.allocation:
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
        margins = np.array([row["margin"] for row in rows], dtype=np.float64)
        budget = int(round(args.budget_ratio * margins.size))
        print(f"\n{path}: N={margins.size}, budget {budget}, margins mean {margins.mean():+.3f}, sd "
              f"{margins.std():.3f}, {100 * (margins < 0).mean():.0f}% mis-ranked; ln N = {np.log(margins.size):.3f}\n")
        print("| setting | entropy of q | largest b_i | tuples with b_i = 0 | budget to mis-ranked | "
              "budget to lowest-margin 10% |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(f"| uniform | {np.log(margins.size):.3f} | {int(np.ceil(budget / margins.size))} | "
              f"{max(0, margins.size - budget)} | {100 * (margins < 0).mean():.0f}% | 10% |")
        for label, tau, scale, cap in SETTINGS:
            s = sharpness(margins, budget, tau, scale, cap)
            print(f"| {label} | {s['entropy']:.3f} | {s['max_budget']} | {s['tuples_without_budget']} | "
                  f"{100 * s['share_misranked']:.0f}% | {100 * s['share_lowest_tenth']:.0f}% |")


if __name__ == "__main__":
    main()
