"""Aligning a policy with a MARS reward model: prompts, trainer choice and wiring for `recipes/ppo_align.py`.

Where we follow the paper: PPO-style updates with LoRA on the attention and feed-forward projections (r 16,
alpha 32), ratio clip 0.2, KL coefficient 0.02 to the reference policy, prompts truncated to 512 tokens, responses
up to 192 tokens. Where we choose: on TRL >= 1.13 (no PPOTrainer) the default route is RLOO, which keeps PPO's
clipped ratio (`epsilon`) and PPO-RLHF's KL-penalised reward (`beta`) but replaces the learned critic with the
leave-one-out mean of `num_generations` samples per prompt. GRPO is the alternative (KL in the loss). TRL's own
actor-critic `PPOTrainer` is used where the installed TRL still has it (1.0-1.12, `trl-mars[ppo]`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, load_dataset

logger = logging.getLogger(__name__)

TRAINERS = ("rloo", "grpo", "ppo")
EMBEDDED_ALIGN_PROMPTS = "embedded_align"
_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
_PROMPT_ALIASES = ("instruction", "question", "query")
# The paper's LoRA targets: attention and feed-forward projections of Llama-family decoders.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PPO_INSTALL_HINT = (
    "The installed TRL ({version}) has no PPOTrainer (TRL removed it in 1.13). Either use the maintained "
    "PPO-style route, `--trainer rloo` (clipped ratio + KL-penalised reward, no critic), or install a TRL that "
    "still has it in a separate environment: pip install \"trl-mars[ppo]\" (pins trl>=1.0,<1.13)."
)

# Paper settings shared by every route; YAML and CLI override each.
ALIGN_DEFAULTS: dict[str, Any] = {
    "beta": 0.02,  # KL coefficient to the reference policy
    "epsilon": 0.2,  # ratio clip
    "max_completion_length": 192,
    "use_peft": True,
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": LORA_TARGETS,
    "learning_rate": 1e-5,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 200,
    "report_to": "none",
}


@dataclass
class AlignScriptArguments:
    """What `recipes/ppo_align.py` needs besides the trainer config (`RLOOConfig`/`GRPOConfig`) and `ModelConfig`."""

    reward_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Folder of a reward model saved by MarsRewardTrainer (full or LoRA)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Prompts: a Hub dataset id or a local .json/.jsonl file with a 'prompt' field "
                                        "(preference sets with only chosen/rejected get their shared prefix)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to take prompts from."})
    trainer: str = field(
        default="rloo", metadata={"help": "rloo (default: PPO-style on current TRL), grpo, or ppo (TRL <= 1.12).",
                                  "choices": list(TRAINERS)})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompts are cut to this many policy tokens, keeping their end (paper: 512)."})
    max_train_prompts: int | None = field(
        default=None, metadata={"help": "Seeded subset of the prompts (None: all)."})
    prompt_format: str = field(
        default="auto", metadata={"help": "auto: plain-text prompts become a user message when the policy tokenizer "
                                          "has a chat template; chat: always; text: never.",
                                  "choices": ["auto", "chat", "text"]})
    reward_max_length: int | None = field(
        default=None, metadata={"help": "Reward-model input limit (keep-the-end truncation). Default: the model's "
                                        "limit; set it to the max_length the reward model was trained with."})
    reward_batch_size: int = field(default=32, metadata={"help": "Sequences per reward-model forward pass."})
    reward_input_format: str = field(
        default="auto", metadata={"help": "auto: the reward model reads each (prompt, completion) as training encodes "
                                          "its format (chat turns for a chat policy); text: conversations are "
                                          "flattened to plain prompt/response text first, for a reward model "
                                          "trained on plain-text pairs (the embedded one).",
                                  "choices": ["auto", "text"]})
    reward_calibration_file: str | None = field(
        default=None, metadata={"help": "JSONL of reference (prompt, completion) or (prompt, chosen, rejected) rows: "
                                        "rewards are normalised to mean 0, std 1 on them."})


def requested_trainer(argv: list[str]) -> str:
    """The `--trainer` of a command line (or its `--config` YAML), read before full parsing.

    The trainer decides which config dataclass the parser must use, so it has to be known first.
    """
    value = None
    config = None
    for i, arg in enumerate(argv):
        if arg.startswith("--trainer="):
            value = arg.split("=", 1)[1]
        elif arg == "--trainer" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            config = argv[i + 1]
    if value is None and config is not None:
        with open(config, encoding="utf-8") as handle:
            value = (yaml.safe_load(handle) or {}).get("trainer")
    value = value or "rloo"
    if value not in TRAINERS:
        raise SystemExit(f"--trainer {value!r}: choose one of {', '.join(TRAINERS)}.")
    return value


def ppo_trainer_classes():
    """(PPOConfig, PPOTrainer) from the installed TRL, or SystemExit with how to get them."""
    import trl

    try:
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError:
        raise SystemExit(PPO_INSTALL_HINT.format(version=trl.__version__)) from None
    return PPOConfig, PPOTrainer


def config_class(trainer: str):
    """The TRL config dataclass of a route."""
    if trainer == "rloo":
        from trl import RLOOConfig

        return RLOOConfig
    if trainer == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    return ppo_trainer_classes()[0]


# ----------------------------------------------------------------------------------------------------- prompts


def align_prompt_files() -> dict[str, str]:
    """The alignment prompts that ship with trl_mars (`scripts/make_align_prompts.py`): 'train' (the 320 prompts of
    the embedded preference set's train split) and 'heldout' (64 prompts of its test split, for evaluation)."""
    return {split: str(_RESOURCES / f"align_prompts_{split}.jsonl") for split in ("train", "heldout")}


def load_prompts(name: str, *, config: str | None = None, split: str = "train", max_prompts: int | None = None,
                 seed: int = 42) -> Dataset:
    """A dataset with one `prompt` column (text or chat messages): a Hub id, a local JSON/JSONL file, 'embedded'
    (the prompts of the small preference set that ships with trl_mars) or 'embedded_align' (the shipped alignment
    prompts; `split` 'train' or 'heldout', see `align_prompt_files`)."""
    from ..data.preferences import (
        EMBEDDED_DATASET,
        embedded_dataset_files,
        load_data_source,
    )

    # 'embedded' gives the prompts of the preference set's train split whatever `split` names (its held-out prompts
    # are 'embedded_align' 'heldout').
    shipped = {EMBEDDED_DATASET: {split: embedded_dataset_files()["train"]},
               EMBEDDED_ALIGN_PROMPTS: align_prompt_files()}
    dataset = load_data_source(name, dataset_config=config, split=split, shipped_files=shipped,
                               fields="a 'prompt' field")
    columns = set(dataset.column_names)
    alias = next((c for c in _PROMPT_ALIASES if c in columns), None)
    if "prompt" not in columns and alias is not None:  # e.g. AlpacaEval's 'instruction'
        logger.info("Using column %r of %s as the prompt.", alias, name)
        dataset = dataset.rename_column(alias, "prompt")
    elif "prompt" not in columns:
        if {"chosen", "rejected"} <= columns:  # preference data with an implicit prompt (e.g. HH-RLHF)
            from ..data.preferences import to_explicit_prompt

            dataset = to_explicit_prompt(dataset)
        else:
            raise ValueError(f"--dataset_name {name!r}: no 'prompt' column (columns: {sorted(columns)}). Fix: rename "
                             "the prompt column to 'prompt', e.g. `dataset.rename_column('question', 'prompt')`.")
    dataset = dataset.select_columns(["prompt"])
    first = dataset[0]["prompt"] if len(dataset) else None
    if isinstance(first, str) and first.lstrip("\n").startswith("Human:"):  # HH-RLHF transcripts -> chat turns
        dataset = dataset.map(lambda x: {"prompt": hh_transcript_to_messages(x["prompt"])},
                              desc="Parsing HH-RLHF transcripts")
    for row, prompt in enumerate(dataset["prompt"]):
        if not prompt or (isinstance(prompt, str) and not prompt.strip()):
            raise ValueError(f"--dataset_name {name!r}, row {row}, column 'prompt': the prompt is empty. Fix: drop "
                             "the row (e.g. `dataset.filter(lambda x: x['prompt'])`).")
    if max_prompts is not None and max_prompts < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(max_prompts))
    return dataset


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def hh_transcript_to_messages(text: str) -> list[dict[str, str]]:
    """'\\n\\nHuman: q\\n\\nAssistant: a\\n\\nHuman: q2\\n\\nAssistant:' -> user/assistant messages (the open
    assistant turn at the end, which the policy will answer, is dropped)."""
    parts = _HH_TURN.split(text)
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        if content:
            messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content})
    return messages


