"""The comparison harness: strategies x seeds x datasets under identical settings and budgets.

`recipes/compare.py` parses arguments and calls `run_grid`; everything else is here.

How a grid runs:

* Data first, once per dataset: a held-out split (the dataset's test split, else a seeded share of rows, or of
  groups of `group_by` when the dataset has that column), then a seeded `max_train_samples` subset. The data seed
  is not the training seed, so every cell of a dataset trains and is scored on the same pairs (each result
  records fingerprints of both to prove it).
* Or, with `folds: k`, k-fold cross-validation: k seeded folds (whole groups where `group_by` applies), each cell
  trains once per fold (`cells/<dataset>/fold_<f>/...`), and the table pools the folds' held-out margins, so every
  pair is scored once by a model that did not train on it (a 1,000-pair set gives 1,000 held-out pairs).
* Every cell's `MarsRewardConfig` is built (and so validated) before anything trains: a bad strategy name or
  override fails in seconds. A cell is a strategy (any `mars_strategy` the config accepts) or a named variant
  with config overrides (`mars_abs: {mars_strategy: mars, mars_margin_mode: absolute}`; LoRA via `use_peft`,
  `lora_r`, ... as in TRL's `ModelConfig`).
* Cells train in this process through the public trainer API, one after another. We chose in-process over a
  subprocess per cell: MiniLM/base-size cells are small, the interpreter, tokenizer and CUDA context start once,
  and a failure surfaces as a normal traceback. Each cell re-seeds before the model is built and frees the model
  afterwards, so a cell's result does not depend on which cells ran before it (the tests check this).
* One augmentation cache (`mars_cache_dir`, default `<output_dir>/cache`) serves the whole grid, so strategies
  and seeds that ask for the same paraphrases pay once.
* Resumable: a cell that finished has `cells/<dataset>/<variant>/seed_<s>/result.json` and is not recomputed;
  if its recorded settings differ from the grid's, we stop rather than mix results.
* Outputs in `output_dir`: `results.md` (mean +- std over seeds, best in bold, majority baseline where a
  `chosen_generator`-style column exists), `results.json` (every cell), `plots/accuracy.png` and
  `plots/margins_by_round.png` (training-pair margins at each round from each run's `allocation.jsonl`).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.preferences import (
    DATA_SEED,
    column_values,
    load_preference_splits,
    split_holdout,
    take_subset,
)
from ..training.config import PACKAGED_MINILM, STRATEGIES, MarsRewardConfig

logger = logging.getLogger("trl_mars")
RESULT_FILE = "result.json"
# Training settings that decide a cell's result (with every `mars_*` field): a finished cell is reused only when
# these match. Paths, logging and hardware switches are left out on purpose.
_RESULT_SETTINGS = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "max_length", "weight_decay", "warmup_steps", "warmup_ratio", "lr_scheduler_type", "max_steps",
                    "seed", "center_rewards_coefficient", "optim", "adam_beta1", "adam_beta2", "adam_epsilon",
                    "max_grad_norm")
_MODEL_OVERRIDES = ("use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                    "lora_modules_to_save", "lora_task_type", "model_name_or_path")
_IGNORED_MARS = ("mars_cache_dir", "mars_scoring_batch_size", "mars_chat_max_concurrency", "mars_chat_timeout",
                 "mars_chat_max_retries", "mars_paraphraser_batch_size")

# What `recipes/compare.py` runs with when the YAML and CLI say nothing: offline, checkpoints off.
COMPARE_DEFAULTS: dict[str, Any] = {
    "model_name_or_path": PACKAGED_MINILM,
    "output_dir": "outputs/compare",
    "mars_paraphraser": "lexical",
    "mars_embedding_model": PACKAGED_MINILM,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "learning_rate": 5e-5,
    "max_length": 512,
    "activation_checkpointing": False,
    "logging_steps": 50,
    "eval_strategy": "no",
    "save_strategy": "no",
    "report_to": "none",
    "disable_tqdm": True,
}


@dataclass
class CompareArguments:
    """The grid: which datasets, strategies/variants and seeds, and how each dataset is split."""

    datasets: list[str] = field(
        default_factory=lambda: ["embedded"],
        metadata={"help": "Datasets: local .json/.jsonl files, Hub ids or 'embedded'. Each is split once into train "
                          "and held-out pairs shared by every cell."})
    strategies: list[str] = field(
        default_factory=lambda: ["none", "uniform", "mars_nosem", "mars"],
        metadata={"help": "Cells per dataset and seed: `mars_strategy` values, or names of `variants`. Variants not "
                          "listed here are run too."})
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3],
                             metadata={"help": "Training seeds (model init, data order, allocation sampling)."})
    variants: dict | str | None = field(
        default=None,
        metadata={"help": "Named variants with config overrides, as a YAML mapping in --config (or JSON on the CLI), "
                          "e.g. {mars_abs: {mars_strategy: mars, mars_margin_mode: absolute}}. Keys are "
                          "MarsRewardConfig fields, or ModelConfig's use_peft/lora_* for LoRA."})
    eval_fraction: float = field(
        default=0.2, metadata={"help": "Share held out for evaluation when a dataset has no test split."})
    group_by: str | None = field(
        default="prompt_id",
        metadata={"help": "Hold out whole groups of this column when a dataset has it (AlpacaEval pairs share "
                          "prompts); datasets without it are split by rows."})
    split_seed: int = field(default=DATA_SEED,
                           metadata={"help": "Seed of the hold-out and subsets; independent of the training seeds."})
    folds: int | None = field(
        default=None,
        metadata={"help": "k-fold cross-validation instead of one hold-out: each dataset (its train split) is cut "
                          "into k seeded folds (whole `group_by` groups where the column exists), every cell trains "
                          "k times with one fold held out, and accuracies are computed over all pairs, each scored "
                          "once, by a model that did not train on it. k times the training."})
    run_folds: list[int] | None = field(
        default=None,
        metadata={"help": "With --folds: train only these folds (1-based), e.g. `--run_folds 4 5` in a second job "
                          "beside one that runs the rest, over the same --output_dir; other folds are reused where "
                          "finished and left out of the table otherwise."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Seeded subset of each train split."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Seeded subset of each held-out split."})
    majority_column: str = field(
        default="chosen_generator",
        metadata={"help": "Column naming who wrote the chosen response; where present, the table shows the accuracy "
                          "of always preferring the side most often chosen in train."})
    pku_preference: str = field(default="better", metadata={"help": "PKU-SafeRLHF: 'better' or 'safer' response."})
    save_models: bool = field(default=False, metadata={"help": "Keep each cell's trained model (disk heavy)."})
    report_only: bool = field(
        default=False,
        metadata={"help": "Train nothing: write the table, JSON and plots from the cells that have finished and list "
                          "the ones that have not (a grid still running, or one cut short)."})
    plots: bool = field(default=True, metadata={"help": "Write PNG plots (needs matplotlib)."})


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class GridDataset:
    key: str
    name: str
    train: Any
    evaluation: Any
    majority: dict[str, Any] | None
    train_fingerprint: str
    eval_fingerprint: str
    pooled_key: str | None = None  # with --folds: the dataset this fold belongs to (its key)
    fold: int | None = None


def dataset_key(name: str) -> str:
    """A folder-safe name: a file's stem, or a Hub id with '/' replaced."""
    path = Path(name)
    base = path.stem if path.suffix in (".json", ".jsonl") else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", base)


