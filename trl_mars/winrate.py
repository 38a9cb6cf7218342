"""Pairwise win rate of policy A against policy B: generate, judge in both orders, count, give intervals.

Where we follow the paper: responses of both policies to the same prompts with identical decoding, judged
pairwise by an LLM (GPT-4.1 by default). Where we choose: every pair is judged in both orders and only a verdict
that survives the swap counts (a prompt whose two orders disagree is a tie), which cancels position bias; every
judgement is cached on disk, so re-runs and resumed runs pay nothing twice; intervals are 95% Wilson score
intervals for the win, tie and loss shares and a seeded percentile bootstrap for the ties-count-half win rate.
A reward model (`MarsRewardFunction`) can stand in for the LLM as an offline judge.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
Verdict = str | None  # "A", "B", or None (no usable answer)


# ----------------------------------------------------------------------------------------------------- judges


def load_judge_prompt(version: str = "v1") -> tuple[str, str, str]:
    """(system, user template, name) of the versioned package file `augment/prompts/judge_pairwise_<version>.txt`."""
    name = f"judge_pairwise_{version}"
    path = resources.files("trl_mars.augment").joinpath("prompts", f"{name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"No judge prompt {name!r} in trl_mars/augment/prompts/.")
    parts = _SECTION.split(path.read_text(encoding="utf-8"))
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    return sections["system"], sections["user"], name


def _fill(template: str, fields: dict[str, str]) -> str:
    # one pass, and data cannot open or close a <<<...>>> block of its own
    return _PLACEHOLDER.sub(lambda m: fields[m.group(1)].replace("<<<", "< < <").replace(">>>", "> > >"), template)


def _parse_verdict(content: str | None) -> Verdict:
    if not content:
        return None
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    better = obj.get("better") if isinstance(obj, dict) else None
    better = better.strip().upper() if isinstance(better, str) else None
    return better if better in ("A", "B") else None


class OpenAIPairwiseJudge:
    """Asks an OpenAI-compatible chat endpoint which of two responses is better; answers are cached on disk.

    `base_url=None` lets the `openai` client read `OPENAI_BASE_URL`. Transport errors (429, 5xx, timeouts) are
    retried by the client; an answer that is not the requested JSON is asked again up to `max_attempts` times,
    then counted as no verdict (never cached, so a later run asks again).
    """

    def __init__(self, model: str = "gpt-4.1", *, base_url: str | None = None, api_key: str | None = None,
                 cache_dir: str | None = None, prompt_version: str = "v1", max_attempts: int = 3,
                 max_concurrency: int = 8, timeout: float = 60.0, max_retries: int = 5):
        from openai import OpenAI

        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise ValueError("The OpenAI judge needs an API key. Fix: export OPENAI_API_KEY (or name another "
                             "variable with --judge_api_key_env), or use --judge reward_model for an offline judge.")
        self.client = OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        self.model = model
        self.system, self.user_template, self.prompt_name = load_judge_prompt(prompt_version)
        self.max_attempts, self.max_concurrency = max_attempts, max_concurrency
        self.cache = None
        if cache_dir:
            from .augment.cache import AugmentationCache

            self.cache = AugmentationCache(cache_dir)
        self.requests = 0
        self.failures = 0

    @property
    def namespace(self) -> dict[str, Any]:
        """What a cached verdict depends on: the judge model, endpoint and the judge prompt's version and text."""
        return {"op": "winrate_judge", "model": self.model, "base_url": str(self.client.base_url),
                "prompt": self.prompt_name, "system": self.system, "user": self.user_template}

    def _ask(self, prompt: str, response_a: str, response_b: str) -> Verdict:
        messages = [{"role": "system", "content": self.system},
                    {"role": "user", "content": _fill(self.user_template, {
                        "prompt": prompt, "response_a": response_a, "response_b": response_b})}]
        schema = {"name": "pairwise_verdict", "strict": True, "schema": {
            "type": "object", "properties": {"better": {"type": "string", "enum": ["A", "B"]}},
            "required": ["better"], "additionalProperties": False}}
        for attempt in range(self.max_attempts):
            self.requests += 1
            completion = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=0.0, max_tokens=16,
                response_format={"type": "json_schema", "json_schema": schema})
            verdict = _parse_verdict(completion.choices[0].message.content if completion.choices else None)
            if verdict is not None:
                return verdict
            time.sleep(min(2.0, 0.1 * 2**attempt))
        self.failures += 1
        return None

    def judge(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[Verdict]:
        """One verdict per (prompt, A, B) in this order of presentation."""
        keys = [json.dumps([p, a, b], ensure_ascii=False) for p, a, b in zip(prompts, responses_a, responses_b)]
        cached = self.cache.get_many(self.namespace, keys) if self.cache is not None else {}
        todo = sorted({k for k in keys if k not in cached})
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            answers = dict(zip(todo, pool.map(lambda k: self._ask(*json.loads(k)), todo)))
        fresh = {k: v for k, v in answers.items() if v is not None}
        if self.cache is not None and fresh:  # (an empty cache is falsy: it has __len__)
            self.cache.put_many(self.namespace, fresh)
        return [cached[k] if k in cached else answers[k] for k in keys]


class RewardModelJudge:
    """An offline judge: the response with the higher reward wins; equal rewards give no verdict."""

    def __init__(self, reward_function):
        self.reward = reward_function
        self.requests = 0
        self.failures = 0

    def judge(self, prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str]) -> list[Verdict]:
        scores = self.reward.raw_scores(list(prompts) * 2, list(responses_a) + list(responses_b))
        self.requests += len(scores)
        a, b = scores[: len(prompts)], scores[len(prompts):]
        return ["A" if x > y else "B" if y > x else None for x, y in zip(a, b)]


