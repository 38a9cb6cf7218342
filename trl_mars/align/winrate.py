"""Pairwise win rate of policy A against policy B: generate, judge in both orders, count, give intervals.

Where we follow the paper: responses of both policies to the same prompts with identical decoding, judged
pairwise by an LLM (GPT-4.1 by default). Where we choose: every pair is judged in both orders and only a verdict
that survives the swap counts (a prompt whose two orders disagree is a tie), which cancels position bias; every
judgement is cached on disk, so re-runs and resumed runs pay nothing twice; intervals are 95% Wilson score
intervals for the win, tie and loss shares and a seeded percentile bootstrap for the ties-count-half win rate.

Judges: `openai` (any OpenAI-compatible endpoint, `transformers serve` with the packaged SmolLM2 model included) and
`local` (a causal LM in this process) both answer one letter, A or B, through the `TextGenerator` protocol: a small
model does not follow JSON, so the verdict is a plain answer, and the share of answers that name A or B (the parse
rate) goes into the summary. Their prompt (`judge_pairwise_v2`) lays the request and the answers out as labelled
lines, not inside the `<<<...>>>` blocks of v1: SmolLM2-135M answered every v1-style block prompt by echoing a
marker (0 of 6 verdicts parsed) and the labelled layout with a letter (12 of 12). A reward model (`MarsRewardFunction`) can stand in as an offline judge.
Policies and the local judge take model folders, Hub ids, `packaged:` ids (`packaged:SmolLM2-135M-Instruct`) and
saved LoRA adapters.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..augment.templates import load_template
from ..eval.modeling import load_causal_lm as load_policy

logger = logging.getLogger(__name__)

Verdict = str | None  # "A", "B", or None (no usable answer)


# ----------------------------------------------------------------------------------------------------- judges


class TextPairwiseJudge:
    """Asks any `TextGenerator` (see `augment.base`) which of two responses is better, as one short answer "A"/"B".

    The generator does the work and keeps the record: `client.ChatTextGenerator` over an OpenAI-compatible endpoint
    (`--judge openai`, retries and the answer cache of `ChatClient`), or the in-process local model (`--judge local`).
    A small model does not follow JSON, so the verdict is a plain letter: `choose(..., ["A", "B"])`, which gives None
    for an answer naming neither (unparseable: cached, counted, and a tie in `both_orders`). `verdicts` and
    `unparseable` count every verdict of this judge's life, replays from the cache included, so the parse rate
    `1 - unparseable / verdicts` describes the run whether or not the answers were cached.
    """

    def __init__(self, generator, *, prompt_version: str = "v2"):
        self.generator = generator
        # the versioned package file augment/prompts/judge_pairwise_<version>.txt, loaded as every chat prompt is
        self.template = load_template("judge_pairwise", prompt_version)
        self.prompt_name = self.template.name
        self.verdicts = 0
        self.unparseable = 0
        self.cache_hits = 0  # verdicts replayed from the generator's cache
        self.cache_misses = 0  # verdicts computed now

    def messages(self, prompt: str, response_a: str, response_b: str) -> list[dict[str, str]]:
        return self.template.render(prompt=prompt, response_a=response_a, response_b=response_b)

    @property
    def requests(self) -> int:
        """Verdicts computed now (not replayed from the cache)."""
        return self.cache_misses

    @property
    def failures(self) -> int:
        """Verdicts that could not be had at all (a transport failure after the retries); not unparseable ones."""
        return int(self.generator.stats().get("failed", 0))

    def parse_stats(self) -> dict[str, Any]:
        parsed = self.verdicts - self.unparseable - self.failures
        answered = self.verdicts - self.failures
        return {"verdicts": self.verdicts, "unparseable": self.unparseable, "failed": self.failures,
                "parse_rate": parsed / answered if answered else None}

    def judge(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[Verdict]:
        """One verdict per (prompt, A, B) in this order of presentation; identical questions are asked once."""
        keys = [json.dumps([p, a, b], ensure_ascii=False) for p, a, b in zip(prompts, responses_a, responses_b)]
        todo = sorted(set(keys))
        failed_before, cached_before = self.failures, int(self.generator.stats().get("cached", 0))
        answers = dict(zip(todo, self.generator.choose([self.messages(*json.loads(k)) for k in todo], ["A", "B"])))
        failed_now = self.failures - failed_before
        replayed = min(len(todo), int(self.generator.stats().get("cached", 0)) - cached_before)
        self.cache_hits += replayed
        self.cache_misses += len(todo) - replayed
        self.verdicts += len(todo)
        self.unparseable += sum(v is None for v in answers.values()) - failed_now
        return [answers[k] for k in keys]


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


def generate_responses(model, tokenizer, prompts: Sequence, *, max_new_tokens: int = 192, batch_size: int = 8,
                       do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                       seed: int = 0) -> list[str]:
    """Responses to chat `prompts` with the given decoding, the same call for every policy: the in-process engine
    (`augment.engine.LocalEngine`), batched and length-sorted, each prompt's answer seeded by `seed` and the prompt,
    so both policies sample with the same seeds whatever the batch. Greedy unless `do_sample`."""
    from ..augment.engine import LocalEngine

    if any(not isinstance(p, list) for p in prompts):
        raise ValueError("Win-rate generation needs chat prompts, so the policy needs a chat template. Fix: use an "
                         "instruction-tuned policy (or give its tokenizer a chat template).")
    engine = LocalEngine.from_model(model, tokenizer, seed=seed, batch_size=batch_size,
                                    top_p=top_p if do_sample else 1.0, progress=False)
    answers = engine.generate(list(prompts), samples=1, temperature=temperature if do_sample else 0.0,
                              max_new_tokens=max_new_tokens)
    return [a[0] or "" for a in answers]


# ----------------------------------------------------------------------------------------------------- recipe


@dataclass
class WinRateArguments:
    """Arguments of `recipes/winrate.py`."""

    policy_a: str = field(metadata={"help": "Policy A: a model folder/id, a packaged: id (e.g. "
                                            "packaged:SmolLM2-135M-Instruct) or a saved LoRA adapter folder."})
    policy_b: str = field(metadata={"help": "Policy B (the baseline): a model folder/id, a packaged: id or a LoRA "
                                            "adapter folder."})
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
    judge: str = field(default="openai", metadata={"help": "openai (an OpenAI-compatible LLM), local (a causal LM "
                                                           "in this process, --judge_model; default the packaged "
                                                           "SmolLM2) or reward_model (offline: the higher reward "
                                                           "wins).",
                                                   "choices": ["openai", "local", "reward_model"]})
    judge_model: str | None = field(default=None, metadata={"help": "Judge model: its name at the endpoint for "
                                                                   "openai (default gpt-4.1), a model folder/id or "
                                                                   "packaged: id for local (default "
                                                                   "packaged:SmolLM2-135M-Instruct)."})
    judge_base_url: str | None = field(default=None, metadata={"help": "Endpoint; default: $OPENAI_BASE_URL or "
                                                                       "api.openai.com."})
    judge_api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Variable holding the API key."})
    judge_prompt_version: str = field(default="v2", metadata={"help": "Version of judge_pairwise_<v>.txt (v2: "
                                                                     "answer with one letter)."})
    judge_concurrency: int = field(default=8, metadata={"help": "Judge requests in flight at once (openai)."})
    judge_max_tokens: int = field(default=4, metadata={"help": "Tokens an openai verdict may take (one letter "
                                                               "needs one or two)."})
    reward_model_name_or_path: str | None = field(default=None, metadata={"help": "Reward model for --judge "
                                                                                  "reward_model."})
    cache_dir: str | None = field(default="outputs/winrate_cache", metadata={"help": "Judgement cache (SQLite); "
                                                                                     "empty to disable."})
    output_json: str | None = field(default=None, metadata={"help": "Where to write the summary and per-prompt "
                                                                    "verdicts as JSON."})
    seed: int = field(default=42, metadata={"help": "Seed for the prompt subset, sampling and the bootstrap."})


DEFAULT_OPENAI_JUDGE = "gpt-4.1"
DEFAULT_LOCAL_JUDGE = "packaged:SmolLM2-135M-Instruct"


def build_judge(args: WinRateArguments):
    """The judge the arguments name; openai is checked at once (a missing key or dead endpoint fails before any
    policy is loaded)."""
    if args.judge == "reward_model":
        if not args.reward_model_name_or_path:
            raise ValueError("--judge reward_model needs --reward_model_name_or_path.")
        from .rewards import MarsRewardFunction

        return RewardModelJudge(MarsRewardFunction(args.reward_model_name_or_path))
    if args.judge != "local" and not os.environ.get(args.judge_api_key_env):  # before the cache folder is made
        raise ValueError(f"The OpenAI judge needs an API key. Fix: export {args.judge_api_key_env} (or name another "
                         "variable with --judge_api_key_env), or use --judge local or --judge reward_model for an "
                         "offline judge.")
    cache = None
    if args.cache_dir:
        from ..augment.cache import AugmentationCache

        cache = AugmentationCache(args.cache_dir)
    if args.judge == "local":
        return TextPairwiseJudge(_local_generator(args.judge_model or DEFAULT_LOCAL_JUDGE, cache, args.seed),
                                 prompt_version=args.judge_prompt_version)
    from ..augment.client import ChatClient, ChatTextGenerator

    client = ChatClient(args.judge_model or DEFAULT_OPENAI_JUDGE, base_url=args.judge_base_url,
                        api_key_env=args.judge_api_key_env, max_concurrency=args.judge_concurrency, cache=cache)
    client.check_connection()
    generator = ChatTextGenerator(client, seed=args.seed, choose_max_tokens=args.judge_max_tokens)
    return TextPairwiseJudge(generator, prompt_version=args.judge_prompt_version)


def _local_generator(model: str, cache, seed: int):
    """The in-process `TextGenerator` of `--judge local` (the engine of `trl_mars.augment.engine`)."""
    try:
        from ..augment.engine import LocalEngine
    except ImportError:  # TODO(issue 12): the engine lands on main with the local back-end
        raise RuntimeError("--judge local needs the in-process engine `trl_mars.augment.engine.LocalEngine`, which "
                           "this version of trl-mars does not have yet. Use --judge openai against a local "
                           "`transformers serve` instead.") from None
    return LocalEngine(model, cache=cache, seed=seed)


def run_winrate(args: WinRateArguments) -> dict[str, Any]:
    """Generates with both policies, judges in both orders, writes `output_json`, returns the summary."""
    from ..data.preferences import prompt_text
    from .alignment import load_prompts, prepare_prompts

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
    text_judge = isinstance(judge, TextPairwiseJudge)
    judged_prompts = [prompt_text(p) if text_judge else p for p in dataset["prompt"]]
    rows = both_orders(judge, judged_prompts, responses["a"], responses["b"])
    summary = summarise(rows, seed=args.seed)
    default_model = DEFAULT_LOCAL_JUDGE if args.judge == "local" else DEFAULT_OPENAI_JUDGE
    summary.update({"policy_a": args.policy_a, "policy_b": args.policy_b, "dataset": args.dataset_name,
                    "judge": args.judge if args.judge == "reward_model" else
                    f"{args.judge}:{args.judge_model or default_model}",
                    "judge_requests": judge.requests, "judge_failures": judge.failures,
                    "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample})
    if text_judge:
        summary["judge_prompt"] = judge.prompt_name
        summary["judge_verdicts"] = judge.parse_stats()
        summary["judge_cache"] = {"hits": judge.cache_hits, "misses": judge.cache_misses}
    print(format_table(summary, "A", "B"))
    if text_judge:
        verdicts = summary["judge_verdicts"]
        rate = verdicts["parse_rate"]
        print(f"judge verdicts: {verdicts['verdicts']} asked, {verdicts['unparseable']} named neither A nor B, "
              f"{verdicts['failed']} failed; parse rate {'n/a' if rate is None else f'{rate:.3f}'}")
    if args.output_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        with open(args.output_json, "w", encoding="utf-8") as handle:
            json.dump({**summary, "per_prompt": rows}, handle, indent=2, ensure_ascii=False)
    return summary
