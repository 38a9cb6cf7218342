"""Tokenising each distinct text once gives exactly the ids of `tokenize_pair`, token for token."""

from __future__ import annotations

import pytest
from conftest import tiny_rows

from trl_mars.data.preferences import tokenize_pair
from trl_mars.data.tokenization import tokenize_pairs


def synthetic_rows() -> list[dict]:
    """Rows shaped like a round's output: shared prompts, repeated response variants, awkward boundaries."""
    rows = []
    for k, row in enumerate(tiny_rows(8)):
        variants = [row["chosen"], row["chosen"].replace("Sure.", "Of course!"), "  spaced  out\n\nanswer  "]
        for c in variants:
            for r in (row["rejected"], row["rejected"] + " Really.", "x"):
                rows.append({"prompt": row["prompt"] + ("\n\nAssistant:" if k % 2 else ""), "chosen": c,
                             "rejected": r})
    rows.append({"prompt": "Say hi", "chosen": "hi<|endoftext|>", "rejected": "no"})  # already ends in EOS
    return rows


def batched(rows, tokenizer, caplog):
    """`tokenize_pairs`, failing if it fell back to the per-text path (the batched path is what is tested)."""
    with caplog.at_level("WARNING", logger="trl_mars"):
        out = tokenize_pairs(rows, tokenizer)
    assert "tokenising per text" not in caplog.text
    return out


def per_pair(rows, tokenizer):
    out = [tokenize_pair(row, tokenizer) for row in rows]
    return {side: [o[side] for o in out] for side in ("chosen_ids", "rejected_ids")}


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def test_sentence_pair_encoder_without_eos(minilm_tokenizer, caplog):
    assert minilm_tokenizer.eos_token is None
    rows = synthetic_rows()
    assert batched(rows, minilm_tokenizer, caplog) == per_pair(rows, minilm_tokenizer)


def test_encoder_with_an_eos_token_set(minilm_path, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path, eos_token="[SEP]")
    rows = synthetic_rows()
    assert batched(rows, tokenizer, caplog) == per_pair(rows, tokenizer)


def test_byte_level_bpe_with_eos(caplog):
    """A GPT-2-style byte-level BPE tokenizer trained here, offline, where merges can cross the boundary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [r[k] for r in synthetic_rows() for k in ("prompt", "chosen", "rejected")] * 3
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    rows = synthetic_rows()
    assert batched(rows, tokenizer, caplog) == per_pair(rows, tokenizer)


def test_chat_rows_use_the_chat_template(minilm_tokenizer):
    minilm_tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    rows = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in tiny_rows(4)]
    assert tokenize_pairs(rows, minilm_tokenizer) == per_pair(rows, minilm_tokenizer)
