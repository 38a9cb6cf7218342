"""Paraphraser, judge and refiner written once over any `TextGenerator` (base.py): the `local` back-end (the
in-process `engine.LocalEngine`) and the chat back-end's plain-text mode (`client.ChatTextGenerator`).

These back-ends ask for what a 135M-parameter model can give: one text per answer, and verdicts as one of two
words whose probability (local) or first word (chat) decides. Answers are cleaned before use: small chat models
wrap a paraphrase in meta-text ("Here's a revised version of the text:", "Paraphrase:", quotation marks, a closing
"I hope this helps"), which `clean_answer` removes; an answer that talks *about* the text ("The original text
suggests ...") is dropped. Paraphrases then pass the degenerate-output filters the seq2seq back-end uses (identical,
too short, repetitive, duplicate). The meaning check (embedding cosine to the source) is `fidelity.FidelityFilter`,
applied after the cache so that its thresholds can change without generating again.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .base import (
    Embedder,
    PreferenceCheck,
    ProgressLine,
    RefinementRequest,
    TextGenerator,
)
from .chat import ChatJudge
from .refiner import ChatRefiner, HarmCheck
from .seq2seq import filter_paraphrases
from .templates import Messages, load_template

logger = logging.getLogger("trl_mars")

__all__ = ["TextJudge", "TextParaphraser", "TextRefiner", "clean_answer", "echoes_instructions"]

_LABEL = r"(?:paraphrase[sd]?|paraphrased (?:text|version)|rewritten (?:text|reply|response|version)|" \
         r"revised (?:text|reply|response|version)|rewrite|reworded (?:text|version)|new (?:text|version)|answer|reply)"
# "Here's a revised version of the text:", "Sure! Here is the paraphrase:", "Paraphrase:", "**Rewritten text:**"
_INTRO = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)\b[!.,]?\s*)?"
    r"(?:here(?:'s| is| are)\b[^:\n]{0,80}:|\**" + _LABEL + r"\**\s*:\**)\s*",
    re.IGNORECASE,
)
# "The original text is: ...", "Incorrect: ...": a label before a (usually quoted) restatement
_ECHO = re.compile(r"^\s*(?:the (?:original |rewritten |revised )?(?:text|sentence|statement)(?: (?:is|reads))?|"
                   r"incorrect|correct|original)\s*:\s*", re.IGNORECASE)
# bump when `clean_answer` changes what it keeps: cached paraphrases of an older version are then cleaned again
CLEANING_VERSION = 2
_OUTRO = re.compile(r"^\s*\(?(?:note\b|i hope\b|let me know\b|this (?:paraphrase|version|rewrite)\b)", re.IGNORECASE)
_ABOUT_THE_TEXT = re.compile(
    r"^\s*(?:(?:the|this) (?:original |given |above |rewritten )?(?:text|passage|sentence|statement|response|reply"
    r"|phrase)|in this context|in this text)\b"
    r"[^\n]{0,80}?\b(?:suggests|says|states|is about|describes|talks|discusses|means|implies|conveys|provides|"
    r"aims|highlights|uses|is a|is an|has been|was|rephrased|rewritten|paraphrased)\b",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»"}
# The labels of the rewrite templates ("A user wrote:", "A good reply was:", "A worse reply was:") and the variants a
# small model invents when it continues the template instead of answering ("A better response was:", "The user
# asked:", "A more extreme reponse would be:"), or its talk about the rewriting itself ("the rewritten reply").
_ECHOED_INSTRUCTIONS = re.compile(
    r"(?im)^\W*(?:a|the) (?:user|human) (?:wrote|asked|said)\s*:"
    r"|\b(?:reply|response|reponse)\s+(?:was|would be|could be)\s*:"
    r"|\brewritten\b|\brewrite (?:the|this|it)\b"
)
# bump when `echoes_instructions` changes what it rejects (the refiner's fingerprint records it, as for cleaning)
SCREENING_VERSION = 1


def clean_answer(text: str | None) -> str | None:
    """The paraphrase or rewrite inside a small model's answer, or None when the answer is commentary or empty.

    Removes an introduction ("Here's a paraphrase:", "Rewritten text:"), closing remarks ("Note: ...", "I hope this
    helps") on their own lines, and quotation marks around the whole answer.
    """
    if text is None:
        return None
    text = text.strip()
    text = _INTRO.sub("", text, count=1).strip()
    text = _ECHO.sub("", text, count=1).strip()
    lines = text.split("\n")
    while len(lines) > 1 and (_OUTRO.match(lines[-1]) or not lines[-1].strip()):
        lines.pop()
    text = "\n".join(lines).strip()
    closing = _QUOTES.get(text[:1])
    if closing and len(text) >= 2 and text.endswith(closing) and text[0] not in text[1:-1] \
            and closing not in text[1:-1]:
        text = text[1:-1].strip()
    if not text or _ABOUT_THE_TEXT.match(text):
        return None
    return text


def echoes_instructions(text: str) -> bool:
    """True when a rewrite repeats or continues its instructions (a template label such as "A worse reply was:",
    an invented one such as "A better response was:", or talk about "the rewritten reply") instead of being a reply.

    SmolLM2-135M does this in most of its rewrites, and such text gains semantic distance from the other response
    precisely because it is not a reply, so the distance test alone would keep it.
    """
    return bool(_ECHOED_INSTRUCTIONS.search(text))


class TextParaphraser:
    """`Paraphraser` over a `TextGenerator`: `n` sampled answers to one plain-text request per text.

    Answer k of a text is seeded (local) or cached (both), so asking again for more variants (a round's top-up)
    reuses the first answers and only generates the new ones. After each call `last_failed` holds the indices whose
    every answer failed in transport (chat); `reasons` counts why answers were dropped, over the paraphraser's life.
    """

    def __init__(self, generator: TextGenerator, *, temperature: float = 0.7, max_new_tokens: int = 192,
                 prompt_version: str = "v1"):
        self.generator = generator
        self.name = generator.name
        self.temperature = float(temperature)
        self.max_new_tokens = int(max_new_tokens)
        self.template = load_template("paraphrase_text", prompt_version)
        self.last_failed: set[int] = set()
        self.reasons: Counter = Counter()

    def fingerprint(self) -> dict[str, Any]:
        return {**self.generator.fingerprint(), "temperature": self.temperature,
                "max_new_tokens": self.max_new_tokens, **self.template.fingerprint, "cleaning": CLEANING_VERSION}

    def token_budget(self, text: str) -> int:
        """New tokens allowed for a paraphrase of `text`: about 1.5 times its length (estimated from words, since a
        generator's tokenizer may be remote) plus a margin, rounded up to a multiple of 32, at most
        `max_new_tokens`. A paraphrase is not much longer than its source, and a batch generates until its longest
        answer stops: without this, one rambling answer costs every short text in its batch the full cap."""
        estimate = 1.5 * 1.4 * len(text.split()) + 16
        return int(min(self.max_new_tokens, 32 * math.ceil(estimate / 32)))

    def answers(self, texts: Sequence[str], n: int) -> list[list[str | None]]:
        """The generator's raw answers, `n` per text, asked in groups of equal token budget."""
        answers: list[list[str | None]] = [[] for _ in texts]
        groups: dict[int, list[int]] = {}
        for i, text in enumerate(texts):
            groups.setdefault(self.token_budget(text), []).append(i)
        line = ProgressLine(f"paraphrase [{self.name}]", len(texts), f"texts (n={n})")
        done = 0
        for budget, members in sorted(groups.items()):
            out = self.generator.generate([self.template.render(text=texts[i]) for i in members], samples=n,
                                          temperature=self.temperature, max_new_tokens=budget)
            for i, answer in zip(members, out):
                answers[i] = answer
            done += len(members)
            line.update(done)
        return answers

    def paraphrase(self, texts: Sequence[str], n: int) -> list[list[str]]:
        self.last_failed = set()
        if n <= 0 or not texts:
            return [[] for _ in texts]
        answers = self.answers(texts, n)
        out = []
        for i, (text, raw) in enumerate(zip(texts, answers)):
            if raw and all(a is None for a in raw):
                self.last_failed.add(i)
            cleaned = [clean_answer(a) for a in raw if a is not None]
            self.reasons["meta_only"] += sum(c is None for c in cleaned)
            kept, reasons = filter_paraphrases(text, [c for c in cleaned if c is not None])
            self.reasons.update(reasons)
            out.append(kept[:n])
        return out


def _distinct_questions(fields: list[dict[str, str]], ask) -> list[Any]:
    """Asks each distinct field set once (`ask(list_of_field_sets) -> answers`) and spreads the answers back."""
    keys = [json.dumps(f, sort_keys=True, ensure_ascii=False) for f in fields]
    todo = sorted(set(keys))
    by_key = dict(zip(keys, fields))
    found = dict(zip(todo, ask([by_key[k] for k in todo])))
    return [found[k] for k in keys]


class TextJudge(ChatJudge):
    """`ChatJudge`'s label and harm checks (orders, position-bias handling) with verdicts from `TextGenerator.choose`:
    "A"/"B" for the better response, "yes"/"no" for harm. A verdict that matches neither option is None, which the
    refiner counts as "failed"."""

    OPTIONS = {"better": ("A", "B"), "harmful": ("yes", "no")}

    def __init__(self, generator: TextGenerator, *, order: str = "hashed", prompt_version: str = "v1"):
        if order not in self.ORDERS:
            raise ValueError(f"order must be one of {self.ORDERS}, got {order!r}")
        self.generator = generator
        self.name = generator.name
        self.order = order
        self.preference_template = load_template("judge_preference_text", prompt_version)
        self.harm_template = load_template("judge_harm_text", prompt_version)

    def _ask(self, template, fields, key, kind, validate, json_schema=None) -> list[Any]:
        options = self.OPTIONS[key]

        def ask(todo: list[dict[str, str]]) -> list[Any]:
            verdicts = self.generator.choose([template.render(**f) for f in todo], options)
            return [v if v is None or key == "better" else v == "yes" for v in verdicts]

        return _distinct_questions(fields, ask)


class TextRefiner(ChatRefiner):
    """`ChatRefiner`'s algorithm (rejected side first, then chosen, up to `max_attempts` each; keep only rewrites
    that gain distance, keep the label and pass the harm check) with plain-text rewrites from a `TextGenerator`.

    Attempt k is answer k of the same request, sampled at `temperature` (seeded or cached per k), so the attempts
    differ and a re-run replays them all. An answer that echoes its instructions (`echoes_instructions`) is not a
    reply and counts as no answer; `reasons` counts them ("echoed_instructions").
    """

    def __init__(self, generator: TextGenerator, embedder: Embedder, label_check: PreferenceCheck,
                 harm_check: HarmCheck | None = None, max_attempts: int = 5, *, temperature: float = 0.7,
                 max_new_tokens: int = 192, min_gain: float = 1e-6, min_similarity: float = 0.0,
                 prompt_version: str = "v1"):
        if temperature <= 0 and max_attempts > 1:
            raise ValueError("temperature must be > 0, or every attempt would give the same answer.")
        super().__init__(None, embedder, label_check, harm_check, max_attempts, temperature=temperature,
                         retry_temperature=max(temperature, 1e-6), min_gain=min_gain, min_similarity=min_similarity,
                         prompt_version=prompt_version)
        self.reasons: Counter[str] = Counter()
        self.generator = generator
        self.name = generator.name
        self.max_new_tokens = int(max_new_tokens)
        self.templates = {side: load_template(f"rewrite_{side}_text", prompt_version)
                          for side in ("rejected", "chosen")}

    def fingerprint(self) -> dict[str, Any]:
        return {**self.generator.fingerprint(), "templates": {s: t.fingerprint for s, t in self.templates.items()},
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens, "screening": SCREENING_VERSION,
                **({"min_similarity": self.min_similarity} if self.min_similarity else {})}

    def build_messages(self, request: RefinementRequest, side: str, attempt: int) -> Messages:
        return self.templates[side].render(prompt=request.prompt, chosen=request.chosen, rejected=request.rejected)

    def refine(self, requests: Sequence[RefinementRequest]) -> list:
        # `reasons` counts over the refiner's life (every round); the log line reports this call's share
        echoed_before = self.reasons["echoed_instructions"]
        results = super().refine(requests)
        echoed = self.reasons["echoed_instructions"] - echoed_before
        if echoed:
            logger.info("refine[%s]: %d rewrites echoed their instructions and counted as no answer", self.name,
                        echoed)
        return results

    def _rewrite(self, requests: list[RefinementRequest], side: str, attempt: int) -> list[str | None]:
        fields = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in requests]

        def ask(todo: list[dict[str, str]]) -> list[str | None]:
            answers = self.generator.generate([self.templates[side].render(**f) for f in todo], samples=attempt,
                                              temperature=self.temperature, max_new_tokens=self.max_new_tokens)
            cleaned = [clean_answer(a[attempt - 1]) for a in answers]
            echoed = [c is not None and echoes_instructions(c) for c in cleaned]
            self.reasons["echoed_instructions"] += sum(echoed)
            return [None if e else c for c, e in zip(cleaned, echoed)]

        return _distinct_questions(fields, ask)
