"""The paraphrase fidelity filter: drop paraphrases that changed the meaning, and near-copies.

A generative paraphraser drifts: a 135M chat model sometimes answers the text instead of restating it, or
restates a different claim. A paraphrase whose embedding cosine to its source is below `min_similarity` is dropped
(it says something else); one above `max_similarity` is dropped too (a near-copy adds a pair that is the original in
all but punctuation). The filter wraps the cached paraphraser, so changing a threshold re-filters the cached answers
without generating again; when it leaves a text short of variants it asks the back-end for more answers (up to
`MAX_SAMPLES_PER_VARIANT` per variant wanted), which generates only the new ones.

Counts (cumulative; `stats`, read into each round's summary): paraphrases kept, dropped as too far, dropped as
near-copies, plus the generator's own counters (answers generated and replayed from the cache) where it has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Embedder, Paraphraser, paraphrase_requests

__all__ = ["MAX_SAMPLES_PER_VARIANT", "FidelityFilter", "similarity_verdicts"]

# A text short of kept variants is asked again, up to this many answers per variant wanted in all.
MAX_SAMPLES_PER_VARIANT = 3


def similarity_verdicts(similarities: Sequence[float], min_similarity: float, max_similarity: float) -> list[str]:
    """'kept', 'too_far' (cosine < min) or 'near_copy' (cosine > max) for each similarity."""
    return ["too_far" if s < min_similarity else "near_copy" if s > max_similarity else "kept"
            for s in similarities]


class FidelityFilter:
    """A `Paraphraser` that keeps only the variants of `inner` whose cosine to their source lies in
    [min_similarity, max_similarity] (embeddings from `embedder`, unit-normalised, so the dot product is the cosine).
    """

    def __init__(self, inner: Paraphraser, embedder: Embedder, *, min_similarity: float, max_similarity: float):
        if not 0.0 <= min_similarity < max_similarity <= 1.0:
            raise ValueError(f"need 0 <= min_similarity < max_similarity <= 1, got {min_similarity}, {max_similarity}")
        self.inner = inner
        self.embedder = embedder
        self.name = inner.name
        self.min_similarity = float(min_similarity)
        self.max_similarity = float(max_similarity)
        self.counts = {"kept": 0, "too_far": 0, "near_copy": 0}

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    @property
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {f"fidelity_{k}": v for k, v in self.counts.items()}
        out["fidelity_bounds"] = [self.min_similarity, self.max_similarity]
        generator = getattr(getattr(self.inner, "inner", None), "generator", None)
        if generator is not None and hasattr(generator, "stats"):
            out.update({f"generator_{k}": v for k, v in generator.stats().items()})
        return out

    def paraphrase(self, texts: Sequence[str], n: int) -> list[list[str]]:
        """Up to `n` kept variants per text. A text short of `n` after filtering is asked again for as many more
        answers as it lacks (a generative back-end numbers and seeds its answers, so asking for more returns the
        same first ones plus new ones, and the cache makes the repeats free), up to `MAX_SAMPLES_PER_VARIANT * n`
        answers in all: the round's budget is filled with faithful paraphrases instead of lost to the filter."""
        out: list[list[str]] = [[] for _ in texts]
        if n <= 0 or not texts:
            return out
        seen: list[set[str]] = [set() for _ in texts]
        asked = [0] * len(texts)
        limit = MAX_SAMPLES_PER_VARIANT * n
        pending = list(range(len(texts)))
        while pending:
            totals = [min(limit, asked[i] + n - len(out[i])) for i in pending]
            fresh: list[tuple[int, str]] = []
            for i, total, variants in zip(pending, totals, paraphrase_requests(
                    self.inner, [(texts[i], total) for i, total in zip(pending, totals)])):
                fresh.extend((i, v) for v in variants if v not in seen[i])
                seen[i].update(variants)
                asked[i] = total
            for i, text in self._judge(texts, fresh):
                out[i].append(text)
            pending = [i for i in pending if len(out[i]) < n and asked[i] < limit]
        return [variants[:n] for variants in out]

    def _judge(self, texts: Sequence[str], flat: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """The (text index, variant) items whose cosine to their source lies within the bounds; counts verdicts."""
        if not flat:
            return []
        sources = sorted({i for i, _ in flat})
        embeddings = np.asarray(self.embedder.encode([texts[i] for i in sources] + [v for _, v in flat]),
                                dtype=np.float64)
        source_row = {i: embeddings[j] for j, i in enumerate(sources)}
        similarities = [float(source_row[i] @ e) for (i, _), e in zip(flat, embeddings[len(sources):])]
        kept = []
        for item, verdict in zip(flat, similarity_verdicts(similarities, self.min_similarity, self.max_similarity)):
            self.counts[verdict] += 1
            if verdict == "kept":
                kept.append(item)
        return kept
