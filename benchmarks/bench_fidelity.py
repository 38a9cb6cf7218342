"""How faithful the local paraphraser is, and where the fidelity filter's thresholds should sit.

Paraphrases the final assistant turn of both sides of the first `--pairs` development pairs with the `local`
back-end (the same prompt, temperature, seed and cache namespace as a MARS round with the library defaults, so a
later round re-uses every answer), embeds each paraphrase and its source with the packaged MiniLM, and reports the
cosine distribution with examples from every band. The thresholds are read off the bands by hand: the lowest band
whose examples still restate the source, and the band above which they are copies.

    python benchmarks/bench_fidelity.py --data ../shared/data/hh_rlhf_harmless_dev.jsonl --pairs 60 \
        --cache-dir outputs/bench_cache --out benchmarks/results/fidelity
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--cache-dir", default="outputs/bench_cache")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="benchmarks/results/fidelity")
    args = parser.parse_args()

    from trl_mars.augment.cache import AugmentationCache
    from trl_mars.augment.embedding import SentenceTransformerEmbedder
    from trl_mars.augment.factory import build_local_engine
    from trl_mars.augment.text import TextParaphraser, clean_answer
    from trl_mars.training.config import (
        DEFAULT_MAX_PARAPHRASE_SIMILARITY,
        DEFAULT_MIN_PARAPHRASE_SIMILARITY,
        PACKAGED_MINILM,
        MarsRewardConfig,
    )

    rows = []
    with open(args.data, encoding="utf-8") as handle:
        for line in handle:
            rows.append(json.loads(line))
            if len(rows) >= args.pairs:
                break
    sources = []
    for row in rows:
        for side in ("chosen", "rejected"):
            sources.append(row[side].rsplit("\n\nAssistant:", 1)[-1].strip())
    sources = [s for s in dict.fromkeys(sources) if s]

    config = MarsRewardConfig(output_dir="/tmp/bench_fidelity", mars_paraphraser="local", seed=args.seed,
                              report_to=[])
    cache = AugmentationCache(args.cache_dir)
    engine = build_local_engine(config, None, cache)
    paraphraser = TextParaphraser(engine, temperature=config.mars_temperature,
                                  max_new_tokens=config.mars_max_new_tokens)
    start = time.perf_counter()
    raw = paraphraser.answers(sources, args.samples)
    seconds = time.perf_counter() - start
    embedder = SentenceTransformerEmbedder(PACKAGED_MINILM)
    records = []
    for source, answers in zip(sources, raw):
        for answer in answers:
            cleaned = clean_answer(answer)
            record = {"source": source, "raw": answer, "paraphrase": cleaned, "cosine": None}
            if cleaned:
                e = embedder.encode([source, cleaned])
                record["cosine"] = float(e[0] @ e[1])
            records.append(record)
    cosines = np.array([r["cosine"] for r in records if r["cosine"] is not None])
    bands = [(0.0, 0.4), (0.4, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 0.95), (0.95, 0.98),
             (0.98, 1.01)]
    os.makedirs(args.out, exist_ok=True)
    lines = [f"# Local paraphraser fidelity ({len(sources)} texts x {args.samples} samples)", "",
             f"generation: {seconds:.0f} s, {engine.stats()}", "",
             f"meta-only answers dropped by clean_answer: {sum(r['paraphrase'] is None for r in records)}", "",
             "| cosine band | paraphrases | share |", "|---|---|---|"]
    for low, high in bands:
        count = int(((cosines >= low) & (cosines < high)).sum())
        lines.append(f"| [{low:.2f}, {min(high, 1.0):.2f}) | {count} | {count / max(len(cosines), 1):.0%} |")
    low, high = DEFAULT_MIN_PARAPHRASE_SIMILARITY, DEFAULT_MAX_PARAPHRASE_SIMILARITY
    kept = int(((cosines >= low) & (cosines <= high)).sum())
    lines += ["", f"defaults [{low}, {high}] keep {kept} of {len(cosines)} ({kept / max(len(cosines), 1):.0%})", ""]
    rng = np.random.default_rng(0)
    for low_b, high_b in bands:
        members = [r for r in records if r["cosine"] is not None and low_b <= r["cosine"] < high_b]
        if not members:
            continue
        lines.append(f"## band [{low_b:.2f}, {min(high_b, 1.0):.2f})")
        for j in rng.permutation(len(members))[:3]:
            r = members[j]
            lines.append(f"- {r['cosine']:.2f} SOURCE: {r['source'][:200]!r}\n  PARAPHRASE: {r['paraphrase'][:200]!r}")
        lines.append("")
    with open(os.path.join(args.out, "fidelity.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "fidelity.jsonl"), "w", encoding="utf-8") as handle:
        for r in records:
            handle.write(json.dumps(r, ensure_ascii=False) + "\n")
    print("\n".join(lines[:20]))


if __name__ == "__main__":
    main()