def _tail_text(text: str, tokenizer, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[-max_tokens:], skip_special_tokens=True)


def _chat_length(messages: list[dict], tokenizer) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                             return_dict=True)["input_ids"])


def truncate_prompt(prompt: str | list[dict], tokenizer, max_tokens: int) -> str | list[dict]:
    """Cuts a prompt to at most `max_tokens` policy tokens, keeping its end (the latest turn is what gets answered).

    Conversations lose their oldest turns first (a leading system message stays; the kept part never starts with an
    assistant message, which many chat templates reject); the last message is cut from the left if it alone is too
    long.
    """
    if isinstance(prompt, str):
        return _tail_text(prompt, tokenizer, max_tokens)
    messages = [dict(m) for m in prompt]
    system = [messages.pop(0)] if len(messages) > 1 and messages[0]["role"] == "system" else []
    while len(messages) > 1 and _chat_length(system + messages, tokenizer) > max_tokens:
        messages.pop(0)
        while len(messages) > 1 and messages[0]["role"] == "assistant":
            messages.pop(0)
    if system and _chat_length(system + messages, tokenizer) > max_tokens:
        system = []
    messages = system + messages
    overflow = _chat_length(messages, tokenizer) - max_tokens
    if overflow > 0:
        content = messages[-1]["content"]
        content_tokens = len(tokenizer(content, add_special_tokens=False)["input_ids"])
        messages[-1]["content"] = _tail_text(content, tokenizer, max(1, content_tokens - overflow))
    return messages


