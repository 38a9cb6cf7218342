"""Seq2seq paraphraser: a Hugging Face encoder-decoder (default humarin/chatgpt_paraphraser_on_T5_base).

As in the paper: the input is "paraphrase: <text>", decoding is deterministic beam search with a no-repeat n-gram
constraint and a cap on new tokens, and degenerate or too-short outputs are filtered. On top of that:

- Structure is kept. A T5 vocabulary has no newline, so a response is never fed to the model whole: fenced code
  blocks, blank lines, line breaks, list markers ("1. ", "- ", "## ") and indentation are kept verbatim and only the
  prose of each line is paraphrased. The k-th variant of a text is the k-th variant of every prose piece put back
  into the original layout (a piece with fewer than k acceptable variants keeps its original wording).
- Long prose is split. A piece must fit the model's input window and, since a paraphrase is about as long as its
  source, also `max_new_tokens` (a longer piece would come back cut off). Longer lines are split into sentences
  (a regular-expression splitter) packed greedily up to that size; a single over-long sentence is split into word
  windows.
- Outputs are filtered: identical to the source (after case, whitespace and edge-punctuation normalisation),
  shorter than `min_chars` or than `min_length_ratio` of the source, cut off by `max_new_tokens` (no end of
  sequence; `drop_truncated`), repetitive (a word 3-gram three times or more, a word three times in a row, or
  fewer than 30% distinct words, unless the source is as repetitive), and duplicates. `self.stats` counts each
  reason; the shortfall (variants asked for minus returned) is logged on the "trl_mars" logger.

Beam search returns `num_return_sequences = min(num_beams, n + 2)` candidates per piece so that filtering still
leaves `n`; `num_beams` defaults to `max(n, 4)` and is never below `n`.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .lexical import protected_spans
from .model_source import check_model_source

logger = logging.getLogger("trl_mars")

__all__ = ["Seq2SeqParaphraser", "check_seq2seq_model", "filter_paraphrases", "split_sentences", "is_repetitive"]

DEFAULT_MODEL = "humarin/chatgpt_paraphraser_on_T5_base"


def check_seq2seq_model(name: str | os.PathLike[str]) -> None:
    """Raises `ModelSourceError` in seconds when the seq2seq paraphraser `name` cannot load here (no model is
    loaded, no Hub retries): call it at start-up, before the reward model loads."""
    check_model_source(
        name, what="seq2seq paraphraser", option="mars_paraphraser_model", required_files=("config.json",),
        fix="Download it once where the Hub is reachable (it is then cached), point `mars_paraphraser_model` at a "
        "saved folder, or use `mars_paraphraser='lexical'` for an offline run.",
    )
_DEFAULT_WINDOW = 512
_OVERGENERATE = 2

_FENCE_RE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n[\s\S]*?(?:^[ \t]*\1[^\n]*$|\Z)", re.MULTILINE)
_LINE_RE = re.compile(r"^([ \t]*(?:(?:[-*+•]|\d+[.)]|#{1,6}|>)[ \t]+)?)(.*?)([ \t]*)$", re.DOTALL)
# A sentence ends at . ! ? (possibly repeated, possibly followed by a closing quote or bracket) before whitespace
# and the start of the next sentence (a capital letter, a digit or an opening quote/bracket).
_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'”’)\]]*(\s+)(?=[\"'“‘(\[]?[A-Z0-9])")
_TOKEN_RE = re.compile(r"\w+", re.UNICODE)
_EDGE_PUNCT = " \t\n\r.,;:!?\"'“”‘’()[]{}"


def split_sentences(text: str) -> list[tuple[str, str]]:
    """Splits `text` into (sentence, following whitespace) pairs whose concatenation is `text` exactly."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _SENTENCE_END_RE.finditer(text):
        out.append((text[pos : m.start(1)], m.group(1)))
        pos = m.end(1)
    if pos < len(text):
        out.append((text[pos:], ""))
    return out


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(_EDGE_PUNCT)


def _repetition(tokens: list[str]) -> tuple[int, int, float]:
    """(highest count of any word 3-gram, longest run of one repeated word, distinct-word ratio)."""
    if not tokens:
        return 0, 0, 1.0
    grams = Counter(zip(tokens, tokens[1:], tokens[2:]))
    run = longest = 1
    for prev, cur in zip(tokens, tokens[1:]):
        run = run + 1 if cur == prev else 1
        longest = max(longest, run)
    return (max(grams.values()) if grams else 0), longest, len(set(tokens)) / len(tokens)


