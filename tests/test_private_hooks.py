"""`trl_mars.training.loop.PRIVATE_HOOKS`: every Trainer internal the package overrides is listed and checked at
import."""

from __future__ import annotations

import pytest
from transformers import Trainer

from trl_mars.baselines.adaboost import WeightedLossMixin
from trl_mars.training.loop import (
    PRIVATE_HOOKS,
    SUPPORTED_TRANSFORMERS,
    GrowingDatasetLoop,
    check_trainer_hooks,
)
from trl_mars.training.trainer import MarsRewardTrainer

OVERRIDING_CLASSES = (GrowingDatasetLoop, WeightedLossMixin, MarsRewardTrainer)


def _overridden_trainer_internals() -> dict[str, str]:
    """Name -> overriding class, for every non-dunder `_` name (and `set_initial_training_values`, internal though
    it has no underscore) that one of our classes defines and `transformers.Trainer` has."""
    found = {}
    for cls in OVERRIDING_CLASSES:
        for name in vars(cls):
            internal = (name.startswith("_") and not name.startswith("__")) or name == "set_initial_training_values"
            if internal and hasattr(Trainer, name):
                found[name] = cls.__name__
    return found


def test_the_table_lists_exactly_the_overridden_trainer_internals():
    overridden = _overridden_trainer_internals()
    unlisted = sorted(set(overridden) - set(PRIVATE_HOOKS))
    assert not unlisted, (f"{[f'{overridden[n]}.{n}' for n in unlisted]} override transformers.Trainer internals "
                          "but are missing from trl_mars.training.loop.PRIVATE_HOOKS: add them with the parameters "
                          "they use.")
    stale = sorted(set(PRIVATE_HOOKS) - set(overridden))
    assert not stale, f"PRIVATE_HOOKS lists {stale}, which no trl-mars class overrides any more: remove them."


def test_the_installed_trainer_has_every_hook():
    check_trainer_hooks(Trainer)


def _fake_trainer_without(hook: str) -> type:
    """A class with Trainer's hooks (same signatures), except `hook`."""
    namespace = {name: getattr(Trainer, name) for name in PRIVATE_HOOKS if name != hook}
    return type("FakeTrainer", (), namespace)


@pytest.mark.parametrize("hook", list(PRIVATE_HOOKS))
def test_a_trainer_lacking_a_hook_fails_with_its_name_and_the_supported_range(hook):
    low, high = SUPPORTED_TRANSFORMERS
    with pytest.raises(ImportError) as raised:
        check_trainer_hooks(_fake_trainer_without(hook))
    message = str(raised.value)
    assert f"Trainer.{hook}` is missing" in message
    assert f"transformers>={low},<{high}" in message and "pip install" in message


def test_a_hook_that_lost_a_parameter_fails_with_the_parameter():
    namespace = {name: getattr(Trainer, name) for name in PRIVATE_HOOKS}

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, **kwargs):
        pass

    namespace["_run_epoch"] = _run_epoch
    with pytest.raises(ImportError, match=r"Trainer\._run_epoch` has no parameter resume_from_checkpoint, "
                                          r"epochs_trained, steps_trained_in_current_epoch"):
        check_trainer_hooks(type("FakeTrainer", (), namespace))

    def _init_training_state(self, num_update_steps_per_epoch, max_steps, num_train_epochs, resume_from_checkpoint,
                             trial):
        pass

    namespace["_run_epoch"] = Trainer._run_epoch
    namespace["_init_training_state"] = _init_training_state  # same names, positional order changed
    with pytest.raises(ImportError, match=r"Trainer\._init_training_state` should start with the parameters"):
        check_trainer_hooks(type("FakeTrainer", (), namespace))
