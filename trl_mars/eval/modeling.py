"""Loading saved models for inference: a reward model or a causal-LM policy, full or as a LoRA adapter.

Every caller that loads a saved model to score or generate with (`MarsRewardFunction`, `eval_rm`, the win rate)
goes through here, so a folder loads the same way everywhere:

* a folder with `adapter_config.json` is a PEFT adapter: its base model is loaded, the adapter applied and merged,
  so inference pays no adapter overhead;
* the tokenizer is the one saved in the folder, or the base model's for an adapter folder without one;
* models are loaded whole even inside a DeepSpeed ZeRO-3 run: they only run inference and are never wrapped in an
  engine, so partitioned (empty) parameters would be useless;
* the model is frozen, in eval mode, on `device` (default: this process's device).

A reward adapter must carry its score head (`task_type="SEQ_CLS"` or the head in `modules_to_save`): without it the
head would be freshly random at load time and every score meaningless, so `load_reward_model` refuses such a folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so that importing this module stays cheap
    import torch

__all__ = ["check_reward_head", "load_causal_lm", "load_reward_model", "zero3_init_disabled"]


@contextlib.contextmanager
def zero3_init_disabled():
    """Loads a model whole even inside a DeepSpeed ZeRO-3 run.

    Under `accelerate launch` with ZeRO-3, transformers partitions every model created by `from_pretrained`
    (`deepspeed.zero.Init`). A model that only runs inference and is not wrapped in an engine would then hold empty
    parameters. transformers keeps the active DeepSpeed config in a module-level weak reference; it is cleared while
    loading and restored afterwards (if a transformers release renames it, loading goes on as is).
    """
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers without the integration module
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    if saved is not None:
        hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        if saved is not None:
            hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _dtype_kwargs(dtype: torch.dtype | str | None) -> dict[str, Any]:
    """`from_pretrained` keyword for `dtype`: a torch dtype, its name ("bfloat16"), "auto", or None for the default."""
    if not dtype:
        return {}
    import torch

    return {"dtype": getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype}


def _default_device() -> torch.device:
    from accelerate import PartialState

    return PartialState().device


def check_reward_head(path: str, adapter_config: dict[str, Any]) -> None:
    """Refuses a LoRA adapter saved without its reward head (it would score with a random head)."""
    if adapter_config.get("task_type") != "SEQ_CLS" and not adapter_config.get("modules_to_save"):
        raise ValueError(
            f"{path}: the adapter was saved with task_type={adapter_config.get('task_type')!r} and no modules_to_save, "
            "so the reward head was never saved and would be random at load time. Fix: train the LoRA reward "
            "model with `--lora_task_type SEQ_CLS` (or put the head, e.g. 'classifier'/'score', in "
            "`--lora_modules_to_save`).")


def _load_merged(path: str, model_class, *, model_kwargs: dict[str, Any], tokenizer_kwargs: dict[str, Any],
                 resolve_name: Callable[[str], str] = str,
                 check_adapter: Callable[[str, dict[str, Any]], None] | None = None):
    """(model, tokenizer) of a full model or a LoRA adapter merged into its base (see the module doc).

    `resolve_name` maps a model name (the folder's, or the adapter's base) to what `from_pretrained` loads;
    `check_adapter(path, adapter_config)` may refuse an adapter before anything is loaded.
    """
    from transformers import AutoTokenizer

    path = resolve_name(path)
    adapter_config_path = os.path.join(path, "adapter_config.json")
    with zero3_init_disabled():
        if os.path.isfile(adapter_config_path):
            from peft import PeftModel

            with open(adapter_config_path, encoding="utf-8") as handle:
                adapter_config = json.load(handle)
            if check_adapter is not None:
                check_adapter(path, adapter_config)
            base_name = resolve_name(adapter_config["base_model_name_or_path"])
            base = model_class.from_pretrained(base_name, **model_kwargs)
            model = PeftModel.from_pretrained(base, path).merge_and_unload()
        else:
            base_name = path
            model = model_class.from_pretrained(path, **model_kwargs)
    tokenizer_source = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else base_name
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **tokenizer_kwargs)
    if tokenizer.pad_token_id is None:
        # Decoders saved without a pad token: padding is masked out, any id works; EOS is TRL's choice too.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _ready(model, device: str | torch.device | None):
    model.requires_grad_(False).eval()
    return model.to(device if device is not None else _default_device())


def load_reward_model(path: str, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None):
    """(model, tokenizer) of a reward model saved by `MarsRewardTrainer` (or any sequence classifier, 1 label).

    A full model or a LoRA adapter (merged into its base); an adapter without its score head is refused (see the
    module doc). The model's `pad_token_id` is set to the tokenizer's, the id scoring pads with, so a decoder reward
    model finds its last real token.
    """
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = _load_merged(str(path), AutoModelForSequenceClassification,
                                    model_kwargs={"num_labels": 1, **_dtype_kwargs(dtype)}, tokenizer_kwargs={},
                                    check_adapter=check_reward_head)
    model.config.pad_token_id = tokenizer.pad_token_id
    return _ready(model, device), tokenizer


def load_causal_lm(path: str, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None):
    """(model, tokenizer) of a causal-LM policy for generation: a model folder/id, a `packaged:` id or a saved LoRA
    adapter folder (merged; its base may be a `packaged:` id too). The tokenizer pads on the left, for batched
    generation."""
    from transformers import AutoModelForCausalLM

    from ..augment.packaged import resolve_packaged_model

    model, tokenizer = _load_merged(str(path), AutoModelForCausalLM, model_kwargs=_dtype_kwargs(dtype),
                                    tokenizer_kwargs={"padding_side": "left"}, resolve_name=resolve_packaged_model)
    return _ready(model, device), tokenizer
