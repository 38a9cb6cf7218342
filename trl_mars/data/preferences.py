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
# Pre-tokenised columns TRL reads: the current names, and the deprecated ones it renames (with a FutureWarning).
TOKENIZED_COLUMNS = ("chosen_ids", "rejected_ids")
LEGACY_TOKENIZED_COLUMNS = ("chosen_input_ids", "rejected_input_ids")
# Frequent names for the same thing in other datasets, so the error can say which column to rename.
_COLUMN_ALIASES = {
    "chosen": ("preferred", "response_chosen", "chosen_response", "winner", "good", "positive", "accepted"),
    "rejected": ("dispreferred", "response_rejected", "rejected_response", "loser", "bad", "negative"),
    "prompt": ("question", "instruction", "query", "input", "context", "history"),
}
EMBEDDED_DATASET = "embedded"
_RESOURCES = Path(__file__).resolve().parent.parent / "resources"


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
        if not isinstance(message, dict) or "role" not in message or (
                "content" not in message and not message.get("tool_calls")):
            raise PreferenceDataError(
                f"message {turn} is {type(message).__name__} {str(message)[:60]!r}, not a dict with 'role' and "
                "'content' (or 'tool_calls').", dataset=dataset, row=row, column=column,
                fix="use the conversational format [{'role': 'user', 'content': '...'}, ...].")
        content = message.get("content")
        if message.get("tool_calls") and (content is None or content == ""):
            continue  # an assistant turn that only calls tools (TRL's tool-calling format)
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
    tokenized = set(TOKENIZED_COLUMNS) <= columns or set(LEGACY_TOKENIZED_COLUMNS) <= columns
    if not require_text and tokenized:
        return
    if len(dataset) == 0:
        raise PreferenceDataError("the dataset has no rows.", dataset=name,
                                  fix="check the split name and any filtering applied before training.")
    for required in ("chosen", "rejected"):
        if required not in columns:
            aliases = [alias for alias in _COLUMN_ALIASES[required] if alias in columns]
            fix = (f"rename it: `dataset.rename_column('{aliases[0]}', '{required}')`." if aliases
                   else f"provide a '{required}' column (standard text or a list of chat messages).")
            message = f"missing column '{required}' (columns: {sorted(columns)})."
            if tokenized:
                message = (f"the dataset is pre-tokenised (columns: {sorted(columns)}) and has no '{required}' text "
                           "column, which MARS rounds need: they paraphrase text.")
                fix = ("pass the text dataset (prompt/chosen/rejected), not a tokenised one: MARS paraphrases text. "
                       "Pre-tokenised data trains with `mars_strategy='none'`.")
            raise PreferenceDataError(message, dataset=name, column=required, fix=fix)
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
    message = value[-1]
    content = message.get("content")
    if content is None or content == "":  # a turn that only calls tools: its calls are the text
        return _tool_calls_text(message.get("tool_calls"))
    return content if isinstance(content, str) else " ".join(
        block.get("text", "") for block in content if isinstance(block, dict))


def _tool_calls_text(tool_calls: list | None) -> str:
    calls = []
    for call in tool_calls or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, sort_keys=True)
        calls.append(f"{function.get('name')}({arguments})")
    return "; ".join(calls)


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

_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def render_messages(messages: list[dict]) -> str:
    """Chat turns as plain text, one "Role: content" block per turn separated by blank lines.

    Our choice for tokenizers without a chat template: it reads like the HH-RLHF dialogues ("Human: ... Assistant:
    ..."), so an encoder sees the same shape of text whether a dataset was conversational or not.
    """
    return "\n\n".join(f"{_ROLE_NAMES.get(m['role'], str(m['role']).capitalize())}: {response_text([m])}"
                        for m in messages)


def render_conversation_example(example: dict[str, Any]) -> dict[str, Any]:
    """An explicit-prompt conversational example as standard text: the prompt turns, then each side's turns."""
    prompt = example.get("prompt") or []
    out = {**example, "prompt": (render_messages(prompt) + "\n\n") if prompt else ""}
    for side in ("chosen", "rejected"):
        out[side] = render_messages(example[side])
    return out


