"""The one adapter onto `transformers.Trainer` internals that a dataset growing between epochs needs.

Why an adapter at all: `Trainer._inner_training_loop` builds the train dataloader once and passes it, with the
epoch's step counts, as local variables into `_run_epoch`; the total number of steps (and so the LR schedule) is
fixed from the first epoch's length in `set_initial_training_values`; and a resumed run finds its epoch as
`global_step // steps_per_epoch`. No callback event can change any of these, so MARS needs exactly these overrides,
each small, each checked at run time by `trl_mars.training.plan_guard.PlanGuard` (rounds, epoch batches and steps vs the
plan; the guard also holds the state shared with these overrides):

- `set_initial_training_values`: the total steps are the sum of the planned, growing epoch lengths;
- `_init_training_state`: a resumed run lands in the right epoch and step of epochs of different lengths;
- `_run_epoch`: the epoch runs on a dataloader rebuilt from the grown dataset, with its own step counts, and the
  LR schedule is re-planned when a round added fewer pairs than planned;
- `_get_train_sampler`: with `mars_epoch_size="original"`, each epoch draws N pairs from the grown dataset;
- `train` (public): rebuilds the rounds of a checkpoint before Trainer sizes the run, and checks the plan after.

Rounds themselves run in `MarsAugmentationCallback.on_epoch_begin`, a public callback event.

`PRIVATE_HOOKS` lists every Trainer internal the package overrides (these and
`adaboost.WeightedLossMixin._set_signature_columns_if_needed`) with the parameters we rely on. They exist with these
signatures in transformers 5.3 up to at least 5.24 (5.0-5.2 had one monolithic `_inner_training_loop`); importing
this module fails with a message outside `SUPPORTED_TRANSFORMERS` or when a hook lost a parameter.
"""

from __future__ import annotations

import inspect
import logging
import warnings

import torch
import transformers
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .versions import require_version_range

logger = logging.getLogger("trl_mars")

SUPPORTED_TRANSFORMERS = ("5.3.0", "6.0.0")  # [min, max): keep in step with pyproject.toml
TESTED_TRANSFORMERS_UP_TO = "5.24"  # the newest release the hooks below were checked against

# Every `transformers.Trainer` internal that trl-mars overrides -> the parameters it relies on, like a signature
# without `self`: the names before "*" lead the parameter list in this order (we pass them positionally to
# `super()`), the names after it must exist (we pass or read them by keyword). Checked at import by
# `check_trainer_hooks`; tests/test_private_hooks.py checks that the list covers every override.
PRIVATE_HOOKS: dict[str, tuple[str, ...]] = {
    # GrowingDatasetLoop
    "set_initial_training_values": ("args", "dataloader"),
    "_init_training_state": ("max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint",
                             "trial"),
    "_run_epoch": ("model", "epoch", "train_dataloader", "steps_in_epoch", "num_update_steps_per_epoch", "*",
                   "resume_from_checkpoint", "epochs_trained", "steps_trained_in_current_epoch"),
    "_get_train_sampler": ("train_dataset",),
    # adaboost.WeightedLossMixin
    "_set_signature_columns_if_needed": (),
}


def check_transformers_version(version: str | None = None) -> None:
    """Raises ImportError outside the transformers range whose Trainer internals the adapter relies on."""
    hooks = ", ".join(f"`{name}`" for name in PRIVATE_HOOKS)
    require_version_range("transformers", version or transformers.__version__, SUPPORTED_TRANSFORMERS,
                          f"MARS rounds hook into Trainer's internals ({hooks})")


def _hook_mismatch(trainer_class: type, name: str, expected: tuple[str, ...]) -> str | None:
    """What is wrong with `trainer_class.<name>` for `expected` (see `PRIVATE_HOOKS`), or None when it fits."""
    hook = getattr(trainer_class, name, None)
    if not callable(hook):
        return "is missing"
    parameters = list(inspect.signature(hook).parameters)[1:]  # without self
    split = expected.index("*") if "*" in expected else len(expected)
    leading, by_keyword = expected[:split], expected[split + 1:]
    if tuple(parameters[:len(leading)]) != leading:
        return f"should start with the parameters ({', '.join(leading)}) but has ({', '.join(parameters)})"
    missing = [p for p in by_keyword if p not in parameters]
    if missing:
        return f"has no parameter {', '.join(missing)} (it has {', '.join(parameters)})"
    return None


def check_trainer_hooks(trainer_class: type = Trainer, version: str | None = None) -> None:
    """Raises ImportError when `trainer_class` lacks a `PRIVATE_HOOKS` hook or a parameter the overrides rely on."""
    for name, expected in PRIVATE_HOOKS.items():
        problem = _hook_mismatch(trainer_class, name, expected)
        if problem is not None:
            low, high = SUPPORTED_TRANSFORMERS
            raise ImportError(
                f"`transformers.Trainer.{name}` {problem}: trl-mars overrides this internal and supports "
                f"transformers>={low},<{high} only while it keeps this shape (found transformers "
                f"{version or transformers.__version__}; tested up to {TESTED_TRANSFORMERS_UP_TO}). Install a version "
                f"whose Trainer still has it, e.g. `pip install 'transformers=={TESTED_TRANSFORMERS_UP_TO}.*'`.")


check_transformers_version()
check_trainer_hooks()


