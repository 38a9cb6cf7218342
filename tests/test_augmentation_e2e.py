"""MarsRewardTrainer with the chat paraphraser and the chat refiner against a real loopback OpenAI server."""

from __future__ import annotations

import json

import pytest
from conftest import mars_args
from openai_server import TEST_KEY, TEST_KEY_ENV, openai_server  # noqa: F401 (fixture)

from trl_mars.training.preflight import PreflightError
from trl_mars.training.trainer import MarsRewardTrainer


def chat_args(output_dir, server, cache_dir, **overrides):
    return mars_args(output_dir, mars_strategy="mars", num_train_epochs=1, mars_budget_ratio=1.0,
                     mars_paraphraser="chat", mars_refiner="chat", mars_chat_base_url=server.base_url,
                     mars_chat_api_key_env=TEST_KEY_ENV, mars_label_check="judge", mars_harm_check="judge",
                     mars_chat_max_retries=1, mars_cache_dir=str(cache_dir), **overrides)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_chat_refinement_round_and_zero_calls_on_rerun(tmp_path, minilm_path, tiny_dataset, openai_server):
    # A judge that knows which side is the chosen one, wherever the client puts it (it swaps A/B for about half
    # the triples to control position bias): a rewrite keeps its label exactly when the chosen side stays chosen.
    chosen_texts = set(tiny_dataset["chosen"][:])
    openai_server.judge_preference = lambda prompt, a, b: (
        "A" if a in chosen_texts or a.startswith("zqchosen") else "B")
    trainer = MarsRewardTrainer(minilm_path, args=chat_args(tmp_path / "run1", openai_server, tmp_path / "cache"),
                                train_dataset=tiny_dataset)
    trainer.train()
    first_run_requests = openai_server.chat_requests
    assert first_run_requests > 0

    summary = json.loads((tmp_path / "run1" / "mars" / "summary.json").read_text())
    table4 = summary["refinement"]
    labels = summary["semantic"]
    assert table4["high_distance"] == labels["high_distance"] and table4["low_distance"] == labels["low_distance"]
    allocation = read_jsonl(tmp_path / "run1" / "mars" / "round_1" / "allocation.jsonl")
    selected = [row for row in allocation if row["semantic_label"] == "low" and row["budget"] > 0]
    assert table4["attempted"] == len(selected) > 0
    # The fake server's rewrites share no words with the other side, so every rewrite widens the distance and
    # its judge keeps the label: all attempted rewrites are retained.
    assert table4["improved"] == table4["attempted"] and table4["retained_share"] == 1.0
    assert all(row["refined"] is True for row in selected)
    assert all(row["refined"] is None for row in allocation if row not in selected)
    synthetic = read_jsonl(tmp_path / "run1" / "mars" / "round_1" / "synthetic.jsonl")
    assert len(synthetic) == 16 and all(row["backend"] == "chat" for row in synthetic)
    refined_sources = {row["index"] for row in selected}
    assert {row["source_index"] for row in synthetic if row["operation"].startswith("refine_")} <= refined_sources
    # The key never reaches the evidence files.
    for path in (tmp_path / "run1" / "mars").rglob("*.json*"):
        assert TEST_KEY not in path.read_text()

    # The same job again, sharing the cache: not a single back-end call.
    rerun = MarsRewardTrainer(minilm_path, args=chat_args(tmp_path / "run2", openai_server, tmp_path / "cache"),
                              train_dataset=tiny_dataset)
    rerun.train()
    assert openai_server.chat_requests == first_run_requests
    assert read_jsonl(tmp_path / "run2" / "mars" / "round_1" / "synthetic.jsonl") == synthetic


def test_missing_key_fails_before_the_model_loads(tmp_path, minilm_path, tiny_dataset, openai_server, monkeypatch):
    # a loadable model id, so that the start-up check that fails is the key's (a bad id is reported first)
    monkeypatch.delenv(TEST_KEY_ENV)
    with pytest.raises(PreflightError, match=TEST_KEY_ENV):
        MarsRewardTrainer(minilm_path, args=chat_args(tmp_path, openai_server, tmp_path / "cache"),
                          train_dataset=tiny_dataset)


def test_unreachable_endpoint_fails_at_start_up(tmp_path, minilm_path, tiny_dataset, openai_server):
    from openai_server import free_port

    class Dead:
        base_url = f"http://127.0.0.1:{free_port()}/v1"

    with pytest.raises(RuntimeError, match="127.0.0.1"):
        MarsRewardTrainer(minilm_path, args=chat_args(tmp_path, Dead, tmp_path / "cache"),
                          train_dataset=tiny_dataset)