def tokenize_pair(example: dict[str, Any], tokenizer) -> dict[str, list[int]]:
    """Tokenises one explicit-prompt example like `trl.RewardTrainer` does, plus encoders without an EOS token.

    With an EOS token (decoders, or `eos_token` set in the config) the prompt and response are concatenated and EOS
    appended, exactly as TRL does. Without one (BERT, MiniLM, DeBERTa), which TRL cannot handle, prompt and
    response are encoded as a sentence pair: `[CLS] prompt [SEP] response [SEP]`.

    Conversational examples go through the tokenizer's chat template. A tokenizer without one (most encoders,
    where TRL raises) gets the turns rendered as text instead (`render_conversation_example`), the same way for
    training, synthetic pairs and evaluation.
    """
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    if is_conversational(example) and getattr(tokenizer, "chat_template", None) is None:
        example = render_conversation_example(example)
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

# Seed of every data-selection step (train subset, eval hold-out). Deliberately not the training seed: runs that
# compare strategies or training seeds must see the same pairs, so the data never moves with `--seed`.
DATA_SEED = 42
PKU_PREFERENCES = {"better": "better_response_id", "safer": "safer_response_id"}


def embedded_dataset_files() -> dict[str, str]:
    """Paths of the small preference set that ships inside `trl_mars` (offline demo and tests)."""
    return {
        "train": str(_RESOURCES / "tiny_preferences_train.jsonl"),
        "test": str(_RESOURCES / "tiny_preferences_test.jsonl"),
    }


def adapt_pku_saferlhf(dataset: Dataset, preference: str = "better") -> Dataset:
    """PKU-SafeRLHF rows -> prompt/chosen/rejected.

    Each row has two responses to one prompt (`response_0`, `response_1`) and two human judgements:
    `better_response_id` (more helpful) and `safer_response_id` (more harmless). `preference="better"` (default,
    the paper does not say which it used) takes the more helpful one as chosen, `"safer"` the more harmless one.
    Other columns are dropped.
    """
    if preference not in PKU_PREFERENCES:
        raise ValueError(f"PKU-SafeRLHF preference {preference!r} is not one of {list(PKU_PREFERENCES)}.")
    key = PKU_PREFERENCES[preference]
    for column in ("prompt", "response_0", "response_1", key):
        if column not in dataset.column_names:
            raise PreferenceDataError(f"missing column '{column}' of the PKU-SafeRLHF format.", dataset="PKU-SafeRLHF",
                                      column=column, fix="load PKU-Alignment/PKU-SafeRLHF unchanged.")
    for row, value in enumerate(column_values(dataset, key)):
        if value not in (0, 1):
            raise PreferenceDataError(f"'{key}' is {value!r}, not 0 or 1.", dataset="PKU-SafeRLHF", row=row,
                                      column=key, fix="drop the row.")

    def convert(example):
        best = int(example[key])
        return {"prompt": example["prompt"], "chosen": example[f"response_{best}"],
                "rejected": example[f"response_{1 - best}"]}

    return dataset.map(convert, remove_columns=dataset.column_names, desc=f"PKU-SafeRLHF ({preference} response)")


def adapt_columns(dataset: Dataset, *, pku_preference: str = "better") -> Dataset:
    """Recognises known dataset layouts and converts them to prompt/chosen/rejected; others pass unchanged.

    - Anthropic/hh-rlhf (`chosen`/`rejected` whole dialogues, implicit prompt) and trl-lib/ultrafeedback_binarized
      (`chosen`/`rejected` message lists, implicit prompt) are already in TRL's format: unchanged (extra columns such
      as `score_chosen` are ignored by the trainer).
    - PKU-Alignment/PKU-SafeRLHF (`response_0`/`response_1` + `better_response_id`/`safer_response_id`):
      converted by `adapt_pku_saferlhf`, choosing by `pku_preference`.
    """
    columns = set(dataset.column_names)
    if {"response_0", "response_1", "better_response_id"} <= columns and "chosen" not in columns:
        return adapt_pku_saferlhf(dataset, pku_preference)
    return dataset


