"""The reward-model recipe as importable code: script arguments, the offline defaults, `build_trainer()` and
`train_and_save()`.

`recipes/mars_rm.py` only parses arguments (YAML config + CLI, the TRL way, with `trl_mars.cli.arguments.MarsParser`)
and calls these, so everything a recipe does can be imported and reused from `trl_mars`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from trl import ModelConfig, ScriptArguments, get_peft_config

from ..data.preferences import EMBEDDED_DATASET, load_preference_splits
from ..training.config import PACKAGED_MINILM, MarsRewardConfig
from ..training.console import cpu_threads
from ..training.preflight import as_model_id
from .arguments import configure_logging
from .shutdown import end_processes

logger = logging.getLogger("trl_mars")

# What `accelerate launch recipes/mars_rm.py` runs with no arguments: fully offline, on 2 CPU cores in minutes.
# YAML (--config) and CLI flags override each of these. recipes/minilm/mars/config_embedded.yaml spells out the same
# settings (tests/test_embedded_defaults.py keeps the two equal); some repeat the library default on purpose.
EMBEDDED_DEFAULTS: dict[str, Any] = {
    "model_name_or_path": PACKAGED_MINILM,
    "dataset_name": EMBEDDED_DATASET,
    "output_dir": "outputs/mars-rm-minilm-embedded",
    "mars_strategy": "mars",
    "mars_tau": 0.5,
    "mars_margin_mode": "signed",
    "mars_paraphraser": "lexical",
    "mars_embedding_model": PACKAGED_MINILM,
    "mars_budget_ratio": 1.0,
    "mars_refiner": "none",  # refinement needs an LLM
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 5e-5,
    "max_length": 256,
    "activation_checkpointing": False,  # the current name of `gradient_checkpointing` (no deprecation warning)
    "lora_task_type": "SEQ_CLS",  # a reward model is a sequence classifier (TRL's ModelConfig says CAUSAL_LM)
    "logging_steps": 10,
    "eval_strategy": "no",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "report_to": "none",
    "seed": 42,
}


@dataclass
class MarsScriptArguments(ScriptArguments):
    """TRL's `ScriptArguments` (dataset_name, dataset_config, splits) plus the eval hold-out and subset size."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Hub dataset id, a local .json/.jsonl file with prompt/chosen/rejected fields, or "
                          f"'{EMBEDDED_DATASET}' for the small set that ships with trl_mars."},
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Seeded share of train held out for evaluation when the dataset has no test split."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Seeded subset of the train split (the paper trains on 1k-pair subsets)."}
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Torch threads per process on CPU. Default: the cores this process may use, divided among "
                          "this machine's processes; an OMP_NUM_THREADS other than accelerate's own default of 1 is "
                          "respected."},
    )


def build_trainer(script_args: MarsScriptArguments, training_args: MarsRewardConfig, model_args: ModelConfig):
    """Loads the data and builds `MarsRewardTrainer`: everything that can fail on bad input happens here."""
    from ..training.trainer import MarsRewardTrainer

    configure_logging(logging.INFO, trl_mars_level=logging.INFO)
    if script_args.dataset_name is None:
        raise ValueError("--dataset_name is required (a Hub id, a .jsonl file, or 'embedded').")
    if training_args.device.type == "cpu":
        threads = cpu_threads(script_args.cpu_threads)
        if threads is not None and training_args.process_index == 0:
            logger.info("MARS: %d torch thread(s) per process on CPU (set --cpu_threads to change).", threads)
    train, evaluation = load_preference_splits(
        script_args.dataset_name,
        dataset_config=script_args.dataset_config,
        train_split=script_args.dataset_train_split,
        test_split=script_args.dataset_test_split,
        eval_fraction=script_args.eval_fraction,
        max_train_samples=script_args.max_train_samples,
    )
    model_name = as_model_id(model_args.model_name_or_path)
    model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        model_init_kwargs["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    # No tokenizer here: the trainer loads it (with the revision in model_init_kwargs) after validating the data,
    # so bad input fails before anything is loaded.
    return MarsRewardTrainer(
        model=model_name,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=get_peft_config(model_args),
    )


def train_and_save(trainer, training_args: MarsRewardConfig):
    """Trains, saves the reward model, prints where everything is and ends the process group in step."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    end_processes(trainer.accelerator)
    if trainer.is_world_process_zero():
        output = os.path.abspath(training_args.output_dir)
        print(f"\n[MARS] reward model saved to {output}")
        if training_args.mars_enabled:
            print(f"[MARS] round evidence: {os.path.join(output, 'mars')} (summary.json, round_<t>/allocation.jsonl, "
                  "round_<t>/synthetic.jsonl)")
    return trainer