def fingerprint(dataset) -> str:
    """A short hash of the pairs' text: equal fingerprints mean the same pairs in the same order."""
    digest = hashlib.sha256()
    columns = [c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names]
    values = [column_values(dataset, c) for c in columns]
    for row in zip(*values):
        digest.update(json.dumps(row, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _majority(train, evaluation, args: CompareArguments) -> dict[str, Any] | None:
    from ..eval.evaluation import majority_baseline

    if args.majority_column in train.column_names and args.majority_column in evaluation.column_names:
        return majority_baseline(column_values(train, args.majority_column),
                                 column_values(evaluation, args.majority_column))
    return None


def prepare_folds(name: str, args: CompareArguments) -> list[GridDataset]:
    """`args.folds` train/held-out splits of one dataset (`data.preferences.fold_splits`), each pair held out exactly
    once."""
    from ..data.preferences import fold_splits

    pool, test = load_preference_splits(name, eval_fraction=0, seed=args.split_seed,
                                        pku_preference=args.pku_preference)
    if test is not None:
        logger.warning("%s has a test split; --folds cross-validates its train split and leaves the test split out.",
                       name)
    group = args.group_by if args.group_by in pool.column_names else None
    key = dataset_key(name)
    out = []
    for number, (train, evaluation) in enumerate(fold_splits(pool, args.folds, seed=args.split_seed,
                                                             group_by=group), start=1):
        train = take_subset(train, args.max_train_samples, args.split_seed)
        out.append(GridDataset(f"{key}/fold_{number}", name, train, evaluation, _majority(train, evaluation, args),
                               fingerprint(train), fingerprint(evaluation), pooled_key=key, fold=number))
    return out


def pool_folds(results: list[dict[str, Any]], datasets: list[GridDataset]) -> tuple[list[dict], list[GridDataset]]:
    """Per dataset, variant and seed with every fold finished: one result over all held-out pairs (the folds'
    margins concatenated in fold order), and one GridDataset per pooled dataset for `summarise`."""
    from datasets import concatenate_datasets

    from ..eval.evaluation import evaluate_margins

    pooled_results, pooled_datasets = [], []
    for key in dict.fromkeys(d.pooled_key for d in datasets if d.pooled_key is not None):
        folds = [d for d in datasets if d.pooled_key == key]
        fold_keys = [d.key for d in folds]
        evaluation = concatenate_datasets([d.evaluation for d in folds])
        digest = hashlib.sha256("".join(d.eval_fingerprint + d.train_fingerprint for d in folds).encode())
        pooled_datasets.append(GridDataset(key, folds[0].name, folds[0].train, evaluation, None,
                                           digest.hexdigest()[:16], fingerprint(evaluation), fold=len(folds)))
        by_cell: dict[tuple[str, int], dict[str, dict]] = {}
        for r in results:
            if r["dataset"] in fold_keys:
                by_cell.setdefault((r["variant"], r["seed"]), {})[r["dataset"]] = r
        for (variant, seed), per_fold in by_cell.items():
            if len(per_fold) < len(fold_keys):
                continue  # a partial cross-validation says nothing about all pairs
            parts = [per_fold[k] for k in fold_keys]
            margins = [m for part in parts for m in part["eval_margins"]]
            report = evaluate_margins(np.asarray(margins, dtype=np.float64))
            pooled_results.append({
                "dataset": key, "variant": variant, "seed": seed, "strategy": parts[0]["strategy"],
                "accuracy": report["accuracy"], "margin_mean": report["margin_mean"],
                "margin_std": report["margin_std"], "snr": report["snr"], "n_eval": report["n"],
                "folds": len(parts), "per_fold_accuracy": [part["accuracy"] for part in parts],
                "wall_time_s": round(sum(part["wall_time_s"] for part in parts), 2), "eval_margins": margins})
    return pooled_results, pooled_datasets


def prepare_datasets(args: CompareArguments) -> list[GridDataset]:
    """Every dataset of the grid, split once: one hold-out each, or `args.folds` folds each."""
    datasets = [d for name in args.datasets
                for d in (prepare_folds(name, args) if args.folds is not None else [prepare_dataset(name, args)])]
    keys = [d.key for d in datasets]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two datasets share a folder name: {keys}. Rename one of the files.")
    return datasets


def prepare_dataset(name: str, args: CompareArguments) -> GridDataset:
    """Train and held-out pairs of one dataset, the same for every cell of the grid."""
    train, evaluation = load_preference_splits(name, eval_fraction=0, seed=args.split_seed,
                                               pku_preference=args.pku_preference)
    if evaluation is None:
        if not 0 < args.eval_fraction < 1:
            raise ValueError(f"{name} has no test split: set --eval_fraction in (0, 1) to hold out pairs.")
        group = args.group_by if args.group_by in train.column_names else None
        train, evaluation = split_holdout(train, args.eval_fraction, seed=args.split_seed, group_by=group)
    train = take_subset(train, args.max_train_samples, args.split_seed)
    evaluation = take_subset(evaluation, args.max_eval_samples, args.split_seed)
    return GridDataset(dataset_key(name), name, train, evaluation, _majority(train, evaluation, args),
                       fingerprint(train), fingerprint(evaluation))


# ----------------------------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    dataset: GridDataset
    variant: str
    seed: int
    overrides: dict[str, Any]
    args: Any  # MarsRewardConfig
    model_name: str
    peft_config: Any

    @property
    def directory(self) -> Path:
        return Path(self.args.output_dir)

    def settings(self) -> dict[str, Any]:
        """What decides this cell's result: compared with a finished cell's record before reusing it."""
        config = self.args.to_dict()
        out = {k: v for k, v in config.items() if k.startswith("mars_") and k not in _IGNORED_MARS}
        out.update({k: config.get(k) for k in _RESULT_SETTINGS})
        peft = None
        if self.peft_config is not None:  # sets (target modules) sorted: the record must not depend on hash order
            peft = json.dumps(self.peft_config.to_dict(), sort_keys=True,
                              default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o))
        out.update({"model": self.model_name, "peft": peft,
                    "train_fingerprint": self.dataset.train_fingerprint,
                    "eval_fingerprint": self.dataset.eval_fingerprint})
        return json.loads(json.dumps(out, default=str))


def parse_variants(strategies: list[str], variants: dict | str | None) -> dict[str, dict[str, Any]]:
    """{variant name: overrides}: plain strategies first (in the given order), then named variants."""
    if isinstance(variants, str):
        variants = json.loads(variants)
    variants = dict(variants or {})
    out: dict[str, dict[str, Any]] = {}
    for name in strategies:
        if name in variants:
            out[name] = dict(variants[name] or {})
        elif name in STRATEGIES:
            out[name] = {"mars_strategy": name}
        else:
            raise ValueError(f"strategy {name!r} is neither a `mars_strategy` ({list(STRATEGIES)}) nor a variant "
                             f"defined in `variants` ({sorted(variants)}). Fix the name or define the variant.")
    for name, overrides in variants.items():
        if not isinstance(overrides, dict):
            raise ValueError(f"variant {name!r}: overrides must be a mapping of config fields, got {overrides!r}.")
        out.setdefault(name, dict(overrides))
    return out


def build_cells(datasets: list[GridDataset], args: CompareArguments, base_args, model_args) -> list[Cell]:
    """Every cell's config, built (and so validated by MarsRewardConfig) before any training."""
    from trl import get_peft_config

    variants = parse_variants(args.strategies, args.variants)
    root = Path(base_args.output_dir)
    cache_dir = base_args.mars_cache_dir or str(root / "cache")
    config_fields = {f.name for f in dataclasses.fields(base_args)}
    cells = []
    for dataset in datasets:
        for variant, overrides in variants.items():
            model_overrides = {k: v for k, v in overrides.items() if k in _MODEL_OVERRIDES}
            unknown = set(overrides) - config_fields - set(model_overrides)
            if unknown:
                raise ValueError(f"variant {variant!r}: unknown field(s) {sorted(unknown)}; use MarsRewardConfig "
                                 f"fields or {list(_MODEL_OVERRIDES)}.")
            config_overrides = {k: v for k, v in overrides.items() if k in config_fields}
            cell_model_args = dataclasses.replace(model_args, **model_overrides)
            for seed in args.seeds:
                directory = root / "cells" / dataset.key / variant / f"seed_{seed}"
                try:
                    cell_args = dataclasses.replace(base_args, **{**config_overrides, "seed": seed,
                                                                  "output_dir": str(directory),
                                                                  "mars_cache_dir": cache_dir})
                except (ValueError, TypeError) as error:
                    raise ValueError(f"variant {variant!r} (dataset {dataset.key}, seed {seed}): {error}") from error
                peft_config = get_peft_config(cell_model_args)
                if peft_config is not None and cell_model_args.lora_task_type == "CAUSAL_LM":
                    peft_config.task_type = "SEQ_CLS"  # a reward model: the score head must be trained and saved
                cells.append(Cell(dataset, variant, seed, overrides, cell_args,
                                  _resolve_model(cell_model_args.model_name_or_path), peft_config))
    return cells


def _resolve_model(name: str | None) -> str:
    from ..training.preflight import as_model_id

    return as_model_id(name or PACKAGED_MINILM)


def _round_summaries(directory: Path) -> list[dict[str, Any]]:
    summary_file = directory / "mars" / "summary.json"
    if not summary_file.is_file():
        return []
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    keep = ("round", "epoch", "margin", "allocation_entropy", "allocation_entropy_uniform", "budget",
            "synthetic_pairs_added", "pairs_short_of_budget", "weights", "won")
    return [{k: entry[k] for k in keep if k in entry} for entry in summary.get("rounds", [])]


def run_cell(cell: Cell, *, save_model: bool = False) -> dict[str, Any]:
    """Trains one cell with `MarsRewardTrainer`, scores its held-out pairs, writes and returns its result."""
    import torch
    from transformers import set_seed

    from ..eval.evaluation import evaluate_margins, score_pairs
    from ..training.trainer import MarsRewardTrainer

    start = time.perf_counter()
    cell.directory.mkdir(parents=True, exist_ok=True)
    set_seed(cell.args.seed)  # the model's fresh head is drawn before Trainer seeds: make it the cell's own
    trainer = MarsRewardTrainer(model=cell.model_name, args=cell.args, train_dataset=cell.dataset.train,
                                peft_config=cell.peft_config)
    trainer.train()
    train_time = time.perf_counter() - start
    evaluation = cell.dataset.evaluation
    margins = score_pairs(trainer.model, trainer.processing_class, evaluation, max_length=cell.args.max_length,
                          batch_size=cell.args.mars_scoring_batch_size)
    subsets = column_values(evaluation, "subset") if "subset" in evaluation.column_names else None
    report = evaluate_margins(margins, subsets)
    if save_model:
        trainer.save_model(str(cell.directory / "model"))
    result = {
        "dataset": cell.dataset.key, "dataset_name": cell.dataset.name, "variant": cell.variant, "seed": cell.seed,
        "strategy": cell.args.mars_strategy, "overrides": cell.overrides,
        "accuracy": report["accuracy"], "margin_mean": report["margin_mean"], "margin_std": report["margin_std"],
        "snr": report["snr"], "n_eval": report["n"], "subsets": report["subsets"], "sections": report["sections"],
        "average": report["average"], "n_train_original": len(cell.dataset.train),
        "n_train_final": len(trainer.train_dataset), "rounds": _round_summaries(cell.directory),
        "train_time_s": round(train_time, 2), "wall_time_s": round(time.perf_counter() - start, 2),
        "eval_margins": [round(float(m), 5) for m in margins], "settings": cell.settings(),
    }
    (cell.directory / RESULT_FILE).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def load_finished(cell: Cell) -> dict[str, Any] | None:
    """A finished cell's result, or None. Stops when the recorded settings differ from the grid's."""
    path = cell.directory / RESULT_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    expected = cell.settings()
    recorded = result.get("settings", {})
    # A setting the record lacks was added to the library after the cell ran; the cell ran with what is now that
    # setting's default, so it matches when the grid keeps the default.
    defaults = {f.name: f.default for f in dataclasses.fields(MarsRewardConfig) if f.default is not dataclasses.MISSING}
    differing = sorted(k for k in set(expected) | set(recorded) if expected.get(k) != recorded.get(k)
                       and not (k not in recorded and k in defaults and expected.get(k) == defaults[k]))
    if differing:
        raise ValueError(
            f"{path} was computed with other settings ({', '.join(f'{k}: {recorded.get(k)!r} -> {expected.get(k)!r}' for k in differing[:5])}). "
            "Fix: use a new --output_dir for the new settings, or delete that cell's result.json to recompute it.")
    return result


# ----------------------------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------------------------


def run_grid(args: CompareArguments, base_args, model_args) -> dict[str, Any]:
    """Prepares data, validates every cell, runs the unfinished ones, writes table, JSON and plots."""
    root = Path(base_args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    if args.folds is not None and args.max_eval_samples is not None:
        raise ValueError("--folds scores every pair once; it cannot be combined with --max_eval_samples.")
    if args.run_folds is not None and (args.folds is None or not set(args.run_folds) <= set(range(1, args.folds + 1))):
        raise ValueError(f"--run_folds {args.run_folds} names folds that do not exist. Fix: give numbers from 1 to "
                         f"--folds ({args.folds}), with --folds set.")
    datasets = prepare_datasets(args)
    cells = build_cells(datasets, args, base_args, model_args)
    results, computed, missing = [], [], []
    for number, cell in enumerate(cells, start=1):
        label = f"{cell.dataset.key} / {cell.variant} / seed {cell.seed}"
        result = load_finished(cell)
        elsewhere = args.run_folds is not None and cell.dataset.fold not in args.run_folds
        if result is None and (args.report_only or elsewhere):
            missing.append(label)
            reason = "not in --run_folds" if elsewhere else "--report_only"
            print(f"[compare] cell {number}/{len(cells)}: {label}: not finished, left out ({reason})", flush=True)
            continue
        if result is None:
            print(f"[compare] cell {number}/{len(cells)}: {label} ...", flush=True)
            result = run_cell(cell, save_model=args.save_models)
            computed.append(label)
            print(f"[compare] cell {number}/{len(cells)}: {label}: accuracy {result['accuracy']:.3f} "
                  f"({result['wall_time_s']:.0f}s)", flush=True)
        else:
            print(f"[compare] cell {number}/{len(cells)}: {label}: finished earlier, accuracy "
                  f"{result['accuracy']:.3f}", flush=True)
        results.append(result)
    variants = list(parse_variants(args.strategies, args.variants))
    if args.folds is not None:
        pooled, pooled_datasets = pool_folds(results, datasets)
        report = summarise(pooled, pooled_datasets, variants)
        report["fold_cells"] = results
    else:
        report = summarise(results, datasets, variants)
    report["computed"] = computed
    report["not_finished"] = missing
    (root / "results.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (root / "results.md").write_text(markdown_table(report), encoding="utf-8")
    if args.plots:
        report["plots"] = write_plots(report, root)
    print(markdown_table(report))
    print(f"[compare] {len(computed)} cells computed, {len(cells) - len(computed) - len(missing)} reused"
          + (f", {len(missing)} not finished (left out)" if missing else "") + f"; results in {root}")
    return report


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else None)


def paired_difference(results: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A variant's held-out accuracy minus the baseline's on the same seeds and the same held-out pairs.

    Per seed: the accuracy difference (mean and std, ddof=1, over the shared seeds). Per held-out pair j: D_j, the
    mean over those seeds of [variant right] - [baseline right] (a margin > 0 is right, as in `evaluate_margins`);
    mean_j D_j is the same difference, and sd_j(D_j) / sqrt(n) is its standard error over held-out pairs, which
    is what decides whether a gain would carry to other pairs from the same distribution. `gained`/`lost` count
    (pair, seed) cases right only with the variant / only with the baseline. None without a shared seed.
    """
    by_seed = {r["seed"]: r for r in baseline}
    shared = [r for r in results if r["seed"] in by_seed]
    if not shared:
        return None
    seeds = [r["seed"] for r in shared]
    per_seed = [r["accuracy"] - by_seed[r["seed"]]["accuracy"] for r in shared]
    mean, std = _mean_std(per_seed)
    out = {"seeds": seeds, "mean": mean, "std": std, "per_seed": per_seed, "wins": sum(d > 0 for d in per_seed)}
    margins = [(r.get("eval_margins"), by_seed[r["seed"]].get("eval_margins")) for r in shared]
    if all(a is not None and b is not None and len(a) == len(b) for a, b in margins):
        right = np.array([np.asarray(a) > 0 for a, _ in margins], dtype=np.float64)
        base_right = np.array([np.asarray(b) > 0 for _, b in margins], dtype=np.float64)
        per_pair = (right - base_right).mean(axis=0)
        n = per_pair.size
        standard_error = float(per_pair.std(ddof=1) / math.sqrt(n)) if n > 1 else None
        out.update({"n_pairs": int(n), "pair_mean": float(per_pair.mean()), "pair_se": standard_error,
                    "gained": int(((right == 1) & (base_right == 0)).sum()),
                    "lost": int(((right == 0) & (base_right == 1)).sum())})
    return out


def summarise(results: list[dict[str, Any]], datasets: list[GridDataset], variants: list[str],
              baseline: str = "none") -> dict[str, Any]:
    """Per dataset and variant: mean and std (ddof=1) over seeds of accuracy, SNR and wall time, and the paired
    difference from `baseline` (plain training) on the shared seeds (`paired_difference`)."""
    table: dict[str, dict[str, Any]] = {}
    for dataset in datasets:
        rows = {}
        base_results = [r for r in results if r["dataset"] == dataset.key and r["variant"] == baseline]
        for variant in variants:
            cell_results = [r for r in results if r["dataset"] == dataset.key and r["variant"] == variant]
            if not cell_results:
                continue
            accuracy, accuracy_std = _mean_std([r["accuracy"] for r in cell_results])
            snrs = [r["snr"] for r in cell_results if r["snr"] is not None]
            snr, snr_std = _mean_std(snrs) if snrs else (None, None)
            rows[variant] = {"accuracy_mean": accuracy, "accuracy_std": accuracy_std, "snr_mean": snr,
                             "snr_std": snr_std, "seeds": [r["seed"] for r in cell_results],
                             "accuracy_per_seed": [r["accuracy"] for r in cell_results],
                             "wall_time_s_mean": float(np.mean([r["wall_time_s"] for r in cell_results]))}
            if variant != baseline and base_results:
                rows[variant]["vs_baseline"] = paired_difference(cell_results, base_results)
        table[dataset.key] = {"name": dataset.name, "n_train": len(dataset.train), "n_eval": len(dataset.evaluation),
                              "folds": dataset.fold,
                              "train_fingerprint": dataset.train_fingerprint,
                              "eval_fingerprint": dataset.eval_fingerprint, "majority_baseline": dataset.majority,
                              "variants": rows}
    return {"datasets": table, "variants": variants, "cells": results, "baseline": baseline}


def _cell_text(mean: float | None, std: float | None, bold: bool) -> str:
    if mean is None:
        return "n/a"
    text = f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"
    return f"**{text}**" if bold else text


def _paired_text(paired: dict[str, Any] | None) -> str:
    if not paired:
        return "—"
    text = f"{100 * paired['mean']:+.1f}"
    if paired["std"] is not None:
        text += f" ± {100 * paired['std']:.1f}"
    if paired.get("pair_se") is not None:
        text += f" [± {100 * paired['pair_se']:.1f}]"
    return text + f" ({paired['wins']}/{len(paired['seeds'])})"


def markdown_table(report: dict[str, Any]) -> str:
    """Held-out accuracy and margin SNR per variant (rows) and dataset (columns): mean ± std over seeds."""
    datasets = report["datasets"]
    keys = list(datasets)
    baseline = report.get("baseline", "none")
    lines = ["| strategy | " + " | ".join(f"{k} accuracy (n={datasets[k]['n_eval']})" for k in keys) + " | "
             + " | ".join(f"{k} vs {baseline}, paired (points)" for k in keys) + " | "
             + " | ".join(f"{k} margin SNR" for k in keys) + " | mean wall time per run (s) |",
             "|---|" + "---|" * (3 * len(keys) + 1)]
    best = {}
    for key in keys:
        means = [row["accuracy_mean"] for row in datasets[key]["variants"].values()]
        best[key] = max(means) if means else None
    for variant in report["variants"]:
        accuracy_cells, paired_cells, snr_cells, times = [], [], [], []
        for key in keys:
            row = datasets[key]["variants"].get(variant)
            if row is None:
                accuracy_cells.append("n/a")
                paired_cells.append("n/a")
                snr_cells.append("n/a")
                continue
            accuracy_cells.append(_cell_text(row["accuracy_mean"], row["accuracy_std"],
                                             math.isclose(row["accuracy_mean"], best[key])))
            paired_cells.append(_paired_text(row.get("vs_baseline")))
            snr_cells.append(_cell_text(row["snr_mean"], row["snr_std"], False))
            times.append(row["wall_time_s_mean"])
        wall_time = f"{np.mean(times):.1f}" if times else "n/a"
        lines.append(f"| {variant} | " + " | ".join(accuracy_cells) + " | " + " | ".join(paired_cells) + " | "
                     + " | ".join(snr_cells) + f" | {wall_time} |")
    majority = [datasets[k]["majority_baseline"] for k in keys]
    if any(majority):
        lines.append("| majority baseline | " + " | ".join(
            f"{m['accuracy']:.3f} (always {m['label']})" if m else "—" for m in majority) + " |"
            + " |" * (2 * len(keys) + 1))
    seeds = sorted({s for k in keys for row in datasets[k]["variants"].values() for s in row["seeds"]})
    lines.append("")
    lines.append(f"Held-out pairwise accuracy, mean ± std (ddof=1) over seeds {seeds}; best mean per dataset in bold. "
                 + " ".join(f"{k}: {datasets[k]['n_train']} train pairs"
                            + (f" per fold, {datasets[k]['folds']}-fold cross-validation (every pair held out once)."
                               if datasets[k].get("folds") else ".") for k in keys)
                 + f" Paired: accuracy minus {baseline}'s on the same seeds and pairs, in points: mean ± std over "
                 "seeds [± standard error over held-out pairs] (seeds above it / seeds shared).")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------------------------


def _read_round_margins(cell_directory: Path) -> dict[int, np.ndarray]:
    out = {}
    for path in sorted((cell_directory / "mars").glob("round_*/allocation.jsonl")):
        round_index = int(path.parent.name.split("_")[1])
        with path.open(encoding="utf-8") as handle:
            out[round_index] = np.array([json.loads(line)["margin"] for line in handle if line.strip()])
    return out


def write_plots(report: dict[str, Any], root: Path) -> list[str]:
    """accuracy.png (per dataset: mean ± std per variant, seeds as dots, majority baseline dashed) and
    margins_by_round.png (training-pair margins each round, first seed, every variant with round evidence)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install matplotlib, then rerun: finished cells "
                       "are reused).")
        return []
    plots_dir = root / "plots"
    plots_dir.mkdir(exist_ok=True)
    datasets = report["datasets"]
    keys = list(datasets)
    written = []

    fig, axes = plt.subplots(1, len(keys), figsize=(max(6.0, 1.1 * len(report["variants"]) + 2) * len(keys), 4.5),
                             squeeze=False)
    for ax, key in zip(axes[0], keys):
        rows = datasets[key]["variants"]
        names = [v for v in report["variants"] if v in rows]
        if not names:  # no finished cell for this dataset yet (--report_only)
            ax.set_axis_off()
            continue
        means = [rows[v]["accuracy_mean"] for v in names]
        stds = [rows[v]["accuracy_std"] or 0.0 for v in names]
        positions = np.arange(len(names))
        ax.bar(positions, means, yerr=stds, capsize=4, color="#8fb3d9", edgecolor="#2b5d8c")
        for position, variant in zip(positions, names):
            points = rows[variant]["accuracy_per_seed"]
            ax.scatter([position] * len(points), points, color="#1b1b1b", s=12, zorder=3)
        majority = datasets[key]["majority_baseline"]
        if majority:
            ax.axhline(majority["accuracy"], color="#c0392b", linestyle="--", linewidth=1,
                       label=f"majority baseline ({majority['accuracy']:.3f})")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(positions, names, rotation=30, ha="right")
        low = min([*means, majority["accuracy"] if majority else 1.0]) - 0.1
        high = max([*means, majority["accuracy"] if majority else 0.0]) + 0.08  # the baseline line stays in view
        ax.set_ylim(max(0.0, low), min(1.0, high))
        ax.set_ylabel("held-out pairwise accuracy")
        ax.set_title(f"{key} (n={datasets[key]['n_eval']})")
    fig.tight_layout()
    path = plots_dir / "accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(str(path))

    # Margin distributions: the training pairs' margins each round scored with r^{t-1}, per variant (first seed).
    series: dict[str, dict[str, dict[int, np.ndarray]]] = {}
    for key in keys:
        for variant in report["variants"]:
            seeds = datasets[key]["variants"].get(variant, {}).get("seeds", [])
            if not seeds:
                continue
            folder = f"{key}/fold_1" if datasets[key].get("folds") else key  # cross-validation: the first fold
            margins = _read_round_margins(root / "cells" / folder / variant / f"seed_{seeds[0]}")
            if margins:
                series.setdefault(key, {})[variant] = margins
    if series:
        num_rounds = max(max(m) for per_variant in series.values() for m in per_variant.values())
        fig, axes = plt.subplots(len(series), num_rounds, figsize=(4.2 * num_rounds, 3.4 * len(series)),
                                 squeeze=False)
        for row, (key, per_variant) in enumerate(series.items()):
            for column in range(num_rounds):
                ax = axes[row][column]
                round_index = column + 1
                values = [m[round_index] for m in per_variant.values() if round_index in m]
                if not values:
                    ax.set_axis_off()
                    continue
                bins = np.histogram_bin_edges(np.concatenate(values), bins=30)
                for variant, margins in per_variant.items():
                    if round_index in margins:
                        ax.hist(margins[round_index], bins=bins, histtype="step", linewidth=1.5, density=True,
                                label=f"{variant} (mean {margins[round_index].mean():+.2f})")
                ax.axvline(0.0, color="grey", linewidth=0.8)
                ax.set_title(f"{key}: round {round_index}", fontsize=10)
                ax.set_xlabel("training-pair margin r(x,y+) - r(x,y-)")
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = plots_dir / "margins_by_round.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
    return written
