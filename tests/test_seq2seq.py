"""Seq2SeqParaphraser mechanics with a tiny randomly initialised T5 and a tokenizer built here (no downloads).

A random model writes garbage, so these tests check the machinery: batching, beam candidates, the mapping of
outputs back to their inputs, filtering, long-text splitting, layout preservation and statistics. Where exact
outputs matter, `generate` is replaced by a deterministic stand-in that rotates the input words.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from trl_mars.augment.base import Paraphraser
from trl_mars.augment.model_source import ModelSourceError
from trl_mars.augment.seq2seq import (
    Seq2SeqParaphraser,
    check_seq2seq_model,
    filter_paraphrases,
    is_repetitive,
    split_sentences,
)

PAD, EOS, UNK = 0, 1, 2

CORPUS = [
    "paraphrase : the cat sat on the mat .",
    "a dog runs in the park !",
    "we like to read books about science and history .",
    "It is a sunny day . Birds sing in the trees . The river flows to the sea .",
    "Done . Steps : mix the flour , add water , bake it for ten minutes ?",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matrices are much slower with several threads competing on a small, shared CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    # Like T5: every encoded input ends with </s>.
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    assert (fast.pad_token_id, fast.eos_token_id, fast.unk_token_id) == (PAD, EOS, UNK)
    return fast


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = T5Config(
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_heads=2,
        vocab_size=len(tokenizer),
        pad_token_id=PAD,
        eos_token_id=EOS,
        decoder_start_token_id=PAD,
    )
    return T5ForConditionalGeneration(config).eval()


def make(model, tokenizer, **kwargs) -> Seq2SeqParaphraser:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("device", "cpu")
    return Seq2SeqParaphraser("tiny-t5", model=model, tokenizer=tokenizer, **kwargs)


class RotatingGenerate:
    """Stands in for `model.generate`: the r-th returned sequence of an input is its words rotated by r.

    It records every call. `eos=False` leaves the end-of-sequence token off (as when `max_new_tokens` cuts a
    generation off); `echo=True` returns the input unchanged.
    """

    def __init__(self, tokenizer, eos=True, echo=False):
        self.tokenizer = tokenizer
        self.eos = eos
        self.echo = echo
        self.calls: list[dict] = []
        self.prefix_ids = tokenizer("paraphrase :", add_special_tokens=False)["input_ids"]

    def __call__(self, input_ids, attention_mask, num_return_sequences, max_new_tokens, **kwargs):
        self.calls.append(
            {
                "shape": tuple(input_ids.shape),
                "num_return_sequences": num_return_sequences,
                "max_new_tokens": max_new_tokens,
                **kwargs,
            }
        )
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            words = [t for t, m in zip(ids, mask) if m and t not in (PAD, EOS)]
            words = words[len(self.prefix_ids) :]
            for r in range(1, num_return_sequences + 1):
                k = 0 if self.echo else r % len(words)
                out = words[k:] + words[:k]
                rows.append([PAD] + out + ([EOS] if self.eos else []))
        width = max(len(r) for r in rows)
        return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


def rotations(text: str, tokenizer) -> set[str]:
    words = tokenizer.tokenize(text)
    return {" ".join(words[k:] + words[:k]) for k in range(1, len(words))}


# ----- pure helpers ---------------------------------------------------------------------------------------------


def test_split_sentences_round_trips():
    text = "It is sunny. Birds sing!  The river flows?\tYes... 3 cats. e.g. lower case stays."
    parts = split_sentences(text)
    assert "".join(s + sep for s, sep in parts) == text
    assert [s for s, _ in parts] == [
        "It is sunny.",
        "Birds sing!",
        "The river flows?",
        "Yes...",
        "3 cats. e.g. lower case stays.",
    ]


def test_is_repetitive():
    assert is_repetitive("go home go home go home go home")  # the 3-gram "go home go" occurs 3 times
    assert is_repetitive("the the the cat")  # one word three times in a row
    assert is_repetitive("a b a b a b a b a b a b")  # 2 distinct of 12 words < 30%
    assert not is_repetitive("the cat sat on the mat")
    # Relative to the source: a refrain the source already has is not degenerate.
    chorus = "la la la, sing with me, la la la"
    assert is_repetitive(chorus)
    assert not is_repetitive("la la la, sing along, la la la", source=chorus)


def test_filter_paraphrases_reasons():
    source = "The quick brown fox jumps over the lazy dog."
    candidates = [
        "the quick  brown fox jumps over the lazy dog",  # identical after case/space/punctuation normalisation
        "A fox.",  # shorter than min_chars (8)
        "A fox jumps.",  # 12 chars < 0.3 * 44 = 13.2
        "dog dog dog jumps over the fox",  # repetitive
        "A fast brown fox leaps over a lazy dog.",  # kept
        "a fast brown fox leaps over a lazy dog",  # duplicate of the kept one
        "The lazy dog is jumped over by a quick brown fox.",  # kept
        "A quick fox jumped over the dog that was lazy and",  # cut off (truncated flag)
    ]
    truncated = [False] * 7 + [True]
    kept, reasons = filter_paraphrases(source, candidates, min_chars=8, min_length_ratio=0.3, truncated=truncated)
    assert kept == ["A fast brown fox leaps over a lazy dog.", "The lazy dog is jumped over by a quick brown fox."]
    assert reasons == {"identical": 1, "short": 2, "repetitive": 1, "duplicate": 1, "truncated": 1}
    # Without truncation flags the last candidate is acceptable.
    kept, _ = filter_paraphrases(source, candidates, min_chars=8, min_length_ratio=0.3)
    assert len(kept) == 3


def test_filter_short_source_uses_source_length_as_floor():
    # A 3-character source cannot require 8 characters; "Hello." passes, "." does not.
    kept, reasons = filter_paraphrases("Hi.", ["Hello.", ".", "hi"], min_chars=8)
    assert kept == ["Hello."]
    assert reasons == {"short": 1, "identical": 1}


# ----- construction ---------------------------------------------------------------------------------------------


def test_protocol_fingerprint_and_beams(model, tokenizer):
    p = make(model, tokenizer, max_new_tokens=12)
    assert isinstance(p, Paraphraser)
    assert p.name == "seq2seq"
    fp = p.fingerprint()
    # The random model has no _name_or_path, so the given name is used.
    assert fp["model"] == "tiny-t5"
    keys = ("backend", "num_beams", "no_repeat_ngram_size", "max_new_tokens", "prefix", "version")
    assert {k: fp[k] for k in keys} == {
        "backend": "seq2seq",
        "num_beams": None,
        "no_repeat_ngram_size": 3,
        "max_new_tokens": 12,
        "prefix": "paraphrase: ",
        "version": 1,
    }
    # num_beams defaults to max(n, 4) and is never below n; n + 2 candidates are returned where beams allow.
    assert p.beams_for(1) == (4, 3)
    assert p.beams_for(3) == (4, 4)
    assert p.beams_for(6) == (6, 6)
    wide = make(model, tokenizer, num_beams=8)
    assert wide.beams_for(2) == (8, 4)
    assert make(model, tokenizer, num_beams=2).beams_for(5) == (5, 5)
    # The window defaults to 512 when neither tokenizer nor config names one.
    assert p.max_input_tokens == 512
    assert p.max_piece_tokens == 12  # min(window - prefix, max_new_tokens)


def test_layout_keeps_code_lists_and_newlines(model, tokenizer):
    p = make(model, tokenizer)
    text = "Steps:\n\n1. Mix the flour.\n  - add water\n\n```python\nprint('x')\n```\nDone."
    layout = p.layout(text)
    assert "".join(s for _, s in layout) == text
    assert [s for kind, s in layout if kind == "prose"] == ["Steps:", "Mix the flour.", "add water", "Done."]
    assert ("keep", "\n\n```python\nprint('x')\n```\n") in layout


# ----- generation with the real tiny T5 ----------------------------------------------------------------------------


def test_real_tiny_t5_batches_and_counts(model, tokenizer):
    # no_repeat_ngram_size=1 keeps the random model from repeating words, so some of its (garbage) outputs pass
    # the repetition filter and the whole path, decoding included, is exercised.
    p = make(
        model, tokenizer, batch_size=2, max_new_tokens=10, no_repeat_ngram_size=1, drop_truncated=False, progress=True
    )
    calls = []
    original = model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    model.generate = spy
    try:
        texts = CORPUS[1:] + ["the cat sat on the mat .", "we like books ."]
        out = p.paraphrase(texts, 2)
    finally:
        del model.generate
    assert len(out) == len(texts)
    for text, variants in zip(texts, out):
        assert len(variants) <= 2
        assert len(set(variants)) == len(variants)
        assert text not in variants
    pieces = p.stats["pieces"]
    assert len(calls) == math.ceil(pieces / 2)  # batches of 2 pieces
    for kwargs in calls:
        assert kwargs["num_beams"] == 4 and kwargs["num_return_sequences"] == 4
        assert kwargs["do_sample"] is False and kwargs["no_repeat_ngram_size"] == 1
        assert kwargs["max_new_tokens"] == 10
        assert kwargs["input_ids"].shape[0] <= 2
    assert p.stats["texts"] == len(texts)
    assert p.stats["requested"] == 2 * len(texts)
    assert p.stats["returned"] == sum(len(v) for v in out)
    assert p.stats["candidates"] == 4 * pieces
    assert p.stats["returned"] > 0
    filtered = sum(v for k, v in p.stats.items() if k.startswith("filtered_"))
    assert filtered < p.stats["candidates"]
    # Batches are length-sorted: input lengths never increase from one batch to the next.
    lengths = [int(kw["attention_mask"].sum(dim=1).max()) for kw in calls]
    assert lengths == sorted(lengths, reverse=True)
    # Deterministic beam search: the same call gives the same answer.
    again = make(model, tokenizer, batch_size=2, max_new_tokens=10, no_repeat_ngram_size=1, drop_truncated=False)
    assert again.paraphrase(texts, 2) == out


def test_real_tiny_t5_drops_cut_off_outputs(model, tokenizer):
    # With 3 new tokens a random model almost never reaches </s>: such outputs are counted as truncated.
    p = make(model, tokenizer, max_new_tokens=3, min_chars=1, min_length_ratio=0.0)
    out = p.paraphrase(["we like to read books about science and history ."], 2)
    assert p.stats["filtered_truncated"] > 0
    assert p.stats["returned"] == len(out[0])


def test_zero_n_and_empty_inputs(model, tokenizer):
    p = make(model, tokenizer)
    assert p.paraphrase(["a dog runs"], 0) == [[]]
    assert p.paraphrase([], 3) == []
    # Nothing to paraphrase (no letters): no model call, no variants.
    assert p.paraphrase(["12 34", "   "], 2) == [[], []]


# ----- exact mechanics with a deterministic stand-in for generate ---------------------------------------------------


def test_outputs_map_back_to_their_inputs(model, tokenizer, monkeypatch):
    fake = RotatingGenerate(tokenizer)
    monkeypatch.setattr(model, "generate", fake, raising=False)
    p = make(model, tokenizer, batch_size=3, min_chars=1, min_length_ratio=0.0)
    # Different lengths, so length sorting reorders them; 7 texts > batch_size.
    texts = [
        "a dog runs in the park !",
        "the cat sat on",
        "we like to read books about science and history .",
        "Birds sing in the trees .",
        "It is a sunny day .",
        "the river flows to the sea .",
        "mix the flour , add water",
    ]
    out = p.paraphrase(texts, 3)
    assert len(fake.calls) == math.ceil(len(texts) / 3)
    # n = 3: num_beams = max(3, 4) = 4 and num_return_sequences = min(4, 3 + 2) = 4.
    assert all(c["num_beams"] == 4 and c["num_return_sequences"] == 4 for c in fake.calls)
    for text, variants in zip(texts, out):
        assert len(variants) == 3
        assert len(set(variants)) == 3
        # Every variant is a rotation of *this* text's words: outputs were mapped back to the right input.
        assert set(variants) <= rotations(text, tokenizer)
    assert p.stats["returned"] == 21 and p.stats["requested"] == 21


def test_identical_outputs_are_filtered_and_shortfall_logged(model, tokenizer, monkeypatch, caplog):
    monkeypatch.setattr(model, "generate", RotatingGenerate(tokenizer, echo=True), raising=False)
    p = make(model, tokenizer)
    with caplog.at_level(logging.INFO, logger="trl_mars"):
        out = p.paraphrase(["the cat sat on the mat .", "a dog runs in the park !"], 2)
    assert out == [[], []]
    assert p.stats["filtered_identical"] == 2 * 4  # 2 pieces x 4 candidates (num_return_sequences = n + 2)
    assert p.stats["requested"] == 4 and p.stats["returned"] == 0
    shortfall = [r for r in caplog.records if r.name == "trl_mars" and r.levelno == logging.WARNING]
    assert shortfall and "shortfall 4" in shortfall[-1].getMessage()


def test_truncated_outputs_filtered(model, tokenizer, monkeypatch):
    monkeypatch.setattr(model, "generate", RotatingGenerate(tokenizer, eos=False), raising=False)
    p = make(model, tokenizer, min_chars=1, min_length_ratio=0.0)
    assert p.paraphrase(["the cat sat on the mat ."], 2) == [[]]
    assert p.stats["filtered_truncated"] == 4
    keep_cut = make(model, tokenizer, min_chars=1, min_length_ratio=0.0, drop_truncated=False)
    assert len(keep_cut.paraphrase(["the cat sat on the mat ."], 2)[0]) == 2


def test_duplicate_candidates_filtered(model, tokenizer, monkeypatch):
    # A two-word input has only two rotations: the original (identical) and one other; asking for 4 candidates
    # gives each twice, so one variant survives and the rest are identical or duplicates.
    monkeypatch.setattr(model, "generate", RotatingGenerate(tokenizer), raising=False)
    p = make(model, tokenizer, min_chars=1, min_length_ratio=0.0)
    out = p.paraphrase(["cat sat"], 2)
    assert out == [["sat cat"]]
    assert p.stats["filtered_identical"] == 2 and p.stats["filtered_duplicate"] == 1
    assert p.stats["candidates"] == 4


def test_long_text_is_split_into_sentences_within_the_window(model, tokenizer, monkeypatch):
    fake = RotatingGenerate(tokenizer)
    monkeypatch.setattr(model, "generate", fake, raising=False)
    # Window of 16 tokens: "paraphrase : " + </s> take 3, so pieces hold at most min(13, max_new_tokens=12).
    p = make(model, tokenizer, max_input_tokens=16, max_new_tokens=12, min_chars=1, min_length_ratio=0.0)
    assert p.max_piece_tokens == 12
    sentences = ["It is a sunny day .", "Birds sing in the trees .", "The river flows to the sea ."]
    # Whitespace tokenisation: 6 + 6 + 7 tokens, so the first two sentences share a piece and the third is alone.
    text = " ".join(sentences) + "\n\n1. the cat sat on the mat ."
    layout = p.layout(text)
    assert [s for kind, s in layout if kind == "prose"] == [
        "It is a sunny day . Birds sing in the trees .",
        "The river flows to the sea .",
        "the cat sat on the mat .",
    ]
    out = p.paraphrase([text], 2)[0]
    assert len(out) == 2
    for call in fake.calls:
        assert call["shape"][1] <= 16
    for variant in out:
        first, rest = variant.split("\n\n1. ")
        assert rest in rotations("the cat sat on the mat .", tokenizer)
        # The line with two pieces keeps the single space between them.
        assert first.count(" . ") >= 1
    # The k-th variant joins the k-th variant of every piece.
    pieces = [s for kind, s in layout if kind == "prose"]
    rot = lambda s, k: " ".join(tokenizer.tokenize(s)[k:] + tokenizer.tokenize(s)[:k])  # noqa: E731
    expected_first = f"{rot(pieces[0], 1)} {rot(pieces[1], 1)}\n\n1. {rot(pieces[2], 1)}"
    assert out[0] == expected_first


def test_overlong_sentence_split_into_word_windows(model, tokenizer, monkeypatch):
    fake = RotatingGenerate(tokenizer)
    monkeypatch.setattr(model, "generate", fake, raising=False)
    p = make(model, tokenizer, max_input_tokens=16, max_new_tokens=8, min_chars=1, min_length_ratio=0.0)
    text = CORPUS[-1]  # 15 words, no sentence boundary
    prose = [s for kind, s in p.layout(text) if kind == "prose"]
    assert prose == ["one two three four five six seven eight", "nine ten eleven twelve thirteen fourteen fifteen"]
    out = p.paraphrase([text], 2)[0]
    assert len(out) == 2
    assert all(len(tokenizer.tokenize(v)) == 15 for v in out)


def test_piece_without_variants_falls_back_to_original(model, tokenizer, monkeypatch):
    monkeypatch.setattr(model, "generate", RotatingGenerate(tokenizer), raising=False)
    p = make(model, tokenizer, min_chars=1, min_length_ratio=0.0)
    # "Done ." has one other rotation ". Done", identical after normalisation: that line keeps its wording.
    text = "the cat sat on the mat .\nDone ."
    out = p.paraphrase([text], 3)[0]
    assert len(out) == 3
    for variant in out:
        line1, line2 = variant.split("\n")
        assert line2 == "Done ."
        assert line1 in rotations("the cat sat on the mat .", tokenizer)


def test_repeated_pieces_generated_once(model, tokenizer, monkeypatch):
    fake = RotatingGenerate(tokenizer)
    monkeypatch.setattr(model, "generate", fake, raising=False)
    p = make(model, tokenizer, batch_size=8, min_chars=1, min_length_ratio=0.0)
    out = p.paraphrase(["the cat sat on the mat ."] * 5, 2)
    assert fake.calls[0]["shape"][0] == 1
    assert p.stats["pieces"] == 1
    assert all(v == out[0] for v in out) and len(out[0]) == 2


def test_loads_model_and_tokenizer_from_a_local_path(model, tokenizer, tmp_path):
    # The default path (no model/tokenizer objects) loads with AutoModelForSeq2SeqLM / AutoTokenizer; a saved
    # local copy exercises it offline.
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    check_seq2seq_model(tmp_path)  # a Path is a model id too
    p = Seq2SeqParaphraser(tmp_path, max_new_tokens=6, progress=False, device="cpu")
    assert p.fingerprint()["model"] == str(tmp_path)
    assert not p.model.training
    out = p.paraphrase(["the cat sat on the mat ."], 2)
    assert len(out) == 1 and len(out[0]) <= 2


def test_unloadable_paraphraser_model_fails_fast_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as info:
        check_seq2seq_model("humarin/not-cached-paraphraser")
    assert "mars_paraphraser_model" in str(info.value) and "mars_paraphraser='lexical'" in str(info.value)
    with pytest.raises(ModelSourceError, match="not a saved model"):
        Seq2SeqParaphraser(tmp_path, progress=False)  # checked before transformers tries to load it