def prepare_prompts(dataset: Dataset, tokenizer, *, max_prompt_length: int, prompt_format: str = "auto") -> Dataset:
    """Puts prompts in the policy's format and truncates them (TRL >= 1.13 has no `max_prompt_length`)."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    to_chat = prompt_format == "chat" or (prompt_format == "auto" and has_template)
    if prompt_format == "chat" and not has_template:
        raise ValueError("--prompt_format chat: the policy tokenizer has no chat template. Fix: use --prompt_format "
                         "text, or a chat model.")

    def convert(example):
        prompt = example["prompt"]
        if isinstance(prompt, str) and to_chat:
            prompt = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list) and not has_template:
            from ..data.preferences import prompt_text

            prompt = prompt_text(prompt)
        return {"prompt": truncate_prompt(prompt, tokenizer, max_prompt_length)}

    return dataset.map(convert, desc="Formatting and truncating prompts")


# ----------------------------------------------------------------------------------------------------- reward


def build_reward_function(script_args: AlignScriptArguments):
    """The MARS reward model as a TRL reward function, normalised on the calibration file when one is given."""
    from .rewards import MarsRewardFunction

    if not script_args.reward_model_name_or_path:
        raise ValueError("--reward_model_name_or_path is required (a folder saved by MarsRewardTrainer).")
    reward = MarsRewardFunction(script_args.reward_model_name_or_path, max_length=script_args.reward_max_length,
                                batch_size=script_args.reward_batch_size,
                                input_format=script_args.reward_input_format)
    if script_args.reward_calibration_file:
        rows = load_dataset("json", data_files=script_args.reward_calibration_file, split="train")
        prompts, completions = [], []
        sides = [c for c in ("completion", "chosen", "rejected") if c in rows.column_names]
        if "prompt" not in rows.column_names or not sides:
            raise ValueError(f"--reward_calibration_file {script_args.reward_calibration_file}: needs 'prompt' and "
                             "'completion' (or 'chosen'/'rejected') fields.")
        for row in rows:
            for side in sides:
                prompts.append(row["prompt"])
                completions.append(row[side])
        reward.calibrate(prompts, completions)
        logger.info("Reward normalised on %d reference completions: mean %.4f, std %.4f", len(completions),
                    reward.reward_mean, reward.reward_std)
    return reward


# ----------------------------------------------------------------------------------------------------- trainers


def build_trainer(script_args: AlignScriptArguments, training_args, model_args):
    """Loads prompts, tokenizer and reward model, and returns the TRL trainer of `script_args.trainer`."""
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from ..augment.packaged import resolve_packaged_model

    if script_args.dataset_name is None:
        raise ValueError("--dataset_name is required (a Hub id or a .jsonl file with a 'prompt' field).")
    # A `packaged:` policy (e.g. packaged:SmolLM2-135M-Instruct) becomes its local folder before TRL or the tokenizer
    # loads it (converted once per machine; concurrent ranks wait on one file lock). The saved adapter then names that
    # folder as its base model.
    model_args.model_name_or_path = resolve_packaged_model(model_args.model_name_or_path)
    if script_args.trainer == "ppo":
        return _build_ppo_trainer(script_args, training_args, model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                              padding_side="left")
    prompts = load_prompts(script_args.dataset_name, config=script_args.dataset_config,
                           split=script_args.dataset_train_split, max_prompts=script_args.max_train_prompts,
                           seed=training_args.seed)
    prompts = prepare_prompts(prompts, tokenizer, max_prompt_length=script_args.max_prompt_length,
                              prompt_format=script_args.prompt_format)
    reward = build_reward_function(script_args)
    model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        model_init_kwargs["attn_implementation"] = model_args.attn_implementation
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    if script_args.trainer == "rloo":
        from trl import RLOOTrainer as Trainer
    else:
        from trl import GRPOTrainer as Trainer
    return Trainer(model=model_args.model_name_or_path, reward_funcs=[reward], args=training_args,
                   train_dataset=prompts, processing_class=tokenizer, peft_config=get_peft_config(model_args))


def _same_tokenizer(a, b) -> bool:
    return type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()


def _build_ppo_trainer(script_args: AlignScriptArguments, training_args, model_args):
    """TRL's actor-critic PPOTrainer (TRL 1.0-1.12): the reward model must share the policy's tokenizer."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl import get_peft_config

    _, PPOTrainer = ppo_trainer_classes()
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    reward_tokenizer = AutoTokenizer.from_pretrained(script_args.reward_model_name_or_path)
    if not _same_tokenizer(tokenizer, reward_tokenizer):
        raise ValueError(
            f"--trainer ppo: the reward model {script_args.reward_model_name_or_path!r} does not share the policy's "
            "tokenizer, which TRL's PPOTrainer requires. Fix: train the reward model with MarsRewardTrainer on the "
            "policy's own backbone (e.g. --model_name_or_path <policy> in recipes/mars_rm.py), or use --trainer rloo, "
            "which scores with the reward model's own tokenizer.")
    prompts = load_prompts(script_args.dataset_name, config=script_args.dataset_config,
                           split=script_args.dataset_train_split, max_prompts=script_args.max_train_prompts,
                           seed=training_args.seed)
    prompts = prepare_prompts(prompts, tokenizer, max_prompt_length=script_args.max_prompt_length,
                              prompt_format=script_args.prompt_format)

    def tokenize(example):
        prompt = example["prompt"]
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                return_dict=True)["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        return {"input_ids": list(ids)}

    dataset = prompts.map(tokenize, remove_columns=prompts.column_names, desc="Tokenizing prompts")
    policy = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=model_args.dtype)
    reward_model = AutoModelForSequenceClassification.from_pretrained(script_args.reward_model_name_or_path,
                                                                      num_labels=1)
    value_model = AutoModelForSequenceClassification.from_pretrained(script_args.reward_model_name_or_path,
                                                                     num_labels=1)
    for model in (reward_model, value_model):
        model.config.pad_token_id = tokenizer.pad_token_id
    return PPOTrainer(args=training_args, processing_class=tokenizer, model=policy, ref_model=None,
                      reward_model=reward_model, value_model=value_model, train_dataset=dataset,
                      peft_config=get_peft_config(model_args))


