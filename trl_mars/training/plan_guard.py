"""The plan guard: the state the loop adapter shares with the rounds, and the checks that the run follows its plan.

`trl_mars.training.loop.GrowingDatasetLoop` moves each epoch onto the grown dataset through private Trainer hooks. If a
transformers release stops calling one of them, training would go on silently without augmentation, on the wrong
number of pairs, or with a mis-sized LR schedule. The guard records what really happened (epochs begun, the
dataloader each epoch really ran on, the planned step count, where a resumed run landed) and compares it with the
`RoundSchedule` at the first step of every epoch and after `train()`, raising `RoundPlanError` on any difference.
"""

from __future__ import annotations

from collections.abc import Mapping

from .schedule import RoundSchedule

UPGRADE_HINT = ("This happens when a transformers release changes the Trainer internals trl_mars.training.loop adapts "
                "(see trl_mars.training.loop.SUPPORTED_TRANSFORMERS), or when a subclass bypasses them.")


class RoundPlanError(RuntimeError):
    """The rounds, epoch sizes or step count of a run differ from its plan (see `trl_mars.training.loop`)."""


class PlanGuard:
    """Loop state shared with `GrowingDatasetLoop`, and the plan checks.

    Written by the loop adapter: `loader`/`loader_version` (the dataloader of the current D^t), `planned_max_steps`,
    `resume_position`, and each epoch's real batch count (`epoch_started`). Written by the callback:
    `dataset_version` (bumped whenever D^t changes), the epochs begun, and the position a resumed run must reach.
    """

    def __init__(self):
        self.dataset_version = 0
        self.loader = None
        self.loader_version = 0
        self.planned_max_steps: int | None = None
        self.resume_position: tuple[int, int] | None = None
        self.expected_resume: tuple[int, int] | None = None
        self.epochs_begun: list[int] = []
        self.epoch_batches: dict[int, int] = {}
        self.checked_epoch: int | None = None

    def start_training(self) -> None:
        """A new `train()` call: no epoch begun or checked yet."""
        self.epochs_begun, self.epoch_batches, self.checked_epoch = [], {}, None

    def reset(self) -> None:
        """D^t is back to the originals (a fresh run or a resume about to replay its rounds)."""
        self.dataset_version += 1
        self.planned_max_steps = self.resume_position = self.expected_resume = None

    def dataset_changed(self) -> None:
        self.dataset_version += 1

    def begin_epoch(self, epoch: int) -> None:
        self.epochs_begun.append(epoch)

    @property
    def current_epoch(self) -> int | None:
        return self.epochs_begun[-1] if self.epochs_begun else None

    def needs_check(self) -> bool:
        """True once per epoch, at its first step (before any optimizer step is spent on wrong data)."""
        if self.epochs_begun and self.epochs_begun[-1] != self.checked_epoch:
            self.checked_epoch = self.epochs_begun[-1]
            return True
        return False

    def epoch_started(self, epoch: int, batches: int, resumed_at: tuple[int, int] | None, *, ignore_data_skip: bool,
                      gradient_accumulation_steps: int) -> None:
        """Called by the loop adapter as each epoch starts, with the real length of the epoch's dataloader; checks a
        resumed run's position at once."""
        self.epoch_batches[epoch] = batches
        if resumed_at is not None and self.expected_resume is not None and epoch == resumed_at[0]:
            epochs, updates = self.expected_resume
            steps = 0 if ignore_data_skip else updates * gradient_accumulation_steps
            if self.resume_position is None or tuple(resumed_at) != (epochs, steps):
                raise RoundPlanError(
                    f"resumed at epoch {resumed_at[0]}, step {resumed_at[1]} but the plan says epoch {epochs}, step "
                    f"{steps}: Trainer did not call the adapter's `_init_training_state`. {UPGRADE_HINT}")

    def check(self, schedule: RoundSchedule, added: Mapping[int, int], state, *, max_steps: int,
              final: bool = False) -> None:
        """Raises `RoundPlanError` if rounds, epoch sizes or the step count differ from the plan."""
        problems = []
        if self.planned_max_steps is None and max_steps <= 0:
            problems.append("the total number of steps was not planned (`set_initial_training_values` not called)")
        sizes = schedule.epoch_sizes(added)
        for epoch in self.epochs_begun:
            planned = schedule.batches(sizes[epoch])
            if epoch not in self.epoch_batches:
                problems.append(f"epoch {epoch + 1} did not run through the adapter's `_run_epoch`")
            elif self.epoch_batches[epoch] != planned:
                problems.append(f"epoch {epoch + 1}'s dataloader has {self.epoch_batches[epoch]} batches, the plan "
                                f"has {planned} ({sizes[epoch]} pairs)")
        due = {t for e in self.epochs_begun for t in schedule.rounds_due(e)}
        due |= {t for t, e in enumerate(schedule.round_epochs, start=1) if self.epochs_begun and
                e < self.epochs_begun[0]}
        ran = set(added)
        if due != ran:
            problems.append(f"rounds planned so far {sorted(due)} but rounds run {sorted(ran)}")
        planned_steps = schedule.max_steps(added)
        if final and max_steps <= 0 and state.max_steps != planned_steps:
            problems.append(f"the run was sized for {state.max_steps} steps, the plan has {planned_steps}")
        if final and not problems and self.epochs_begun and schedule.num_epochs - 1 in self.epochs_begun \
                and max_steps <= 0 and state.global_step != planned_steps:
            problems.append(f"{state.global_step} steps ran, the plan has {planned_steps}")
        if problems:
            raise RoundPlanError("MARS round plan not followed: " + "; ".join(problems) + f". {UPGRADE_HINT}")
