"""Randomly initialised Llama-family policies and a word-level tokenizer, built offline from a config.

Nothing here is downloaded: the offline CPU demo of `recipes/ppo_align.py`, the tests and the alignment benchmark
build their policies here. `LLAMA_SHAPES` holds the sizes of the paper's two policies (TinyLlama-1.1B-Chat and
Llama-3.2-1B, from their published configs) so speed and memory can be measured without the checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant : {% endif %}"
)

LLAMA_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, vocab_size=None, tie_word_embeddings=False),
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0 config.json
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, max_position_embeddings=2048, vocab_size=32000,
                           rope_theta=10000.0, tie_word_embeddings=False),
    # meta-llama/Llama-3.2-1B(-Instruct) config.json (llama3 RoPE scaling left out: it does not change cost)
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, vocab_size=128256,
                         rope_theta=500000.0, tie_word_embeddings=True),
}


def build_word_tokenizer(texts: Iterable[str], *, vocab_size: int | None = None, chat_template: bool = True):
    """A fast word-level tokenizer over the words of `texts` (padded with `w<i>` tokens up to `vocab_size`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words: dict[str, int] = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]+", text):
            words.setdefault(word, len(words))
    if vocab_size is not None:
        if vocab_size < len(words):
            raise ValueError(f"vocab_size={vocab_size} is smaller than the {len(words)} words of the texts.")
        filler = 0
        while len(words) < vocab_size:
            words.setdefault(f"w{filler}", len(words))
            filler += 1
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, tidies punctuation
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=4096)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_random_llama(shape: str, tokenizer, *, num_labels: int | None = None, seed: int = 0, dtype=None):
    """A randomly initialised Llama of a `LLAMA_SHAPES` size (causal LM, or a sequence classifier)."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    if shape not in LLAMA_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(LLAMA_SHAPES)}.")
    kwargs = dict(LLAMA_SHAPES[shape])
    kwargs["vocab_size"] = kwargs["vocab_size"] or len(tokenizer)
    if kwargs["vocab_size"] < len(tokenizer):
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the {shape} vocabulary.")
    config = LlamaConfig(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **kwargs)
    torch.manual_seed(seed)
    if num_labels is not None:
        config.num_labels = num_labels
        model = LlamaForSequenceClassification(config)
    else:
        model = LlamaForCausalLM(config)
    return model.to(dtype) if dtype is not None else model


def save_random_llama(directory: str | Path, texts: Iterable[str], *, shape: str = "tiny",
                      num_labels: int | None = None, seed: int = 0) -> str:
    """Writes a random Llama of `shape` and its word-level tokenizer (vocabulary from `texts`) to `directory`."""
    vocab_size = LLAMA_SHAPES[shape]["vocab_size"] if shape in LLAMA_SHAPES else None
    tokenizer = build_word_tokenizer(texts, vocab_size=vocab_size)
    model = build_random_llama(shape, tokenizer, num_labels=num_labels, seed=seed)
    model.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return str(directory)
