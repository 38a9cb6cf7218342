"""A trained reward model as a reward function for TRL's online trainers (RLOO, GRPO).

TRL scores a reward model with its own tokenizer by joining prompt and completion, tokenising with
`add_special_tokens=False` and no truncation, and applying the reward tokenizer's chat template. For the encoders
MARS trains (BERT, DeBERTa, RoBERTa, MiniLM) that loses [CLS]/[SEP], overflows the 512 position embeddings on long
inputs, and fails on conversational prompts (no chat template). TRL's extension point for this is a plain callable
(`reward_funcs=[fn]`, called with `prompts=` and `completions=`), so `MarsRewardFunction` is one: it encodes each
(prompt, completion) with `trl_mars.data.preferences.tokenize_pair` and `truncate_keep_end`, the very functions
`MarsRewardTrainer` trains with, and scores with `trl_mars.mars.scoring.score_sequences` (batched, length-sorted).

Choices of ours (the paper does not say): a conversation is encoded as training encodes a conversational pair
(the reward tokenizer's chat template, or "Role: content" turns for a tokenizer without one, the completion keeping
its "Assistant:" role), or flattened to plain text with `input_format="text"` for a reward model trained on
plain-text pairs; the model is loaded replicated on every process (never partitioned by ZeRO-3), so each rank scores its own
completions without collectives, which suits reward models of up to a few hundred million parameters.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data.preferences import (
    render_messages,
    response_text,
    tokenize_pair,
    truncate_keep_end,
)
from ..eval.modeling import load_reward_model
from ..mars.scoring import LocalAccelerator, score_sequences

logger = logging.getLogger(__name__)

_UNBOUNDED = 1_000_000  # tokenizers report int(1e30) when they have no limit
INPUT_FORMATS = ("auto", "text")


def as_text_pair(prompt: str | list[dict], completion: str | list[dict]) -> tuple[str, str]:
    """A (prompt, completion) in the standard format a plain-text preference pair has.

    A prompt of one user message becomes its content (what a plain-text prompt is); a longer conversation is
    rendered as "Role: content" turns, as `trl_mars.data.preferences.render_conversation_example` renders a
    conversational prompt for training. The completion becomes the text of its last message.
    """
    if isinstance(prompt, list):
        if len(prompt) == 1 and prompt[0].get("role") == "user":
            prompt = response_text(prompt)
        else:
            prompt = render_messages(prompt) + "\n\n" if prompt else ""
    return prompt, response_text(completion)


def default_max_length(model, tokenizer) -> int | None:
    """The longest input the reward model can read: the tokenizer's limit and the model's position embeddings."""
    limits = []
    if tokenizer.model_max_length and tokenizer.model_max_length < _UNBOUNDED:
        limits.append(int(tokenizer.model_max_length))
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models reserve padding_idx + 1 positions (514 embeddings for 512 tokens)
        offset = (model.config.pad_token_id + 1) if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta") else 0
        limits.append(int(positions) - offset)
    return min(limits) if limits else None


class MarsRewardFunction:
    """Scores (prompt, completion) pairs with a reward model trained by `MarsRewardTrainer`; a TRL reward function.

    Pass it in `reward_funcs` of `RLOOTrainer` or `GRPOTrainer`. Called with `prompts` and `completions` (standard
    strings or conversational message lists, as TRL passes them) it returns one float per completion.

    Args:
        reward_model: a folder saved by `MarsRewardTrainer` (full model or LoRA adapter), or a loaded model.
        tokenizer: the reward model's tokenizer; required when `reward_model` is a loaded model.
        max_length: inputs longer than this keep their end (the start of the prompt goes), as in training with
            `mars_truncation='keep_end'`. Default: the model's limit (512 for BERT-style encoders). Set it to the
            `max_length` the reward model was trained with to score exactly as trained.
        batch_size: sequences per forward pass (sorted by length, so batches carry little padding).
        reward_mean, reward_std: normalisation, `(r - mean) / std`; `calibrate()` estimates them on a reference set.
        dtype, device: where and how to load a reward model given as a path (default: this process's device).
        input_format: "auto" (default) encodes each (prompt, completion) in the format it arrives in, standard or
            conversational, exactly as training encodes that format. "text" flattens conversations to plain text
            first (`as_text_pair`): for a reward model trained on standard (plain-text) pairs, such as the embedded
            one, scored on a chat policy's conversational prompts.
    """

    def __init__(
        self,
        reward_model: str | os.PathLike | torch.nn.Module,
        tokenizer=None,
        *,
        max_length: int | None = None,
        batch_size: int = 32,
        reward_mean: float = 0.0,
        reward_std: float = 1.0,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        input_format: str = "auto",
    ):
        if isinstance(reward_model, (str, os.PathLike)):
            self.model, loaded_tokenizer = load_reward_model(str(reward_model), dtype=dtype, device=device)
            self.tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        else:
            if tokenizer is None:
                raise ValueError("MarsRewardFunction: a loaded reward model needs its `tokenizer` too. Fix: pass "
                                 "tokenizer=..., or pass the reward model's folder instead of the model.")
            self.model, self.tokenizer = reward_model, tokenizer
            if device is not None:
                self.model.to(device)
            self.model.requires_grad_(False).eval()
        if reward_std <= 0:
            raise ValueError(f"MarsRewardFunction: reward_std must be > 0, got {reward_std}.")
        if batch_size < 1:
            raise ValueError(f"MarsRewardFunction: batch_size must be >= 1, got {batch_size}.")
        self.max_length = max_length if max_length is not None else default_max_length(self.model, self.tokenizer)
        self.batch_size = batch_size
        self.reward_mean, self.reward_std = float(reward_mean), float(reward_std)
        self._special_ids = set(self.tokenizer.all_special_ids)
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"MarsRewardFunction: input_format must be one of {INPUT_FORMATS}, got {input_format!r}.")
        self.input_format = input_format
        # TRL names each reward function in its logs (`rewards/<name>/mean`) after `__name__`.
        self.__name__ = "mars_reward"

    # ------------------------------------------------------------------ encoding

    def encode(self, prompt: str | list[dict], completion: str | list[dict]) -> list[int]:
        """Token ids of one (prompt, completion), exactly as `MarsRewardTrainer` encodes a training response.

        The pair goes through `trl_mars.data.preferences.tokenize_pair`, the function training tokenises with, so a
        conversation is encoded as training encodes a conversational pair: with the reward tokenizer's chat template, or
        (no template: BERT & co.) rendered as "Role: content" turns, the completion keeping its "Assistant:" role.
        With `input_format="text"` a conversation is first flattened to the standard format (`as_text_pair`), for
        reward models trained on plain-text pairs.
        """
        if self.input_format == "text":
            prompt, completion = as_text_pair(prompt, completion)
        elif isinstance(prompt, list) or isinstance(completion, list):
            prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            completion = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        # tokenize_pair encodes a preference pair; scoring one response means encoding it as the chosen side.
        ids = tokenize_pair({"prompt": prompt, "chosen": completion, "rejected": completion}, self.tokenizer)["chosen_ids"]
        return truncate_keep_end(ids, self.max_length, self._special_ids) if self.max_length else ids

    # ------------------------------------------------------------------ scoring

    def raw_scores(self, prompts: Sequence, completions: Sequence) -> np.ndarray:
        """Unnormalised rewards r(x, y), one per (prompt, completion)."""
        if len(prompts) != len(completions):
            raise ValueError(f"MarsRewardFunction: {len(prompts)} prompts but {len(completions)} completions; "
                             "pass one prompt per completion.")
        if not completions:
            return np.zeros(0)
        sequences = [self.encode(p, c) for p, c in zip(prompts, completions)]
        return score_sequences(self.model, sequences, pad_token_id=self.tokenizer.pad_token_id,
                               batch_size=self.batch_size, accelerator=LocalAccelerator(self.device),
                               desc="Scoring completions")

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float]:
        """TRL's reward-function call: other dataset columns and trainer state arrive in `kwargs` and are unused."""
        scores = (self.raw_scores(prompts, completions) - self.reward_mean) / self.reward_std
        return scores.tolist()

    def calibrate(self, prompts: Sequence, completions: Sequence) -> MarsRewardFunction:
        """Sets `reward_mean`/`reward_std` from a reference set (e.g. the SFT policy's answers), so rewards are ~N(0, 1)."""
        scores = self.raw_scores(prompts, completions)
        if len(scores) < 2:
            raise ValueError("MarsRewardFunction.calibrate needs at least 2 reference completions.")
        self.reward_mean = float(scores.mean())
        self.reward_std = float(scores.std()) or 1.0
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        name = getattr(self.model.config, "_name_or_path", type(self.model).__name__)
        return (f"MarsRewardFunction({name!r}, max_length={self.max_length}, mean={self.reward_mean:.4g}, "
                f"std={self.reward_std:.4g})")