def take_subset(dataset: Dataset, max_samples: int | None, seed: int = DATA_SEED) -> Dataset:
    """A seeded random subset of `max_samples` rows (all rows when None or larger than the dataset)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def split_holdout(dataset: Dataset, eval_fraction: float, *, seed: int = DATA_SEED,
                  group_by: str | None = None) -> tuple[Dataset, Dataset]:
    """(train, eval): a seeded share of rows held out, or of groups when `group_by` names a column.

    With `group_by` (e.g. `prompt_id` for data with several pairs per prompt) every group lands wholly on one side,
    so no prompt is seen in training and scored in evaluation; the eval share is then `eval_fraction` of the groups.
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    if group_by is None:
        parts = dataset.train_test_split(test_size=eval_fraction, seed=seed)
        return parts["train"], parts["test"]
    if group_by not in dataset.column_names:
        raise PreferenceDataError(f"no column '{group_by}' to group the hold-out by (columns: "
                                  f"{sorted(dataset.column_names)}).", dataset="train", column=group_by,
                                  fix="name an existing column, or split by rows (no group_by).")
    keys = column_values(dataset, group_by)
    groups = sorted(set(keys), key=str)
    if len(groups) < 2:
        raise ValueError(f"column '{group_by}' has {len(groups)} distinct value(s): nothing to split by.")
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(groups))
    num_eval = min(len(groups) - 1, max(1, round(eval_fraction * len(groups))))
    held_out = {groups[i] for i in order[:num_eval]}
    train_rows = [i for i, key in enumerate(keys) if key not in held_out]
    eval_rows = [i for i, key in enumerate(keys) if key in held_out]
    return dataset.select(train_rows), dataset.select(eval_rows)


def fold_splits(dataset: Dataset, folds: int, *, seed: int = DATA_SEED,
                group_by: str | None = None) -> list[tuple[Dataset, Dataset]]:
    """k-fold cross-validation: `folds` (train, held-out) splits in which every row is held out exactly once.

    Rows (or, with `group_by`, whole groups, so no prompt is both trained on and scored) are shuffled with `seed`
    and cut into `folds` parts whose sizes differ by at most one; each split keeps the dataset's row order.
    """
    import numpy as np

    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}.")
    if group_by is not None and group_by not in dataset.column_names:
        raise PreferenceDataError(f"no column '{group_by}' to group the folds by (columns: "
                                  f"{sorted(dataset.column_names)}).", dataset="train", column=group_by,
                                  fix="name an existing column, or split by rows (no group_by).")
    keys = column_values(dataset, group_by) if group_by is not None else list(range(len(dataset)))
    groups = sorted(set(keys), key=str) if group_by is not None else keys
    if len(groups) < folds:
        unit = f"groups of '{group_by}'" if group_by is not None else "rows"
        raise ValueError(f"{folds} folds need at least {folds} {unit}; the dataset has {len(groups)}.")
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = {groups[i]: f for f, part in enumerate(np.array_split(order, folds)) for i in part}
    splits = []
    for f in range(folds):
        held_out = [i for i, key in enumerate(keys) if fold_of[key] == f]
        trained = [i for i, key in enumerate(keys) if fold_of[key] != f]
        splits.append((dataset.select(trained), dataset.select(held_out)))
    return splits


def _check_local_path(dataset_name: str) -> None:
    """A missing local file fails here, not as a confusing Hub lookup of a path."""
    if dataset_name.endswith((".json", ".jsonl")) and not os.path.isfile(dataset_name):
        raise FileNotFoundError(f"dataset file {dataset_name!r} does not exist (resolved from {os.getcwd()}). "
                                "Fix the path; relative paths are taken from the current directory.")


