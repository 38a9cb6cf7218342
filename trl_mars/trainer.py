"""`MarsRewardTrainer`: `trl.RewardTrainer` with MARS augmentation rounds.

How it fits into `transformers.Trainer` (override as little as possible):

- `_run_epoch` is the seam. `Trainer` calls it once per epoch with the dataloader; a round that is due at this
  epoch runs first (score margins, allocate, refine, paraphrase, sample, grow the dataset), then the epoch runs on
  a dataloader rebuilt from the grown dataset. The optimizer and LR scheduler are the ones `Trainer` created once,
  so one schedule spans all rounds.
- `set_initial_training_values` sizes that schedule: the dataset grows by B pairs per round, so the total number
  of steps is the sum of the planned epoch lengths, not `epochs * len(first epoch)`.
- `_inner_training_loop` / `_init_training_state` / `_save_checkpoint` carry the round state through checkpoints:
  a checkpoint holds the synthetic pairs of the rounds done so far, and resuming rebuilds the dataset and lands in
  the right epoch and round without calling any back-end again.
- `_prepare_dataset` handles encoder tokenizers without an EOS token and truncates long examples instead of
  dropping them (both differ from TRL, which crashes or filters).

A round runs at the start of its epoch, so round t scores margins with r^{t-1} (the model after the previous
epochs) and epoch t trains on D^t, as in the paper's Algorithm 1.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import broadcast_object_list
from datasets import Dataset, IterableDataset, concatenate_datasets
from tqdm.auto import tqdm
from transformers import Trainer
from trl import RewardTrainer
from trl.trainer.utils import get_config_model_id

from .allocation import margin_statistics, total_budget
from .augment.base import RefinementResult
from .config import MarsRewardConfig
from .data import (
    TEXT_COLUMNS,
    column_values,
    response_text,
    to_explicit_prompt,
    tokenize_pair,
    truncate_keep_end,
    validate_preference_dataset,
)
from .preflight import as_model_id, prepare_start
from .rounds import RoundResult, read_jsonl, run_round, write_json, write_jsonl
from .scoring import score_margins

logger = logging.getLogger("trl_mars")
MARS_STATE_FILE = "mars_state.json"
_KEEP_COLUMNS = ("chosen_ids", "rejected_ids", "margin", "source_index")


class MarsRewardTrainer(RewardTrainer):
    """Drop-in replacement for `trl.RewardTrainer` that trains with MARS augmentation rounds.

    Takes the same arguments as `RewardTrainer` (model id or module, `args`, datasets, `processing_class`,
    `peft_config`, `callbacks`, ...) with a [`MarsRewardConfig`] as `args`. Optional keyword-only arguments inject
    back-ends directly (`paraphraser`, `embedder`, `refiner`) instead of building them from the config.

    Evidence of every round goes to `<output_dir>/mars/`: `round_<t>/allocation.jsonl`,
    `round_<t>/synthetic.jsonl` and `summary.json`; the same figures go to the trainer's loggers (`report_to`).
    """

    _tag_names = ["trl", "reward-trainer", "mars"]

    def __init__(
        self,
        model,
        args: MarsRewardConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        quantization_config=None,
        peft_config=None,
        *,
        paraphraser=None,
        embedder=None,
        refiner=None,
    ):
        model = as_model_id(model)  # a pathlib.Path or the packaged MiniLM alias -> a loadable str
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = MarsRewardConfig(f"{model_name.split('/')[-1]}-MARS")
        elif not isinstance(args, MarsRewardConfig):
            raise TypeError(
                f"`args` must be a `MarsRewardConfig`, got `{type(args).__name__}`. Replace `RewardConfig(...)` with "
                "`MarsRewardConfig(...)`: it takes the same arguments (plus the `mars_*` ones)."
            )
        # Validate everything before the parent loads a model: bad input must fail in seconds.
        if train_dataset is None:
            raise ValueError("`train_dataset` is required.")
        validate_preference_dataset(train_dataset, name="train", require_text=args.mars_enabled)
        for name, dataset in _named_eval_datasets(eval_dataset):
            validate_preference_dataset(dataset, name=name)
        self._mars_validated = {getattr(d, "_fingerprint", None) for _, d in [("train", train_dataset),
                                                                               *_named_eval_datasets(eval_dataset)]}
        self._mars_truncated: dict[str, int] = {}
        self._mars_paraphraser, self._mars_embedder, self._mars_refiner = paraphraser, embedder, refiner
        self._mars_cache = None
        if args.mars_enabled:
            _check_distributed_support(args)
            # Extract implicit prompts once: the parent tokenises this explicit-prompt copy, and rounds read its text.
            train_dataset = self._mars_originals_text = to_explicit_prompt(train_dataset)
            self._mars_validated.add(train_dataset._fingerprint)
            if args.process_index == 0:
                # Back-ends are built (and endpoints checked) now: a missing key fails before the model loads.
                self._mars_backends(args)
        # Every rank: models and endpoints checked before any load; CPU/PEFT/console start-up adjustments.
        peft_config = prepare_start(model, args, peft_config, paraphraser=paraphraser, embedder=embedder,
                                    refiner=refiner)

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        self._mars_base_train = self.train_dataset
        self._mars_completed: list[dict[str, Any]] = []  # {"round", "epoch", "num_synthetic"}
        self._mars_refinements: dict[int, RefinementResult] = {}
        self._mars_semantic: tuple[np.ndarray, list[str]] | None = None
        self._mars_summary: dict[str, Any] = {"rounds": [], "eval": []}
        self._mars_dataset_version = 0
        self._mars_loader = None
        self._mars_loader_version = 0
        if args.mars_enabled:
            texts = {column: column_values(self._mars_originals_text, column) for column in TEXT_COLUMNS}
            self._mars_originals = [
                {column: texts[column][j] for column in TEXT_COLUMNS}
                for j in column_values(self.train_dataset, "source_index")
            ]
            self._mars_original_margin_column = "margin" in self._mars_originals_text.column_names
            self._mars_num_rounds, self._mars_round_epochs = _round_schedule(args)
            self._mars_budget = total_budget(len(self._mars_originals), args.mars_budget_ratio)
            if self.is_world_process_zero():
                logger.info(
                    "MARS: strategy=%s, %d original pairs, %d rounds at epochs %s, budget %d synthetic pairs per round.",
                    args.mars_strategy, len(self._mars_originals), self._mars_num_rounds,
                    [e + 1 for e in self._mars_round_epochs], self._mars_budget,
                )
        for name, count in self._mars_truncated.items():
            if count and self.is_world_process_zero():
                verb = "truncated (start of the prompt dropped)" if args.mars_truncation == "keep_end" else "dropped"
                logger.warning("%d %s examples were longer than max_length=%s and were %s.", count, name,
                               args.max_length, verb)

    # ------------------------------------------------------------------ data

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Tokenises like `RewardTrainer._prepare_dataset`, plus EOS-less encoders and keep-the-end truncation."""
        columns = list(dataset.column_names or [])
        if getattr(dataset, "_fingerprint", None) not in self._mars_validated:
            validate_preference_dataset(dataset, name=dataset_name)
        if isinstance(dataset, IterableDataset) or ({"chosen_ids", "rejected_ids"} <= set(columns)
                                                    and args.mars_truncation == "drop"):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        map_kwargs = {"num_proc": args.dataset_num_proc}
        if "source_index" not in columns:
            dataset = dataset.add_column("source_index", list(range(len(dataset))))
        if not {"chosen_ids", "rejected_ids"} <= set(columns):
            dataset = to_explicit_prompt(dataset)
            dataset = dataset.map(tokenize_pair, fn_kwargs={"tokenizer": processing_class},
                                  desc=f"Tokenizing {dataset_name} dataset", **map_kwargs)
        dataset = dataset.select_columns([c for c in _KEEP_COLUMNS if c in dataset.column_names])
        if args.max_length is not None:
            limit = args.max_length
            too_long = sum(1 for c, r in zip(column_values(dataset, "chosen_ids"), column_values(dataset, "rejected_ids"))
                           if len(c) > limit or len(r) > limit)
            self._mars_truncated[dataset_name] = self._mars_truncated.get(dataset_name, 0) + too_long
            if too_long and args.mars_truncation == "drop":
                dataset = dataset.filter(lambda x: len(x["chosen_ids"]) <= limit and len(x["rejected_ids"]) <= limit,
                                         desc=f"Dropping {dataset_name} >{limit} tokens", **map_kwargs)
            elif too_long:
                special = set(processing_class.all_special_ids)
                dataset = dataset.map(
                    lambda x: {side: truncate_keep_end(x[side], limit, special) for side in ("chosen_ids", "rejected_ids")},
                    desc=f"Truncating {dataset_name} >{limit} tokens", **map_kwargs)
        return dataset

    # ------------------------------------------------------------ schedule

    def _mars_epoch_sizes(self, num_epochs: int) -> list[int]:
        """Planned number of training pairs in each epoch: originals plus the synthetic pairs of rounds so far."""
        done = {entry["round"]: entry["num_synthetic"] for entry in self._mars_completed}
        sizes, size = [], len(self._mars_base_train)
        for epoch in range(num_epochs):
            for round_index, round_epoch in enumerate(self._mars_round_epochs, start=1):
                if round_epoch == epoch:
                    size += done.get(round_index, self._mars_budget)
            sizes.append(size)
        return sizes

    def _mars_updates_per_epoch(self, num_epochs: int) -> list[int]:
        args = self.args
        per_step = self._train_batch_size * max(1, args.world_size)
        updates = []
        for size in self._mars_epoch_sizes(num_epochs):
            batches = size // per_step if args.dataloader_drop_last else math.ceil(size / per_step)
            updates.append(max(1, math.ceil(batches / args.gradient_accumulation_steps)))
        return updates

    def set_initial_training_values(self, args, dataloader):
        values = list(super().set_initial_training_values(args, dataloader))
        if not self.args.mars_enabled or args.max_steps > 0:
            return tuple(values)
        # values: num_train_epochs, num_update_steps_per_epoch, num_examples, num_train_samples,
        #         total_train_batch_size, steps_in_epoch, max_steps
        num_epochs = math.ceil(args.num_train_epochs)
        updates = self._mars_updates_per_epoch(num_epochs)
        fraction = args.num_train_epochs - (num_epochs - 1)
        max_steps = sum(updates[:-1]) + math.ceil(fraction * updates[-1])
        values[3] = sum(self._mars_epoch_sizes(num_epochs))  # samples seen over the run
        values[6] = max_steps
        return tuple(values)

    def _inner_training_loop(self, batch_size=None, args=None, resume_from_checkpoint=None, trial=None,
                             ignore_keys_for_eval=None):
        if self.args.mars_enabled:
            self._mars_restore(resume_from_checkpoint)
        self._mars_loader, self._mars_loader_version = None, self._mars_dataset_version
        return super()._inner_training_loop(batch_size=batch_size, args=args,
                                            resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                            ignore_keys_for_eval=ignore_keys_for_eval)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint,
                             trial):
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial)
        if self.args.mars_enabled and self.state.global_step > 0:
            # Epochs have different lengths, so `global_step // steps_per_epoch` is wrong: walk the plan instead.
            remaining = self.state.global_step
            epochs_trained, steps_in_epoch = num_train_epochs, 0
            for epoch, updates in enumerate(self._mars_updates_per_epoch(num_train_epochs)):
                if remaining < updates:
                    epochs_trained = epoch
                    steps_in_epoch = 0 if self.args.ignore_data_skip else remaining * self.args.gradient_accumulation_steps
                    break
                remaining -= updates
        return epochs_trained, steps_in_epoch

    def _run_epoch(self, model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch, **kwargs):
        if self.state.global_step == 0 and epoch == 0:
            self._mars_report_eval("before training")
        if self.args.mars_enabled:
            for round_index, round_epoch in enumerate(self._mars_round_epochs, start=1):
                if round_epoch == epoch and round_index > len(self._mars_completed):
                    self._mars_run_round(round_index, epoch)
            if self._mars_loader_version != self._mars_dataset_version:
                self._mars_loader = self.get_train_dataloader()
                self._mars_loader_version = self._mars_dataset_version
                self.callback_handler.train_dataloader = self._mars_loader
            if self._mars_loader is not None:
                train_dataloader = self._mars_loader
                steps_in_epoch = len(train_dataloader)
                num_update_steps_per_epoch = max(1, math.ceil(steps_in_epoch / self.args.gradient_accumulation_steps))
        start = time.perf_counter()
        result = super()._run_epoch(model, epoch, train_dataloader, steps_in_epoch, num_update_steps_per_epoch,
                                    **kwargs)
        train_seconds = time.perf_counter() - start
        if self.args.mars_enabled and self._mars_summary["rounds"]:
            last = self._mars_summary["rounds"][-1]
            if last["epoch"] == epoch + 1:
                last["timings"]["train_epoch"] = train_seconds
                outside = sum(v for k, v in last["timings"].items() if k not in ("paraphrase", "refine", "train_epoch"))
                last["overhead_share_excluding_generation"] = outside / train_seconds if train_seconds else None
                self._mars_write_summary()
        self._mars_report_eval(f"after epoch {epoch + 1}" + (
            f" (round {len(self._mars_completed)})" if self.args.mars_enabled and self._mars_completed else ""))
        return result

    # -------------------------------------------------------------- rounds

    @property
    def mars_dir(self) -> Path:
        return Path(self.args.output_dir) / "mars"

    def _mars_backends(self, args: MarsRewardConfig | None = None):
        """Builds the configured back-ends once, on the main process (the only one that generates text)."""
        from .augment.factory import build_cache, build_embedder, build_paraphraser, build_refiner

        args = args or self.args
        if self._mars_cache is None:
            self._mars_cache = build_cache(args)
        if self._mars_paraphraser is None:
            self._mars_paraphraser = build_paraphraser(args, self._mars_cache)
        if args.uses_semantic_labels and self._mars_embedder is None:
            self._mars_embedder = build_embedder(args)
        if args.uses_semantic_labels and self._mars_refiner is None and args.mars_refiner != "none":
            self._mars_refiner = build_refiner(args, self._mars_embedder, self._mars_cache,
                                               reward_check=self._mars_reward_check)
        return self._mars_paraphraser, self._mars_embedder, self._mars_refiner

    def _mars_original_ids(self) -> tuple[list, list]:
        base = self._mars_base_train
        return column_values(base, "chosen_ids"), column_values(base, "rejected_ids")

    def _mars_run_round(self, round_index: int, epoch: int) -> None:
        args = self.args
        timings: dict[str, float] = {}
        start = time.perf_counter()
        chosen_ids, rejected_ids = self._mars_original_ids()
        margins, _ = score_margins(self.model_wrapped, chosen_ids, rejected_ids,
                                   pad_token_id=self.processing_class.pad_token_id,
                                   batch_size=args.mars_scoring_batch_size, accelerator=self.accelerator,
                                   desc=f"MARS round {round_index}: scoring margins")
        timings["score"] = time.perf_counter() - start

        payload: list[Any] = [None]
        if self.accelerator.is_main_process:
            paraphraser, embedder, refiner = self._mars_backends()
            distances = labels = None
            if args.uses_semantic_labels:
                sem_start = time.perf_counter()
                distances, labels = self._mars_semantic_labels(embedder)
                timings["semantic"] = time.perf_counter() - sem_start
            result = run_round(
                round_index=round_index, originals=self._mars_originals, margins=margins,
                strategy=args.mars_strategy, tau=args.mars_tau, margin_mode=args.mars_margin_mode,
                budget_ratio=args.mars_budget_ratio, rounding=args.mars_budget_rounding,
                seed=args.effective_mars_seed, paraphraser=paraphraser,
                paraphrase_prompts=args.mars_paraphrase_prompts, distances=distances, labels=labels,
                refiner=refiner, refinements=self._mars_refinements, timings=timings,
            )
            self._mars_write_round(result, epoch)
            payload = [result.synthetic_rows]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(payload, from_process=0)
        tokenize_start = time.perf_counter()
        self._mars_add_synthetic(payload[0])
        timings["tokenize"] = time.perf_counter() - tokenize_start
        timings["round_total"] = time.perf_counter() - start
        self._mars_completed.append({"round": round_index, "epoch": epoch, "num_synthetic": len(payload[0])})
        if self.accelerator.is_main_process:
            entry = self._mars_summary["rounds"][-1]
            entry["timings"] = dict(timings)
            self._mars_write_summary()
            summary = entry
            logs = {
                "mars/round": round_index,
                "mars/margin_mean": summary["margin"]["mean"],
                "mars/margin_std": summary["margin"]["std"],
                "mars/margin_snr": summary["margin"]["snr"] if summary["margin"]["snr"] is not None else float("nan"),
                "mars/fraction_negative": summary["margin"]["fraction_negative"],
                "mars/allocation_entropy": summary["allocation_entropy"],
                "mars/synthetic_pairs_added": summary["synthetic_pairs_added"],
                "mars/train_pairs": len(self.train_dataset),
                **{f"mars/time_{k}": v for k, v in timings.items()},
            }
            Trainer.log(self, logs)
            _say(
                f"[MARS] round {round_index} (epoch {epoch + 1}): train margin mean {summary['margin']['mean']:+.3f}, "
                f"{summary['margin']['fraction_negative']:.0%} mis-ranked, allocation entropy "
                f"{summary['allocation_entropy']:.2f}/{summary['allocation_entropy_uniform']:.2f}, "
                f"+{summary['synthetic_pairs_added']} synthetic pairs -> {len(self.train_dataset)} training pairs "
                f"({timings['round_total']:.1f}s)"
            )

    def _mars_semantic_labels(self, embedder) -> tuple[np.ndarray, list[str]]:
        """Distances and labels of the original pairs, computed once per run (DESIGN.md 1, step 4)."""
        if self._mars_semantic is None:
            from .semantic import semantic_distances, semantic_labels

            chosen = [response_text(row["chosen"]) for row in self._mars_originals]
            rejected = [response_text(row["rejected"]) for row in self._mars_originals]
            distances = semantic_distances(embedder, chosen, rejected, cache=self._mars_cache)
            labels, threshold = semantic_labels(distances)
            self._mars_semantic = (distances, labels)
            self._mars_summary["semantic"] = {
                "threshold": float(threshold),
                "high_distance": labels.count("high"),
                "low_distance": labels.count("low"),
            }
        return self._mars_semantic

    def _mars_reward_check(self, triples) -> list[bool]:
        """Label check for rewrites: does the current model still prefer the chosen side? (main process only)"""
        rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples]
        tokenized = [tokenize_pair(row, self.processing_class) for row in rows]
        limit = self.args.max_length
        special = set(self.processing_class.all_special_ids)
        fit = (lambda ids: truncate_keep_end(ids, limit, special)) if limit else (lambda ids: ids)
        margins, _ = score_margins(self.model, [fit(t["chosen_ids"]) for t in tokenized],
                                   [fit(t["rejected_ids"]) for t in tokenized],
                                   pad_token_id=self.processing_class.pad_token_id,
                                   batch_size=self.args.mars_scoring_batch_size, accelerator=_LocalAccelerator(self.accelerator),
                                   desc="MARS: checking rewrites")
        return [bool(m > 0) for m in margins]

    def _mars_add_synthetic(self, rows: list[dict[str, Any]]) -> None:
        """Tokenises synthetic rows the same way as the originals and appends them to the training set."""
        if not rows:
            return
        if self._mars_original_margin_column:
            source_margin = column_values(self._mars_originals_text, "margin")
            rows = [{**row, "margin": source_margin[row["source_index"]]} for row in rows]
        columns = [c for c in ("prompt", "chosen", "rejected", "source_index", "margin") if c in rows[0]]
        new = Dataset.from_list([{c: row[c] for c in columns} for row in rows])
        self._mars_validated.add(new._fingerprint)
        new = self._prepare_dataset(new, self.processing_class, self.args, "synthetic")
        if new.features != self.train_dataset.features:
            new = new.cast(self.train_dataset.features)
        self.train_dataset = concatenate_datasets([self.train_dataset, new])
        self._mars_dataset_version += 1

    # ------------------------------------------------------------ evidence

    def _mars_write_round(self, result: RoundResult, epoch: int) -> None:
        directory = self.mars_dir / f"round_{result.round}"
        write_jsonl(directory / "allocation.jsonl", result.allocation_rows)
        write_jsonl(directory / "synthetic.jsonl", result.synthetic_rows)
        entry = {**result.summary, "epoch": epoch + 1}
        if self._mars_refiner is not None:
            from .augment.refiner import summarise

            stats = summarise(list(self._mars_refinements.values()), self._mars_semantic[1])
            entry["refinement"] = stats.to_dict()
            self._mars_summary["refinement"] = stats.to_dict()
        stats_source = getattr(self._mars_paraphraser, "stats", None)
        if isinstance(stats_source, dict):
            entry["paraphraser_stats"] = dict(stats_source)
        if self._mars_cache is not None:
            entry["cache"] = {"hits": self._mars_cache.hits, "misses": self._mars_cache.misses}
        self._mars_summary["rounds"] = [r for r in self._mars_summary["rounds"] if r["round"] != result.round]
        self._mars_summary["rounds"].append(entry)

    def _mars_write_summary(self) -> None:
        if not self.accelerator.is_main_process:
            return
        args = self.args
        self._mars_summary["config"] = {k: v for k, v in args.to_dict().items() if k.startswith("mars_")}
        self._mars_summary["truncated_examples"] = dict(self._mars_truncated)
        write_json(self.mars_dir / "summary.json", self._mars_summary)

    def _mars_report_eval(self, when: str) -> None:
        """Held-out pairwise accuracy and margin SNR, printed and logged (fast path: same scorer as the rounds)."""
        for name, dataset in _named_eval_datasets(self.eval_dataset):
            margins, _ = score_margins(self.model_wrapped, column_values(dataset, "chosen_ids"),
                                       column_values(dataset, "rejected_ids"),
                                       pad_token_id=self.processing_class.pad_token_id,
                                       batch_size=self.args.mars_scoring_batch_size, accelerator=self.accelerator,
                                       desc=f"Scoring {name} pairs")
            stats = margin_statistics(margins)
            accuracy = float(np.mean(margins > 0))
            prefix = "eval" if name == "eval" else f"eval_{name}"
            if self.accelerator.is_main_process:
                snr = stats["snr"]
                _say(f"[MARS] {when}: {name} pairwise accuracy {accuracy:.3f}, margin SNR "
                     f"{'n/a' if snr is None else f'{snr:.3f}'} (mean {stats['mean']:+.3f}, n={len(margins)})")
                record = {"when": when, "dataset": name, "accuracy": accuracy, **stats,
                          "global_step": self.state.global_step}
                self._mars_summary["eval"].append(record)
                if self.args.mars_enabled:
                    self._mars_write_summary()
                Trainer.log(self, {f"{prefix}_pairwise_accuracy": accuracy,
                                   f"{prefix}_margin_snr": snr if snr is not None else float("nan")})

    # ---------------------------------------------------------- checkpoints

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if not (self.args.mars_enabled and self.args.should_save):
            return
        checkpoint = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
        if not checkpoint.is_dir():
            return
        for entry in self._mars_completed:
            source = self.mars_dir / f"round_{entry['round']}" / "synthetic.jsonl"
            shutil.copyfile(source, checkpoint / f"mars_round_{entry['round']}_synthetic.jsonl")
        write_json(checkpoint / MARS_STATE_FILE, {
            "version": 1,
            "completed_rounds": self._mars_completed,
            "refinements": {str(k): v.to_dict() for k, v in self._mars_refinements.items()},
            "summary": self._mars_summary,
        })

    def _mars_restore(self, checkpoint: str | None) -> None:
        """Rebuilds D^t from a checkpoint's saved rounds (or resets to the originals for a fresh run)."""
        self.train_dataset = self._mars_base_train
        self._mars_completed, self._mars_refinements = [], {}
        self._mars_dataset_version += 1
        if checkpoint is None:
            return
        state_file = Path(checkpoint) / MARS_STATE_FILE
        if not state_file.is_file():
            raise FileNotFoundError(
                f"{checkpoint} has no {MARS_STATE_FILE}: it was not written by MarsRewardTrainer, so the synthetic "
                "pairs of its rounds are unknown. Resume from a MarsRewardTrainer checkpoint or start afresh.")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        for entry in state["completed_rounds"]:
            rows = read_jsonl(Path(checkpoint) / f"mars_round_{entry['round']}_synthetic.jsonl")
            self._mars_add_synthetic(rows)
            self._mars_completed.append(entry)
        self._mars_refinements = {int(k): RefinementResult(**v) for k, v in state.get("refinements", {}).items()}
        self._mars_summary = state.get("summary", self._mars_summary)
        if self.is_world_process_zero():
            logger.info("MARS: resumed with %d completed rounds (%d training pairs).", len(self._mars_completed),
                        len(self.train_dataset))


