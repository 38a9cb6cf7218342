"""`WeightedLossMixin.compute_loss`: with weights attached, a training batch without `source_index` is an error;
without weights, or in evaluation, the loss is the base trainer's, untouched."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trl_mars.baselines.adaboost import SOURCE_INDEX, WeightedLossMixin

UNWEIGHTED = "the base trainer's loss"


class _BaseTrainer:
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return UNWEIGHTED


class _Trainer(WeightedLossMixin, _BaseTrainer):
    pass


def _trainer(example_weights) -> _Trainer:
    trainer = _Trainer()
    trainer._mars_callback = SimpleNamespace(example_weights=example_weights)
    return trainer


def _model(training: bool) -> torch.nn.Module:
    return torch.nn.Linear(1, 1).train(training)


def test_weights_without_source_index_in_training_raise_with_the_fix():
    with pytest.raises(ValueError, match=rf"no `{SOURCE_INDEX}`.*SourceIndexCollator"):
        _trainer(torch.ones(4)).compute_loss(_model(training=True), {"chosen_input_ids": torch.zeros(2, 3)})


def test_no_weights_keeps_the_unweighted_loss_with_or_without_source_index():
    batch_without = {"chosen_input_ids": torch.zeros(2, 3)}
    batch_with = {**batch_without, SOURCE_INDEX: torch.tensor([0, 1])}
    for trainer in (_trainer(None), _Trainer()):  # weights not set; no callback at all
        assert trainer.compute_loss(_model(training=True), dict(batch_without)) == UNWEIGHTED
        assert trainer.compute_loss(_model(training=True), dict(batch_with)) == UNWEIGHTED


def test_evaluation_ignores_the_weights():
    assert _trainer(torch.ones(4)).compute_loss(_model(training=False), {"x": torch.zeros(1)}) == UNWEIGHTED
