"""Writes the prompts the offline alignment recipe trains on and is evaluated on, from the embedded preference data.

- `trl_mars/resources/align_prompts_train.jsonl`: the 320 prompts of `tiny_preferences_train.jsonl` (the prompts the
  embedded reward model was trained on), what `recipes/smollm2-135m-instruct/rloo/config_offline.yaml` trains on.
- `trl_mars/resources/align_prompts_heldout.jsonl`: 64 of the 100 prompts of `tiny_preferences_test.jsonl`, stratified
  by category (largest remainder), for the before/after reward of `benchmarks/bench_align.py --evaluate`. The test
  split shares no prompt and no underlying question with train (see resources/README.md), so neither the reward model
  nor the policy ever trained on them.

Deterministic; the shipped files are exactly its output: `python scripts/make_align_prompts.py`.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "trl_mars" / "resources"
HELDOUT = 64


def read(name: str) -> list[dict]:
    with open(RESOURCES / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps({k: row[k] for k in ("id", "category", "prompt")}, ensure_ascii=False) + "\n")


def stratified(rows: list[dict], n: int) -> list[dict]:
    """The first rows of each category (file order), in numbers proportional to the category sizes, n in all."""
    by_category: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    quotas = {c: n * len(members) / len(rows) for c, members in by_category.items()}
    counts = {c: int(q) for c, q in quotas.items()}
    for c in sorted(quotas, key=lambda c: (-(quotas[c] - counts[c]), c))[: n - sum(counts.values())]:
        counts[c] += 1
    chosen = {row["id"] for c, members in by_category.items() for row in members[: counts[c]]}
    return [row for row in rows if row["id"] in chosen]


def main(output_dir: Path = RESOURCES) -> None:
    write(Path(output_dir) / "align_prompts_train.jsonl", read("tiny_preferences_train.jsonl"))
    write(Path(output_dir) / "align_prompts_heldout.jsonl", stratified(read("tiny_preferences_test.jsonl"), HELDOUT))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=RESOURCES)
    main(parser.parse_args().output_dir)
