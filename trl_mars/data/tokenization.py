"""Tokenising a round's synthetic pairs: each distinct text once, in batches, with exactly the ids of `tokenize_pair`.

A tuple's synthetic pairs share one prompt and a few response variants, so tokenising every pair from scratch
(`tokenize_pair` per row) repeats most of the work. Here:

- Encoders without an EOS token (BERT, MiniLM, DeBERTa) encode a pair as a sentence pair, and a fast tokenizer
  tokenises the two sentences apart before adding its special tokens: so each distinct prompt and each distinct
  response is tokenised once (one batched call each, the Rust tokenizer's parallelism), and pairs are joined as
  `prefix + prompt + middle + response + suffix`, the tokenizer's own pair template read off one encoded pair.
- With an EOS token the text is `prompt + response + eos`, tokenised as one string. Byte-pair merges can cross the
  prompt/response boundary, so ids of the parts joined are not always the ids of the whole; exactness wins, and
  each distinct whole sequence is tokenised once instead (a tuple's pairs repeat each variant several times).
- Chat rows (message lists) go through `tokenize_pair`, once per distinct (prompt, response).

Every call checks its first pair against `tokenize_pair` and falls back to the per-text path on any difference,
so a tokenizer with an unusual template costs time, never correctness.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from .preferences import tokenize_pair

logger = logging.getLogger("trl_mars")
SIDES = ("chosen", "rejected")


def _pair_template(tokenizer) -> tuple[list[int], list[int], list[int]] | None:
    """(prefix, middle, suffix) special ids the tokenizer puts around a sentence pair, or None if unreadable."""
    first = tokenizer("a", add_special_tokens=False)["input_ids"]
    second = tokenizer("b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", "b")["input_ids"]
    if len(first) != 1 or len(second) != 1 or first == second or full.count(first[0]) != 1:
        return None
    i = full.index(first[0])
    if full[i + 1 :].count(second[0]) != 1:
        return None
    j = full.index(second[0], i + 1)
    return full[:i], full[i + 1 : j], full[j + 1 :]


def _batched(tokenizer, texts: list[str], **kwargs) -> dict[str, list[int]]:
    """Tokenises distinct texts in one batched call; returns text -> ids."""
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    return dict(zip(unique, tokenizer(unique, **kwargs)["input_ids"]))


# Per-row columns that change how a conversation is rendered (TRL passes them to the chat template); synthetic rows
# carry their original's values.
ROW_TEMPLATE_COLUMNS = ("tools", "chat_template_kwargs")


def _per_text(rows: Sequence[dict[str, Any]], tokenizer) -> dict[str, list[list[int]]]:
    """`tokenize_pair` once per distinct (prompt, response)."""
    memo: dict[str, list[int]] = {}
    out: dict[str, list[list[int]]] = {f"{side}_ids": [] for side in SIDES}
    for row in rows:
        extras = {k: row[k] for k in ROW_TEMPLATE_COLUMNS if row.get(k) is not None}  # tools, template kwargs
        for side in SIDES:
            key = json.dumps([row.get("prompt"), row[side], extras], ensure_ascii=False, sort_keys=True, default=str)
            if key not in memo:
                memo[key] = tokenize_pair({"prompt": row.get("prompt"), "chosen": row[side],
                                           "rejected": row[side], **extras}, tokenizer)["chosen_ids"]
            out[f"{side}_ids"].append(memo[key])
    return out


def tokenize_pairs(rows: Sequence[dict[str, Any]], tokenizer) -> dict[str, list[list[int]]]:
    """`{"chosen_ids": [...], "rejected_ids": [...]}` for explicit-prompt rows, equal to `tokenize_pair` per row."""
    if not rows:
        return {f"{side}_ids": [] for side in SIDES}
    chat = any(not isinstance(row.get("prompt") or "", str) or not isinstance(row["chosen"], str)
               or any(row.get(k) is not None for k in ROW_TEMPLATE_COLUMNS) for row in rows)
    fast = getattr(tokenizer, "is_fast", False)
    if chat or not fast:
        return _per_text(rows, tokenizer)
    prompts = [row.get("prompt") or "" for row in rows]
    if tokenizer.eos_token is not None:
        eos = tokenizer.eos_token
        texts = {side: [p + row[side] + ("" if (p + row[side]).endswith(eos) else eos) for p, row in zip(prompts, rows)]
                 for side in SIDES}
        ids = _batched(tokenizer, texts["chosen"] + texts["rejected"])
        out = {f"{side}_ids": [list(ids[t]) for t in texts[side]] for side in SIDES}
    else:
        template = _pair_template(tokenizer)
        if template is None or not all(prompts):
            return _per_text(rows, tokenizer)
        prefix, middle, suffix = template
        parts = _batched(tokenizer, prompts + [row[side] for row in rows for side in SIDES], add_special_tokens=False)
        out = {f"{side}_ids": [prefix + parts[p] + middle + parts[row[side]] + suffix for p, row in zip(prompts, rows)]
               for side in SIDES}
    reference = tokenize_pair(dict(rows[0]), tokenizer)
    if any(reference[f"{side}_ids"] != out[f"{side}_ids"][0] for side in SIDES):
        logger.warning("Batched tokenisation differs from the per-pair path for %s; tokenising per text.",
                       type(tokenizer).__name__)
        return _per_text(rows, tokenizer)
    return out
