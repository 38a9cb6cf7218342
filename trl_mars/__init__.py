"""trl-mars: MARS reward-model training for Hugging Face TRL (arXiv 2602.17658).

Public names are imported lazily, so the pure parts (allocation math, back-ends, the cache) load without
importing TRL and transformers.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "MarsRewardConfig": "trl_mars.training.config",
    "MarsRewardTrainer": "trl_mars.training.trainer",
    "MarsRewardFunction": "trl_mars.align.rewards",
    "MarsAugmentationCallback": "trl_mars.training.callback",
    "AugmentationCache": "trl_mars.augment.cache",
    "allocate": "trl_mars.mars.allocation",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trl_mars' has no attribute {name!r}")
