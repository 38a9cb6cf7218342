"""Augmentation back-ends: how synthetic text is produced, behind the protocols in `base`."""

from .base import (
    Embedder,
    Paraphraser,
    PreferenceCheck,
    RefinementRequest,
    RefinementResult,
    RefinementStats,
    Refiner,
)

__all__ = [
    "Embedder",
    "Paraphraser",
    "PreferenceCheck",
    "RefinementRequest",
    "RefinementResult",
    "RefinementStats",
    "Refiner",
]
