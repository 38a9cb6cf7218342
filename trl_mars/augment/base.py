"""The small protocols every augmentation back-end implements.

The trainer decides *where* to augment (margins, budgets, semantic labels) and talks to back-ends only through
these protocols, so *how* to augment (a T5 paraphraser, an OpenAI-compatible LLM, offline lexical rewrites) can be
swapped without touching the training code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Off a terminal (logs, nohup, a cluster's job output) tqdm draws nothing, so long generation reports its progress
# at INFO this often instead.
PROGRESS_LOG_SECONDS = 60.0
logger = logging.getLogger("trl_mars")


class ProgressLine:
    """`update(done)` logs "<desc>: done/total <unit>, rate/s, about N min left" at INFO, at most once every
    `PROGRESS_LOG_SECONDS` and never for the last item (the caller reports the end)."""

    def __init__(self, desc: str, total: int, unit: str):
        self.desc, self.total, self.unit = desc, total, unit
        self.started = self.last_report = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done < self.total and now - self.last_report >= PROGRESS_LOG_SECONDS:
            rate = done / max(now - self.started, 1e-9)
            logger.info("%s: %d/%d %s, %.2f/s, about %.0f min left", self.desc, done, self.total, self.unit, rate,
                        (self.total - done) / rate / 60)
            self.last_report = now


@runtime_checkable
class Paraphraser(Protocol):
    """Produces meaning-preserving variants of texts.

    `name` is the back-end name written into every generated row's provenance. `fingerprint()` returns everything
    that changes the output for a given input (back-end, model, decoding parameters, prompt-template version); the
    persistent cache keys on it, so it must never contain secrets such as API keys.
    """

    name: str

    def fingerprint(self) -> dict[str, Any]: ...

    def paraphrase(self, texts: Sequence[str], n: int) -> list[list[str]]:
        """Returns, for each text, up to `n` distinct paraphrases, none equal to the text itself.

        Fewer than `n` may come back when the back-end cannot find enough acceptable variants; callers report the
        shortfall instead of failing.
        """
        ...


def paraphrase_requests(paraphraser: Paraphraser, requests: Sequence[tuple[str, int]]) -> list[list[str]]:
    """At most n variants for each (text, n) request, in request order. The protocol takes one n per call, so
    requests are asked in groups of equal n, smallest n first."""
    by_n: dict[int, list[int]] = {}
    for position, (_, n) in enumerate(requests):
        by_n.setdefault(n, []).append(position)
    out: list[list[str]] = [[] for _ in requests]
    for n, positions in sorted(by_n.items()):
        for position, texts in zip(positions, paraphraser.paraphrase([requests[p][0] for p in positions], n)):
            out[position] = list(texts)[:n]
    return out


@runtime_checkable
class Embedder(Protocol):
    """Sentence embeddings used for the semantic distance d = 1 - cos(e+, e-)."""

    def fingerprint(self) -> dict[str, Any]: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Returns a float32 array of shape (len(texts), dim) whose rows have unit L2 norm."""
        ...


Messages = list[dict[str, str]]  # a chat conversation: [{"role": "system"|"user"|"assistant", "content": str}, ...]


@runtime_checkable
class TextGenerator(Protocol):
    """Plain-text answers from an instruction-following model, for the back-ends that a small model must be able
    to serve: one answer is one text, and a verdict is one of a few fixed options (a 135M model does not follow JSON
    reliably). Implemented in process by `engine.LocalEngine` and over HTTP by `client.ChatTextGenerator`; the
    paraphraser, refiner and judge of `local` are written once against this protocol.

    `fingerprint()` holds everything that changes an answer for a given request (model, decoding, seed), never a
    secret. Implementations cache every answer in the `AugmentationCache`, unparseable ones included, so that an
    identical re-run generates nothing; `stats()` counts what happened.
    """

    name: str

    def fingerprint(self) -> dict[str, Any]: ...

    def generate(
        self, requests: Sequence[Messages], *, samples: int = 1, temperature: float = 0.7, max_new_tokens: int = 192
    ) -> list[list[str | None]]:
        """For each request, `samples` answers, stripped of surrounding white space. Answer k of a request is the same
        on every call (seeded by the request and k, or replayed from the cache), whatever else is in the batch.
        None marks an answer that could not be had (a transport failure after retries); it is not cached."""
        ...

    def choose(self, requests: Sequence[Messages], options: Sequence[str]) -> list[str | None]:
        """For each request, which of `options` (short answers such as "A"/"B" or "yes"/"no") the model gives; None
        when it gives none of them (an unparseable answer, cached and counted like the others)."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters over the generator's life: at least "generated" (answers computed now), "cached" (answers
        replayed from the cache) and "unparseable" (verdicts that matched no option)."""
        ...


# Checks that a rewritten pair still prefers the chosen response. Takes (prompt, chosen, rejected) triples and
# returns one answer per triple: True (still preferred), False (label flipped) or None (the check could not answer;
# the rewrite is rejected as "failed"). The default is a chat judge; the trainer can supply one backed by the
# current reward model.
PreferenceCheck = Callable[[Sequence[tuple[str, str, str]]], "list[bool | None]"]


@dataclass
class RefinementRequest:
    """A low-distance tuple selected for rewriting (docs/architecture.md, step 5)."""

    index: int
    prompt: str
    chosen: str
    rejected: str
    distance: float


@dataclass
class RefinementResult:
    """What happened to one request.

    `accepted` is True only when the rewrite increased the semantic distance, kept the preference label and passed
    the harm check; then `chosen`/`rejected` hold the kept texts. Otherwise they hold the original texts and
    `reason` says why the rewrite was rejected: one of "no_distance_gain", "drifted" (every rewrite that changed
    the text left the topic: below the refiner's `min_similarity`), "label_flipped", "harmful", "failed" (the
    back-end gave no usable answer after its retries).
    """

    index: int
    chosen: str
    rejected: str
    distance: float
    new_distance: float
    accepted: bool
    rewritten: str | None  # "rejected", "chosen" or None
    attempts: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RefinementStats:
    """The paper's Table 4 figures for one run, plus why the other rewrites were rejected."""

    high_distance: int = 0
    low_distance: int = 0
    attempted: int = 0
    improved: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def retained_share(self) -> float | None:
        return self.improved / self.attempted if self.attempted else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["retained_share"] = self.retained_share
        return out


@runtime_checkable
class Refiner(Protocol):
    """Rewrites semantically close pairs to sharpen the chosen/rejected contrast while keeping the label."""

    name: str

    def refine(self, requests: Sequence[RefinementRequest]) -> list[RefinementResult]: ...
