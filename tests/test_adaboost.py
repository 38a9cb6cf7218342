"""The AdaBoost baseline: weights against hand-computed values, the weighted loss on a hand-made batch, and real
MiniLM training runs in which the logged loss is the weighted loss of the round's own margins and weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import mars_args, tiny_rows
from datasets import Dataset
from trl import RewardTrainer

from trl_mars import MarsAugmentationCallback
from trl_mars.baselines.adaboost import (
    SourceIndexCollator,
    adaboost_round,
    weighted_bradley_terry_loss,
)
from trl_mars.mars.allocation import adaboost_weights
from trl_mars.mars.rounds import RoundInputs
from trl_mars.training.trainer import MarsRewardTrainer


def test_weights_match_hand_computed_values():
    raw = [math.exp(0.5), 1.0, math.exp(-1.0)]  # exp(-0.5 * m) for m = -1, 0, 2
    expected = [3 * r / sum(raw) for r in raw]
    np.testing.assert_allclose(adaboost_weights([-1.0, 0.0, 2.0], 0.5), expected, rtol=1e-12)
    np.testing.assert_allclose(adaboost_weights([-1.0, 0.0, 2.0], 0.0), [1.0, 1.0, 1.0])


def test_weighted_loss_matches_hand_computed_value():
    chosen, rejected = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.5, 1.0])
    weights = torch.tensor([2.0, 0.5, 0.5])
    expected = (2.0 * math.log1p(math.exp(-1.0)) + 0.5 * math.log1p(math.exp(0.5))
                + 0.5 * math.log1p(math.exp(3.0))) / 3
    assert weighted_bradley_terry_loss(chosen, rejected, weights).item() == pytest.approx(expected, rel=1e-6)
    # with all weights 1 it is TRL's loss; a margin term is subtracted as TRL does
    plain = -torch.nn.functional.logsigmoid(chosen - rejected - 0.25).mean()
    assert weighted_bradley_terry_loss(chosen, rejected, torch.ones(3), torch.full((3,), 0.25)).item() == \
        pytest.approx(plain.item(), rel=1e-6)


def test_round_evidence_has_a_weight_per_tuple_and_no_rows():
    inputs = RoundInputs(round_index=2, originals=tiny_rows(3), margins=np.array([-1.0, 0.0, 2.0]), paraphraser=None)
    result, weights = adaboost_round(inputs, beta=0.5)
    assert result.synthetic_rows == []
    assert [row["weight"] for row in result.allocation_rows] == pytest.approx(list(weights))
    assert [row["index"] for row in result.allocation_rows] == [0, 1, 2]
    assert result.summary.synthetic_pairs_added == 0
    assert result.summary.weights["mean"] == pytest.approx(1.0)
    assert result.summary.weights["max"] == pytest.approx(3 * math.exp(0.5) / (math.exp(0.5) + 1 + math.exp(-1)))


def test_collator_carries_source_index():
    collator = SourceIndexCollator(lambda examples: {"n": len(examples)})
    batch = collator([{"chosen_ids": [1], "source_index": 4}, {"chosen_ids": [2], "source_index": 1}])
    assert batch["source_index"].tolist() == [4, 1] and batch["n"] == 2


def _expected_loss(output_dir) -> tuple[float, float, list[float]]:
    rows = [json.loads(line) for line in (output_dir / "mars" / "round_1" / "allocation.jsonl").read_text()
            .splitlines()]
    margins = np.array([row["margin"] for row in rows])
    weights = np.array([row["weight"] for row in rows])
    per_pair = np.log1p(np.exp(-margins))  # -log sigmoid(margin)
    return float(np.mean(weights * per_pair)), float(np.mean(per_pair)), weights.tolist()


class PlainSubclass(RewardTrainer):
    """A user's own RewardTrainer: AdaBoost must reach its loss through the callback alone."""


