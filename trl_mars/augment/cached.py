"""A caching wrapper for any `Paraphraser`: no text is ever sent to a back-end twice.

Final answers (the variants of a text) are stored in the `AugmentationCache` chunk by chunk, as soon as each chunk
comes back, and a re-run asks the back-end only for what is missing. A back-end that pays per request keeps its
own finer record in the same cache: the chat client writes every completed answer as it arrives (see
`client.ChatClient`), so a run killed in the middle of a chunk loses only the requests in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from .base import Paraphraser
from .cache import AugmentationCache

logger = logging.getLogger("trl_mars")

__all__ = ["CachedParaphraser", "paraphrase_key"]


def paraphrase_key(text: str, n: int) -> str:
    """The cache key of one paraphrase request: the number of variants asked for and the text."""
    return f"{n}\x00{text}"


class CachedParaphraser:
    """Wraps `inner` so that every answer is read from / written to `cache`.

    The cache namespace is ``{"op": "paraphrase", **inner.fingerprint()}``: changing the back-end, the model, the
    decoding parameters or the prompt template starts a fresh namespace; nothing else does.

    Failed items are not cached here: a back-end that can fail (the chat back-end) reports the indices of the items
    of its last call that failed in ``inner.last_failed``; those come back as ``[]`` for this run and go back to the
    back-end next time (where the chat client replays the answers it already has and asks only for what failed in
    transport). A ``[]`` for an index not in ``last_failed`` is a genuine answer ("no acceptable variant") and is cached.

    Counters (cumulative over calls): ``hits`` (unique texts found in the cache), ``misses``, ``calls_made`` (texts
    sent to the inner back-end) and ``failed`` (texts whose answer failed).
    """

    def __init__(self, inner: Paraphraser, cache: AugmentationCache, chunk_size: int = 32, progress: bool = True):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.inner = inner
        self.cache = cache
        self.chunk_size = int(chunk_size)
        self.progress = progress
        self.name = inner.name
        self.hits = 0
        self.misses = 0
        self.calls_made = 0
        self.failed = 0

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def namespace(self) -> dict[str, Any]:
        return {"op": "paraphrase", **self.inner.fingerprint()}

    def paraphrase(self, texts: Sequence[str], n: int) -> list[list[str]]:
        if n <= 0 or not texts:
            return [[] for _ in texts]
        unique = list(dict.fromkeys(texts))
        namespace = self.namespace()
        keys = {text: paraphrase_key(text, n) for text in unique}
        cached = self.cache.get_many(namespace, list(keys.values()))
        answers: dict[str, list[str]] = {text: cached[keys[text]] for text in unique if keys[text] in cached}
        missing = [text for text in unique if text not in answers]
        self.hits += len(answers)
        self.misses += len(missing)
        logger.info(
            "paraphrase[%s]: %d unique texts, %d cached, %d to request (n=%d)",
            self.name, len(unique), len(answers), len(missing), n,
        )

        failed_now = 0
        with tqdm(
            total=len(unique),
            initial=len(answers),
            desc=f"paraphrase [{self.name}]",
            unit="text",
            disable=not self.progress or None,  # None: tqdm turns itself off when stderr is not a terminal
            leave=False,
        ) as bar:
            for start in range(0, len(missing), self.chunk_size):
                chunk = missing[start : start + self.chunk_size]
                outputs = self.inner.paraphrase(chunk, n)
                if len(outputs) != len(chunk):
                    raise RuntimeError(
                        f"Paraphraser {self.name!r} returned {len(outputs)} answers for {len(chunk)} texts."
                    )
                failed = set(getattr(self.inner, "last_failed", None) or ())
                self.calls_made += len(chunk)
                fresh: dict[str, list[str]] = {}
                for i, (text, variants) in enumerate(zip(chunk, outputs)):
                    variants = list(variants)
                    answers[text] = variants
                    if i in failed:
                        failed_now += 1
                    else:
                        fresh[keys[text]] = variants
                self.cache.put_many(namespace, fresh)
                bar.update(len(chunk))
        self.failed += failed_now
        if failed_now:
            logger.warning(
                "paraphrase[%s]: %d of %d requested texts failed after retries; they get no variants this run "
                "and will be requested again next run",
                self.name, failed_now, len(missing),
            )
        return [list(answers[text]) for text in texts]
