"""What a round asks of the trainer's model and processes: scoring with r^{t-1}, sharding work across ranks, and
computing once on the main process what every rank needs.

`MarsAugmentationCallback` owns one `TrainerServices` per attached trainer; strategies reach it only through
`RoundServices` and `RoundInputs.generate_map`, so they never touch Trainer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from accelerate.utils import broadcast_object_list, gather_object

from ..data.preferences import (
    column_values,
    response_text,
    tokenize_pair,
    truncate_keep_end,
    with_response_text,
)
from ..mars.scoring import LocalAccelerator, TrainingMargins, score_margins, score_sequences

logger = logging.getLogger("trl_mars")


class TrainerServices:
    """Scoring and sharding for the rounds of one trainer.

    `originals` are the explicit-prompt text rows of the original pairs, `base_train` their prepared (tokenised)
    dataset, in the same order.
    """

    def __init__(self, trainer, args, originals: Sequence[dict[str, Any]], base_train):
        self.trainer = trainer
        self.args = args
        self.originals = originals
        self.base_train = base_train
        self._special_ids = set(trainer.processing_class.all_special_ids)

    def _fit(self, ids: list[int]) -> list[int]:
        """Token ids cut to `max_length` as training cuts them (the end is kept)."""
        return truncate_keep_end(ids, self.args.max_length, self._special_ids) if self.args.max_length else ids

    def score_originals(self, round_index: int, recorded: TrainingMargins | None = None) -> np.ndarray:
        """Delta_i = r^{t-1}(x_i, y_i+) - r^{t-1}(x_i, y_i-) on the original pairs, sharded across ranks.

        With `recorded` (`mars_margin_source="training"`), the margins the loss saw since the previous round, and
        r^{t-1} scores only the pairs that were not trained on since then."""
        trainer = self.trainer
        chosen, rejected = column_values(self.base_train, "chosen_ids"), column_values(self.base_train, "rejected_ids")
        margins = np.full(len(chosen), np.nan) if recorded is None else recorded.take(trainer.accelerator)
        missing = np.flatnonzero(np.isnan(margins))
        if recorded is not None and len(missing) and trainer.is_world_process_zero():
            logger.info("MARS round %d: %d of %d original pairs were not trained on since the last round (a round "
                        "before any training, a resumed run, or an epoch that sampled D^t): r^{t-1} scores them.",
                        round_index, len(missing), len(chosen))
        if len(missing):
            rescored, _ = score_margins(trainer.model_wrapped, [chosen[i] for i in missing],
                                        [rejected[i] for i in missing],
                                        pad_token_id=trainer.processing_class.pad_token_id,
                                        batch_size=self.args.mars_scoring_batch_size, accelerator=trainer.accelerator,
                                        desc=f"MARS round {round_index}: scoring margins")
            margins[missing] = rescored
        return margins

    def score_responses(self, items: Sequence[tuple[int, str]]) -> np.ndarray:
        """r^{t-1}(x_i, y) for (tuple index i, response text y), tokenised as training tokenises (all ranks)."""
        from ..data.tokenization import tokenize_pairs

        trainer = self.trainer
        tokenizer = trainer.processing_class
        rows = []
        for i, text in items:
            original = self.originals[i]
            response = with_response_text(original["chosen"], text)
            rows.append({"prompt": original["prompt"], "chosen": response, "rejected": response})
        ids = [self._fit(seq) for seq in tokenize_pairs(rows, tokenizer)["chosen_ids"]]
        return score_sequences(trainer.model_wrapped, ids, pad_token_id=tokenizer.pad_token_id,
                               batch_size=2 * self.args.mars_scoring_batch_size, accelerator=trainer.accelerator,
                               desc="West-of-N: scoring candidates")

    def prefers_chosen(self, triples) -> list[bool]:
        """Label check for rewrites: does the current model still prefer the chosen side? (this rank alone)"""
        trainer = self.trainer
        tokenizer = trainer.processing_class
        tokenized = [tokenize_pair({"prompt": p, "chosen": c, "rejected": r}, tokenizer) for p, c, r in triples]
        margins, _ = score_margins(trainer.model, [self._fit(t["chosen_ids"]) for t in tokenized],
                                   [self._fit(t["rejected_ids"]) for t in tokenized],
                                   pad_token_id=tokenizer.pad_token_id, batch_size=self.args.mars_scoring_batch_size,
                                   accelerator=LocalAccelerator.view_of(trainer.accelerator),
                                   desc="MARS: checking rewrites")
        return [bool(m > 0) for m in margins]

    def generate_map(self, fn: Callable[[list], list], items: list) -> list:
        """Runs `fn` on this rank's contiguous share of `items`; every rank gets all results, in input order."""
        accelerator = self.trainer.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        if world == 1:
            return fn(items) if items else []
        bounds = [len(items) * r // world for r in range(world + 1)]
        mine = items[bounds[rank] : bounds[rank + 1]]
        results = fn(mine) if mine else []
        if len(results) != len(mine):
            raise RuntimeError(f"a back-end returned {len(results)} results for {len(mine)} inputs.")
        return [item for part in gather_object([results]) for item in part]

    def semantic_labels(self, embedder, cache) -> tuple[np.ndarray, list[str], float]:
        """(distances, labels, threshold) of the original pairs, computed on the main process and sent to every rank
        (docs/architecture.md, step 4)."""
        accelerator = self.trainer.accelerator
        payload: list[Any] = [None]
        if accelerator.is_main_process:
            from ..mars.semantic import semantic_distances, semantic_labels

            chosen = [response_text(row["chosen"]) for row in self.originals]
            rejected = [response_text(row["rejected"]) for row in self.originals]
            distances = semantic_distances(embedder, chosen, rejected, cache=cache)
            labels, threshold = semantic_labels(distances)
            payload = [(distances, list(labels), float(threshold))]
        if accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        return payload[0]
