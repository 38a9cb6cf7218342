"""`MarsRewardTrainer`: `trl.RewardTrainer` with MARS augmentation rounds, a drop-in replacement.

How it fits into `transformers.Trainer`:

- `MarsAugmentationCallback` (installed here by default, usable with any RewardTrainer subclass) decides when a
  round runs and runs it at the start of its epoch; see `trl_mars.training.callback`.
- `trl_mars.training.loop.GrowingDatasetLoop` is the one small adapter onto Trainer internals a growing dataset needs
  (the epoch's dataloader and step counts, the run's total steps, resuming into epochs of different lengths); the
  callback checks that the rounds and steps that ran match the plan.
- `trl_mars.baselines.adaboost.WeightedLossMixin` overrides `compute_loss` (as TRL's RewardTrainer itself does) to
  weight each pair's loss whenever the callback attaches weights: `mars_strategy="adaboost"`, `mars_weight_originals` or
  a `mars_synthetic_weight` other than 1; otherwise it is TRL's loss unchanged.
- This class adds what is specific to the data: validation before the model loads, encoder tokenizers without an
  EOS token and keep-the-end truncation in `_prepare_dataset` (TRL crashes on the former and drops long examples),
  and tokenising a round's synthetic pairs once per distinct text (`trl_mars.data.tokenization`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from datasets import Dataset, IterableDataset
from trl import RewardTrainer
from trl.trainer.utils import get_config_model_id

from ..baselines.adaboost import WeightedLossMixin
from ..data.preferences import (
    LEGACY_TOKENIZED_COLUMNS,
    TEXT_COLUMNS,
    TOKENIZED_COLUMNS,
    column_values,
    to_explicit_prompt,
    tokenize_pair,
    truncate_keep_end,
    validate_preference_dataset,
)
from ..data.tokenization import ROW_TEMPLATE_COLUMNS, tokenize_pairs
from ..eval.heldout import named_eval_datasets
from .callback import MarsAugmentationCallback
from .config import MarsRewardConfig
from .loop import GrowingDatasetLoop
from .preflight import as_model_id, prepare_start

logger = logging.getLogger("trl_mars")
_KEEP_COLUMNS = ("chosen_ids", "rejected_ids", "margin", "source_index")


class MarsRewardTrainer(GrowingDatasetLoop, WeightedLossMixin, RewardTrainer):
    """Drop-in replacement for `trl.RewardTrainer` that trains with MARS augmentation rounds.

    Takes the same arguments as `RewardTrainer` (model id or module, `args`, datasets, `processing_class`,
    `peft_config`, `callbacks`, ...) with a [`MarsRewardConfig`] as `args`. Optional keyword-only arguments inject
    back-ends directly (`paraphraser`, `embedder`, `refiner`) instead of building them from the config, or a whole
    `mars_callback` (a `MarsAugmentationCallback` subclass for another strategy).

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
        mars_callback: MarsAugmentationCallback | None = None,
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
        for name, dataset in named_eval_datasets(eval_dataset):
            validate_preference_dataset(dataset, name=name)
        self._mars_validated = {getattr(d, "_fingerprint", None) for _, d in [("train", train_dataset),
                                                                               *named_eval_datasets(eval_dataset)]}
        self._mars_truncated: dict[str, int] = {}
        callback = mars_callback or MarsAugmentationCallback(args, paraphraser=paraphraser, embedder=embedder,
                                                             refiner=refiner)
        callback.args = callback.args or args
        originals_text = None
        if args.mars_enabled:
            _check_distributed_support(args)
            # Extract implicit prompts once: the parent tokenises this explicit-prompt copy, and rounds read its text.
            train_dataset = originals_text = to_explicit_prompt(train_dataset)
            self._mars_validated.add(train_dataset._fingerprint)
        # Every rank: models and endpoints checked before any load; CPU/PEFT/console start-up adjustments.
        peft_config = prepare_start(model, args, peft_config, paraphraser=paraphraser, embedder=embedder,
                                    refiner=refiner)
        if args.mars_enabled:
            # Back-ends are built (and endpoints checked) now, on every rank: a missing key fails before the model
            # loads, and every rank generates its share of each round's texts.
            callback.build_backends(args)

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
        if args.mars_enabled:
            texts = {column: column_values(originals_text, column) for column in TEXT_COLUMNS}
            order = column_values(self.train_dataset, "source_index")
            callback.originals = [{column: texts[column][j] for column in TEXT_COLUMNS} for j in order]
            # `tools` / `chat_template_kwargs` of each original, so its synthetic pairs render the same way
            extras = {c: column_values(originals_text, c) for c in ROW_TEMPLATE_COLUMNS
                      if c in originals_text.column_names}
            self._mars_row_extras = [{c: values[j] for c, values in extras.items()} for j in order] if extras else None
            callback.tokenize_rows = self._mars_tokenize_rows
        self.mars_callback = callback.attach(self)
        for name, count in self._mars_truncated.items():
            if count and self.is_world_process_zero():
                verb = "truncated (start of the prompt dropped)" if args.mars_truncation == "keep_end" else "dropped"
                logger.warning("%d %s examples were longer than max_length=%s and were %s.", count, name,
                               args.max_length, verb)

    @property
    def mars_dir(self):
        return self.mars_callback.evidence.directory

    # ------------------------------------------------------------------ data

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Tokenises like `RewardTrainer._prepare_dataset`, plus EOS-less encoders and keep-the-end truncation."""
        columns = list(dataset.column_names or [])
        if getattr(dataset, "_fingerprint", None) not in self._mars_validated:
            validate_preference_dataset(dataset, name=dataset_name)
        if set(LEGACY_TOKENIZED_COLUMNS) <= set(columns) and not set(TOKENIZED_COLUMNS) <= set(columns):
            warnings.warn(  # TRL's own deprecation, given here because our path below does not reach TRL's
                "Detected legacy dataset columns `chosen_input_ids`/`rejected_input_ids`; they are deprecated and "
                "will not be supported in v1. Please migrate to `chosen_ids`/`rejected_ids`.",
                FutureWarning, stacklevel=2)
            for old, new in zip(LEGACY_TOKENIZED_COLUMNS, TOKENIZED_COLUMNS):
                dataset = dataset.rename_column(old, new)
            columns = list(dataset.column_names or [])
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
        dataset = self._mars_fit_length(dataset, args, dataset_name, processing_class)
        return dataset

    def _mars_tokenize_rows(self, rows: list[dict[str, Any]]) -> Dataset:
        """Synthetic rows -> training columns, each distinct text tokenised once; same ids as `_prepare_dataset`."""
        if getattr(self, "_mars_row_extras", None):
            rows = [{**row, **self._mars_row_extras[row["source_index"]]} for row in rows]
        ids = tokenize_pairs(rows, self.processing_class)
        columns: dict[str, list] = {**ids, "source_index": [row["source_index"] for row in rows]}
        if "margin" in rows[0]:
            columns["margin"] = [row["margin"] for row in rows]
        return self._mars_fit_length(Dataset.from_dict(columns), self.args, "synthetic", self.processing_class)

    def _mars_fit_length(self, dataset: Dataset, args, dataset_name: str, tokenizer) -> Dataset:
        """Counts examples over `max_length` and truncates (keep the end) or drops them, as configured."""
        if args.max_length is None:
            return dataset
        limit = args.max_length
        map_kwargs = {"num_proc": args.dataset_num_proc}
        too_long = sum(1 for c, r in zip(column_values(dataset, "chosen_ids"), column_values(dataset, "rejected_ids"))
                       if len(c) > limit or len(r) > limit)
        self._mars_truncated[dataset_name] = self._mars_truncated.get(dataset_name, 0) + too_long
        if too_long and args.mars_truncation == "drop":
            dataset = dataset.filter(lambda x: len(x["chosen_ids"]) <= limit and len(x["rejected_ids"]) <= limit,
                                     desc=f"Dropping {dataset_name} >{limit} tokens", **map_kwargs)
        elif too_long:
            special = set(tokenizer.all_special_ids)
            dataset = dataset.map(
                lambda x: {side: truncate_keep_end(x[side], limit, special) for side in ("chosen_ids", "rejected_ids")},
                desc=f"Truncating {dataset_name} >{limit} tokens", **map_kwargs)
        return dataset


def _check_distributed_support(args: MarsRewardConfig) -> None:
    plugin = getattr(args, "deepspeed_plugin", None)
    if (plugin is not None and plugin.zero_stage == 3 and args.mars_refiner != "none"
            and args.mars_label_check == "reward_model"):
        raise ValueError(
            "With DeepSpeed ZeRO-3 the reward-model label check would run a forward pass on one rank while the "
            "others wait, which deadlocks. Set `mars_label_check='judge'` (or use ZeRO-2).")
