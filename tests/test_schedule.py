"""The run's plan as pure arithmetic: growing epochs, total steps, resume position, re-plan after a short round."""

from __future__ import annotations

import pytest

from trl_mars.training.schedule import RoundSchedule, round_epochs


def plan(**overrides) -> RoundSchedule:
    kwargs = dict(base_size=16, num_train_epochs=3, round_epochs=(0, 1, 2), budget=16, pairs_per_batch=4)
    kwargs.update(overrides)
    return RoundSchedule(**kwargs)


def test_round_epochs_follow_the_warmup_and_are_capped():
    assert round_epochs(3, 0, None) == [0, 1, 2]
    assert round_epochs(3, 1, None) == [1, 2]
    assert round_epochs(2.5, 0, 2) == [0, 1]
    assert round_epochs(2, 0, 5) == [0, 1]  # capped, with a warning
    assert round_epochs(1, 2, None) == []


def test_epochs_grow_by_the_budget_until_a_round_reports_its_real_count():
    schedule = plan()
    assert schedule.epoch_sizes() == [32, 48, 64]
    assert schedule.updates_per_epoch() == [8, 12, 16]
    assert schedule.max_steps() == 36
    # Round 2 added 10 pairs instead of 16: epochs 2 and 3 shrink, and so does the run.
    assert schedule.epoch_sizes({1: 16, 2: 10}) == [32, 42, 58]
    assert schedule.updates_per_epoch({1: 16, 2: 10}) == [8, 11, 15]
    assert schedule.max_steps({1: 16, 2: 10}) == 34


def test_batching_accumulation_drop_last_and_fractional_epochs():
    assert plan(pairs_per_batch=8).updates_per_epoch() == [4, 6, 8]  # 2 ranks x 4
    assert plan(pairs_per_batch=5).updates_per_epoch() == [7, 10, 13]  # ceil
    assert plan(pairs_per_batch=5, drop_last=True).updates_per_epoch() == [6, 9, 12]
    assert plan(gradient_accumulation_steps=3).updates_per_epoch() == [3, 4, 6]
    assert plan(num_train_epochs=2.5).max_steps() == 8 + 12 + 8  # half of the last epoch
    assert plan(round_epochs=(1,), num_train_epochs=2).epoch_sizes() == [16, 32]  # one warm-up epoch


@pytest.mark.parametrize(("step", "expected"), [(0, (0, 0)), (7, (0, 7)), (8, (1, 0)), (19, (1, 11)),
                                                (20, (2, 0)), (35, (2, 15)), (36, (3, 0))])
def test_position_walks_unequal_epochs(step, expected):
    assert plan().position(step) == expected


def test_rounds_due():
    schedule = plan(round_epochs=(1, 2))
    assert [schedule.rounds_due(e) for e in range(3)] == [[], [1], [2]]
    assert schedule.num_rounds == 2 and schedule.samples() == 16 + 32 + 48


def test_pairs_per_epoch_caps_each_epoch_but_not_the_dataset():
    schedule = plan(pairs_per_epoch=16)
    assert schedule.dataset_sizes() == [32, 48, 64]
    assert schedule.epoch_sizes() == [16, 16, 16]
    assert schedule.max_steps() == 3 * 4 and schedule.samples() == 48
    assert schedule.position(9) == (2, 1)
