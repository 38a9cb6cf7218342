"""Augmentation back-ends: how synthetic text is produced, behind the protocols in `base`.

No module here imports TRL (tests/test_import_without_trl.py checks it): `trl_mars.training.config` is imported only
where a default is read from it, so the back-ends can be used on their own.
"""

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
