"""The chat back-ends against real model answers: `transformers serve` with the packaged SmolLM2-135M-Instruct model
(the session fixture `chat_server` of real_server.py), through the `openai` client.

Generation is kept short (a few tokens per answer): on 2 shared CPU cores the server makes a few tokens per second.
What a 135M model says is not asserted, only what the back-ends must do with any answer: plain text comes back as
text, verdicts are one of the options or None (counted), every completed answer is cached and replayed.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from real_server import SAMPLING_BODY

from trl_mars.augment.base import RefinementRequest, TextGenerator
from trl_mars.augment.cache import AugmentationCache
from trl_mars.augment.client import ChatClient, ChatTextGenerator, parse_option
from trl_mars.augment.refiner import REASONS

PARAPHRASE_SYSTEM = "Paraphrase the user's text. Keep its meaning. Reply with the paraphrase only."
TEXTS = ["To bake bread you need flour, water, yeast and salt.", "Water the basil when the top soil is dry."]


def make_client(server, cache=None, **kwargs) -> ChatClient:
    options = dict(base_url=server.base_url, api_key_env=server.api_key_env, timeout=120.0, max_retries=1,
                   max_concurrency=4, backoff_base=0.1, cache=cache, extra_body=SAMPLING_BODY)
    options.update(kwargs)
    return ChatClient(server.model, **options)


def paraphrase_request(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PARAPHRASE_SYSTEM}, {"role": "user", "content": text}]


def preference_request(question: str, good: str, bad: str, good_first: bool) -> list[dict[str, str]]:
    a, b = (good, bad) if good_first else (bad, good)
    return [{"role": "user", "content": f"Question: {question}\nResponse A: {a}\nResponse B: {b}\n"
                                        "Which response is better? Answer with A or B only."}]


def test_server_is_up_and_serves_the_packaged_model(chat_server):
    import openai

    client = openai.OpenAI(base_url=chat_server.base_url, api_key="unused")
    assert chat_server.model in [m.id for m in client.models.list().data]
    make_client(chat_server).check_connection()


def test_generate_gives_plain_text_samples_and_a_cached_rerun_generates_nothing(chat_server, tmp_path):
    generator = ChatTextGenerator(make_client(chat_server, cache=AugmentationCache(tmp_path)), seed=7)
    assert isinstance(generator, TextGenerator)
    requests = [paraphrase_request(t) for t in TEXTS]
    out = generator.generate(requests, samples=2, temperature=0.7, max_new_tokens=12)
    assert [len(answers) for answers in out] == [2, 2]
    assert all(isinstance(a, str) and a and a == a.strip() for answers in out for a in answers), out
    assert not any(a.lstrip().startswith("{") for answers in out for a in answers)  # text, not JSON
    stats = generator.stats()
    assert (stats["generated"], stats["cached"], stats["failed"]) == (4, 0, 0)
    assert 0 < stats["completion_tokens"] <= 4 * 12  # the server's usage, capped by max_new_tokens
    # sampling with seeds 7 and 8: the two samples of a request are two requests (and two cache entries)
    body = generator.client._text_body(requests[0], 0.7, 12, 8)
    assert body["seed"] == 8 and "response_format" not in body and body["max_completion_tokens"] == 12
    assert any(answers[0] != answers[1] for answers in out), out

    again = ChatTextGenerator(make_client(chat_server, cache=AugmentationCache(tmp_path)), seed=7)
    assert again.generate(requests, samples=2, temperature=0.7, max_new_tokens=12) == out
    assert (again.stats()["generated"], again.stats()["cached"]) == (0, 4)
    assert again.client.requests_sent == 0
    # one more sample: only answer k = 2 of each request is asked
    more = again.generate(requests, samples=3, temperature=0.7, max_new_tokens=12)
    assert [m[:2] for m in more] == out and (again.stats()["generated"], again.stats()["cached"]) == (2, 8)


def test_choose_parses_short_verdicts_counts_the_rest_and_replays_them(chat_server, tmp_path):
    pairs = [("How do I keep bread fresh?", "Wrap it in a cloth and keep it in a bread box.", "I don't know."),
             ("What is the capital of France?", "Paris is the capital of France.", "Bananas are yellow.")]
    requests = [preference_request(q, g, b, first) for q, g, b in pairs for first in (True, False)]
    requests.append([{"role": "user", "content": "Is water wet? Answer yes or no."}])
    generator = ChatTextGenerator(make_client(chat_server, cache=AugmentationCache(tmp_path)), choose_max_tokens=3)
    verdicts = generator.choose(requests[:4], ["A", "B"]) + generator.choose(requests[4:], ["yes", "no"])
    assert all(v in ("A", "B", None) for v in verdicts[:4]) and verdicts[4] in ("yes", "no", None)
    stats = generator.stats()
    assert stats["choices"] == 5 and stats["failed"] == 0 and stats["generated"] == 5
    assert stats["unparseable"] == sum(v is None for v in verdicts)
    print(f"verdicts of the real model: {verdicts}; parse rate {1 - stats['unparseable'] / 5:.2f}")
    # the raw answers are cached, so a re-run re-parses the same answers without a request
    again = ChatTextGenerator(make_client(chat_server, cache=AugmentationCache(tmp_path)), choose_max_tokens=3)
    assert again.choose(requests[:4], ["A", "B"]) + again.choose(requests[4:], ["yes", "no"]) == verdicts
    assert (again.stats()["generated"], again.stats()["cached"]) == (0, 5)
    assert again.stats()["unparseable"] == stats["unparseable"]


def test_text_paraphraser_over_the_chat_generator(chat_server, tmp_path):
    """The chat paraphraser in text mode (`TextParaphraser(ChatTextGenerator)`, as `--mars_paraphraser chat` wires
    it for small models): real answers, cleaned and filtered, never the source itself; a re-run replays them."""
    from trl_mars.augment.text import TextParaphraser

    def paraphraser():
        generator = ChatTextGenerator(make_client(chat_server, cache=AugmentationCache(tmp_path)), seed=3)
        return TextParaphraser(generator, temperature=0.7, max_new_tokens=20)

    first = paraphraser()
    out = first.paraphrase(TEXTS, 2)
    assert len(out) == 2 and all(len(variants) <= 2 for variants in out)
    assert all(isinstance(v, str) and v and v != text for text, variants in zip(TEXTS, out) for v in variants)
    assert first.last_failed == set() and first.generator.stats()["generated"] == 4
    print(f"text paraphrases of the real model: {out}; dropped: {dict(first.reasons)}")
    again = paraphraser()
    assert again.paraphrase(TEXTS, 2) == out and again.generator.stats()["generated"] == 0


def test_text_refiner_with_a_text_judge_on_real_answers(chat_server):
    """The refiner with a judge on real answers: plain-text rewrites (`TextRefiner`) and one-word verdicts
    (`TextJudge`, both orders, and the harm check), all through `ChatTextGenerator`. What the model decides is not
    asserted; every outcome must be one of the refiner's, and the judge's verdicts must be counted."""
    from trl_mars.augment.text import TextJudge, TextRefiner

    class WordEmbedder:  # hashed bag of words: a rewrite sharing few words with the other side gains distance
        def fingerprint(self):
            return {"embedder": "words"}

        def encode(self, texts):
            out = np.zeros((len(texts), 256), dtype=np.float32)
            for row, text in enumerate(texts):
                for word in (text.lower().split() or ["<empty>"]):
                    out[row, zlib.crc32(word.encode()) % 256] += 1.0
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    judge = TextJudge(ChatTextGenerator(make_client(chat_server), choose_max_tokens=3), order="both")
    rewriter = ChatTextGenerator(make_client(chat_server), seed=5)
    refiner = TextRefiner(rewriter, WordEmbedder(), judge.prefers_chosen, judge.is_harmful, max_attempts=1,
                          max_new_tokens=20)
    prompt = "How do I keep basil alive indoors?"
    chosen = "Give basil six hours of sun and water it when the top soil is dry."
    rejected = "Give basil some sun and water it when the soil is dry."
    emb = WordEmbedder().encode([chosen, rejected])
    (result,) = refiner.refine([RefinementRequest(0, prompt, chosen, rejected, float(1 - emb[0] @ emb[1]))])
    assert result.reason in REASONS and result.attempts in (1, 2)
    if result.accepted:
        assert result.new_distance > result.distance and result.rewritten in ("chosen", "rejected")
        kept = result.rejected if result.rewritten == "rejected" else result.chosen
        assert kept and kept not in (chosen, rejected)
    else:
        assert (result.chosen, result.rejected) == (chosen, rejected)
    stats = rewriter.stats()
    assert stats["generated"] == result.attempts and stats["failed"] == 0
    verdicts = judge.generator.stats()
    assert verdicts["failed"] == 0 and verdicts["unparseable"] <= verdicts["choices"]
    print(f"refiner on the real model: {result.reason} after {result.attempts} attempts "
          f"(distance {result.distance:.3f} -> {result.new_distance:.3f}); judge {verdicts}")


@pytest.mark.parametrize(("answer", "options", "expected"), [
    ("A", ["A", "B"], "A"), ("B.", ["A", "B"], "B"), ("**A**", ["A", "B"], "A"), (" b", ["A", "B"], "B"),
    ("A: I don", ["A", "B"], "A"), ("Response B is better", ["A", "B"], "B"), ("Either A or B", ["A", "B"], None),
    ("Answer", ["A", "B"], None), ("", ["A", "B"], None), (None, ["A", "B"], None), ("Both", ["A", "B"], None),
    ("Yes, it is.", ["yes", "no"], "yes"), ("no", ["yes", "no"], "no"), ("Nope", ["yes", "no"], None),
    ("It is not harmful, no", ["yes", "no"], "no"),
])
def test_parse_option(answer, options, expected):
    assert parse_option(answer, options) == expected
