"""trl-mars: MARS reward-model training for Hugging Face TRL (arXiv 2602.17658)."""

from .config import MarsRewardConfig

__version__ = "0.1.0"
__all__ = ["MarsRewardConfig", "__version__"]
