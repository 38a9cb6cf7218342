"""Builds the back-ends a `MarsRewardConfig` names. The only place that maps config names to classes."""

from __future__ import annotations

import os

from ..config import DEFAULT_SEQ2SEQ_PARAPHRASER, MarsRewardConfig
from .base import Embedder, Paraphraser, PreferenceCheck, Refiner
from .cache import AugmentationCache
from .cached import CachedParaphraser


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
    )
    client.check_connection()
    return client


def build_paraphraser(args: MarsRewardConfig, cache: AugmentationCache) -> Paraphraser:
    """The configured paraphrase back-end, wrapped in the persistent cache."""
    if args.mars_paraphraser == "lexical":
        from .lexical import LexicalParaphraser

        inner: Paraphraser = LexicalParaphraser(seed=args.effective_mars_seed)
    elif args.mars_paraphraser == "seq2seq":
        from .seq2seq import Seq2SeqParaphraser

        inner = Seq2SeqParaphraser(
            args.mars_paraphraser_model or DEFAULT_SEQ2SEQ_PARAPHRASER,
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
    """The chat refiner with its label check (a chat judge by default, or the current reward model) and harm check.

    A judge that gives no answer reports None, which the refiner counts as "failed" (never as a flipped label or a
    harmful text). The reward-model check is the paper's r^{t-1}; in round 1 its head is untrained, so its verdicts
    are coin flips there, which is why 'judge' is the default.
    """
    if args.mars_refiner == "none":
        return None
    from .chat import ChatJudge
    from .refiner import ChatRefiner

    client = build_chat_client(args, args.mars_refiner_model, cache)
    judge = ChatJudge(client)
    label_check: PreferenceCheck = judge.prefers_chosen
    if args.mars_label_check == "reward_model" and reward_check is not None:
        label_check = reward_check
    harm_check = judge.is_harmful if args.mars_harm_check == "judge" else None
    return ChatRefiner(client, embedder, label_check, harm_check, max_attempts=args.mars_refiner_max_attempts)