class GrowingDatasetLoop:
    """Mixin for a `transformers.Trainer` subclass whose training set grows at the start of some epochs.

    The schedule and the data come from the attached `MarsAugmentationCallback` (`self._mars_callback`); without
    one, or with MARS off, every method defers to Trainer unchanged.
    """

    _mars_callback = None

    def _mars_active(self) -> bool:
        callback = self._mars_callback
        return callback is not None and callback.enabled

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Rebuilds D^t from the checkpoint (its rounds decide the epoch lengths), trains, then checks the plan."""
        if self._mars_active():
            checkpoint = resume_from_checkpoint
            if isinstance(checkpoint, bool):
                checkpoint = get_last_checkpoint(self.args.output_dir) if checkpoint else None
            self._mars_callback.restore(checkpoint)
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                               ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        if self._mars_active():
            self._mars_callback.check_plan(self.state, final=True)
        return output

    def set_initial_training_values(self, args, dataloader):
        """Total steps = sum of the planned epoch lengths (Trainer would use epochs x the first epoch's length)."""
        values = list(super().set_initial_training_values(args, dataloader))
        if not self._mars_active() or args.max_steps > 0:
            return tuple(values)
        # num_train_epochs, num_update_steps_per_epoch, num_examples, num_train_samples, total_train_batch_size,
        # steps_in_epoch, max_steps
        plan, added = self._mars_callback.schedule, self._mars_callback.added
        values[3] = plan.samples(added)
        values[6] = plan.max_steps(added)
        self._mars_callback.plan_guard.planned_max_steps = values[6]
        return tuple(values)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        """On resume, finds the epoch and step by walking the planned (unequal) epoch lengths."""
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial)
        if self._mars_active() and self.state.global_step > 0:
            epochs_trained, updates_done = self._mars_callback.schedule.position(self.state.global_step,
                                                                                 self._mars_callback.added)
            steps_in_epoch = 0 if self.args.ignore_data_skip else updates_done * self.args.gradient_accumulation_steps
            self._mars_callback.plan_guard.resume_position = (epochs_trained, steps_in_epoch)
        return epochs_trained, steps_in_epoch

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, **kwargs):
        """Runs the epoch on the grown dataset (the round ran in `on_epoch_begin`) with its own step counts."""
        if self._mars_active():
            callback, guard = self._mars_callback, self._mars_callback.plan_guard
            if guard.loader_version != guard.dataset_version:
                guard.loader = self.get_train_dataloader()
                guard.loader_version = guard.dataset_version
                self.callback_handler.train_dataloader = guard.loader
            if guard.loader is not None:
                train_dataloader = guard.loader
            steps_in_epoch = len(train_dataloader)
            num_update_steps_per_epoch = max(1, -(-steps_in_epoch // self.args.gradient_accumulation_steps))
            if self.args.max_steps <= 0:
                self._mars_replan(callback.schedule.max_steps(callback.added))
            guard.epoch_started(epoch, steps_in_epoch,
                                (kwargs.get("epochs_trained"), kwargs.get("steps_trained_in_current_epoch"))
                                if kwargs.get("resume_from_checkpoint") is not None else None,
                                ignore_data_skip=self.args.ignore_data_skip,
                                gradient_accumulation_steps=self.args.gradient_accumulation_steps)
        return super()._run_epoch(model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch,
                                  **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """With `mars_epoch_size="original"`, a random draw of N pairs from D^t without replacement each epoch.

        A `RandomSampler` with `num_samples`: accelerate turns it into its seedable sampler (same `num_samples`),
        which re-draws every epoch from the run's seed, so a resumed run sees the same pairs."""
        sampler = super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self._mars_active() or self._mars_callback.schedule is None:
            return sampler
        pairs = self._mars_callback.schedule.pairs_in_epoch(len(dataset))
        if pairs == len(dataset):
            return sampler
        return torch.utils.data.RandomSampler(dataset, num_samples=pairs)

    def _mars_replan(self, max_steps: int) -> None:
        """Re-sizes the LR schedule to `max_steps` after a short round, keeping the steps already taken."""
        if max_steps == self.state.max_steps:
            return
        logger.info("MARS: re-planning the run from %d to %d optimizer steps.", self.state.max_steps, max_steps)
        self.state.max_steps = max_steps
        old = self.lr_scheduler
        if not getattr(self, "_created_lr_scheduler", False) or self.is_deepspeed_enabled:
            logger.warning("MARS: the LR scheduler was not created by Trainer; its length is left as it is.")
            return
        self.lr_scheduler = None
        self.create_scheduler(num_training_steps=max_steps, optimizer=self.optimizer)
        new = self.lr_scheduler
        with warnings.catch_warnings():  # torch warns about step order; the optimizer has stepped already
            warnings.simplefilter("ignore")
            new.last_epoch = old.last_epoch - 1
            new.step()
        self.callback_handler.lr_scheduler = new


def mix_in(mixin: type, trainer_class: type) -> type:
    """`trainer_class` with `mixin` in front of it (the class itself when it already has it).

    One subclass per (mixin, class) pair, cached, so trainers of the same class share it and keep their name."""
    if issubclass(trainer_class, mixin):
        return trainer_class
    key = (mixin, trainer_class)
    if key not in _MIXED:
        _MIXED[key] = type(trainer_class.__name__, (mixin, trainer_class),
                           {"__module__": trainer_class.__module__, "__doc__": trainer_class.__doc__})
    return _MIXED[key]


_MIXED: dict[tuple[type, type], type] = {}


def with_growing_dataset(trainer_class: type) -> type:
    """`trainer_class` with the loop adapter mixed in (the class itself when it already has it)."""
    if not issubclass(trainer_class, Trainer):
        raise TypeError(f"{trainer_class.__name__} is not a transformers.Trainer subclass.")
    return mix_in(GrowingDatasetLoop, trainer_class)


def with_weighted_loss(trainer_class: type) -> type:
    """`trainer_class` with `baselines.adaboost.WeightedLossMixin` mixed in (the class itself when it has it)."""
    from ..baselines.adaboost import WeightedLossMixin

    return mix_in(WeightedLossMixin, trainer_class)
