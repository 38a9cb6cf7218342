"""Synthetic pairs of a finished comparison cell beside the originals they came from, for reading by hand.

Draws `--n` rows (seeded) from a cell's `mars/round_<t>/synthetic.jsonl`, finds the original pair of each through
its `source_index` (the grid's training split, rebuilt from the grid's YAML exactly as `recipes/compare.py` builds
it), and prints a markdown table: which side was rewritten, the original response, the synthetic one and their
cosine in the packaged MiniLM (the fidelity filter's measure). A response is cut to its last `--chars` characters.

    python benchmarks/sample_synthetic.py --config recipes/compare/grid_cpu_local.yaml \
        --cell outputs/compare-cpu-local/cells/hh_rlhf_harmless_dev/mars/seed_1 --n 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import yaml


def _end(text: str, chars: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= chars else "..." + text[-chars:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the grid's YAML (for the dataset split)")
    parser.add_argument("--cell", required=True, help="a finished cell folder (cells/<dataset>/<variant>/seed_<s>)")
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chars", type=int, default=160)
    parser.add_argument("--operation", default=None,
                        help="only rows whose `operation` starts with this (e.g. `refine` for the refiner's pairs)")
    args = parser.parse_args()

    from trl_mars.augment.embedding import SentenceTransformerEmbedder
    from trl_mars.cli.compare import CompareArguments, dataset_key, prepare_dataset
    from trl_mars.data.preferences import response_text, to_explicit_prompt
    from trl_mars.training.config import PACKAGED_MINILM

    grid = yaml.safe_load(Path(args.config).read_text(encoding="utf-8"))
    names = {f.name for f in dataclasses.fields(CompareArguments)}
    compare = CompareArguments(**{k: v for k, v in grid.items() if k in names})
    cell = Path(args.cell)
    key = cell.parents[1].name
    name = next(d for d in compare.datasets if dataset_key(d) == key)
    originals = to_explicit_prompt(prepare_dataset(name, compare).train)

    rows = [json.loads(line) for line in (cell / "mars" / f"round_{args.round}" / "synthetic.jsonl")
            .read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.operation:
        rows = [row for row in rows if row["operation"].startswith(args.operation)]
    picked = random.Random(args.seed).sample(rows, min(args.n, len(rows)))
    if picked and all(row["operation"] == "won" for row in picked):
        _print_west_of_n(picked, originals, cell, args)
        return
    sides = []
    for row in picked:
        original = originals[row["source_index"]]
        # The side whose text changed: a refined pair's operation does not name it ("refined").
        changed = [s for s in ("chosen", "rejected") if response_text(row[s]) != response_text(original[s])]
        side = changed[0] if len(changed) == 1 else ("chosen" if row["operation"].endswith("chosen") else "rejected")
        sides.append((row, side, response_text(original[side]), response_text(row[side])))
    embedder = SentenceTransformerEmbedder(PACKAGED_MINILM)
    vectors = embedder.encode([t for _, _, a, b in sides for t in (a, b)])
    print(f"{len(picked)} of {len(rows)} synthetic pairs of {cell} (round {args.round}), seed {args.seed}:\n")
    print("| tuple | side rewritten | original (end) | synthetic (end) | cosine |")
    print("| --- | --- | --- | --- | --- |")
    for k, (row, side, before, after) in enumerate(sides):
        cosine = float(vectors[2 * k] @ vectors[2 * k + 1])  # unit rows (the Embedder protocol): dot = cosine
        print(f"| {row['source_index']} | {side} | {_end(before, args.chars)} | {_end(after, args.chars)} | "
              f"{cosine:.2f} |")


def _print_west_of_n(picked, originals, cell, args) -> None:
    """West-of-N pairs replace both responses: the prompt, the best and worst scored candidates and their rewards."""
    from trl_mars.data.preferences import prompt_text, response_text

    print(f"{len(picked)} West-of-N pairs of {cell} (round {args.round}), seed {args.seed}:\n")
    print("| tuple | prompt (end) | best candidate, the new chosen (end) | worst candidate, the new rejected (end) | "
          "rewards |")
    print("| --- | --- | --- | --- | --- |")
    for row in picked:
        prompt = prompt_text(originals[row["source_index"]]["prompt"])
        best, worst = row["won_scores"]
        chosen, rejected = response_text(row["chosen"]), response_text(row["rejected"])
        print(f"| {row['source_index']} | {_end(prompt, args.chars // 2)} | {_end(chosen, args.chars)} | "
              f"{_end(rejected, args.chars)} | {best:+.2f} / {worst:+.2f} |")


if __name__ == "__main__":
    main()