def load_data_source(
    name: str,
    *,
    dataset_config: str | None = None,
    split: str | None = None,
    shipped_files: dict[str, dict[str, str]] | None = None,
    fields: str = "prompt/chosen/rejected fields",
) -> Dataset | DatasetDict:
    """The data a `--dataset_name` names, for every loader of preference pairs or prompts: 'embedded' (the
    preference set that ships with trl_mars), a local .json/.jsonl file, or a local directory or Hub dataset id
    (`datasets.load_dataset`).

    Returns the DatasetDict of all splits, or the Dataset of `split` when one is named. A local file has no splits
    of its own: it is returned whole, as the split `split` (default 'train'). `shipped_files` adds or overrides
    shipped sets by name ({name: {split: file}}); `fields` says, in the error about a local file's extension, what
    its rows need.
    """
    _check_local_path(name)
    shipped = {EMBEDDED_DATASET: embedded_dataset_files(), **(shipped_files or {})}
    if name in shipped:
        files = shipped[name]
        if split is None:
            return load_dataset("json", data_files=files)
        if split not in files:
            raise ValueError(f"--dataset_name {name}: split {split!r} does not exist. Fix: use one of "
                             f"{', '.join(files)} (--dataset_train_split).")
        return load_dataset("json", data_files={split: files[split]})[split]
    if os.path.isfile(name):
        if not name.endswith((".json", ".jsonl")):
            raise ValueError(f"--dataset_name {name!r}: local files must be .json or .jsonl with {fields}.")
        splits = load_dataset("json", data_files={split or "train": name})
        return splits[split] if split is not None else splits
    return load_dataset(name, name=dataset_config, split=split)


def load_preference_splits(
    dataset_name: str,
    *,
    dataset_config: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
    eval_fraction: float = 0.1,
    seed: int = DATA_SEED,
    max_train_samples: int | None = None,
    group_by: str | None = None,
    pku_preference: str = "better",
) -> tuple[Dataset, Dataset | None]:
    """Loads (train, eval) from the embedded set, a local JSON/JSONL file or directory, or a Hub dataset id.

    The eval split is the dataset's `test_split` when it exists, else a seeded `eval_fraction` held out of train
    (none when `eval_fraction` is 0), by rows or by the `group_by` column. The hold-out is taken first, so the eval
    pairs never depend on `max_train_samples`, which then takes a seeded subset of the rest (the paper uses 1k-pair
    subsets). `seed` is a data seed (default `DATA_SEED`): keep it fixed across runs you compare.
    """
    splits = load_data_source(dataset_name, dataset_config=dataset_config)
    if train_split not in splits:
        raise ValueError(f"--dataset_name {dataset_name!r} has splits {list(splits)}, not {train_split!r}. "
                         "Set --dataset_train_split.")
    train = adapt_columns(splits[train_split], pku_preference=pku_preference)
    evaluation = adapt_columns(splits[test_split], pku_preference=pku_preference) if test_split in splits else None
    if evaluation is None and eval_fraction > 0:
        train, evaluation = split_holdout(train, eval_fraction, seed=seed, group_by=group_by)
    train = take_subset(train, max_train_samples, seed)
    return train, evaluation


def load_evaluation_dataset(dataset_name: str, *, split: str | None = None, dataset_config: str | None = None,
                            pku_preference: str = "better") -> Dataset:
    """One split for evaluation: a split of the embedded set, a local .json/.jsonl file (all rows), or a Hub dataset.

    `allenai/reward-bench` defaults to its "filtered" split (prompt, chosen, rejected, subset, ...); other datasets
    to "test". A local file in RewardBench's format (with a `subset` column) is scored per subset too.
    """
    if split is None:
        split = "filtered" if dataset_name == "allenai/reward-bench" else "test"
    dataset = load_data_source(dataset_name, dataset_config=dataset_config, split=split,
                               fields="prompt/chosen/rejected fields (and optionally subset)")
    return adapt_columns(dataset, pku_preference=pku_preference)
