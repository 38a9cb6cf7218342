"""Throughput of each paraphrase back-end and the cost of a fully cached re-run.

For each back-end: texts per second on a first run through `CachedParaphraser` (every text a cache miss), then
the same job again (every text a hit), and the ratio of the two times (aim: the cached re-run under 5% of the
first run).

- lexical: the offline back-end, on real responses from the development data.
- seq2seq: a T5-base-sized model (the paper's paraphraser architecture) *randomly initialised* from a config with
  a tokenizer trained here, because nothing can be downloaded on this machine. Random weights rarely stop early,
  so generation runs to `--max-new-tokens`: the number is a compute-cost upper bound for that length on this
  hardware, not the quality or exact speed of humarin/chatgpt_paraphraser_on_T5_base.
- chat: the real `openai` client against the loopback OpenAI-compatible server from the tests, with a simulated
  per-request latency (`--chat-latency`), at `--chat-concurrency` requests in flight. It measures our client,
  retries, parsing and concurrency, not an LLM.

Lexical coverage (`--coverage-data FILE...`): the share of distinct texts of >= 3 words (prompts and responses as
the paraphraser sees them: an HH-style implicit prompt is split at its last "Assistant:" turn) for which the
lexical back-end returns >= 1, >= 3 and >= 5 variants when asked for 5, with and without its fallback operations.

A real server (`--serve`): `transformers serve` on loopback with the packaged SmolLM2-135M-Instruct model,
paraphrasing the final assistant turn of the chosen side of `--serve-texts` pairs through `ChatTextGenerator`
(plain text, the `openai` client, `--chat-concurrency` requests in flight, sampling at temperature 0.7 up to
`--serve-max-tokens` tokens): paraphrases/s and generated tokens/s (from the server's `usage`), then the fully
cached re-run.

Usage:

    python benchmarks/bench_backends.py --serve --serve-texts 32 --serve-max-tokens 96 --chat-concurrency 8
    python benchmarks/bench_backends.py --data ../shared/data/alpacaeval_gpt4_pairs.jsonl
    python benchmarks/bench_backends.py --coverage-only \
        --coverage-data ../shared/data/hh_rlhf_harmless_dev.jsonl ../shared/data/alpacaeval_gpt4_pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_texts(path: str, n: int, max_words: int) -> list[str]:
    texts = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            for text in (row["chosen"], row["rejected"]):
                words = text.split()
                texts.append(" ".join(words[:max_words]))
            if len(texts) >= n:
                break
    return texts[:n]


def time_cached(make_inner, texts: list[str], n: int) -> dict:
    from trl_mars.augment.cache import AugmentationCache
    from trl_mars.augment.cached import CachedParaphraser

    with tempfile.TemporaryDirectory() as tmp:
        inner = make_inner()
        first = CachedParaphraser(inner, AugmentationCache(tmp), progress=False)
        start = time.perf_counter()
        variants = first.paraphrase(texts, n)
        first_s = time.perf_counter() - start
        second = CachedParaphraser(inner, AugmentationCache(tmp), progress=False)
        start = time.perf_counter()
        again = second.paraphrase(texts, n)
        second_s = time.perf_counter() - start
    assert again == variants
    returned = sum(len(v) for v in variants)
    return {"texts": len(texts), "n": n, "variants_returned": returned, "first_run_s": round(first_s, 3),
            "texts_per_s": round(len(texts) / first_s, 2), "cached_rerun_s": round(second_s, 4),
            "cached_rerun_share": round(second_s / first_s, 4), "backend_calls_on_rerun": second.calls_made}


def paraphraser_texts(path: str) -> list[str]:
    """Distinct prompts and responses of a preference file, as the paraphraser receives them."""
    marker = "\n\nAssistant:"
    texts = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row.get("prompt"):
                texts += [row["prompt"], row["chosen"], row["rejected"]]
                continue
            for side in ("chosen", "rejected"):  # implicit prompt: the dialogue up to the last assistant turn
                cut = row[side].rfind(marker)
                texts += [row[side][:cut], row[side][cut + len(marker):].strip()]
    return list(dict.fromkeys(t for t in texts if t))


def lexical_coverage(path: str, n: int = 5, min_words: int = 3) -> dict:
    from trl_mars.augment.lexical import LexicalParaphraser

    texts = [t for t in paraphraser_texts(path) if len(t.split()) >= min_words]
    out: dict = {"file": os.path.basename(path), "texts": len(texts), "n": n}
    for label, fallback in (("with_fallback", True), ("without_fallback", False)):
        paraphraser = LexicalParaphraser(seed=0, fallback=fallback)
        start = time.perf_counter()
        counts = [len(v) for v in paraphraser.paraphrase(texts, n)]
        seconds = time.perf_counter() - start
        out[label] = {f">={k}": round(sum(c >= k for c in counts) / len(counts), 4) for k in (1, 3, 5)}
        out[label]["zero"] = sum(c == 0 for c in counts)
        out[label]["texts_per_s"] = round(len(texts) / seconds, 1)
    return out


def final_assistant_turns(path: str, n: int) -> list[str]:
    """The last assistant turn of the chosen side of the first pairs with one (distinct, non-empty), as in HH-RLHF."""
    marker = "\n\nAssistant:"
    texts: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            chosen = json.loads(line)["chosen"]
            cut = chosen.rfind(marker)
            text = chosen[cut + len(marker):].strip() if cut >= 0 else ""
            if text and text not in texts:
                texts.append(text)
            if len(texts) >= n:
                break
    return texts


PARAPHRASE_SYSTEM = "Paraphrase the following text. Keep its meaning. Reply with the paraphrase only."


def bench_serve(path: str, n_texts: int, max_tokens: int, concurrency: int) -> dict:
    """Paraphrases through `transformers serve` (packaged SmolLM2), plain text, `concurrency` requests in flight."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from real_server import SAMPLING_BODY, SERVE_KEY_ENV, start_transformers_serve

    from trl_mars.augment.cache import AugmentationCache
    from trl_mars.augment.client import ChatClient, ChatTextGenerator
    from trl_mars.augment.packaged import PACKAGED_SMOLLM2, resolve_packaged_model

    texts = final_assistant_turns(path, n_texts)
    requests = [[{"role": "system", "content": PARAPHRASE_SYSTEM}, {"role": "user", "content": t}] for t in texts]
    os.environ.setdefault(SERVE_KEY_ENV, "not-checked")
    load_before = os.getloadavg()
    folder = resolve_packaged_model(PACKAGED_SMOLLM2)
    with tempfile.TemporaryDirectory() as tmp, start_transformers_serve(folder) as server:
        def generator() -> ChatTextGenerator:
            client = ChatClient(server.model, base_url=server.base_url, api_key_env=SERVE_KEY_ENV, timeout=600.0,
                                max_retries=2, max_concurrency=concurrency, cache=AugmentationCache(tmp),
                                extra_body=SAMPLING_BODY)
            return ChatTextGenerator(client, seed=0)

        first = generator()
        start = time.perf_counter()
        out = first.generate(requests, samples=1, temperature=0.7, max_new_tokens=max_tokens)
        first_s = time.perf_counter() - start
        again = generator()
        start = time.perf_counter()
        replay = again.generate(requests, samples=1, temperature=0.7, max_new_tokens=max_tokens)
        second_s = time.perf_counter() - start
        startup_s = server.start_s
    assert replay == out
    stats = first.stats()
    answers = [a[0] for a in out]
    tokens = stats["completion_tokens"]
    return {
        "texts": len(texts), "max_tokens": max_tokens, "concurrency": concurrency,
        "server_startup_s": round(startup_s, 1), "first_run_s": round(first_s, 1),
        "paraphrases": sum(a is not None for a in answers), "failed": stats["failed"],
        "paraphrases_per_s": round(len(texts) / first_s, 3), "completion_tokens": tokens,
        "tokens_per_s": round(tokens / first_s, 2), "mean_tokens_per_paraphrase": round(tokens / len(texts), 1),
        "cached_rerun_s": round(second_s, 4), "generated_on_rerun": again.stats()["generated"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "examples": [{"source": t[:300], "paraphrase": (a or "")[:300]} for t, a in list(zip(texts, answers))[:3]],
    }


def tiny_t5_base(texts: list[str]):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    tokenizer = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=8000,
                                                                   special_tokens=["<pad>", "</s>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)
    config = T5Config(vocab_size=fast.vocab_size, d_model=768, d_ff=3072, num_layers=12, num_heads=12,
                      decoder_start_token_id=fast.pad_token_id, pad_token_id=fast.pad_token_id,
                      eos_token_id=fast.eos_token_id)
    return T5ForConditionalGeneration(config).eval(), fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "alpacaeval_gpt4_pairs.jsonl"))
    parser.add_argument("--n", type=int, default=3, help="paraphrases per text")
    parser.add_argument("--lexical-texts", type=int, default=2000)
    parser.add_argument("--seq2seq-texts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--chat-texts", type=int, default=200)
    parser.add_argument("--chat-latency", type=float, default=0.05)
    parser.add_argument("--chat-concurrency", type=int, default=8)
    parser.add_argument("--skip-seq2seq", action="store_true")
    parser.add_argument("--coverage-data", nargs="*", default=[], help="files for the lexical coverage report")
    parser.add_argument("--coverage-only", action="store_true", help="only the lexical coverage report")
    parser.add_argument("--serve", action="store_true", help="only the real-server throughput (transformers serve)")
    parser.add_argument("--serve-data", default=os.path.join(ROOT, "..", "shared", "data",
                                                             "hh_rlhf_harmless_dev.jsonl"))
    parser.add_argument("--serve-texts", type=int, default=32)
    parser.add_argument("--serve-max-tokens", type=int, default=96)
    args = parser.parse_args()

    if args.serve:
        import torch

        report = {"device": f"cpu x{torch.get_num_threads()} threads (server: --device cpu)",
                  "transformers_serve": bench_serve(args.serve_data, args.serve_texts, args.serve_max_tokens,
                                                    args.chat_concurrency)}
        print(json.dumps(report, indent=2))
        return

    if args.coverage_data:
        coverage = [lexical_coverage(path, n=5) for path in args.coverage_data]
        print(json.dumps({"lexical_coverage": coverage}, indent=2), flush=True)
    if args.coverage_only:
        return

    import torch

    report = {"device": "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"}

    from trl_mars.augment.lexical import LexicalParaphraser

    lexical_texts = load_texts(args.data, args.lexical_texts, max_words=120)
    report["lexical"] = time_cached(lambda: LexicalParaphraser(seed=0), lexical_texts, args.n)
    print(json.dumps(report, indent=2), flush=True)

    if not args.skip_seq2seq:
        from trl_mars.augment.seq2seq import Seq2SeqParaphraser

        texts = load_texts(args.data, args.seq2seq_texts, max_words=60)
        model, tokenizer = tiny_t5_base(load_texts(args.data, 2000, max_words=200))
        report["seq2seq_t5_base_random"] = time_cached(
            lambda: Seq2SeqParaphraser("t5-base-random", model=model, tokenizer=tokenizer, batch_size=16,
                                       max_new_tokens=args.max_new_tokens), texts, args.n)
        report["seq2seq_t5_base_random"]["max_new_tokens"] = args.max_new_tokens
        print(json.dumps(report, indent=2), flush=True)

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from openai_server import TEST_KEY, TEST_KEY_ENV, FakeOpenAIServer

    from trl_mars.augment.chat import ChatClient, ChatParaphraser

    os.environ[TEST_KEY_ENV] = TEST_KEY
    server = FakeOpenAIServer()
    server.start()
    try:
        server.delay = args.chat_latency
        client = ChatClient("bench-model", base_url=server.base_url, api_key_env=TEST_KEY_ENV,
                            max_concurrency=args.chat_concurrency, backoff_base=0.01)
        texts = load_texts(args.data, args.chat_texts, max_words=80)
        report["chat_loopback"] = time_cached(lambda: ChatParaphraser(client), texts, args.n)
        report["chat_loopback"].update({"simulated_latency_s": args.chat_latency,
                                        "concurrency": args.chat_concurrency})
    finally:
        server.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