def _say(message: str) -> None:
    """Prints a line for the person watching without breaking the progress bars."""
    tqdm.write(message)


class _LocalAccelerator:
    """An accelerator view that scores on this process alone (for main-process-only work such as label checks)."""

    num_processes = 1
    process_index = 0

    def __init__(self, accelerator):
        self.device = accelerator.device
        self.autocast = accelerator.autocast
        self.is_local_main_process = accelerator.is_local_main_process


def _named_eval_datasets(eval_dataset) -> list[tuple[str, Any]]:
    if eval_dataset is None:
        return []
    if isinstance(eval_dataset, dict):
        return [(f"eval_{key}" if key != "eval" else key, value) for key, value in eval_dataset.items()]
    return [("eval", eval_dataset)]


def _round_schedule(args: MarsRewardConfig) -> tuple[int, list[int]]:
    """(number of rounds, epoch index of each round). Round t runs at the start of epoch warmup + t - 1."""
    num_epochs = math.ceil(args.num_train_epochs)
    available = max(0, num_epochs - args.mars_warmup_epochs)
    rounds = available if args.mars_rounds is None else min(args.mars_rounds, available)
    if args.mars_rounds is not None and args.mars_rounds > available:
        logger.warning("mars_rounds=%d but only %d epochs follow the warm-up; running %d rounds.", args.mars_rounds,
                       available, rounds)
    return rounds, [args.mars_warmup_epochs + t for t in range(rounds)]


def _check_distributed_support(args: MarsRewardConfig) -> None:
    slow_backend = args.mars_paraphraser != "lexical" or args.mars_refiner != "none"
    if args.world_size > 1 and slow_backend and args.ddp_timeout < 4 * 3600 and args.process_index == 0:
        # Only rank 0 generates; the other ranks wait in a collective that times out after `ddp_timeout`.
        logger.warning(
            "MARS generates text on rank 0 while the other %d ranks wait; with the '%s' back-end a round can "
            "outlast ddp_timeout=%ss. Raise `--ddp_timeout` (e.g. 14400) for large budgets.",
            args.world_size - 1, args.mars_paraphraser, args.ddp_timeout)
    plugin = getattr(args, "deepspeed_plugin", None)
    if (plugin is not None and plugin.zero_stage == 3 and args.mars_refiner != "none"
            and args.mars_label_check == "reward_model"):
        raise ValueError(
            "With DeepSpeed ZeRO-3 the reward-model label check would run a forward pass on one rank while the "
            "others wait, which deadlocks. Set `mars_label_check='judge'` (or use ZeRO-2).")