def is_repetitive(text: str, source: str | None = None) -> bool:
    """Degenerate repetition: a word 3-gram occurring three or more times, one word three or more times in a row
    ("the the the"; a no-repeat-3-gram constraint cannot prevent this), or, from 4 words on, fewer than 30%
    distinct words. With a `source`, each criterion only counts when the candidate is worse on it than the source
    itself (a refrain in a poem stays acceptable)."""
    tokens = _TOKEN_RE.findall(text.lower())
    top, run, ratio = _repetition(tokens)
    bad = [top >= 3, run >= 3, len(tokens) >= 4 and ratio < 0.3]
    if source is not None and any(bad):
        src_top, src_run, src_ratio = _repetition(_TOKEN_RE.findall(source.lower()))
        bad = [bad[0] and top > src_top, bad[1] and run > src_run, bad[2] and ratio < src_ratio]
    return any(bad)


def filter_paraphrases(
    source: str,
    candidates: Sequence[str],
    *,
    min_chars: int = 8,
    min_length_ratio: float = 0.3,
    truncated: Sequence[bool] | None = None,
    seen: set[str] | None = None,
) -> tuple[list[str], Counter]:
    """Keeps the acceptable candidates, in order; returns them and a Counter of the rejection reasons
    ("identical", "short", "repetitive", "truncated", "duplicate").

    A candidate is "short" when it has fewer than `min(min_chars, len(source))` characters or fewer than
    `min_length_ratio * len(source)`. `seen` (normalised texts already accepted elsewhere) is updated in place.
    """
    reasons: Counter = Counter()
    kept: list[str] = []
    src = source.strip()
    src_norm = _normalise(src)
    seen = set() if seen is None else seen
    min_len = max(min(min_chars, len(src)), min_length_ratio * len(src))
    for i, cand in enumerate(candidates):
        cand = cand.strip()
        norm = _normalise(cand)
        if norm == src_norm:
            reasons["identical"] += 1
        elif len(cand) < min_len or not norm:
            reasons["short"] += 1
        elif truncated is not None and truncated[i]:
            reasons["truncated"] += 1
        elif is_repetitive(cand, src):
            reasons["repetitive"] += 1
        elif norm in seen:
            reasons["duplicate"] += 1
        else:
            seen.add(norm)
            kept.append(cand)
    return kept, reasons


def _model_window(tokenizer, model) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 100_000:
        return limit
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    return _DEFAULT_WINDOW


