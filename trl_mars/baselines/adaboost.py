"""The AdaBoost baseline (`mars_strategy="adaboost"`): no generation, per-example loss weights instead.

Each round scores the original pairs with r^{t-1}, exactly as MARS does, and turns the margins into loss weights
w_i proportional to exp(-beta * Delta_i), normalised to mean 1 (`allocation.adaboost_weights`); epoch t then
minimises (1/|batch|) sum_i w_i * -log sigmoid(r(x_i, y_i+) - r(x_i, y_i-)). So where MARS adds pairs near the
low-margin tuples, AdaBoost turns up their gradient. beta is ours to choose (`mars_adaboost_beta`, 0.5 by default,
the paper's tau); the paper names the baseline without its settings.

How the weights reach the loss, given that TRL drops every column its signature does not name and its collator
keeps only the token ids (and `margin`): the weights live on the callback, indexed by the tuple, and each batch
carries its rows' `source_index` (added to the signature columns and carried by `SourceIndexCollator`), which
`WeightedLossMixin.compute_loss` turns into weights. Weights change every round without rebuilding the dataset.
The same weighted loss also serves `mars_weight_originals` and `mars_synthetic_weight` (see `MarsAugmentationCallback`).

Our choices: the batch loss is the mean of w_i * loss_i (not divided by the batch's weight sum, which would cancel
the weights in a batch of one and make the objective depend on how batches fall); weights apply to training
batches only, never to evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..mars.allocation import (
    Allocation,
    adaboost_weights,
    allocation_entropy,
    margin_statistics,
)
from ..mars.strategies import (
    RoundInputs,
    RoundResult,
    RoundServices,
    RoundStrategy,
    RoundSummary,
)

SOURCE_INDEX = "source_index"


def weighted_bradley_terry_loss(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, weights: torch.Tensor,
                                margin: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i w_i * -log sigmoid(r_i+ - r_i- - m_i): TRL's Bradley-Terry loss with one weight per pair."""
    delta = rewards_chosen - rewards_rejected
    if margin is not None:
        delta = delta - margin
    return (weights.to(delta.dtype) * -nn.functional.logsigmoid(delta)).mean()


def weight_statistics(weights: Sequence[float]) -> dict[str, Any]:
    """JSON-ready stats of a round's weights; `effective_sample_size` is (sum w)^2 / sum w^2 (N when all equal)."""
    w = np.asarray(weights, dtype=np.float64)
    return {"n": int(w.size), "mean": float(w.mean()), "std": float(w.std()), "min": float(w.min()),
            "max": float(w.max()), "effective_sample_size": float(w.sum() ** 2 / np.sum(w ** 2))}


class AdaBoostStrategy(RoundStrategy):
    """'adaboost': each round returns loss weights from the margins, and no rows."""

    adds_pairs = False

    @classmethod
    def sets_loss_weights(cls, args) -> bool:
        return True

    def run(self, inputs: RoundInputs, services: RoundServices) -> RoundResult:
        result, weights = adaboost_round(inputs, self.args.mars_adaboost_beta)
        result.loss_weights = weights
        return result


def adaboost_round(inputs: RoundInputs, beta: float) -> tuple[RoundResult, np.ndarray]:
    """The round's weights and evidence (one allocation row per tuple, no synthetic rows)."""
    weights = adaboost_weights(inputs.margins, beta)
    n = weights.size
    margins = np.asarray(inputs.margins, dtype=np.float64)
    zeros = np.zeros(n, dtype=np.int64)
    allocation = Allocation(margins=margins, probs=weights / n, budgets=zeros, n_chosen=zeros, n_rejected=zeros)
    rows = [{"index": i, "margin": float(margins[i]), "weight": float(weights[i]), "pairs_added": 0}
            for i in range(n)]
    summary = RoundSummary(
        round=inputs.round_index,
        num_original_pairs=n,
        margin=margin_statistics(margins),
        # entropy of w / N: ln N when all weights are 1, lower as the weights concentrate
        allocation_entropy=allocation_entropy(weights / n),
        allocation_entropy_uniform=float(np.log(n)),
        budget=0,
        synthetic_pairs_added=0,
        pairs_short_of_budget=0,
        adaboost_beta=float(beta),
        weights=weight_statistics(weights),
    )
    return RoundResult(round=inputs.round_index, allocation=allocation, allocation_rows=rows, synthetic_rows=[],
                       summary=summary, timings=inputs.timings), weights