def route_defaults(trainer: str) -> dict[str, Any]:
    """`ALIGN_DEFAULTS` in the vocabulary of the route's config class (PPOConfig names KL and clip differently)."""
    if trainer != "ppo":
        return dict(ALIGN_DEFAULTS)
    defaults = {k: v for k, v in ALIGN_DEFAULTS.items() if k not in ("beta", "epsilon", "max_completion_length")}
    defaults.update({"kl_coef": 0.02, "cliprange": 0.2, "response_length": 192})
    return defaults


def main(argv: list[str] | None = None):
    """Parses YAML + CLI for the chosen route, trains, saves the (LoRA) policy; what the recipe runs."""
    from trl import ModelConfig, TrlParser

    from ..cli.arguments import configure_logging
    from ..cli.shutdown import end_processes

    argv = sys.argv[1:] if argv is None else argv
    trainer_kind = requested_trainer(argv)
    parser = TrlParser((AlignScriptArguments, config_class(trainer_kind), ModelConfig))
    parser.set_defaults_with_config(**route_defaults(trainer_kind))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    configure_logging(logging.INFO)
    trainer = build_trainer(script_args, training_args, model_args)
    if script_args.trainer == "ppo":  # TRL's PPOTrainer has its own loop: train() takes no arguments
        trainer.train()
    else:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    end_processes(trainer.accelerator)
    if trainer.is_world_process_zero():
        print(f"\n[MARS] aligned policy ({script_args.trainer}) saved to {os.path.abspath(training_args.output_dir)}")
    return trainer
