"""Preference data: loading, validation, normalisation and tokenisation.

Everything here runs before any model is loaded, so bad input fails in seconds with an error that names the row,
the column and the fix. Accepted formats are the ones `trl.RewardTrainer` accepts: standard or conversational,
implicit prompt (shared prefix inside `chosen`/`rejected`) or explicit `prompt` column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset
from trl.data_utils import is_conversational, maybe_extract_prompt

TEXT_COLUMNS = ("prompt", "chosen", "rejected")
# Frequent names for the same thing in other datasets, so the error can say which column to rename.
_COLUMN_ALIASES = {
    "chosen": ("preferred", "response_chosen", "chosen_response", "winner", "good", "positive", "accepted"),
    "rejected": ("dispreferred", "response_rejected", "rejected_response", "loser", "bad", "negative"),
    "prompt": ("question", "instruction", "query", "input", "context", "history"),
}
EMBEDDED_DATASET = "embedded"
_RESOURCES = Path(__file__).resolve().parent / "resources"


def column_values(dataset: Dataset, name: str) -> list:
    """A column as a plain list (datasets >= 4 returns a lazy `Column` whose per-row indexing is slow)."""
    values = dataset[name]
    return values if isinstance(values, list) else values[:]


class PreferenceDataError(ValueError):
    """A dataset problem, with where it is and how to fix it."""

    def __init__(self, message: str, *, dataset: str, row: int | None = None, column: str | None = None, fix: str):
        where = f"{dataset} dataset"
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column '{column}'"
        super().__init__(f"{where}: {message} Fix: {fix}")
        self.row, self.column = row, column


def _check_messages(value: list, *, dataset: str, row: int, column: str) -> None:
    if not value:
        raise PreferenceDataError("the message list is empty.", dataset=dataset, row=row, column=column,
                                  fix="give at least one {'role': ..., 'content': ...} message or drop the row.")
    for turn, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise PreferenceDataError(
                f"message {turn} is {type(message).__name__} {str(message)[:60]!r}, not a dict with 'role' and "
                "'content'.", dataset=dataset, row=row, column=column,
                fix="use the conversational format [{'role': 'user', 'content': '...'}, ...].")
        content = message["content"]
        if isinstance(content, list):  # multimodal content blocks: keep as TRL does, check there is something
            if not content:
                raise PreferenceDataError(f"message {turn} has empty content.", dataset=dataset, row=row,
                                          column=column, fix="fill in the content or drop the row.")
        elif not isinstance(content, str) or not content.strip():
            raise PreferenceDataError(
                f"message {turn} has {'empty' if isinstance(content, str) else type(content).__name__} content.",
                dataset=dataset, row=row, column=column, fix="fill in the text or drop the row.")


def _check_value(value: Any, *, dataset: str, row: int, column: str) -> None:
    if value is None:
        raise PreferenceDataError("the value is missing (None).", dataset=dataset, row=row, column=column,
                                  fix="fill it in or drop the row (e.g. `dataset.filter(...)`).")
    if isinstance(value, str):
        if not value.strip():
            raise PreferenceDataError("the text is empty.", dataset=dataset, row=row, column=column,
                                      fix="fill it in or drop the row.")
        return
    if isinstance(value, list):
        _check_messages(value, dataset=dataset, row=row, column=column)
        return
    raise PreferenceDataError(
        f"expected a string or a list of chat messages, got {type(value).__name__} ({str(value)[:60]!r}).",
        dataset=dataset, row=row, column=column,
        fix=f"convert the column to text, e.g. `dataset.map(lambda x: {{'{column}': str(x['{column}'])}})`.")


def validate_preference_dataset(dataset: Any, *, name: str = "train", require_text: bool = False) -> None:
    """Checks a preference dataset row by row; raises `PreferenceDataError` on the first problem.

    Already-tokenised datasets (`chosen_ids`/`rejected_ids`) pass unless `require_text`: MARS paraphrases text, so
    it needs the text columns.
    """
    if isinstance(dataset, DatasetDict):
        raise PreferenceDataError(f"got a DatasetDict with splits {list(dataset)}, not a single split.",
                                  dataset=name, fix="pass one split, e.g. `dataset['train']`.")
    if not isinstance(dataset, Dataset):
        if require_text:
            raise PreferenceDataError(
                f"MARS needs a map-style `datasets.Dataset` (it scores and extends every pair each round), got "
                f"{type(dataset).__name__}.", dataset=name,
                fix="load without `streaming=True`, or use mars_strategy='none' for streaming data.")
        return  # IterableDataset: nothing can be checked without consuming it; TRL handles it as before
    columns = set(dataset.column_names)
    if not require_text and {"chosen_ids", "rejected_ids"} <= columns:
        return
    if len(dataset) == 0:
        raise PreferenceDataError("the dataset has no rows.", dataset=name,
                                  fix="check the split name and any filtering applied before training.")
    for required in ("chosen", "rejected"):
        if required not in columns:
            aliases = [alias for alias in _COLUMN_ALIASES[required] if alias in columns]
            fix = (f"rename it: `dataset.rename_column('{aliases[0]}', '{required}')`." if aliases
                   else f"provide a '{required}' column (standard text or a list of chat messages).")
            if {"chosen_ids", "rejected_ids"} <= columns:
                fix = "pass the text dataset (prompt/chosen/rejected), not a tokenised one: MARS paraphrases text."
            raise PreferenceDataError(f"missing column '{required}' (columns: {sorted(columns)}).",
                                      dataset=name, column=required, fix=fix)
    if "prompt" not in columns:
        misplaced = [alias for alias in _COLUMN_ALIASES["prompt"] if alias in columns]
        if misplaced:
            raise PreferenceDataError(
                f"no 'prompt' column, but a '{misplaced[0]}' column that looks like one.", dataset=name,
                column="prompt", fix=f"rename it: `dataset.rename_column('{misplaced[0]}', 'prompt')`, or drop it "
                "if the prompt is already inside 'chosen' and 'rejected'.")
    present = [column for column in TEXT_COLUMNS if column in columns]
    values = {column: column_values(dataset, column) for column in present}
    for row in range(len(dataset)):
        for column in present:
            _check_value(values[column][row], dataset=name, row=row, column=column)
        if values["chosen"][row] == values["rejected"][row]:
            raise PreferenceDataError("'chosen' is identical to 'rejected', so the pair carries no preference.",
                                      dataset=name, row=row, column="rejected",
                                      fix="drop the row (e.g. `dataset.filter(lambda x: x['chosen'] != x['rejected'])`).")
        kinds = {column: isinstance(values[column][row], list) for column in present if column != "prompt"}
        if kinds["chosen"] != kinds["rejected"]:
            raise PreferenceDataError("'chosen' and 'rejected' mix plain text and chat messages.", dataset=name,
                                      row=row, column="rejected", fix="use the same format for both columns.")


def to_explicit_prompt(dataset: Dataset) -> Dataset:
    """Returns the dataset with an explicit `prompt` column (TRL's shared-prefix extraction for implicit prompts)."""
    if "prompt" in dataset.column_names:
        first = dataset[0]
        if is_conversational({"chosen": first["chosen"]}) == is_conversational({"prompt": first["prompt"]}):
            return dataset
    return dataset.map(maybe_extract_prompt, desc="Extracting prompts")


# ----- text access for augmentation -----

def response_text(value: str | list[dict]) -> str:
    """The text a paraphraser should rewrite: the string, or the last message's content."""
    if isinstance(value, str):
        return value
    content = value[-1]["content"]
    return content if isinstance(content, str) else " ".join(
        block.get("text", "") for block in content if isinstance(block, dict))


def with_response_text(value: str | list[dict], text: str) -> str | list[dict]:
    """Puts rewritten `text` back in the original format (string, or the last message of a conversation)."""
    if isinstance(value, str):
        return text
    messages = [dict(message) for message in value]
    messages[-1]["content"] = text
    return messages


def prompt_text(value: str | list[dict]) -> str:
    """A readable rendering of the prompt for LLM back-ends (conversations become 'role: content' lines)."""
    if isinstance(value, str):
        return value
    return "\n".join(f"{message['role']}: {response_text([message])}" for message in value)


# ----- tokenisation -----

def tokenize_pair(example: dict[str, Any], tokenizer) -> dict[str, list[int]]:
    """Tokenises one explicit-prompt example like `trl.RewardTrainer` does, plus encoders without an EOS token.

    With an EOS token (decoders, or `eos_token` set in the config) the prompt and response are concatenated and EOS
    appended, exactly as TRL does. Without one (BERT, MiniLM, DeBERTa), which TRL cannot handle, prompt and
    response are encoded as a sentence pair: `[CLS] prompt [SEP] response [SEP]`.
    """
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    if is_conversational(example):
        kwargs = {"tools": tools, **(example.get("chat_template_kwargs") or {})}
        out = {}
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template(example["prompt"] + example[side], tokenize=True,
                                                return_dict=True, **kwargs)["input_ids"]
            out[f"{side}_ids"] = list(ids)
        return out
    prompt = example.get("prompt") or ""
    out = {}
    for side in ("chosen", "rejected"):
        response = example[side]
        if tokenizer.eos_token is not None:
            text = prompt + response
            if not text.endswith(tokenizer.eos_token):
                text += tokenizer.eos_token
            ids = tokenizer(text)["input_ids"]
        elif prompt:
            ids = tokenizer(prompt, response)["input_ids"]
        else:
            ids = tokenizer(response)["input_ids"]
        out[f"{side}_ids"] = list(ids)
    return out


def truncate_keep_end(ids: Sequence[int], max_length: int, special_ids: set[int]) -> list[int]:
    """Left-truncates to `max_length`, keeping a leading special token (BOS/CLS) and the end of the response.

    A reward model reads the response, and decoders score the last token, so the start of the prompt is what goes.
    """
    ids = list(ids)
    if len(ids) <= max_length:
        return ids
    head = ids[:1] if ids and ids[0] in special_ids else []
    return head + ids[len(ids) - (max_length - len(head)):]


# ----- loading -----

def embedded_dataset_files() -> dict[str, str]:
    """Paths of the small preference set that ships inside `trl_mars` (offline demo and tests)."""
    return {
        "train": str(_RESOURCES / "tiny_preferences_train.jsonl"),
        "test": str(_RESOURCES / "tiny_preferences_test.jsonl"),
    }


def _adapt_pku_saferlhf(dataset: Dataset, preference_key: str = "better_response_id") -> Dataset:
    """PKU-SafeRLHF rows (prompt, response_0, response_1, better_response_id) -> prompt/chosen/rejected."""

    def convert(example):
        best = int(example[preference_key])
        return {"prompt": example["prompt"], "chosen": example[f"response_{best}"],
                "rejected": example[f"response_{1 - best}"]}

    return dataset.map(convert, remove_columns=dataset.column_names, desc="Converting PKU-SafeRLHF")


def adapt_columns(dataset: Dataset) -> Dataset:
    """Recognises known dataset layouts and converts them to prompt/chosen/rejected; others pass unchanged."""
    columns = set(dataset.column_names)
    if {"response_0", "response_1", "better_response_id"} <= columns and "chosen" not in columns:
        return _adapt_pku_saferlhf(dataset)
    return dataset


def load_preference_splits(
    dataset_name: str,
    *,
    dataset_config: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    eval_fraction: float = 0.1,
    seed: int = 42,
    max_train_samples: int | None = None,
) -> tuple[Dataset, Dataset | None]:
    """Loads (train, eval) from the embedded set, a local JSON/JSONL file or directory, or a Hub dataset id.

    The eval split is the dataset's `test_split` when it exists, else a seeded `eval_fraction` held out of train
    (none when `eval_fraction` is 0). `max_train_samples` takes a seeded subset (the paper uses 1k-pair subsets).
    """
    if dataset_name == EMBEDDED_DATASET:
        splits = load_dataset("json", data_files=embedded_dataset_files())
    elif os.path.isfile(dataset_name):
        if not dataset_name.endswith((".json", ".jsonl")):
            raise ValueError(f"--dataset_name {dataset_name!r}: local files must be .json or .jsonl with "
                             "prompt/chosen/rejected fields.")
        splits = load_dataset("json", data_files={"train": dataset_name})
    else:
        splits = load_dataset(dataset_name, name=dataset_config)
    if train_split not in splits:
        raise ValueError(f"--dataset_name {dataset_name!r} has splits {list(splits)}, not {train_split!r}. "
                         "Set --dataset_train_split.")
    train = adapt_columns(splits[train_split])
    evaluation = adapt_columns(splits[test_split]) if test_split in splits else None
    if max_train_samples is not None and max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(max_train_samples))
    if evaluation is None and eval_fraction > 0:
        parts = train.train_test_split(test_size=eval_fraction, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    return train, evaluation
