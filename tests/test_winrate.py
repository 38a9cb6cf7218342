"""recipes/winrate.py against the loopback OpenAI-compatible server, and a reward model as an offline judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from openai_server import TEST_KEY_ENV, openai_server  # noqa: F401  (fixture)
from tiny_models import save_minilm_reward_model, save_tiny_llama

from conftest import TOPICS
from trl_mars.winrate import (
    WinRateArguments,
    both_orders,
    run_winrate,
    summarise,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Policy B: a tiny random Llama; policy A: a LoRA adapter on it (saved as MarsRewardTrainer/RLOO save them)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("policies")
    base = save_tiny_llama(root / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2.0)
    model.save_pretrained(str(root / "adapter"))
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Can you give me one useful tip about {t}?"}) + "\n"
                               for t in TOPICS[:6]))
    return {"a": str(root / "adapter"), "b": base, "prompts": str(prompts)}


def lexicographic_judge(prompt: str, a: str, b: str) -> str:
    """A position-free rule the test can recompute: the lexicographically larger response is better."""
    return "A" if a > b else "B"


def test_recipe_against_loopback_judge(openai_server, policies, tmp_path):  # noqa: F811
    openai_server.judge_preference = lexicographic_judge
    openai_server.faults.extend(["429", "malformed"])  # retried by the client / re-asked by the judge
    output = tmp_path / "winrate.json"
    command = [sys.executable, str(ROOT / "recipes" / "winrate.py"), "--policy_a", policies["a"], "--policy_b",
               policies["b"], "--dataset_name", policies["prompts"], "--max_new_tokens", "6",
               "--judge_base_url", openai_server.base_url, "--judge_api_key_env", TEST_KEY_ENV,
               "--judge_model", "fake-judge", "--cache_dir", str(tmp_path / "cache"), "--output_json", str(output)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(output.read_text())
    rows = result["per_prompt"]
    assert result["n"] == 6 and result["wins"] + result["ties"] + result["losses"] == 6
    expected = ["win" if r["response_a"] > r["response_b"] else "loss" if r["response_a"] < r["response_b"]
                else "tie" for r in rows]
    assert [r["outcome"] for r in rows] == expected
    assert any(r["response_a"] != r["response_b"] for r in rows)  # the adapter really changes the policy
    assert result["win_rate"] == pytest.approx(result["wins"] / 6)
    assert result["judge_failures"] == 0 and result["order_disagreements"] == 0
    # 12 judgements (6 prompts x 2 orders), one re-asked after the malformed answer
    judged = [b for b in openai_server.bodies if '"better"' in b["messages"][0]["content"]]
    assert len(judged) == 14  # 12 + the 429 + the re-ask
    assert judged[0]["model"] == "fake-judge" and judged[0]["response_format"]["type"] == "json_schema"
    assert "win rate (ties count half)" in done.stdout

    # a second run pays nothing: every judgement comes from the cache
    before = openai_server.chat_requests
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert openai_server.chat_requests == before
    second = json.loads(output.read_text())
    assert second["judge_cache"] == {"hits": 12, "misses": 0}
    assert [r["outcome"] for r in second["per_prompt"]] == expected


def test_position_biased_judge_gives_ties(openai_server, policies, tmp_path):  # noqa: F811
    openai_server.judge_preference = lambda prompt, a, b: "A"  # always the first: pure position bias
    summary = run_winrate(WinRateArguments(
        policy_a=policies["a"], policy_b=policies["b"], dataset_name=policies["prompts"], max_new_tokens=4,
        judge_base_url=openai_server.base_url, judge_api_key_env=TEST_KEY_ENV, cache_dir=str(tmp_path / "c")))
    assert (summary["wins"], summary["ties"], summary["losses"]) == (0, 6, 0)
    assert summary["order_disagreements"] == 6


def test_missing_key_fails_before_models_load(policies, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="API key.*Fix"):
        run_winrate(WinRateArguments(policy_a="/nonexistent", policy_b="/nonexistent",
                                     dataset_name=policies["prompts"]))


def test_reward_model_as_offline_judge(policies, tmp_path, minilm_path):
    from trl_mars.rewards import MarsRewardFunction

    reward_dir = save_minilm_reward_model(tmp_path / "rm", minilm_path)
    output = tmp_path / "rm_judge.json"
    summary = run_winrate(WinRateArguments(
        policy_a=policies["a"], policy_b=policies["b"], dataset_name=policies["prompts"], max_new_tokens=6,
        judge="reward_model", reward_model_name_or_path=reward_dir, output_json=str(output)))
    rows = json.loads(output.read_text())["per_prompt"]
    reward = MarsRewardFunction(reward_dir, device="cpu")
    ra = reward.raw_scores([r["prompt"] for r in rows], [r["response_a"] for r in rows])
    rb = reward.raw_scores([r["prompt"] for r in rows], [r["response_b"] for r in rows])
    assert [r["outcome"] for r in rows] == ["win" if x > y else "loss" if y > x else "tie" for x, y in zip(ra, rb)]
    assert summary["wins"] == int((ra > rb).sum())


def test_counting_and_intervals():
    class Scripted:
        requests = failures = 0

        def __init__(self, answers):
            self.answers = iter(answers)

        def judge(self, prompts, a, b):
            return [next(self.answers) for _ in prompts]

    # orders: (A,B) then (B,A). prompt 0: A then B -> policy a both times; 1: B, A -> b; 2: A, A -> disagree;
    # 3: no answer in one order -> tie
    rows = both_orders(Scripted(["A", "B", "A", None, "B", "A", "A", "B"]), ["p"] * 4, ["x"] * 4, ["y"] * 4)
    assert [r["outcome"] for r in rows] == ["win", "loss", "tie", "tie"]
    summary = summarise(rows)
    assert (summary["wins"], summary["ties"], summary["losses"], summary["order_disagreements"]) == (1, 2, 1, 1)
    assert summary["win_rate_ties_half"] == pytest.approx(0.5)
    low, high = wilson_interval(1, 4)
    assert low == pytest.approx(0.0456, abs=1e-3) and high == pytest.approx(0.6994, abs=1e-3)  # textbook values
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-3)
