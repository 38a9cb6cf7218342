"""Round strategies as objects: the registry, and a strategy that exists only here, run inside real training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import mars_args

from trl_mars.data.preferences import response_text, with_response_text
from trl_mars.mars import strategies
from trl_mars.mars.allocation import Allocation, margin_statistics
from trl_mars.mars.strategies import (
    RoundResult,
    RoundStrategy,
    RoundSummary,
    register_strategy,
    strategy_class,
)
from trl_mars.training.config import STRATEGIES

REFUSAL = "I will not help with that."


class HardestAgainstRefusal(RoundStrategy):
    """Test-only: for the `budget` lowest-margin tuples, the chosen answer against a fixed refusal; those tuples'
    loss weight becomes 2 (the others 1)."""

    @classmethod
    def uses_paraphraser(cls, args) -> bool:
        return False

    @classmethod
    def sets_loss_weights(cls, args) -> bool:
        return True

    def run(self, inputs, services):
        n = len(inputs.originals)
        budget = int(round(inputs.budget_ratio * n))
        hardest = [int(i) for i in np.argsort(inputs.margins, kind="stable")[:budget]]
        rows = [{"prompt": inputs.originals[i]["prompt"], "chosen": inputs.originals[i]["chosen"],
                 "rejected": with_response_text(inputs.originals[i]["rejected"], REFUSAL), "source_index": i,
                 "round": inputs.round_index, "operation": "refusal", "backend": "none"} for i in hardest]
        weights = np.ones(n)
        weights[hardest] = 2.0
        margins = np.asarray(inputs.margins, dtype=np.float64)
        zeros = np.zeros(n, dtype=np.int64)
        allocation = Allocation(margins=margins, probs=np.full(n, 1.0 / n), budgets=zeros, n_chosen=zeros,
                                n_rejected=zeros)
        summary = RoundSummary(round=inputs.round_index, num_original_pairs=n, margin=margin_statistics(margins),
                               allocation_entropy=float(np.log(n)), allocation_entropy_uniform=float(np.log(n)),
                               budget=budget, synthetic_pairs_added=len(rows), pairs_short_of_budget=0,
                               operations={"refusal": len(rows)})
        allocation_rows = [{"index": i, "margin": float(margins[i]), "pairs_added": int(i in hardest)}
                           for i in range(n)]
        return RoundResult(round=inputs.round_index, allocation=allocation, allocation_rows=allocation_rows,
                           synthetic_rows=rows, summary=summary, timings=inputs.timings, loss_weights=weights)


@pytest.fixture
def registered():
    register_strategy("test_hardest_refusal")(HardestAgainstRefusal)
    yield "test_hardest_refusal"
    strategies._REGISTRY.pop("test_hardest_refusal")


def test_the_built_in_strategies_are_the_registered_ones():
    assert set(strategies.strategy_names()) == set(STRATEGIES) - {"none"}
    for name in strategies.strategy_names():
        assert issubclass(strategy_class(name), RoundStrategy)


def test_unknown_strategy_names_fail_with_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match="mars_strategy='nope'. is not one of"):
        mars_args(tmp_path, mars_strategy="nope")
    with pytest.raises(TypeError, match="not a RoundStrategy"):
        register_strategy("bad")(object)
    with pytest.raises(ValueError, match="plain training"):
        register_strategy("none")(HardestAgainstRefusal)


def test_a_registered_strategy_runs_inside_training(tmp_path, minilm_path, tiny_dataset, registered):
    from trl_mars import MarsRewardTrainer

    args = mars_args(tmp_path, mars_strategy=registered, num_train_epochs=2, mars_budget_ratio=0.25)
    assert args.adds_pairs and args.sets_loss_weights and not args.generates_with_paraphraser
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=tiny_dataset)
    seen: list[np.ndarray] = []
    trainer.mars_callback.after_scoring = lambda round_index, margins: seen.append(np.array(margins))
    trainer.train()

    callback = trainer.mars_callback
    assert isinstance(callback.strategy, HardestAgainstRefusal)
    assert callback.paraphraser is None  # the strategy generates nothing, so no back-end was built
    assert callback.added == {1: 4, 2: 4}
    assert len(trainer.train_dataset) == 16 + 2 * 4
    # the last round's weights: 2 for the four lowest margins of round 2, 1 elsewhere
    hardest = set(np.argsort(seen[1], kind="stable")[:4].tolist())
    assert callback.example_weights.tolist() == [2.0 if i in hardest else 1.0 for i in range(16)]
    rows = [json.loads(line) for line in (tmp_path / "mars" / "round_2" / "synthetic.jsonl").read_text().splitlines()]
    assert sorted(row["source_index"] for row in rows) == sorted(hardest)
    assert all(response_text(row["rejected"]) == REFUSAL for row in rows)
    summary = json.loads((tmp_path / "mars" / "summary.json").read_text())
    entry = summary["rounds"][1]
    assert entry["operations"] == {"refusal": 4} and entry["epoch"] == 2 and "budget_moved" not in entry
    assert entry["margin"]["mean"] == pytest.approx(float(np.mean(seen[1])))
