"""Start-up checks: every model and endpoint a run needs is checked before the reward model loads.

`MarsRewardTrainer.__init__` calls `prepare_start` on every rank after validating the data and before
`RewardTrainer.__init__` loads anything. It checks, in seconds and without downloading:

- the reward model, the embedder (strategy `mars`) and the seq2seq paraphraser: a local folder must hold a saved
  model; a Hub id must be in the local cache when the Hub is offline (`HF_HUB_OFFLINE=1`), or answer one metadata
  request (no retries) when it is not;
- the chat endpoint (chat paraphraser, refiner): its API key variable must be set. Rank 0 also opens a connection
  when it builds the back-ends (`augment.factory.build_chat_client`).

The model checks are the back-ends' own (`augment.model_source.check_model_source`, through
`check_embedding_model` / `check_seq2seq_model` for the back-ends); this module only decides which ones a run needs.
A failure raises `PreflightError` (the same class as `ModelSourceError`, a `ValueError`) whose message names the
setting and the fix. The same call also makes the start-up adjustments a user would otherwise have to know about
(our choices, not the paper's): CPU runs skip pinned memory, and the expected "new head" load report becomes one
line (`trl_mars.training.console`). A `peft_config` is passed on as given, as `RewardTrainer` does (a warning says when
that leaves the reward head frozen), except `task_type="CAUSAL_LM"`, which PEFT cannot apply to a sequence
classifier: that one becomes `SEQ_CLS`, with a warning (`reward_peft_config`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from ..augment.embedding import check_embedding_model
from ..augment.model_source import (
    ModelSourceError,
    check_model_source,
    resolve_packaged_model,
)
from ..augment.seq2seq import check_seq2seq_model
from .config import (
    DEFAULT_SEQ2SEQ_PARAPHRASER,
    PACKAGED_MINILM,
    PACKAGED_SMOLLM2,
    MarsRewardConfig,
)

logger = logging.getLogger("trl_mars")

# One error type for every start-up check (a model that cannot load, a chat key that is not set): a ValueError, so
# the recipes print it as one line. The checks themselves live with the back-ends, in `augment.model_source`.
PreflightError = ModelSourceError


def as_model_id(model: Any) -> Any:
    """A model id as the loaders want it: `os.PathLike` becomes `str`, `PACKAGED_MINILM` becomes its folder.
    Modules (and anything else) pass through unchanged."""
    if isinstance(model, (str, os.PathLike)):
        return resolve_packaged_model(model)
    return model


def check_pretrained(name: str | os.PathLike, *, setting: str, fix: str, revision: str | None = None) -> None:
    """Raises `PreflightError` unless the model `name` (a local folder, a Hub id or `PACKAGED_MINILM`) can be loaded
    now; `setting` names the option in the message, `fix` says what to set instead (`check_model_source`)."""
    check_model_source(resolve_packaged_model(name), option=setting, fix=fix, revision=revision)


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
    if embedder is None and (args.uses_semantic_labels or (args.mars_strategy == "mars" and refiner is not None)):
        check_embedding_model(args.mars_embedding_model)
    if args.mars_strategy == "won" and args.mars_won_generator == "causal_lm":
        check_pretrained(args.mars_won_model or PACKAGED_SMOLLM2, setting="mars_won_model",
                         fix=f"Give a local folder of a chat causal LM to write West-of-N candidates, use "
                             f"'{PACKAGED_SMOLLM2}' (offline), or set `mars_won_generator='paraphrase'`.")
    if args.mars_strategy == "won" and args.mars_won_generator == "chat":
        check_chat_key(args, "mars_won_generator='chat'")
    if not args.generates_with_paraphraser:
        return
    if paraphraser is None and args.mars_paraphraser == "seq2seq":
        check_seq2seq_model(args.mars_paraphraser_model or DEFAULT_SEQ2SEQ_PARAPHRASER)
    if paraphraser is None and args.mars_paraphraser == "local":
        check_pretrained(args.mars_paraphraser_model or PACKAGED_SMOLLM2, setting="mars_paraphraser_model",
                         fix=f"Give a local folder of a chat causal LM, or use '{PACKAGED_SMOLLM2}' (offline).")
    if paraphraser is None and args.mars_paraphraser != "lexical" and embedder is None \
            and args.paraphrase_similarity_bounds != (0.0, 1.0):
        check_embedding_model(args.mars_embedding_model)  # the fidelity filter's embedder
    if paraphraser is None and args.mars_paraphraser == "chat":
        check_chat_key(args, "mars_paraphraser='chat'")
    if refiner is None and args.uses_semantic_labels and args.mars_refiner == "local":
        check_pretrained(args.refiner_model, setting="mars_refiner_model",
                         fix=f"Give a local folder of a chat causal LM, or use '{PACKAGED_SMOLLM2}' (offline).")
    if refiner is None and args.uses_semantic_labels and args.mars_refiner == "chat":
        check_chat_key(args, "mars_refiner='chat'")


_HEAD_NAMES = ("score", "classifier")


def reward_peft_config(peft_config: Any, model: Any) -> Any:
    """The PEFT config `RewardTrainer` gets: the caller's, as given, except where PEFT would crash.

    - `task_type="CAUSAL_LM"` (what TRL's `get_peft_config` returns) wraps a `*ForSequenceClassification` model in
      `PeftModelForCausalLM`, which fails at once (`... has no attribute 'prepare_inputs_for_generation'`), with
      `trl.RewardTrainer` too. Here, and only here, a copy with `task_type="SEQ_CLS"` is used instead, with a warning:
      PEFT then trains the head in `modules_to_save`.
    - Anything else (`LoraConfig()` without a task type, `SEQ_CLS`, ...) is passed on unchanged, so the model has
      the parameters and the trainable set that `RewardTrainer` gives it; `warn_if_head_frozen` says when that
      leaves the reward head at its random initialisation.
    """
    if peft_config is None or not _is_sequence_classifier(model):
        return peft_config
    if getattr(peft_config, "task_type", None) == "CAUSAL_LM":
        peft_config = dataclasses.replace(peft_config, task_type="SEQ_CLS")
        logger.warning(
            "MARS: peft_config.task_type='CAUSAL_LM' cannot wrap a sequence-classification reward model (PEFT fails "
            "with \"no attribute 'prepare_inputs_for_generation'\", in trl.RewardTrainer too); using a copy with "
            "task_type='SEQ_CLS', which also trains the reward head. Set task_type='SEQ_CLS' to silence this.")
        return peft_config
    return warn_if_head_frozen(peft_config, model)


def warn_if_head_frozen(peft_config: Any, model: Any) -> Any:
    """Returns `peft_config` unchanged (as `RewardTrainer` uses it) and warns when the reward head will not train.

    A `LoraConfig` without `task_type="SEQ_CLS"`, without the head in `modules_to_save` and without it among the
    `target_modules` (TRL's `get_peft_config` and a bare `LoraConfig()` are all three) leaves the score head of a
    sequence-classification model frozen at its random initialisation; only the adapters train. `RewardTrainer`
    does the same, so we do not change the config (an earlier version swapped in a `SEQ_CLS` copy for any task type,
    which changed the parameter layout and names under the user's feet); we say what happens and how to train the
    head.
    """
    if (peft_config is None or not _is_sequence_classifier(model) or not hasattr(peft_config, "target_modules")
            or getattr(peft_config, "task_type", None) == "SEQ_CLS"):
        return peft_config
    named = [*(getattr(peft_config, "modules_to_save", None) or [])]
    targets = getattr(peft_config, "target_modules", None)
    named += [targets] if isinstance(targets, str) else list(targets or [])
    if any(head in str(name) for name in named for head in _HEAD_NAMES):
        return peft_config
    logger.warning(
        "MARS: with this peft_config (task_type=%s, no 'score'/'classifier' in modules_to_save) the reward head "
        "stays at its random initialisation and only the adapters train, as with trl.RewardTrainer. To train the "
        "head, set `task_type=\"SEQ_CLS\"` or `modules_to_save=[\"score\"]` (\"classifier\" for BERT-like "
        "encoders) in the LoraConfig.", getattr(peft_config, "task_type", None))
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