@pytest.mark.parametrize("trainer_kind", ["mars", "plain"])
def test_weights_reach_the_loss_in_a_real_run(tmp_path, minilm_path, trainer_kind):
    """One epoch, one batch of all 8 pairs: the logged loss of step 1 is computed by the model that scored round
    1's margins (r^0), so it must equal mean(w_i * -log sigmoid(margin_i)) from the round's own evidence."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    with torch.no_grad():  # a head far from zero, so the pairs' margins (and losses) differ visibly
        model.classifier.weight.normal_(0, 0.5)
    args = mars_args(tmp_path, num_train_epochs=1, per_device_train_batch_size=8, mars_strategy="adaboost",
                     mars_adaboost_beta=10.0, **({"eos_token": "[SEP]"} if trainer_kind == "plain" else {}))
    data = Dataset.from_list(tiny_rows(8))
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    if trainer_kind == "mars":
        trainer = MarsRewardTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)
    else:
        trainer = PlainSubclass(model, args=args, train_dataset=data, processing_class=tokenizer)
        MarsAugmentationCallback().attach(trainer)
        assert isinstance(trainer, PlainSubclass)
    trainer.train()
    weighted, unweighted, weights = _expected_loss(tmp_path)
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert max(weights) > 2.0  # beta 10 on margins of a few tenths makes the weights uneven, so weighted and unweighted losses differ
    assert abs(weighted - unweighted) > 0.02
    assert logged == pytest.approx(weighted, rel=1e-4)
    assert logged != pytest.approx(unweighted, rel=1e-4)
    assert len(trainer.train_dataset) == 8  # no synthetic rows
    summary = json.loads((tmp_path / "mars" / "summary.json").read_text())
    assert summary["rounds"][0]["weights"]["mean"] == pytest.approx(1.0)
    assert summary["rounds"][0]["synthetic_pairs_added"] == 0
    assert (tmp_path / "mars" / "round_1" / "synthetic.jsonl").read_text() == ""


def test_mars_weight_originals_uses_the_rounds_allocation(tmp_path, minilm_path):
    """mars_weight_originals: after the round, each tuple's loss weight is N * q_i from its own allocation.jsonl."""
    from trl_mars.baselines.adaboost import WeightedLossMixin

    args = mars_args(tmp_path, num_train_epochs=2, mars_warmup_epochs=1, mars_epoch_size="original",
                     mars_weight_originals=True, mars_tau=5.0)
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)))
    assert isinstance(trainer, WeightedLossMixin)
    assert trainer._mars_callback.example_weights.tolist() == [1.0] * 16  # plain until the first round
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "mars" / "round_1" / "allocation.jsonl").read_text()
            .splitlines()]
    expected = np.array([row["prob"] for row in rows]) * 16
    assert expected.max() - expected.min() > 0.1  # tau 5 makes the allocation (and so the weights) uneven
    np.testing.assert_allclose(trainer._mars_callback.example_weights.numpy(), expected, rtol=1e-5)
    assert len(trainer.train_dataset) > 16  # the synthetic pairs are still added


def test_synthetic_weight_reaches_the_loss_of_synthetic_pairs_only(tmp_path, minilm_path):
    """mars_synthetic_weight=0.25: synthetic rows read slot N + source_index, whose weight is 0.25 (1 for the
    originals), and the training loss of a batch with one original and one synthetic pair is
    (1 * l_original + 0.25 * l_synthetic) / 2 from the same logits."""
    from trl_mars.baselines.adaboost import WeightedLossMixin

    args = mars_args(tmp_path, num_train_epochs=2, mars_warmup_epochs=1, mars_synthetic_weight=0.25)
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)))
    assert isinstance(trainer, WeightedLossMixin)
    trainer.train()
    callback = trainer._mars_callback
    assert callback.example_weights.tolist() == [1.0] * 16 + [0.25] * 16
    dataset = trainer.train_dataset
    slots = dataset["source_index"]
    assert slots[:16] == list(range(16)) and len(slots) > 16 and all(s >= 16 for s in slots[16:])
    written = [json.loads(line)["source_index"] for line in
               (tmp_path / "mars" / "round_1" / "synthetic.jsonl").read_text().splitlines()]
    assert [s - 16 for s in slots[16:]] == written  # the tuple of each synthetic row is kept, offset by N
    batch = trainer.data_collator([dataset[0], dataset[16]])
    trainer.model.train()
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    chosen, rejected = torch.chunk(outputs.logits.squeeze(-1).detach(), chunks=2)
    per_pair = -torch.nn.functional.logsigmoid(chosen - rejected)
    assert loss.item() == pytest.approx(((per_pair[0] + 0.25 * per_pair[1]) / 2).item(), rel=1e-5)


def test_synthetic_weight_one_keeps_trl_loss_and_rejects_bad_values(tmp_path):
    from trl_mars import MarsRewardConfig

    with pytest.raises(ValueError, match="mars_synthetic_weight"):
        MarsRewardConfig(str(tmp_path), mars_synthetic_weight=-0.5)
    with pytest.raises(ValueError, match="mars_synthetic_weight"):
        MarsRewardConfig(str(tmp_path), mars_synthetic_weight=float("nan"))
    callback = MarsAugmentationCallback(MarsRewardConfig(str(tmp_path)))
    assert not callback._weights_synthetic  # 1.0 (the paper): no weighted loss is mixed in
    callback = MarsAugmentationCallback(MarsRewardConfig(str(tmp_path), mars_strategy="adaboost",
                                                         mars_synthetic_weight=0.5))
    assert not callback._weights_synthetic  # adds no pairs: nothing to weigh


def test_synthetic_weight_with_a_users_own_reward_trainer(tmp_path, minilm_path):
    """Attached to a plain RewardTrainer subclass, the synthetic rows (tokenised by the user's trainer) keep their
    tuple through `source_index` and read slot N + i: weight 0.5, the originals 1."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    args = mars_args(tmp_path, num_train_epochs=2, mars_warmup_epochs=1, mars_synthetic_weight=0.5,
                     eos_token="[SEP]")
    model = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1)
    trainer = PlainSubclass(model, args=args, train_dataset=Dataset.from_list(tiny_rows(8)),
                            processing_class=AutoTokenizer.from_pretrained(minilm_path))
    MarsAugmentationCallback().attach(trainer)
    trainer.train()
    slots = list(trainer.train_dataset["source_index"])
    written = [json.loads(line)["source_index"] for line in
               (tmp_path / "mars" / "round_1" / "synthetic.jsonl").read_text().splitlines()]
    assert slots[:8] == list(range(8)) and [s - 8 for s in slots[8:]] == written and written
    assert trainer._mars_callback.example_weights.tolist() == [1.0] * 8 + [0.5] * 8
