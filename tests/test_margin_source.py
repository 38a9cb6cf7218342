"""`mars_margin_source="training"`: a round allocates on the margins the loss saw, before each pair's update."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import mars_args

from trl_mars.mars.scoring import LocalAccelerator, TrainingMargins, score_margins


def test_records_are_read_back_per_original_slot_then_cleared():
    recorder = TrainingMargins([0, 1, 2, 3])
    recorder.record(torch.tensor([3, 1]), torch.tensor([0.5, -0.25]))
    recorder.record(torch.tensor([1, 7]), torch.tensor([0.75, 9.0]))  # slot 7: a synthetic row's, never read back
    np.testing.assert_array_equal(recorder.take(), [np.nan, 0.75, np.nan, 0.5])  # the last record of slot 1 wins
    assert np.isnan(recorder.take()).all()  # taken: the next round starts empty


def test_slots_follow_the_train_sets_order():
    recorder = TrainingMargins([5, 2])
    recorder.record(torch.tensor([2, 5]), torch.tensor([1.0, -1.0]))
    np.testing.assert_array_equal(recorder.take(), [-1.0, 1.0])


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="mars_margin_source='oof'. is not one of"):
        mars_args(tmp_path, mars_margin_source="oof")


def _train(tmp_path, minilm_path, dataset, source: str):
    """Two epochs, one batch each (16 pairs), dropout off; returns the trainer, the untrained model and the margins
    round 1 allocated on."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_mars import MarsRewardTrainer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path, num_labels=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    untrained = copy.deepcopy(model).eval()
    args = mars_args(tmp_path, num_train_epochs=2, mars_warmup_epochs=1, per_device_train_batch_size=16,
                     mars_strategy="mars_nosem", mars_margin_source=source)
    trainer = MarsRewardTrainer(model, args=args, train_dataset=dataset,
                                processing_class=AutoTokenizer.from_pretrained(minilm_path))
    seen: list[np.ndarray] = []
    trainer.mars_callback.after_scoring = lambda round_index, margins: seen.append(np.array(margins))
    trainer.train()
    return trainer, untrained, seen


def _untrained_margins(trainer, untrained) -> np.ndarray:
    base = trainer.mars_callback.base_train
    margins, _ = score_margins(untrained, base["chosen_ids"], base["rejected_ids"],
                               pad_token_id=trainer.processing_class.pad_token_id, batch_size=8,
                               accelerator=LocalAccelerator(device="cpu"))
    return margins


def test_training_margins_come_from_before_the_update(tmp_path, minilm_path, tiny_dataset):
    trainer, untrained, seen = _train(tmp_path / "training", minilm_path, tiny_dataset, "training")
    # Epoch 1 is one batch of all 16 pairs, so the loss saw each pair with the untrained weights: round 1's margins
    # are the untrained model's (up to padding), not those of the model that has trained on them.
    assert len(seen) == 1 and not np.isnan(seen[0]).any()
    expected = _untrained_margins(trainer, untrained)
    np.testing.assert_allclose(seen[0], expected, atol=1e-5)
    # synthetic rows record in slots of their own
    assert trainer.mars_callback.loss_weights.synthetic_offset is not None

    plain, plain_untrained, plain_seen = _train(tmp_path / "rescore", minilm_path, tiny_dataset, "rescore")
    # The paper's source rescores after the update: the same pairs, other margins.
    assert np.abs(plain_seen[0] - _untrained_margins(plain, plain_untrained)).max() > 1e-3
    assert plain.mars_callback.training_margins is None and plain.mars_callback.loss_weights is None
    # Recording attaches a loss of weight 1, which trains exactly as TRL's loss: epoch 1 is the same, bit for bit.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    plain_losses = [entry["loss"] for entry in plain.state.log_history if "loss" in entry]
    assert losses[0] == plain_losses[0]

    # A pair the loss did not see since the last round (a resumed run, a sampled epoch) is rescored by r^{t-1}.
    services = plain.mars_callback.services
    recorder = TrainingMargins(plain.mars_callback.base_train["source_index"])
    recorder.record(torch.tensor([0, 5]), torch.tensor([7.0, -7.0]))
    mixed, rescored = services.score_originals(9, recorder), services.score_originals(9)
    assert (mixed[0], mixed[5]) == (7.0, -7.0)
    np.testing.assert_allclose(np.delete(mixed, [0, 5]), np.delete(rescored, [0, 5]), atol=1e-5)
