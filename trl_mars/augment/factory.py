"""Builds the back-ends a `MarsRewardConfig` names. The only place that maps config names to classes.

`trl_mars.training.config` (which imports TRL) is imported only for type checking and by the one branch that needs a
default from it, so the back-ends load without TRL.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from .base import Embedder, Paraphraser, PreferenceCheck, Refiner, TextGenerator
from .cache import AugmentationCache
from .cached import CachedParaphraser

if TYPE_CHECKING:
    from ..training.config import MarsRewardConfig


def cache_dir(args: MarsRewardConfig) -> str:
    return args.mars_cache_dir or os.path.join(args.output_dir, "mars", "cache")


def build_cache(args: MarsRewardConfig) -> AugmentationCache:
    return AugmentationCache(cache_dir(args))


def build_chat_client(args: MarsRewardConfig, model: str, cache: AugmentationCache | None = None):
    """An OpenAI-compatible client, checked at once: a missing key or dead endpoint fails now, not an hour in.

    With `cache`, every answer the endpoint completes is stored as it arrives and replayed by an identical re-run.
    """
    from .client import ChatClient

    client = ChatClient(
        model,
        base_url=args.mars_chat_base_url,
        api_key_env=args.mars_chat_api_key_env,
        timeout=args.mars_chat_timeout,
        max_retries=args.mars_chat_max_retries,
        max_concurrency=args.mars_chat_max_concurrency,
        cache=cache,
        extra_body=json.loads(args.mars_chat_extra_body) if args.mars_chat_extra_body else None,
    )
    client.check_connection()
    return client


# The local engine's seed does not follow the training seed: a paraphrase is then a function of its text alone, so
# every seed, strategy and run that asks for the same text shares the cached answer (a comparison grid pays for
# each generation once), and seeds still differ in which texts they ask for.
LOCAL_GENERATION_SEED = 42


def build_local_engine(args: MarsRewardConfig, model: str | None, cache: AugmentationCache):
    """The in-process generation engine on `model` (default the packaged SmolLM2-135M-Instruct). One engine per
    model and cache: the paraphraser, the refiner, the judge and West-of-N share its weights."""
    from .engine import DEFAULT_LOCAL_MODEL, LocalEngine

    model = model or DEFAULT_LOCAL_MODEL
    # kept on the cache object, so that the engines live exactly as long as the run's cache
    engines: dict[str, LocalEngine] = cache.__dict__.setdefault("local_engines", {})
    if model not in engines:
        engines[model] = LocalEngine(model, cache=cache, seed=LOCAL_GENERATION_SEED,
                                     batch_size=args.mars_paraphraser_batch_size)
    return engines[model]


def build_text_generator(args: MarsRewardConfig, backend: str, model: str | None,
                         cache: AugmentationCache) -> TextGenerator:
    """A `TextGenerator` for a back-end name: 'local' (in process) or 'chat' in text mode (an endpoint)."""
    if backend == "local":
        return build_local_engine(args, model, cache)
    from .client import ChatTextGenerator

    return ChatTextGenerator(build_chat_client(args, model or args.mars_chat_model, cache), seed=LOCAL_GENERATION_SEED)


def build_paraphraser(args: MarsRewardConfig, cache: AugmentationCache, embedder: Embedder | None = None
                      ) -> Paraphraser:
    """The configured paraphrase back-end, wrapped in the persistent cache and then in the fidelity filter (when
    its bounds are not 0 and 1; `embedder` defaults to the configured one)."""
    inner = _cached_paraphraser(args, cache)
    low, high = args.paraphrase_similarity_bounds
    if low <= 0.0 and high >= 1.0:
        return inner
    from .fidelity import FidelityFilter

    return FidelityFilter(inner, embedder or build_embedder(args), min_similarity=low, max_similarity=high)


def _cached_paraphraser(args: MarsRewardConfig, cache: AugmentationCache) -> Paraphraser:
    if args.mars_paraphraser == "local" or (args.mars_paraphraser == "chat" and args.mars_chat_answer_format == "text"):
        from .text import TextParaphraser

        model = args.mars_paraphraser_model
        generator = build_text_generator(args, args.mars_paraphraser, model, cache)
        return CachedParaphraser(TextParaphraser(generator, temperature=args.mars_temperature,
                                                 max_new_tokens=args.mars_max_new_tokens), cache)
    if args.mars_paraphraser == "lexical":
        from .lexical import LexicalParaphraser

        inner: Paraphraser = LexicalParaphraser(seed=args.effective_mars_seed)
    elif args.mars_paraphraser == "seq2seq":
        from .seq2seq import DEFAULT_MODEL, Seq2SeqParaphraser

        inner = Seq2SeqParaphraser(
            args.mars_paraphraser_model or DEFAULT_MODEL,
            batch_size=args.mars_paraphraser_batch_size,
            num_beams=args.mars_num_beams,
            no_repeat_ngram_size=args.mars_no_repeat_ngram_size,
            max_new_tokens=args.mars_max_new_tokens,
        )
    elif args.mars_paraphraser == "chat":
        from .chat import ChatParaphraser

        inner = ChatParaphraser(build_chat_client(args, args.mars_paraphraser_model or args.mars_chat_model, cache))
    else:  # the config validates names; this guards direct misuse
        raise ValueError(f"Unknown paraphrase back-end {args.mars_paraphraser!r}.")
    return CachedParaphraser(inner, cache)


def build_embedder(args: MarsRewardConfig) -> Embedder:
    from .embedding import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(args.mars_embedding_model)


def build_refiner(
    args: MarsRewardConfig,
    embedder: Embedder,
    cache: AugmentationCache,
    *,
    reward_check: PreferenceCheck | None = None,
) -> Refiner | None:
    """The refiner with its label check (the refiner's model as a judge by default, or the current reward model) and
    harm check: the chat refiner, or the same algorithm on plain-text answers for 'local' and chat in text mode.

    A judge that gives no answer reports None, which the refiner counts as "failed" (never as a flipped label or a
    harmful text). The reward-model check asks the model being trained (r^{t-1}); the paper names no checker, so
    either is our choice. In round 1 that model's head is untrained and its verdicts are coin flips, which is why
    'judge' is the default.
    """
    if args.mars_refiner == "none":
        return None
    judge = build_judge(args, cache)
    label_check: PreferenceCheck = judge.prefers_chosen
    if args.mars_label_check == "reward_model" and reward_check is not None:
        label_check = reward_check
    harm_check = judge.is_harmful if args.mars_harm_check == "judge" else None
    if _text_mode(args):
        from .text import TextRefiner

        return TextRefiner(judge.generator, embedder, label_check, harm_check,
                           max_attempts=args.mars_refiner_max_attempts, temperature=max(args.mars_temperature, 0.1),
                           max_new_tokens=args.mars_max_new_tokens,
                           min_similarity=args.mars_refiner_min_similarity)
    from .refiner import ChatRefiner

    return ChatRefiner(judge.client, embedder, label_check, harm_check, max_attempts=args.mars_refiner_max_attempts,
                       min_similarity=args.mars_refiner_min_similarity)


def _text_mode(args: MarsRewardConfig) -> bool:
    return args.mars_refiner == "local" or args.mars_chat_answer_format == "text"


def build_judge(args: MarsRewardConfig, cache: AugmentationCache):
    """The judge of the refiner's model: `TextJudge` for 'local' and chat in text mode, else `ChatJudge`."""
    if _text_mode(args):
        from .text import TextJudge

        return TextJudge(build_text_generator(args, args.mars_refiner, args.refiner_model, cache))
    from .chat import ChatJudge

    return ChatJudge(build_chat_client(args, args.refiner_model, cache))

