"""The embedded offline preference set: loadable, well-formed, split by prompt, and reproducible from its generator."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_dataset

# Same folder as Path(trl_mars.__file__).parent / "resources", found without importing trl_mars (whose import pulls
# in trl and takes seconds), so this module stays fast on its own.
RESOURCES = Path(importlib.util.find_spec("trl_mars").origin).parent / "resources"
GENERATOR = Path(__file__).resolve().parent.parent / "scripts" / "make_embedded_data.py"
FILES = {"train": RESOURCES / "tiny_preferences_train.jsonl", "test": RESOURCES / "tiny_preferences_test.jsonl"}
FIELDS = ["id", "category", "prompt", "chosen", "rejected"]
CATEGORIES = {"helpful_vs_unhelpful", "correct_vs_subtle_error", "safe_refusal_vs_harmful", "complete_vs_truncated",
              "polite_vs_rude", "helpful_vs_overrefusal"}


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def splits():
    return load_dataset("json", data_files={name: str(path) for name, path in FILES.items()})


def test_files_load_with_datasets(splits):
    assert set(splits) == {"train", "test"}
    assert 250 <= len(splits["train"]) <= 400
    assert 80 <= len(splits["test"]) <= 130
    for split in splits.values():
        assert split.column_names == FIELDS


@pytest.mark.parametrize("name", sorted(FILES))
def test_rows_are_well_formed(name):
    rows = read_rows(FILES[name])
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    for index, row in enumerate(rows, start=1):
        assert list(row) == FIELDS
        assert all(isinstance(row[key], str) for key in FIELDS)
        assert row["id"] == f"tiny-{name}-{index:04d}"
        assert row["category"] in CATEGORIES
        for key in ("prompt", "chosen", "rejected"):
            assert row[key].strip(), (key, row["id"])
        assert row["chosen"] != row["rejected"], row["id"]
        assert len(row["chosen"].split()) >= 8 and len(row["rejected"].split()) >= 8, row["id"]
    assert set(Counter(row["category"] for row in rows)) == CATEGORIES
    prompts = [row["prompt"] for row in rows]
    assert len(set(prompts)) == len(prompts)


def test_no_prompt_shared_between_splits():
    train = {row["prompt"] for row in read_rows(FILES["train"])}
    test = {row["prompt"] for row in read_rows(FILES["test"])}
    assert not train & test


def test_length_does_not_decide_the_preference():
    rows = read_rows(FILES["train"]) + read_rows(FILES["test"])
    share = sum(len(row["chosen"]) > len(row["rejected"]) for row in rows) / len(rows)
    assert 0.35 <= share <= 0.65


def test_files_are_small():
    assert sum(path.stat().st_size for path in FILES.values()) < 300_000


def test_generator_is_deterministic(tmp_path):
    subprocess.run([sys.executable, str(GENERATOR), "--output-dir", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    for path in FILES.values():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), f"{path.name} differs from the generator"
