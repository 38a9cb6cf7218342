"""`MarsAugmentationCallback`: decides when a MARS round runs and runs it (score -> strategy -> grow), for
`MarsRewardTrainer` (installed by default) or any `trl.RewardTrainer` subclass:

    trainer = MyRewardTrainer(model, args=MarsRewardConfig(...), train_dataset=pairs)
    MarsAugmentationCallback().attach(trainer)
    trainer.train()

A round runs in `on_epoch_begin` (round t opens epoch `mars_warmup_epochs + t - 1`), so it scores margins with
r^{t-1}, the model after the previous epochs, and epoch t trains on D^t, as in the paper's Algorithm 1. Moving the
epoch onto the grown dataset needs Trainer internals no callback event reaches: `attach` mixes the small adapter of
`trl_mars.training.loop` into the trainer's class, and `trl_mars.training.plan_guard` checks at every epoch and after
`train()` that the rounds that ran, the epoch sizes and the step count match the plan, so a transformers release that
stops calling the adapter fails loudly instead of training without augmentation.

The callback handles Trainer's events, grows D^t and applies loss weights, and leaves the rest to its collaborators:
- `trl_mars.training.services.TrainerServices`: scoring with r^{t-1}, sharding generation across ranks, semantic labels
  computed once and broadcast;
- the strategy (`trl_mars.mars.strategies`, chosen by `mars_strategy`): the round's rows and/or loss weights;
- `trl_mars.eval.reporting.RunReporter`: console lines, logger figures, held-out reports, evidence files;
- `trl_mars.training.checkpoint`: the rounds inside Trainer's checkpoints;
- `trl_mars.training.plan_guard.PlanGuard`: the loop state shared with the adapter, and the plan checks.

Extension points (subclass and override): `augment(inputs) -> RoundResult` (by default the strategy's `run`),
`after_scoring(round_index, margins)` (sees every round's margins before the strategy). A new strategy is better
registered (`trl_mars.mars.strategies.register_strategy`) than written as a subclass.

Loss weights ('adaboost', `mars_weight_originals`, `mars_synthetic_weight`) reach the loss through `source_index`:
`attach` mixes `adaboost.WeightedLossMixin` into the trainer's class (MarsRewardTrainer has it already), keeps
`source_index` through TRL's column filter and collator, and the weights live in `example_weights`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, concatenate_datasets
from transformers import Trainer, TrainerCallback

from ..augment.base import RefinementResult
from ..baselines.adaboost import SOURCE_INDEX, LossWeightTable, SourceIndexCollator
from ..data.preferences import column_values, response_text
from ..eval.evidence import Evidence
from ..eval.reporting import RunReporter, quiet_console_printers
from ..mars.rounds import pair_key
from ..mars.scoring import NonFiniteRewardsError, TrainingMargins
from ..mars.strategies import (
    RoundInputs,
    RoundResult,
    RoundServices,
    RoundStrategy,
    build_strategy,
)
from .checkpoint import RoundState, load_round_state, save_round_state
from .config import MarsRewardConfig
from .loop import GrowingDatasetLoop, with_growing_dataset, with_weighted_loss
from .plan_guard import PlanGuard
from .schedule import RoundSchedule, round_epochs
from .services import TrainerServices

logger = logging.getLogger("trl_mars")


class MarsAugmentationCallback(TrainerCallback):
    """Runs MARS rounds inside `Trainer.train()`.

    Args:
        args: the MARS settings; defaults to the trainer's `args` (which must then be a `MarsRewardConfig`).
        paraphraser, embedder, refiner: back-ends to use instead of building them from `args`.
        won_generator: for 'won', a `west_of_n.CandidateGenerator` to use instead of `mars_won_generator`.
        originals: explicit-prompt rows (prompt/chosen/rejected) aligned with the trainer's prepared train set;
            by default read from its text columns (TRL's appended EOS stripped).
        tokenize_rows: turns synthetic rows into a dataset with the train set's columns; by default the trainer's
            own `_prepare_dataset`, so synthetic pairs are tokenised exactly like the originals.

    After `attach(trainer)`: `schedule` (the plan), `strategy`, `completed` (rounds done: round, epoch,
    num_synthetic), `evidence` (summary and files under `<output_dir>/mars/`), `plan_guard`, `reporter`.
    """

    def __init__(self, args: MarsRewardConfig | None = None, *, paraphraser=None, embedder=None, refiner=None,
                 won_generator=None, originals: Sequence[dict[str, Any]] | None = None,
                 tokenize_rows: Callable[[list[dict[str, Any]]], Dataset] | None = None):
        self.args = args
        self.paraphraser, self.embedder, self.refiner = paraphraser, embedder, refiner
        self.won_generator = won_generator
        self.cache = None
        self.originals = list(originals) if originals is not None else None
        self.tokenize_rows = tokenize_rows
        self.trainer: Trainer | None = None
        self.strategy: RoundStrategy | None = None
        self.schedule: RoundSchedule | None = None
        self.completed: list[dict[str, Any]] = []
        self.refinements: dict[int, RefinementResult] = {}
        self.used_pairs: dict[int, set[str]] = {}
        self.semantic: tuple[np.ndarray, list[str]] | None = None
        self.evidence: Evidence | None = None
        self.reporter: RunReporter | None = None
        self.plan_guard = PlanGuard()
        self.services: TrainerServices | None = None  # scoring and sharding, once attached
        self.loss_weights: LossWeightTable | None = None  # once a weighted loss is attached
        self.training_margins: TrainingMargins | None = None  # with mars_margin_source="training"
        self._epoch_start: float | None = None

    # ----------------------------------------------------------------- set-up

    @property
    def enabled(self) -> bool:
        return self.args is not None and self.args.mars_enabled

    @property
    def added(self) -> dict[int, int]:
        """Round number -> synthetic pairs it really added (rounds done so far)."""
        return {entry["round"]: entry["num_synthetic"] for entry in self.completed}

    @property
    def example_weights(self):
        """The loss weight of each `source_index` slot (a float tensor), or None without a weighted loss."""
        return None if self.loss_weights is None else self.loss_weights.table

    @property
    def log_history(self) -> list[dict[str, Any]]:
        """Every figure sent to the trainer's loggers, with its step (see `RunReporter.log_figures`)."""
        return [] if self.reporter is None else self.reporter.log_history

    @property
    def _weights_synthetic(self) -> bool:
        return self.args.mars_synthetic_weight != 1.0 and self.args.adds_pairs

    @property
    def _records_margins(self) -> bool:
        return self.enabled and self.args.mars_margin_source == "training"

    def attach(self, trainer: Trainer) -> MarsAugmentationCallback:
        """Binds to `trainer`: adds this callback, mixes in the loop adapter, quiets raw `mars/*` console dicts."""
        self.trainer = trainer
        self.args = self.args or trainer.args
        if not isinstance(self.args, MarsRewardConfig):
            raise TypeError(f"MarsAugmentationCallback needs a MarsRewardConfig (got {type(self.args).__name__}): "
                            "pass `args=MarsRewardConfig(...)` to the trainer or to the callback.")
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        if not isinstance(trainer, GrowingDatasetLoop):
            trainer.__class__ = with_growing_dataset(type(trainer))
        trainer._mars_callback = self
        quiet_console_printers(trainer)
        if self.args.sets_loss_weights or self._weights_synthetic or self._records_margins:
            self._attach_weighted_loss(trainer)
        self.base_train = trainer.train_dataset
        self.evidence = Evidence(Path(self.args.output_dir) / "mars")
        self.reporter = RunReporter(trainer, self.args, self.evidence, rounds_enabled=self.enabled)
        if not self.enabled:
            return self
        self.strategy = build_strategy(self.args)
        if self.originals is None:
            self.originals = _originals_from(self.base_train, trainer.processing_class)
        if len(self.originals) != len(self.base_train):
            raise ValueError(f"{len(self.originals)} original rows for {len(self.base_train)} training pairs: "
                             "`originals` must be aligned with the prepared train dataset.")
        self.services = TrainerServices(trainer, self.args, self.originals, self.base_train)
        args = self.args
        world = max(1, args.world_size)
        self.schedule = RoundSchedule(
            base_size=len(self.base_train), num_train_epochs=args.num_train_epochs,
            round_epochs=tuple(round_epochs(args.num_train_epochs, args.mars_warmup_epochs, args.mars_rounds)),
            budget=_budget(len(self.originals), args.mars_budget_ratio),
            pairs_per_batch=trainer._train_batch_size * world,
            gradient_accumulation_steps=args.gradient_accumulation_steps, drop_last=args.dataloader_drop_last,
            pairs_per_epoch=len(self.base_train) if args.mars_epoch_size == "original" else None)
        if self.schedule.num_rounds == 0 and trainer.is_world_process_zero():
            logger.warning("MARS: no round will run: %s epoch(s) with mars_warmup_epochs=%d leave no epoch for one. "
                           "Train for more epochs or lower mars_warmup_epochs.", args.num_train_epochs,
                           args.mars_warmup_epochs)
        if trainer.is_world_process_zero():
            logger.info("MARS: strategy=%s, %d original pairs, %d rounds at epochs %s, budget %d synthetic pairs "
                        "per round.", args.mars_strategy, len(self.originals), self.schedule.num_rounds,
                        [e + 1 for e in self.schedule.round_epochs], self.schedule.budget)
        return self

    def _attach_weighted_loss(self, trainer: Trainer) -> None:
        """Weights reach the loss through `source_index` (see `trl_mars.baselines.adaboost`); all 1 until a round sets
        them."""
        import torch

        if SOURCE_INDEX not in trainer.train_dataset.column_names:  # a plain RewardTrainer's prepared set
            positions = list(range(len(trainer.train_dataset)))
            trainer.train_dataset = trainer.train_dataset.add_column(SOURCE_INDEX, positions)
        trainer.__class__ = with_weighted_loss(type(trainer))
        if not isinstance(trainer.data_collator, SourceIndexCollator):
            trainer.data_collator = SourceIndexCollator(trainer.data_collator)
        slots = torch.as_tensor(column_values(trainer.train_dataset, SOURCE_INDEX), dtype=torch.long)
        synthetic_weight = None
        if self._weights_synthetic:
            synthetic_weight = self.args.mars_synthetic_weight
        elif self._records_margins and self.args.adds_pairs:
            synthetic_weight = 1.0  # synthetic rows get slots of their own, so they are not recorded as originals
        self.loss_weights = LossWeightTable(slots, synthetic_weight=synthetic_weight)
        if self._records_margins:
            self.training_margins = TrainingMargins(slots.tolist())

    def set_example_weights(self, weights: np.ndarray) -> None:
        """Per-tuple loss weights, in the order of the original train set, for `WeightedLossMixin`; synthetic pairs
        get their tuple's weight times `mars_synthetic_weight` when that is not 1."""
        self.loss_weights.set(weights)

    def build_backends(self, args: MarsRewardConfig | None = None):
        """Builds the configured back-ends once per process (every rank generates its share of the texts)."""
        from ..augment.factory import (
            build_cache,
            build_embedder,
            build_paraphraser,
            build_refiner,
        )

        args = args or self.args
        if not args.adds_pairs:  # e.g. 'adaboost': generates nothing
            return self.paraphraser, self.embedder, self.refiner
        if self.cache is None:
            self.cache = build_cache(args)
        if self.paraphraser is None and args.generates_with_paraphraser:
            self.paraphraser = build_paraphraser(args, self.cache)
        if args.mars_strategy == "won" and self.won_generator is None:
            from ..baselines.west_of_n import build_generator

            self.won_generator = build_generator(args, self.paraphraser, self.cache)
        # The embedder is loaded only where its output is read: the semantic labels pick the pairs the refiner
        # rewrites, so without a refiner (the default, `mars_refiner="none"`) no embedding model is needed.
        if args.uses_semantic_labels and self.refiner is None:
            self.embedder = self.embedder or build_embedder(args)
            self.refiner = build_refiner(args, self.embedder, self.cache, reward_check=self.reward_check)
        elif args.mars_strategy == "mars" and self.refiner is not None and self.embedder is None:
            self.embedder = build_embedder(args)  # an injected refiner with `mars_refiner="none"`
        return self.paraphraser, self.embedder, self.refiner

    # ---------------------------------------------------------- callback events

    def on_train_begin(self, args, state, control, **kwargs):
        self.plan_guard.start_training()
        if self.enabled and state.global_step > 0:
            self.plan_guard.expected_resume = self.schedule.position(state.global_step, self.added)
        if self.enabled and state.global_step == 0 and not args.eval_on_start:
            self.report_heldout("before training")

    def on_epoch_begin(self, args, state, control, **kwargs):
        if not self.enabled:
            return
        epoch = self._current_epoch(state)
        self.plan_guard.begin_epoch(epoch)
        done = {entry["round"] for entry in self.completed}
        for round_index in self.schedule.rounds_due(epoch):
            if round_index not in done:
                self.run_round(round_index, epoch)
        self._epoch_start = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        """Checks the plan at the first step of each epoch, before any optimizer step is spent on wrong data."""
        if self.enabled and self.plan_guard.needs_check():
            self.check_plan(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        epoch = self.plan_guard.current_epoch
        epoch = self._current_epoch(state) - 1 if epoch is None else epoch
        if self.enabled and self._epoch_start is not None:
            self.reporter.epoch_time(epoch, time.perf_counter() - self._epoch_start)
        if self.enabled and args.eval_strategy != "epoch":  # with "epoch", Trainer's evaluation feeds the report
            self.report_heldout(self._after_epoch(epoch))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.enabled or args.eval_strategy != "epoch" or not metrics:
            return
        epoch = self.plan_guard.current_epoch or 0
        self.reporter.report_evaluate(metrics, when=self._after_epoch(epoch), global_step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        """Stores the rounds done so far in the checkpoint Trainer just wrote, so a resume never calls a back-end."""
        if not (self.enabled and args.should_save):
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        weights = self.example_weights
        save_round_state(checkpoint, RoundState(
            completed=self.completed, refinements=self.refinements, summary=self.evidence.summary,
            example_weights=None if weights is None else weights.tolist()),
            {entry["round"]: self.evidence.round_dir(entry["round"]) / "synthetic.jsonl" for entry in self.completed})

    # -------------------------------------------------------------- the round

    def run_round(self, round_index: int, epoch: int) -> RoundResult | None:
        """score -> the strategy (allocate, refine, generate, sample) -> grow, then evidence and one console line."""
        args = self.args
        start = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            margins = self.services.score_originals(round_index, self.training_margins)
        except NonFiniteRewardsError as error:
            self.skip_round(round_index, epoch, error)
            return None
        timings["score"] = time.perf_counter() - start
        self.after_scoring(round_index, margins)
        self.build_backends()
        distances = labels = None
        if args.mars_strategy == "mars" and self.refiner is not None:  # only the refiner reads the labels
            semantic_start = time.perf_counter()
            distances, labels = self.semantic_labels()
            timings["semantic"] = time.perf_counter() - semantic_start
        result = self.augment(RoundInputs(
            round_index=round_index, originals=self.originals, margins=margins, paraphraser=self.paraphraser,
            strategy=args.mars_strategy, tau=args.mars_tau, margin_mode=args.mars_margin_mode,
            margin_scale=args.mars_margin_scale, max_budget_share=args.mars_max_budget_share,
            budget_ratio=args.mars_budget_ratio, rounding=args.mars_budget_rounding, seed=args.effective_mars_seed,
            paraphrase_prompts=args.mars_paraphrase_prompts, distances=distances, labels=labels,
            refiner=self.refiner, refinements=self.refinements, used_pairs=self.used_pairs,
            generate_map=self.services.generate_map, timings=timings))
        if result.loss_weights is not None:
            self.set_example_weights(result.loss_weights)
        grow_start = time.perf_counter()
        self.grow(result.synthetic_rows)
        timings["tokenize"] = time.perf_counter() - grow_start
        timings["round_total"] = time.perf_counter() - start
        self.completed.append({"round": round_index, "epoch": epoch, "num_synthetic": len(result.synthetic_rows)})
        summary = result.summary
        summary.epoch, summary.timings, summary.backend = epoch + 1, dict(timings), self._backend_stats()
        self.reporter.round_done(summary, result.allocation_rows, result.synthetic_rows,
                                 seconds=timings["round_total"])
        return result

    def skip_round(self, round_index: int, epoch: int, error: NonFiniteRewardsError) -> None:
        """A round whose margins are not finite adds nothing: the allocation cannot rank NaNs. Training goes on
        (as `RewardTrainer` would, reporting NaN losses); the round is recorded as skipped, with the reason."""
        self.completed.append({"round": round_index, "epoch": epoch, "num_synthetic": 0, "skipped": str(error)})
        self.reporter.round_skipped(round_index, epoch, error)

    def log_figures(self, figures: dict[str, float]) -> None:
        """Sends figures to the trainer's loggers, outside `state.log_history` (see `RunReporter.log_figures`)."""
        self.reporter.log_figures(figures)

    def after_scoring(self, round_index: int, margins: np.ndarray) -> None:
        """Hook: sees each round's margins before the strategy does. Default: nothing."""

    def augment(self, inputs: RoundInputs) -> RoundResult:
        """Hook: the round's rows, loss weights and summary from its inputs; by default the strategy's `run`."""
        services = RoundServices(score_responses=self.services.score_responses, won_generator=self.won_generator)
        return self.strategy.run(inputs, services)

    def grow(self, rows: list[dict[str, Any]]) -> None:
        """D^t = D^{t-1} + the round's rows, tokenised like the originals."""
        if not rows:
            return
        trainer = self.trainer
        if "margin" in self.base_train.column_names:
            source_margin = column_values(self.base_train, "margin")
            rows = [{**row, "margin": source_margin[row["source_index"]]} for row in rows]
        if self.tokenize_rows is not None:
            new = self.tokenize_rows(rows)
        else:
            columns = [c for c in ("prompt", "chosen", "rejected", "margin", SOURCE_INDEX) if c in rows[0]]
            new = Dataset.from_list([{c: row[c] for c in columns} for row in rows])
            new = trainer._prepare_dataset(new, trainer.processing_class, trainer.args, "synthetic")
        offset = None if self.loss_weights is None else self.loss_weights.synthetic_offset
        if offset is not None:  # synthetic rows read their own loss-weight slots
            shifted = [offset + int(i) for i in column_values(new, SOURCE_INDEX)]
            new = new.remove_columns(SOURCE_INDEX).add_column(SOURCE_INDEX, shifted)
        new = new.select_columns([c for c in trainer.train_dataset.column_names if c in new.column_names])
        if new.features != trainer.train_dataset.features:
            new = new.cast(trainer.train_dataset.features)
        trainer.train_dataset = concatenate_datasets([trainer.train_dataset, new])
        for row in rows:
            self.used_pairs.setdefault(row["source_index"], set()).add(
                pair_key(response_text(row["chosen"]), response_text(row["rejected"])))
        self.plan_guard.dataset_changed()

    def semantic_labels(self) -> tuple[np.ndarray, list[str]]:
        """Distances and labels of the original pairs, once per run (docs/architecture.md, step 4)."""
        if self.semantic is None:
            distances, labels, threshold = self.services.semantic_labels(self.embedder, self.cache)
            self.semantic = (distances, labels)
            self.evidence.summary["semantic"] = {"threshold": threshold, "high_distance": labels.count("high"),
                                                 "low_distance": labels.count("low")}
        return self.semantic

    def reward_check(self, triples) -> list[bool]:
        """Label check for rewrites (`mars_label_check="reward_model"`): see `TrainerServices.prefers_chosen`."""
        return self.services.prefers_chosen(triples)

    def report_heldout(self, when: str) -> None:
        """Pairwise accuracy and margin SNR on each eval set, printed once and logged."""
        self.reporter.report_heldout(when, batch_size=self.args.mars_scoring_batch_size if self.args else 64)

    # ------------------------------------------------------ resume and checks

    def restore(self, checkpoint: str | None) -> None:
        """Rebuilds D^t from a checkpoint's rounds (or resets to the originals for a fresh run)."""
        trainer = self.trainer
        trainer.train_dataset = self.base_train
        self.completed, self.refinements, self.used_pairs = [], {}, {}
        if self.loss_weights is not None:  # all 1 again until a round says otherwise
            self.loss_weights.reset()
        self.plan_guard.reset()
        if checkpoint is None:
            return
        state = load_round_state(checkpoint)
        for entry in state.completed:
            self.grow(state.synthetic_rows[entry["round"]])
            self.completed.append(entry)
        self.refinements = state.refinements
        if state.summary is not None:
            self.evidence.summary = state.summary
        if state.example_weights is not None:
            import torch

            self.loss_weights.table = torch.tensor(state.example_weights, dtype=torch.float32)
        if trainer.is_world_process_zero():
            logger.info("MARS: resumed with %d completed rounds (%d training pairs).", len(self.completed),
                        len(trainer.train_dataset))

    def check_plan(self, state, *, final: bool = False) -> None:
        """Raises `RoundPlanError` if rounds, epoch sizes or the step count differ from the plan."""
        if self.enabled:
            self.plan_guard.check(self.schedule, self.added, state, max_steps=self.args.max_steps, final=final)

    # ---------------------------------------------------------------- helpers

    def _current_epoch(self, state) -> int:
        return int(math.floor((state.epoch or 0.0) + 1e-6))

    def _after_epoch(self, epoch: int) -> str:
        return f"after epoch {epoch + 1}" + (f" (round {len(self.completed)})" if self.enabled and self.completed
                                             else "")

    def _backend_stats(self) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        if self.refiner is not None and self.semantic is not None:
            from ..augment.refiner import summarise

            stats = summarise(list(self.refinements.values()), self.semantic[1]).to_dict()
            entry["refinement"] = self.evidence.summary["refinement"] = stats
        stats_source = getattr(self.paraphraser, "stats", None)
        if isinstance(stats_source, dict):
            entry["paraphraser_stats"] = dict(stats_source)
        if self.cache is not None:
            entry["cache"] = {"hits": self.cache.hits, "misses": self.cache.misses}
        return entry


def _budget(num_originals: int, ratio: float) -> int:
    from ..mars.allocation import total_budget

    return total_budget(num_originals, ratio)


def _originals_from(dataset: Dataset, tokenizer) -> list[dict[str, Any]]:
    """Text rows of a prepared TRL train set, without the EOS that TRL appends to each response."""
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"The prepared train dataset has no {missing} column(s): MARS paraphrases responses apart "
                         "from prompts. Pass an explicit-prompt dataset, or `originals=` to the callback.")
    eos = getattr(tokenizer, "eos_token", None)

    def strip(value):
        if isinstance(value, str) and eos and value.endswith(eos):
            return value[: -len(eos)]
        return value

    columns = {c: column_values(dataset, c) for c in ("prompt", "chosen", "rejected")}
    return [{"prompt": p, "chosen": strip(c), "rejected": strip(r)}
            for p, c, r in zip(columns["prompt"], columns["chosen"], columns["rejected"])]
