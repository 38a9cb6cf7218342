"""Semantic distances d = 1 - e+ . e- and the mean-threshold labels (docs/architecture.md, step 4; paper eq. 7)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from trl_mars.augment.base import Embedder
from trl_mars.augment.cache import AugmentationCache
from trl_mars.augment.model_source import ModelSourceError
from trl_mars.mars.semantic import (
    SentenceTransformerEmbedder,
    check_embedding_model,
    resolve_embedding_model,
    semantic_distances,
    semantic_labels,
)
from trl_mars.training.config import PACKAGED_MINILM

# Fixed unit vectors for the fake embedder.
VECTORS = {
    "a": [1.0, 0.0],
    "b": [0.6, 0.8],
    "c": [0.0, 1.0],
    "d": [0.0, 1.0],
    "e": [1.0, 0.0],
    "f": [-1.0, 0.0],
    "g": [0.6, 0.8],
    "h": [0.8, 0.6],
}


class FakeEmbedder:
    """Returns the fixed vectors above and counts what it was asked to encode."""

    def __init__(self, name="fake"):
        self.name = name
        self.calls = 0
        self.encoded: list[str] = []

    def fingerprint(self):
        return {"embedder": self.name, "version": 1}

    def encode(self, texts):
        self.calls += 1
        self.encoded.extend(texts)
        return np.array([VECTORS[t] for t in texts], dtype=np.float32)


CHOSEN = ["a", "c", "e", "g"]
REJECTED = ["b", "d", "f", "h"]
# d = 1 - e+ . e-
#   (a, b): 1 - (1*0.6 + 0*0.8)   = 1 - 0.6  = 0.40
#   (c, d): 1 - (0*0 + 1*1)       = 1 - 1    = 0.00
#   (e, f): 1 - (1*(-1) + 0*0)    = 1 + 1    = 2.00
#   (g, h): 1 - (0.6*0.8 + 0.8*0.6) = 1 - 0.96 = 0.04
EXPECTED = [0.40, 0.00, 2.00, 0.04]
# mean = (0.40 + 0.00 + 2.00 + 0.04) / 4 = 2.44 / 4 = 0.61 -> only (e, f) is "high".
EXPECTED_THRESHOLD = 0.61
EXPECTED_LABELS = ["low", "low", "high", "low"]


def test_fake_embedder_satisfies_protocol():
    assert isinstance(FakeEmbedder(), Embedder)


def test_distances_match_hand_computation():
    d = semantic_distances(FakeEmbedder(), CHOSEN, REJECTED)
    assert d.shape == (4,)
    np.testing.assert_allclose(d, EXPECTED, atol=1e-6)


def test_labels_match_hand_computation():
    labels, threshold = semantic_labels(semantic_distances(FakeEmbedder(), CHOSEN, REJECTED))
    assert threshold == pytest.approx(EXPECTED_THRESHOLD, abs=1e-6)
    assert labels == EXPECTED_LABELS


def test_labels_ties_go_high():
    # mean(0.2, 0.4, 0.6) = 1.2 / 3 = 0.4, so the middle one is exactly at the threshold: ">=" makes it "high".
    labels, threshold = semantic_labels([0.2, 0.4, 0.6])
    assert threshold == pytest.approx(0.4)
    assert labels == ["low", "high", "high"]
    # All equal: every distance equals the mean, so all are "high" (no rounding can push the mean above them).
    for value in (0.1, 0.3, 1 / 3, 0.7):
        labels, threshold = semantic_labels([value] * 7)
        assert labels == ["high"] * 7
        assert threshold == value
    # (0.1 + 0.7) / 2 = 0.4: 0.1 < 0.4 is low, 0.7 >= 0.4 is high.
    assert semantic_labels([0.1, 0.7]) == (["low", "high"], pytest.approx(0.4))


def test_labels_empty_and_invalid():
    labels, threshold = semantic_labels([])
    assert labels == [] and math.isnan(threshold)
    with pytest.raises(ValueError):
        semantic_labels([0.1, float("nan")])


def test_distances_encode_each_distinct_text_once_without_cache():
    fake = FakeEmbedder()
    # "a" appears three times and "b" twice: 8 texts, 2 distinct, one encoder call.
    d = semantic_distances(fake, ["a", "a", "b", "a"], ["b", "a", "a", "a"])
    assert fake.calls == 1
    assert sorted(fake.encoded) == ["a", "b"]
    # (a, b) and (b, a) -> 0.4; (a, a) -> 0.
    np.testing.assert_allclose(d, [0.4, 0.0, 0.4, 0.0], atol=1e-6)


def test_cache_makes_second_run_encode_nothing(tmp_path):
    with AugmentationCache(tmp_path) as cache:
        first = FakeEmbedder()
        d1 = semantic_distances(first, CHOSEN, REJECTED, cache=cache)
        assert first.calls == 1 and sorted(first.encoded) == sorted(set(CHOSEN + REJECTED))
        assert len(cache) == 8  # one entry per distinct text

        second = FakeEmbedder()  # same fingerprint: every embedding is a cache hit
        d2 = semantic_distances(second, CHOSEN, REJECTED, cache=cache)
        assert second.calls == 0 and second.encoded == []
        np.testing.assert_array_equal(d1, d2)

        # A partly new dataset encodes only the texts it has not seen.
        third = FakeEmbedder()
        semantic_distances(third, ["a", "g"], ["b", "a"], cache=cache)
        assert third.calls == 0
        VECTORS["new text"] = [0.0, -1.0]
        try:
            semantic_distances(third, ["a", "new text"], ["new text", "c"], cache=cache)
        finally:
            del VECTORS["new text"]
        assert third.calls == 1 and third.encoded == ["new text"]

        # Another embedder fingerprint is another namespace: nothing is reused.
        other = FakeEmbedder(name="other")
        semantic_distances(other, CHOSEN, REJECTED, cache=cache)
        assert other.calls == 1 and len(other.encoded) == 8

    # The cache is persistent: a new process (here: a new connection) makes no encoder call either.
    with AugmentationCache(tmp_path) as cache:
        again = FakeEmbedder()
        d3 = semantic_distances(again, CHOSEN, REJECTED, cache=cache)
        assert again.calls == 0
        np.testing.assert_array_equal(d1, d3)


def test_non_unit_embeddings_are_renormalised():
    class Unnormalised(FakeEmbedder):
        def encode(self, texts):
            return 5.0 * super().encode(texts)

    np.testing.assert_allclose(semantic_distances(Unnormalised(), CHOSEN, REJECTED), EXPECTED, atol=1e-6)


def test_distances_validate_inputs():
    with pytest.raises(ValueError):
        semantic_distances(FakeEmbedder(), ["a"], ["b", "c"])
    assert semantic_distances(FakeEmbedder(), [], []).shape == (0,)


def test_resolve_embedding_model():
    path = resolve_embedding_model(PACKAGED_MINILM)
    assert (Path(path) / "config.json").is_file()
    hub_id = "sentence-transformers/all-mpnet-base-v2"
    assert resolve_embedding_model(hub_id) == hub_id
    assert resolve_embedding_model("/some/local/dir") == "/some/local/dir"


def test_embedder_loads_lazily():
    embedder = SentenceTransformerEmbedder(PACKAGED_MINILM, batch_size=8)
    assert embedder._model is None  # nothing loaded at construction
    assert embedder.fingerprint() == {"embedder": PACKAGED_MINILM, "version": 1}
    assert isinstance(embedder, Embedder)


def test_packaged_minilm_unit_norms_and_paraphrase_closer_than_unrelated():
    embedder = SentenceTransformerEmbedder(PACKAGED_MINILM, batch_size=8, device="cpu")
    texts = [
        "The cat is sleeping on the sofa.",
        "A cat naps on the couch.",
        "Quarterly revenue rose because of strong exports.",
    ]
    emb = embedder.encode(texts)
    assert emb.dtype == np.float32
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    d = semantic_distances(embedder, [texts[0], texts[0]], [texts[1], texts[2]])
    assert 0.0 <= d[0] < d[1] <= 2.0
    labels, threshold = semantic_labels(d)
    assert labels == ["low", "high"] and d[0] < threshold <= d[1]


# ----- start-up check: an embedder that cannot load fails in seconds, with the fix --------------------------------------


def test_unloadable_hub_embedder_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelSourceError) as info:
        check_embedding_model("sentence-transformers/all-mpnet-base-v2-not-cached-here")
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "mars_embedding_model" in message and PACKAGED_MINILM in message and "offline" in message
    # the embedder itself checks before it loads: no Hub retries, the same message
    embedder = SentenceTransformerEmbedder("sentence-transformers/all-mpnet-base-v2-not-cached-here")
    with pytest.raises(ModelSourceError, match="packaged:all-MiniLM-L6-v2"):
        embedder.encode(["a text"])
    assert time.monotonic() - start < 10.0


def test_embedder_check_accepts_the_packaged_model_and_paths(minilm_path, tmp_path):
    check_embedding_model(PACKAGED_MINILM)
    check_embedding_model(minilm_path)
    check_embedding_model(Path(minilm_path))  # os.PathLike
    with pytest.raises(ModelSourceError, match="not a saved model"):
        check_embedding_model(tmp_path)  # an empty folder
    with pytest.raises(ModelSourceError, match="not a folder here"):
        check_embedding_model(tmp_path / "missing" / "model")


def test_embedder_takes_a_path_model_id(minilm_path):
    embedder = SentenceTransformerEmbedder(Path(minilm_path), batch_size=4, device="cpu")
    assert embedder.fingerprint() == {"embedder": minilm_path, "version": 1}
    emb = embedder.encode(["A path works as a model id."])
    assert emb.shape == (1, 384)