# ----------------------------------------------------------------------------------------------------- counting


def both_orders(judge, prompts: Sequence, responses_a: Sequence[str], responses_b: Sequence[str]) -> list[dict]:
    """Judges (A, B) and (B, A); the outcome for policy A is 'win'/'loss' only when both orders agree, else 'tie'."""
    first = judge.judge(prompts, responses_a, responses_b)
    swapped = judge.judge(prompts, responses_b, responses_a)
    rows = []
    for prompt, a, b, v1, v2 in zip(prompts, responses_a, responses_b, first, swapped):
        a_first = {"A": "a", "B": "b"}.get(v1)  # which policy the judge preferred, in each order
        a_second = {"A": "b", "B": "a"}.get(v2)
        outcome = ("win" if a_first == a_second == "a" else "loss" if a_first == a_second == "b" else "tie")
        rows.append({"prompt": prompt, "response_a": a, "response_b": b, "verdict_ab": v1, "verdict_ba": v2,
                     "outcome": outcome, "orders_disagree": a_first is not None and a_second is not None
                     and a_first != a_second})
    return rows


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sensible at 0, n and small n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(values: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of a mean (seeded, so the report is reproducible)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (0.0, 1.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return (float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def summarise(rows: Sequence[dict], *, seed: int = 0) -> dict[str, Any]:
    """wins/ties/losses of policy A, win_rate = wins / n, the ties-half rate, and their 95% intervals."""
    n = len(rows)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("win", "tie", "loss")}
    points = [1.0 if r["outcome"] == "win" else 0.5 if r["outcome"] == "tie" else 0.0 for r in rows]
    return {
        "n": n, "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"],
        "win_rate": counts["win"] / n if n else 0.0,
        "tie_rate": counts["tie"] / n if n else 0.0,
        "loss_rate": counts["loss"] / n if n else 0.0,
        "win_rate_ties_half": float(np.mean(points)) if n else 0.0,
        "ci95": {"win_rate": wilson_interval(counts["win"], n), "tie_rate": wilson_interval(counts["tie"], n),
                 "loss_rate": wilson_interval(counts["loss"], n),
                 "win_rate_ties_half": bootstrap_interval(points, seed=seed)},
        "ci_method": "Wilson score (win/tie/loss rates); percentile bootstrap, 2000 resamples (ties-half rate)",
        "order_disagreements": sum(r["orders_disagree"] for r in rows),
    }


def format_table(summary: dict[str, Any], name_a: str, name_b: str) -> str:
    """A small text table of the summary, for the console."""
    lines = [f"{name_a} vs {name_b} on {summary['n']} prompts (judged in both orders)",
             f"{'':<10}{'count':>7}{'rate':>9}   95% CI"]
    for label, count, rate in (("win", "wins", "win_rate"), ("tie", "ties", "tie_rate"),
                               ("loss", "losses", "loss_rate")):
        low, high = summary["ci95"][rate]
        lines.append(f"{label:<10}{summary[count]:>7}{summary[rate]:>9.3f}   [{low:.3f}, {high:.3f}]")
    low, high = summary["ci95"]["win_rate_ties_half"]
    lines.append(f"win rate (ties count half): {summary['win_rate_ties_half']:.3f} [{low:.3f}, {high:.3f}]")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- policies


def load_policy(path: str, *, dtype: str | None = None, device: str | None = None):
    """(model, tokenizer) from a model folder/id or a saved LoRA adapter folder (merged for generation)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": getattr(torch, dtype)} if dtype and dtype != "auto" else {}
    adapter_config = os.path.join(path, "adapter_config.json")
    if os.path.isfile(adapter_config):
        from peft import PeftModel

        with open(adapter_config, encoding="utf-8") as handle:
            base_name = json.load(handle)["base_model_name_or_path"]
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_name, **kwargs), path)
        model = model.merge_and_unload()
    else:
        base_name = path
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    source = path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else base_name
    tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is None:
        from accelerate import PartialState

        device = PartialState().device
    return model.to(device).eval(), tokenizer


def generate_responses(model, tokenizer, prompts: Sequence, *, max_new_tokens: int = 192, batch_size: int = 8,
                       do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                       seed: int = 0) -> list[str]:
    """Responses to `prompts` (text or chat messages) with the given decoding; the same call for every policy."""
    import torch
    from transformers import set_seed

    set_seed(seed)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) if isinstance(p, list)
             else p for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths together: less padding
    responses: list[str] = [""] * len(texts)
    decoding = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if do_sample:
        decoding.update(temperature=temperature, top_p=top_p)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        # chat templates already carry their special tokens
        inputs = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                           add_special_tokens=not isinstance(prompts[batch[0]], list)).to(model.device)
        with torch.no_grad():
            output = model.generate(**inputs, **decoding)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            responses[i] = text.strip()
    return responses


# ----------------------------------------------------------------------------------------------------- recipe


@dataclass
class WinRateArguments:
    """Arguments of `recipes/winrate.py`."""

    policy_a: str = field(metadata={"help": "Policy A: a model folder/id or a saved LoRA adapter folder."})
    policy_b: str = field(metadata={"help": "Policy B (the baseline): a model folder/id or a LoRA adapter folder."})
    dataset_name: str = field(metadata={"help": "Prompts: a Hub id, a .jsonl file with a 'prompt' field, or "
                                                "'embedded'."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to take prompts from."})
    max_prompts: int | None = field(default=None, metadata={"help": "Seeded subset of prompts (None: all)."})
    max_prompt_length: int = field(default=512, metadata={"help": "Prompt tokens kept (the end is kept)."})
    max_new_tokens: int = field(default=192, metadata={"help": "Response length for both policies (paper: 192)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding (same for both)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with --do_sample)."})
    generation_batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call."})
    dtype: str | None = field(default=None, metadata={"help": "Policy dtype, e.g. bfloat16 (default: the model's)."})
    judge: str = field(default="openai", metadata={"help": "openai (an OpenAI-compatible LLM) or reward_model "
                                                           "(offline: the higher reward wins).",
                                                   "choices": ["openai", "reward_model"]})
    judge_model: str = field(default="gpt-4.1", metadata={"help": "Judge model name at the endpoint."})
    judge_base_url: str | None = field(default=None, metadata={"help": "Endpoint; default: $OPENAI_BASE_URL or "
                                                                       "api.openai.com."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Variable holding the API key."})
    judge_prompt_version: str = field(default="v1", metadata={"help": "Version of judge_pairwise_<v>.txt."})
    judge_concurrency: int = field(default=8, metadata={"help": "Judge requests in flight at once."})
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model for --judge "
                                                                                  "reward_model."})
    cache_dir: str | None = field(default="outputs/winrate_cache", metadata={"help": "Judgement cache (SQLite); "
                                                                                     "empty to disable."})
    output_json: str | None = field(default=None, metadata={"help": "Where to write the summary and per-prompt "
                                                                    "verdicts as JSON."})
    seed: int = field(default=42, metadata={"help": "Seed for the prompt subset, sampling and the bootstrap."})


def build_judge(args: WinRateArguments):
    if args.judge == "reward_model":
        if not args.reward_model_name_or_path:
            raise ValueError("--judge reward_model needs --reward_model_name_or_path.")
        from .rewards import MarsRewardFunction

        return RewardModelJudge(MarsRewardFunction(args.reward_model_name_or_path))
    return OpenAIPairwiseJudge(args.judge_model, base_url=args.judge_base_url,
                               api_key=os.environ.get(args.judge_api_key_env), cache_dir=args.cache_dir or None,
                               prompt_version=args.judge_prompt_version, max_concurrency=args.judge_concurrency)


def run_winrate(args: WinRateArguments) -> dict[str, Any]:
    """Generates with both policies, judges in both orders, writes `output_json`, returns the summary."""
    from .alignment import load_prompts, prepare_prompts
    from .data import prompt_text

    judge = build_judge(args)  # first: a missing key fails before any model is loaded
    dataset = load_prompts(args.dataset_name, config=args.dataset_config, split=args.dataset_split,
                           max_prompts=args.max_prompts, seed=args.seed)
    responses = {}
    for label, path in (("a", args.policy_a), ("b", args.policy_b)):
        model, tokenizer = load_policy(path, dtype=args.dtype)
        prompts = prepare_prompts(dataset, tokenizer, max_prompt_length=args.max_prompt_length)["prompt"]
        responses[label] = generate_responses(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                              batch_size=args.generation_batch_size, do_sample=args.do_sample,
                                              temperature=args.temperature, top_p=args.top_p, seed=args.seed)
        del model
    judged_prompts = [prompt_text(p) if isinstance(judge, OpenAIPairwiseJudge) else p for p in dataset["prompt"]]
    rows = both_orders(judge, judged_prompts, responses["a"], responses["b"])
    summary = summarise(rows, seed=args.seed)
    summary.update({"policy_a": args.policy_a, "policy_b": args.policy_b, "dataset": args.dataset_name,
                    "judge": args.judge if args.judge == "reward_model" else args.judge_model,
                    "judge_requests": judge.requests, "judge_failures": judge.failures,
                    "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample})
    if getattr(judge, "cache", None) is not None:
        summary["judge_cache"] = {"hits": judge.cache.hits, "misses": judge.cache.misses}
    print(format_table(summary, "A", "B"))
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w", encoding="utf-8") as handle:
            json.dump({**summary, "per_prompt": rows}, handle, indent=2, ensure_ascii=False)
    return summary