class Seq2SeqParaphraser:
    """Paraphrases with a seq2seq model and deterministic beam search (see the module docstring).

    Args:
        model_name_or_path: Hub id or local path (`str` or `os.PathLike`); also names the model in the fingerprint.
        model, tokenizer: already-loaded objects to use instead of loading `model_name_or_path`.
        batch_size: inputs (prose pieces) per `generate` call; inputs are length-sorted first.
        num_beams: beams for beam search; default `max(n, 4)`, never fewer than `n`.
        no_repeat_ngram_size, max_new_tokens: decoding constraints (paper: a no-repeat constraint, 192 tokens).
        input_prefix: prepended to every input (the humarin model was trained with "paraphrase: ").
        device: default CUDA when available, else CPU. A model dispatched with a device map is not moved.
        min_chars, min_length_ratio: the too-short filter (see `filter_paraphrases`).
        max_input_tokens: the encoder window (prefix and special tokens included); default the tokenizer's
            `model_max_length`, else the model config's `n_positions`/`max_position_embeddings`, else 512.
        max_piece_tokens: largest prose piece in tokens; default `min(max_input_tokens - prefix, max_new_tokens)`.
        drop_truncated: reject outputs that hit `max_new_tokens` without an end-of-sequence token.
        progress: show a tqdm bar over generation batches.
    """

    name = "seq2seq"

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        model=None,
        tokenizer=None,
        batch_size: int = 16,
        num_beams: int | None = None,
        no_repeat_ngram_size: int = 3,
        max_new_tokens: int = 192,
        input_prefix: str = "paraphrase: ",
        device=None,
        min_chars: int = 8,
        min_length_ratio: float = 0.3,
        max_input_tokens: int | None = None,
        max_piece_tokens: int | None = None,
        drop_truncated: bool = True,
        progress: bool = True,
    ):
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("`batch_size` and `max_new_tokens` must be >= 1.")
        if num_beams is not None and num_beams < 1:
            raise ValueError(f"`num_beams` must be >= 1 or None, got {num_beams}.")
        model_name_or_path = os.fspath(model_name_or_path)
        if model is None:
            check_seq2seq_model(model_name_or_path)  # fail in seconds, not after the Hub's retries
            model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path)
            self.model_name = model_name_or_path
        else:
            self.model_name = getattr(getattr(model, "config", None), "_name_or_path", None) or model_name_or_path
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if getattr(model, "hf_device_map", None) is None:
            model = model.to(device)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.num_beams = num_beams
        self.no_repeat_ngram_size = int(no_repeat_ngram_size)
        self.max_new_tokens = int(max_new_tokens)
        self.input_prefix = input_prefix
        self.min_chars = int(min_chars)
        self.min_length_ratio = float(min_length_ratio)
        self.drop_truncated = bool(drop_truncated)
        self.progress = bool(progress)
        self.max_input_tokens = int(max_input_tokens or _model_window(tokenizer, model))
        overhead = len(self._token_ids([input_prefix], add_special_tokens=True)[0])
        room = self.max_input_tokens - overhead
        if room < 1:
            raise ValueError(
                f"`max_input_tokens={self.max_input_tokens}` leaves no room after the prefix {input_prefix!r} "
                f"({overhead} tokens)."
            )
        self.max_piece_tokens = int(min(max_piece_tokens or min(room, self.max_new_tokens), room))
        self.stats: dict[str, int] = {
            "texts": 0,
            "requested": 0,
            "returned": 0,
            "pieces": 0,
            "candidates": 0,
            "filtered_identical": 0,
            "filtered_short": 0,
            "filtered_repetitive": 0,
            "filtered_truncated": 0,
            "filtered_duplicate": 0,
        }

    # ----- protocol -----
    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": "seq2seq",
            "model": self.model_name,
            "num_beams": self.num_beams,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "max_new_tokens": self.max_new_tokens,
            "prefix": self.input_prefix,
            "max_piece_tokens": self.max_piece_tokens,
            "min_chars": self.min_chars,
            "min_length_ratio": self.min_length_ratio,
            "drop_truncated": self.drop_truncated,
            "version": 1,
        }

    def beams_for(self, n: int) -> tuple[int, int]:
        """(num_beams, num_return_sequences) used for `n` variants."""
        beams = max(self.num_beams or max(n, 4), n)
        return beams, min(beams, n + _OVERGENERATE)

    def paraphrase(self, texts: Sequence[str], n: int) -> list[list[str]]:
        """For each text, up to `n` distinct paraphrases, none equal to it (fewer when filtering leaves fewer)."""
        texts = list(texts)
        self.stats["texts"] += len(texts)
        if n <= 0 or not texts:
            return [[] for _ in texts]
        self.stats["requested"] += n * len(texts)

        layouts = [self.layout(text) for text in texts]
        # Deduplicate pieces across texts: each distinct piece is generated once.
        unique: dict[str, int] = {}
        for layout in layouts:
            for kind, piece in layout:
                if kind == "prose" and piece not in unique:
                    unique[piece] = len(unique)
        pieces = list(unique)
        self.stats["pieces"] += len(pieces)
        candidates = self._generate(pieces, n)

        piece_variants: list[list[str]] = []
        for piece, (outs, truncated) in zip(pieces, candidates):
            kept, reasons = filter_paraphrases(
                piece,
                outs,
                min_chars=self.min_chars,
                min_length_ratio=self.min_length_ratio,
                truncated=truncated if self.drop_truncated else None,
            )
            self.stats["candidates"] += len(outs)
            for reason, count in reasons.items():
                self.stats[f"filtered_{reason}"] += count
            piece_variants.append(kept)

        results: list[list[str]] = []
        for text, layout in zip(texts, layouts):
            per_piece = [piece_variants[unique[p]] if kind == "prose" else [] for kind, p in layout]
            depth = max((len(v) for v in per_piece), default=0)
            seen = {_normalise(text)}
            variants: list[str] = []
            for k in range(depth):
                variant = "".join(
                    vs[k] if kind == "prose" and k < len(vs) else piece
                    for (kind, piece), vs in zip(layout, per_piece)
                )
                norm = _normalise(variant)
                if norm in seen:
                    self.stats["filtered_duplicate" if variants else "filtered_identical"] += 1
                    continue
                seen.add(norm)
                variants.append(variant)
                if len(variants) == n:
                    break
            results.append(variants)

        returned = sum(len(v) for v in results)
        self.stats["returned"] += returned
        shortfall = n * len(texts) - returned
        message = (
            "seq2seq paraphraser: %d of %d requested variants for %d texts (shortfall %d); cumulative filtered: "
            "identical %d, short %d, repetitive %d, truncated %d, duplicate %d"
        )
        args = (
            returned,
            n * len(texts),
            len(texts),
            shortfall,
            self.stats["filtered_identical"],
            self.stats["filtered_short"],
            self.stats["filtered_repetitive"],
            self.stats["filtered_truncated"],
            self.stats["filtered_duplicate"],
        )
        (logger.warning if shortfall else logger.info)(message, *args)
        return results

    # ----- layout -----
    def layout(self, text: str) -> list[tuple[str, str]]:
        """Splits `text` into ("keep", s) and ("prose", s) segments whose concatenation is `text`; only prose
        pieces go to the model, and each fits `max_piece_tokens`."""
        segments: list[tuple[str, str]] = []
        pos = 0
        for m in _FENCE_RE.finditer(text):
            self._layout_lines(text[pos : m.start()], segments)
            segments.append(("keep", m.group(0)))
            pos = m.end()
        self._layout_lines(text[pos:], segments)
        # Merge neighbouring "keep" segments (cosmetic: fewer, larger fixed parts).
        merged: list[tuple[str, str]] = []
        for kind, s in segments:
            if not s:
                continue
            if merged and kind == "keep" and merged[-1][0] == "keep":
                merged[-1] = ("keep", merged[-1][1] + s)
            else:
                merged.append((kind, s))
        return merged

    def _layout_lines(self, text: str, out: list[tuple[str, str]]) -> None:
        for line in re.split(r"(\n)", text):
            if line == "\n" or not line:
                out.append(("keep", line))
                continue
            m = _LINE_RE.match(line)
            lead, body, trail = m.group(1), m.group(2), m.group(3)
            out.append(("keep", lead))
            if not any(c.isalpha() for c in body) or self._is_protected(body):
                out.append(("keep", body))
            else:
                self._layout_prose(body, out)
            out.append(("keep", trail))

    @staticmethod
    def _is_protected(body: str) -> bool:
        """A line that is essentially code/markup (an inline-code span, a URL, a tag) is kept verbatim."""
        spans = protected_spans(body)
        covered = sum(e - s for s, e in spans)
        return covered >= 0.5 * len(body.strip())

    def _layout_prose(self, body: str, out: list[tuple[str, str]]) -> None:
        budget = self.max_piece_tokens
        if self._count(body) <= budget:
            out.append(("prose", body))
            return
        sentences = split_sentences(body)
        counts = self._counts([s for s, _ in sentences])
        group: list[tuple[str, str]] = []
        size = 0

        def flush() -> None:
            if group:
                text = "".join(s + sep for s, sep in group[:-1]) + group[-1][0]
                out.append(("prose", text))
                out.append(("keep", group[-1][1]))
                group.clear()

        for (sentence, sep), count in zip(sentences, counts):
            if count > budget:
                flush()
                size = 0
                self._layout_words(sentence, out)
                out.append(("keep", sep))
                continue
            if group and size + count > budget:
                flush()
                size = 0
            group.append((sentence, sep))
            size += count
        flush()

    def _layout_words(self, sentence: str, out: list[tuple[str, str]]) -> None:
        """Splits an over-long sentence into word windows of at most `max_piece_tokens` tokens."""
        words = re.findall(r"\S+\s*", sentence)
        counts = self._counts([w.strip() for w in words])
        window: list[str] = []
        size = 0

        def flush() -> None:
            if window:
                chunk = "".join(window)
                stripped = chunk.rstrip()
                out.append(("prose", stripped))
                out.append(("keep", chunk[len(stripped) :]))
                window.clear()

        for word, count in zip(words, counts):
            if window and size + count > self.max_piece_tokens:
                flush()
                size = 0
            window.append(word)
            size += count
        flush()

    # ----- tokens -----
    def _token_ids(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]

    def _counts(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._token_ids(texts)]

    def _count(self, text: str) -> int:
        return self._counts([text])[0]

    # ----- generation -----
    def _generate(self, pieces: list[str], n: int) -> list[tuple[list[str], list[bool]]]:
        """Beam-search candidates (decoded texts, cut-off flags) for every piece, in the order given."""
        import torch

        from .engine import length_sorted_batches

        if not pieces:
            return []
        beams, returns = self.beams_for(n)
        inputs = [self.input_prefix + p for p in pieces]
        encoded = self.tokenizer(inputs, truncation=True, max_length=self.max_input_tokens)["input_ids"]
        results: list[tuple[list[str], list[bool]]] = [([], []) for _ in pieces]
        eos = getattr(self.tokenizer, "eos_token_id", None)
        device = next(self.model.parameters()).device
        for idx, input_ids, attention_mask in length_sorted_batches(
                encoded, self.batch_size, self.tokenizer.pad_token_id, device, left_pad=False,
                desc="paraphrasing (seq2seq)", progress=self.progress):
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    do_sample=False,
                    num_beams=beams,
                    num_return_sequences=returns,
                    no_repeat_ngram_size=self.no_repeat_ngram_size,
                    max_new_tokens=self.max_new_tokens,
                )
            out = out.cpu()
            texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            if eos is None:
                cut = [False] * len(texts)
            else:
                # Position 0 of each row is the decoder start token; a row without EOS was cut off.
                cut = [not bool((row[1:] == eos).any()) for row in out]
            for j, i in enumerate(idx):
                rows = slice(j * returns, (j + 1) * returns)
                results[i] = ([self._clean(t) for t in texts[rows]], cut[rows])
        return results

    def _clean(self, text: str) -> str:
        text = text.strip()
        prefix = self.input_prefix.strip()
        if prefix and text.lower().startswith(prefix.lower()):
            text = text[len(prefix) :].strip()
        return text
