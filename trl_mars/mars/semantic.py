"""Semantic distances and labels (docs/architecture.md, step 4; paper eq. 7).

For every original tuple, e+ and e- are unit-normalised sentence embeddings of the chosen and rejected responses,
d_i = 1 - e_i+ . e_i- (in [0, 2]), the threshold is the mean distance d_bar, and a tuple is "high" when
d_i >= d_bar, else "low". Low-distance tuples are the ones refinement rewrites.

Embeddings go through the `Embedder` protocol (`augment.base`); its sentence-transformers implementation lives in
`augment.embedding` and is re-exported here for convenience. With an `AugmentationCache`, each distinct text is
embedded once per embedder fingerprint: a re-run makes no encoder call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..augment.base import Embedder
from ..augment.cache import AugmentationCache
from ..augment.embedding import (
    SentenceTransformerEmbedder,
    check_embedding_model,
    resolve_embedding_model,
    unit_rows,
)

__all__ = [
    "SentenceTransformerEmbedder",
    "check_embedding_model",
    "resolve_embedding_model",
    "semantic_distances",
    "semantic_labels",
]


def _embed_unique(embedder: Embedder, texts: Sequence[str], cache: AugmentationCache | None) -> dict[str, np.ndarray]:
    """Embedding of every distinct text, from the cache where present; only missing texts reach the encoder,
    in a single `encode` call."""
    unique = list(dict.fromkeys(texts))
    found: dict[str, np.ndarray] = {}
    namespace = None
    if cache is not None:
        namespace = {"op": "embedding", **embedder.fingerprint()}
        for text, value in cache.get_many(namespace, unique).items():
            found[text] = np.asarray(value, dtype=np.float32)
    missing = [t for t in unique if t not in found]
    if missing:
        emb = unit_rows(embedder.encode(missing))
        if emb.shape[0] != len(missing):
            raise ValueError(f"embedder returned {emb.shape[0]} rows for {len(missing)} texts")
        new = dict(zip(missing, emb))
        found.update(new)
        if cache is not None:
            cache.put_many(namespace, {t: [float(x) for x in e] for t, e in new.items()})
    return found


def semantic_distances(
    embedder: Embedder,
    chosen: Sequence[str],
    rejected: Sequence[str],
    cache: AugmentationCache | None = None,
) -> np.ndarray:
    """d_i = 1 - e_i+ . e_i- for each (chosen_i, rejected_i), as a float64 array clipped to [0, 2].

    Every distinct text is encoded once (identical responses share one embedding); with `cache`, embeddings are
    stored per text under the namespace {"op": "embedding", **embedder.fingerprint()}, so they are computed once
    per dataset and a re-run makes no encoder call.
    """
    if len(chosen) != len(rejected):
        raise ValueError(f"chosen and rejected differ in length: {len(chosen)} vs {len(rejected)}")
    if not chosen:
        return np.zeros(0, dtype=np.float64)
    table = _embed_unique(embedder, [*chosen, *rejected], cache)
    pos = np.stack([table[t] for t in chosen]).astype(np.float64)
    neg = np.stack([table[t] for t in rejected]).astype(np.float64)
    if pos.shape[1] != neg.shape[1]:
        raise ValueError("chosen and rejected embeddings differ in dimension (mixed cache entries?)")
    return np.clip(1.0 - np.einsum("ij,ij->i", pos, neg), 0.0, 2.0)


# Distances within this much of the threshold count as ties (and so as "high"): a mean of numbers that are not
# exactly representable can land a rounding error above an equal element (mean(0.2, 0.4, 0.6) > 0.4 in floats).
_TIE_TOLERANCE = 1e-12


def semantic_labels(distances) -> tuple[list[str], float]:
    """("high" | "low" per tuple, threshold) with threshold = mean(d) and "high" iff d_i >= threshold (paper eq. 7).

    Ties are decided up to floating-point rounding: the mean is computed with `math.fsum`, clamped into
    [min(d), max(d)] (where it lies mathematically), and a d_i within 1e-12 of it counts as equal, so equal
    distances are all "high" and a distance equal to the mean is "high". An empty input gives ([], nan).
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return [], float("nan")
    if not np.all(np.isfinite(d)):
        raise ValueError("semantic distances must be finite")
    mean = math.fsum(d.tolist()) / d.size
    threshold = min(max(mean, float(d.min())), float(d.max()))
    cut = threshold - _TIE_TOLERANCE
    return ["high" if x >= cut else "low" for x in d.tolist()], threshold