class LossWeightTable:
    """The loss weight of every row of D^t, indexed by its `source_index` (what `WeightedLossMixin` reads).

    `slots` are the original train set's `source_index` values, in its order. Weights are set per original tuple;
    with a `synthetic_weight` (`mars_synthetic_weight` != 1), synthetic rows read their own slot
    `synthetic_offset + source_index` (set when they are added), holding their tuple's weight times that factor.
    """

    def __init__(self, slots: torch.Tensor, synthetic_weight: float | None = None):
        self.slots = slots
        self.synthetic_weight = synthetic_weight
        self.table: torch.Tensor | None = None
        self.reset()

    @property
    def slot_count(self) -> int:
        return int(self.slots.max()) + 1 if len(self.slots) else 0

    @property
    def synthetic_offset(self) -> int | None:
        """Where synthetic rows' slots start (None: they share their tuple's slot)."""
        return None if self.synthetic_weight is None else self.slot_count

    def reset(self) -> None:
        """All weights 1 (before the first round, or when a run starts again)."""
        self.set(np.ones(len(self.slots)))

    def set(self, weights: np.ndarray) -> None:
        """Per-tuple weights, in the order of the original train set."""
        offset = self.synthetic_offset
        size = self.slot_count
        table = torch.zeros(size if offset is None else offset + size, dtype=torch.float32)
        values = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        table[self.slots] = values
        if offset is not None:
            table[offset + self.slots] = values * float(self.synthetic_weight)
        self.table = table


class SourceIndexCollator:
    """Wraps a preference collator and adds the batch's `source_index` (TRL's collator keeps only ids and margin)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if examples and SOURCE_INDEX in examples[0]:
            batch[SOURCE_INDEX] = torch.tensor([int(e[SOURCE_INDEX]) for e in examples], dtype=torch.long)
        return batch


class WeightedLossMixin:
    """`compute_loss` with per-example weights for a `trl.RewardTrainer` subclass (mixed in by the callback).

    TRL's `RewardTrainer` overrides `compute_loss` itself; this override adds the weights and nothing else: TRL's
    own `compute_loss` runs the forward pass and records its metrics (accuracy, margin, rewards, tokens), and the
    loss returned is recomputed from the same logits with the weights. The callback attaches weights for
    `mars_strategy="adaboost"`, for `mars_weight_originals` and for a `mars_synthetic_weight` other than 1; without
    weights (any other configuration) and in evaluation it is TRL's `compute_loss` unchanged. With weights, every
    training batch must carry `source_index`, or training stops with an error instead of silently going unweighted.
    With `mars_margin_source="training"` the callback attaches weights of 1 (the same loss, value for value) so
    that each training batch's margins reach its `TrainingMargins`, by `source_index`.
    """

    _mars_callback = None

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._mars_example_weights() is not None and SOURCE_INDEX not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SOURCE_INDEX]

    def _mars_example_weights(self) -> torch.Tensor | None:
        callback = self._mars_callback
        return None if callback is None else getattr(callback, "example_weights", None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, weighted per pair by the callback's current weights in training (see the class docstring)."""
        indices = inputs.pop(SOURCE_INDEX, None)
        weights = self._mars_example_weights()
        if weights is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if indices is None:
            raise ValueError(
                f"A weighted loss is attached but this training batch has no `{SOURCE_INDEX}`, so its pairs' weights "
                f"cannot be looked up (weights come from mars_strategy='adaboost', mars_weight_originals or "
                f"mars_synthetic_weight != 1). The data collator or the dataset dropped the column: keep "
                f"`{SOURCE_INDEX}` in the train dataset and wrap a custom collator in "
                f"`trl_mars.baselines.adaboost.SourceIndexCollator`, which adds it to each batch.")
        _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        recorder = getattr(self._mars_callback, "training_margins", None)
        if recorder is not None:
            recorder.record(indices, rewards_chosen - rewards_rejected)
        batch_weights = weights.to(rewards_chosen.device)[indices.to(rewards_chosen.device)]
        loss = weighted_bradley_terry_loss(rewards_chosen, rewards_rejected, batch_weights, inputs.get("margin"))
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
        return (loss, outputs) if return_outputs else loss
