"""The West-of-N baseline: best/worst pairing against hand-computed scores, the draws, each candidate generator
(paraphrase pool, a tiny random Llama, a loopback OpenAI-compatible server) and real MiniLM training runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import mars_args, tiny_rows
from datasets import Dataset
from openai_server import TEST_KEY_ENV, openai_server  # noqa: F401
from tiny_models import save_tiny_llama

from trl_mars.augment.client import ChatClient
from trl_mars.augment.lexical import LexicalParaphraser
from trl_mars.baselines.west_of_n import (
    CausalLMGenerator,
    ChatGenerator,
    ParaphrasePoolGenerator,
    candidate_requests,
    split_draws,
    west_of_n_pairs,
    west_of_n_round,
)
from trl_mars.mars.rounds import RoundInputs
from trl_mars.training.trainer import MarsRewardTrainer


def test_pairs_are_argmax_and_argmin_of_each_draw():
    scores = [[0.1, 0.9, -0.3, 0.5], [2.0, 2.0, 1.0], [0.7, 0.7]]
    draws = [[[0, 1, 2, 3]], [[0, 1, 2]], [[0, 1]]]
    assert west_of_n_pairs(scores, draws) == [[(1, 2)], [(0, 2)], [None]]  # tie -> earlier; no gap -> None
    two_draws = west_of_n_pairs([[0.1, 0.9, -0.3, 0.5]], [[[0, 1], [3, 2]]])
    assert two_draws == [[(1, 0), (3, 2)]]
    assert west_of_n_pairs([[0.0, 1e-9]], [[[0, 1]]]) == [[None]]  # within MIN_SCORE_GAP
    # (1, 2) already trained on: the widest remaining gap is 0.9 - 0.1 = 0.8 (1, 0); then 0.5 - -0.3 = 0.8 ties,
    # the earlier-enumerated pair wins; with everything from candidate 1 excluded, (3, 2) is next (gap 0.8)
    assert west_of_n_pairs([[0.1, 0.9, -0.3, 0.5]], [[[0, 1, 2, 3]]], exclude=lambda p, b, w: (b, w) == (1, 2)) \
        == [[(1, 0)]]
    assert west_of_n_pairs([[0.1, 0.9, -0.3, 0.5]], [[[0, 1, 2, 3]]], exclude=lambda p, b, w: 1 in (b, w)) \
        == [[(3, 2)]]
    assert west_of_n_pairs([[0.1, 0.9]], [[[0, 1]]], exclude=lambda p, b, w: True) == [[None]]


def test_candidate_requests_group_prompts_by_count():
    """Budgets (2, 0, 1, 2) with N = 3: prompt 2 wants 3 candidates, prompts 0 and 3 want 6, prompt 1 none."""
    requests = candidate_requests([2, 0, 1, 2], 3)
    assert requests == {3: [2], 6: [0, 3]} and list(requests) == [3, 6]


def test_draws_are_disjoint_and_sized():
    rng = np.random.default_rng(0)
    draws = split_draws(10, 3, 4, rng)  # only two full draws of 4 fit in 10 candidates
    assert len(draws) == 2 and sorted(i for d in draws for i in d) == list(range(10))
    assert split_draws(12, 3, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert split_draws(3, 2, 4) == [[0, 1, 2]]  # fewer than N: one smaller draw
    assert split_draws(1, 2, 4) == [] and split_draws(8, 0, 4) == []


def test_paraphrase_pool_holds_originals_and_paraphrases():
    rows = tiny_rows(3)
    out = ParaphrasePoolGenerator(LexicalParaphraser(seed=0)).candidates(rows, 6)
    for row, candidates in zip(rows, out):
        assert candidates[:2] == [row["chosen"], row["rejected"]]
        assert 2 < len(candidates) <= 6 and len(set(candidates)) == len(candidates)


def test_causal_lm_generator_samples_from_a_tiny_llama(tmp_path):
    path = save_tiny_llama(tmp_path / "llama")
    generator = CausalLMGenerator.from_pretrained(path, max_new_tokens=8, seed=3)
    rows = [{"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]} for row in tiny_rows(2)]
    first = generator.candidates(rows, 4)
    assert len(first) == 2 and all(1 <= len(c) <= 4 and all(t.strip() for t in c) for c in first)
    assert generator.candidates(rows, 4) == first  # seeded
    assert generator.name == f"causal_lm:{path}"


def test_chat_generator_asks_the_endpoint(openai_server):  # noqa: F811
    client = ChatClient("fake-model", base_url=openai_server.base_url, api_key_env=TEST_KEY_ENV, timeout=2.0,
                        max_retries=1, max_concurrency=2)
    rows = tiny_rows(2)
    out = ChatGenerator(client).candidates(rows, 3)
    assert [len(c) for c in out] == [3, 3]  # the server's duplicate is dropped
    assert out[0][0] == f"Answer 1: about {rows[0]['prompt']}"
    assert "Number of responses: 3" in openai_server.bodies[0]["messages"][1]["content"]


def test_round_pairs_best_and_worst_by_score():
    """A score that is the response's length: each pair must hold its draw's longest and shortest candidate."""
    rows = tiny_rows(4)
    generator = ParaphrasePoolGenerator(LexicalParaphraser(seed=0))

    def score(items):
        return np.array([float(len(text)) for _, text in items])

    inputs = RoundInputs(round_index=1, originals=rows, margins=np.zeros(4), paraphraser=None, budget_ratio=1.0)
    result = west_of_n_round(inputs, generator, score, candidates_per_draw=4)
    assert result.summary.budget == 4
    assert len(result.synthetic_rows) + result.summary.pairs_short_of_budget == 4
    assert result.synthetic_rows, "the lexical pool gives four distinct candidates for these rows"
    for row in result.synthetic_rows:
        allocation = result.allocation_rows[row["source_index"]]
        assert row["operation"] == "won" and row["backend"] == "paraphrase_pool:lexical"
        assert row["won_scores"] == [len(row["chosen"]), len(row["rejected"])]
        assert row["won_scores"][0] == max(allocation["candidate_scores"])
        assert row["won_scores"][1] == min(allocation["candidate_scores"])
    # a second round draws from the same candidates but never adds a pair already trained on
    again = west_of_n_round(RoundInputs(round_index=2, originals=rows, margins=np.zeros(4), paraphraser=None,
                                        budget_ratio=1.0, used_pairs=inputs.used_pairs), generator, score,
                            candidates_per_draw=4)
    first = {(row["source_index"], row["chosen"], row["rejected"]) for row in result.synthetic_rows}
    first |= {(i, row["chosen"], row["rejected"]) for i, row in enumerate(rows)}
    second = {(row["source_index"], row["chosen"], row["rejected"]) for row in again.synthetic_rows}
    assert not first & second
    won = again.summary.won
    assert len(again.synthetic_rows) + won["draws_without_new_pair"] + won["draws_without_preference"] == won["draws"]


def test_won_end_to_end_with_minilm(tmp_path, minilm_path):
    args = mars_args(tmp_path, num_train_epochs=2, mars_strategy="won", mars_won_candidates=4)
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)))
    trainer.train()
    callback = trainer.mars_callback
    summary = json.loads((tmp_path / "mars" / "summary.json").read_text())
    added = [entry["synthetic_pairs_added"] for entry in summary["rounds"]]
    assert [entry["round"] for entry in summary["rounds"]] == [1, 2]
    assert added[0] > 0 and all(a <= entry["budget"] for a, entry in zip(added, summary["rounds"]))
    assert len(trainer.train_dataset) == 16 + sum(added) == 16 + sum(e["num_synthetic"] for e in callback.completed)
    synthetic = [json.loads(line) for line in (tmp_path / "mars" / "round_1" / "synthetic.jsonl").read_text()
                 .splitlines()]
    allocation = [json.loads(line) for line in (tmp_path / "mars" / "round_1" / "allocation.jsonl").read_text()
                  .splitlines()]
    assert len(synthetic) == added[0]
    for row in synthetic:
        scores = allocation[row["source_index"]]["candidate_scores"]
        assert row["operation"] == "won" and row["won_scores"][0] > row["won_scores"][1]
        assert row["won_scores"][0] <= max(scores) and row["won_scores"][1] >= min(scores)
    # the candidate scores are the round-1 model's rewards: the originals' scores give the recorded margin
    first = allocation[0]
    chosen_score, rejected_score = first["candidate_scores"][:2]  # the pool starts with chosen, rejected
    assert chosen_score - rejected_score == pytest.approx(first["margin"], abs=1e-4)
