"""Writes a tiny randomly initialised Llama chat policy (and its word-level tokenizer) for the offline demo.

    python scripts/make_tiny_policy.py outputs/tiny-llama-random [--shape tiny]

The vocabulary is built from the embedded preference set, so its prompts tokenise without unknown words.
"""

import argparse
import json

from trl_mars.data import embedded_dataset_files
from trl_mars.tiny_policy import LLAMA_SHAPES, save_random_llama

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--shape", default="tiny", choices=sorted(LLAMA_SHAPES))
    args = parser.parse_args()
    texts = []
    with open(embedded_dataset_files()["train"], encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.extend(row[k] for k in ("prompt", "chosen", "rejected"))
    print(save_random_llama(args.output_dir, texts + ["user assistant system :"], shape=args.shape))
