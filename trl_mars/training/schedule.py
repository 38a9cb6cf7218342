"""Pure training-schedule arithmetic for a dataset that grows by one round per epoch (no Trainer, no torch).

Trainer sizes its one LR schedule from the first epoch's length; with MARS every round makes the following epochs
longer, so the number of optimizer steps is the sum of the planned epoch lengths. The plan assumes each future round
adds exactly its budget B; once a round has run, its real count replaces B (a round can add fewer pairs when the
back-end returns too few variants), and the remaining steps are re-planned from there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger("trl_mars")


def round_epochs(num_train_epochs: float, warmup_epochs: int, rounds: int | None) -> list[int]:
    """Epoch index (0-based) at whose start each round runs: round t at epoch `warmup_epochs + t - 1`.

    With `rounds=None` every epoch after the warm-up gets a round; more rounds than epochs are capped (with a warning).
    """
    num_epochs = math.ceil(num_train_epochs)
    available = max(0, num_epochs - warmup_epochs)
    count = available if rounds is None else min(rounds, available)
    if rounds is not None and rounds > available:
        logger.warning("mars_rounds=%d but only %d epochs follow the warm-up; running %d rounds.", rounds,
                       available, count)
    return [warmup_epochs + t for t in range(count)]


@dataclass(frozen=True)
class RoundSchedule:
    """The plan of one run: which epoch each round opens, and how many optimizer steps each epoch takes.

    `base_size` is the number of original training pairs, `budget` the planned synthetic pairs per round,
    `pairs_per_batch` the pairs one optimizer micro-step consumes on all ranks together
    (per-device batch size x world size). `added` maps round number (1-based) to the pairs it really added.
    """

    base_size: int
    num_train_epochs: float
    round_epochs: tuple[int, ...]
    budget: int
    pairs_per_batch: int
    gradient_accumulation_steps: int = 1
    drop_last: bool = False
    # `mars_epoch_size="original"`: every epoch draws this many pairs from D^t (None: all of D^t, the paper)
    pairs_per_epoch: int | None = None

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.num_train_epochs)

    @property
    def num_rounds(self) -> int:
        return len(self.round_epochs)

    def rounds_due(self, epoch: int) -> list[int]:
        """Round numbers (1-based) that open `epoch`."""
        return [t for t, e in enumerate(self.round_epochs, start=1) if e == epoch]

    def dataset_sizes(self, added: Mapping[int, int] | None = None) -> list[int]:
        """Size of D^t in each epoch: originals plus every round so far (real counts where known, else B)."""
        added = added or {}
        sizes, size = [], self.base_size
        for epoch in range(self.num_epochs):
            for t in self.rounds_due(epoch):
                size += added.get(t, self.budget)
            sizes.append(size)
        return sizes

    def pairs_in_epoch(self, dataset_size: int) -> int:
        """Pairs one epoch trains on when D^t has `dataset_size` pairs: all, or `pairs_per_epoch` drawn from them."""
        return dataset_size if self.pairs_per_epoch is None else min(dataset_size, self.pairs_per_epoch)

    def epoch_sizes(self, added: Mapping[int, int] | None = None) -> list[int]:
        """Pairs trained on in each epoch (see `pairs_in_epoch`)."""
        return [self.pairs_in_epoch(size) for size in self.dataset_sizes(added)]

    def batches(self, size: int) -> int:
        """Micro-batches one rank sees in an epoch of `size` pairs (ceil(ceil(n / b) / w) == ceil(n / (b w)))."""
        return size // self.pairs_per_batch if self.drop_last else math.ceil(size / self.pairs_per_batch)

    def updates(self, size: int) -> int:
        """Optimizer steps in an epoch of `size` pairs (at least 1, as in Trainer)."""
        return max(1, math.ceil(self.batches(size) / self.gradient_accumulation_steps))

    def updates_per_epoch(self, added: Mapping[int, int] | None = None) -> list[int]:
        return [self.updates(size) for size in self.epoch_sizes(added)]

    def max_steps(self, added: Mapping[int, int] | None = None) -> int:
        """Total optimizer steps; a fractional last epoch (num_train_epochs=2.5) runs that share of its steps."""
        updates = self.updates_per_epoch(added)
        if not updates:
            return 0
        fraction = self.num_train_epochs - (self.num_epochs - 1)
        return sum(updates[:-1]) + math.ceil(fraction * updates[-1])

    def samples(self, added: Mapping[int, int] | None = None) -> int:
        """Pairs seen over the whole run (Trainer reports it as `num_train_samples`)."""
        return sum(self.epoch_sizes(added))

    def position(self, global_step: int, added: Mapping[int, int] | None = None) -> tuple[int, int]:
        """(epoch, optimizer steps already done in it) after `global_step` steps: where a resumed run continues."""
        remaining = global_step
        for epoch, updates in enumerate(self.updates_per_epoch(added)):
            if remaining < updates:
                return epoch, remaining
            remaining -= updates
        return self.num_epochs, 0
