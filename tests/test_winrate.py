"""recipes/winrate.py with the real SmolLM2 model as judge behind `transformers serve`, faults against the scripted
loopback server, any `TextGenerator` as judge, and a reward model as an offline judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOPICS
from openai_server import TEST_KEY_ENV, openai_server  # noqa: F401  (fixture)
from tiny_models import save_minilm_reward_model, save_tiny_llama

from trl_mars.align.winrate import (
    WinRateArguments,
    both_orders,
    run_winrate,
    summarise,
    wilson_interval,
)

ROOT = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """Policy B: a tiny random Llama with a chat template; policy A: a LoRA adapter on it (saved as
    MarsRewardTrainer/RLOO save them)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("policies")
    base = save_tiny_llama(root / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)  # win-rate generation takes chat prompts: give it a template
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(base)
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


def test_recipe_against_the_real_model_as_judge(chat_server, policies, tmp_path):
    """recipes/winrate.py end to end: policy A is the packaged SmolLM2 model (a `packaged:` id), the judge is the
    same model behind `transformers serve`, asked through the `openai` client for one letter."""
    output = tmp_path / "winrate.json"
    command = [sys.executable, str(ROOT / "recipes" / "winrate.py"), "--policy_a", "packaged:SmolLM2-135M-Instruct",
               "--policy_b", policies["b"], "--dataset_name", policies["prompts"], "--max_prompts", "3",
               "--max_new_tokens", "8", "--judge", "openai", "--judge_base_url", chat_server.base_url,
               "--judge_api_key_env", chat_server.api_key_env, "--judge_model", chat_server.model,
               "--cache_dir", str(tmp_path / "cache"), "--output_json", str(output)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + chat_server.log_tail()
    result = json.loads(output.read_text())
    rows = result["per_prompt"]
    assert result["n"] == 3 and result["wins"] + result["ties"] + result["losses"] == 3
    assert all(r["response_a"] for r in rows)  # the real model answered every prompt
    assert result["judge"] == f"openai:{chat_server.model}" and result["judge_prompt"] == "judge_pairwise_v2"
    verdicts = result["judge_verdicts"]
    assert verdicts["verdicts"] == 6 and verdicts["failed"] == 0 and result["judge_failures"] == 0
    named = sum(v is not None for r in rows for v in (r["verdict_ab"], r["verdict_ba"]))
    assert verdicts["unparseable"] == 6 - named
    assert verdicts["parse_rate"] == pytest.approx(named / 6)
    # a prompt the model cannot answer shows here: the v1 layout (<<<...>>> blocks) got 0 of 6 parsed, v2 6 of 6
    assert verdicts["parse_rate"] >= 0.5
    print(f"real judge: parse rate {verdicts['parse_rate']:.3f}, verdicts "
          f"{[(r['verdict_ab'], r['verdict_ba']) for r in rows]}")
    for r in rows:  # the outcome follows from the two verdicts (both orders)
        first = {"A": "a", "B": "b"}.get(r["verdict_ab"])
        second = {"A": "b", "B": "a"}.get(r["verdict_ba"])
        assert r["outcome"] == ("win" if first == second == "a" else "loss" if first == second == "b" else "tie")
    assert "parse rate" in done.stdout and "win rate (ties count half)" in done.stdout

    # a second run asks the judge nothing: every answer, unparseable ones included, comes from the cache
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(output.read_text())
    assert second["judge_cache"] == {"hits": 6, "misses": 0} and second["judge_requests"] == 0
    assert second["judge_verdicts"] == verdicts
    assert [r["outcome"] for r in second["per_prompt"]] == [r["outcome"] for r in rows]


def test_judge_faults_against_the_scripted_server(openai_server, policies, tmp_path):  # noqa: F811
    """Transport faults are retried; an answer naming neither letter is a completed answer: cached, not retried,
    counted as unparseable and a tie."""
    openai_server.judge_preference = lexicographic_judge
    openai_server.faults.extend(["429", "500", "malformed"])
    output = tmp_path / "winrate.json"
    args = WinRateArguments(
        policy_a=policies["a"], policy_b=policies["b"], dataset_name=policies["prompts"], max_new_tokens=6,
        judge_base_url=openai_server.base_url, judge_api_key_env=TEST_KEY_ENV, judge_model="fake-judge",
        judge_concurrency=1, cache_dir=str(tmp_path / "cache"), output_json=str(output))
    summary = run_winrate(args)
    rows = json.loads(output.read_text())["per_prompt"]
    judged = [b for b in openai_server.bodies if "Which answer is better" in b["messages"][-1]["content"]]
    assert len(judged) == 12 + 2  # 6 prompts x 2 orders, plus the 429 and the 500 asked again
    assert "response_format" not in judged[0] and judged[0]["max_completion_tokens"] == 4
    assert summary["judge_failures"] == 0
    assert summary["judge_verdicts"] == {"verdicts": 12, "unparseable": 1, "failed": 0, "parse_rate": 11 / 12}
    expected = ["win" if r["response_a"] > r["response_b"] else "loss" for r in rows]
    outcomes = [r["outcome"] for r in rows]
    assert sum(o != e for o, e in zip(outcomes, expected)) == 1 and outcomes.count("tie") == 1
    assert any(r["response_a"] != r["response_b"] for r in rows)  # the adapter really changes the policy
    # the re-run replays all 12 answers, the unparseable one included
    before = openai_server.chat_requests
    again = run_winrate(args)
    assert openai_server.chat_requests == before
    assert again["judge_cache"] == {"hits": 12, "misses": 0} and again["judge_verdicts"] == summary["judge_verdicts"]


class ScriptedGenerator:
    """A `TextGenerator` whose verdict is always the first option: pure position bias."""

    name = "scripted"

    def __init__(self):
        self.asked = 0

    def fingerprint(self):
        return {"backend": self.name}

    def generate(self, requests, *, samples=1, temperature=0.7, max_new_tokens=192):
        return [["text"] * samples for _ in requests]

    def choose(self, requests, options):
        self.asked += len(requests)
        return [options[0] for _ in requests]

    def stats(self):
        return {"generated": self.asked, "cached": 0, "unparseable": 0}


def test_any_text_generator_judges_and_position_bias_gives_ties():
    from trl_mars.align.winrate import TextPairwiseJudge
    from trl_mars.augment.base import TextGenerator

    generator = ScriptedGenerator()
    assert isinstance(generator, TextGenerator)
    judge = TextPairwiseJudge(generator)
    prompts = [f"tip about {t}?" for t in TOPICS[:6]]
    rows = both_orders(judge, prompts, [f"a {t}" for t in TOPICS[:6]], [f"b {t}" for t in TOPICS[:6]])
    summary = summarise(rows)
    assert (summary["wins"], summary["ties"], summary["losses"]) == (0, 6, 0)
    assert summary["order_disagreements"] == 6
    assert judge.parse_stats() == {"verdicts": 12, "unparseable": 0, "failed": 0, "parse_rate": 1.0}
    (system, user) = judge.messages("p", "x", "y")
    assert "one letter" in system["content"] and user["content"] == (
        "Request: p\n\nAnswer A: x\n\nAnswer B: y\n\nWhich answer is better, A or B?")


def test_missing_key_fails_before_models_load(policies, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="API key.*Fix"):
        run_winrate(WinRateArguments(policy_a="/nonexistent", policy_b="/nonexistent",
                                     dataset_name=policies["prompts"]))


def test_reward_model_as_offline_judge(policies, tmp_path, minilm_path):
    from trl_mars.align.rewards import MarsRewardFunction

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


def test_local_judge_without_the_engine_is_a_clear_error(policies, monkeypatch):
    monkeypatch.setitem(sys.modules, "trl_mars.augment.engine", None)  # as on an install without the engine
    with pytest.raises(RuntimeError, match="LocalEngine.*--judge openai"):
        run_winrate(WinRateArguments(policy_a="/nonexistent", policy_b="/nonexistent", judge="local",
                                     dataset_name=policies["prompts"], cache_dir=None))


def test_local_judge_in_both_orders(policies, tmp_path):
    """--judge local: the packaged SmolLM2 model in this process picks A or B from its next-token probabilities, in
    both orders; a re-run replays every verdict from the cache without loading the judge."""
    output = tmp_path / "local.json"
    args = WinRateArguments(policy_a=policies["a"], policy_b=policies["b"], dataset_name=policies["prompts"],
                            max_prompts=4, max_new_tokens=6, judge="local", cache_dir=str(tmp_path / "cache"),
                            output_json=str(output))
    summary = run_winrate(args)
    rows = json.loads(output.read_text())["per_prompt"]
    assert summary["n"] == 4 and summary["judge"] == "local:packaged:SmolLM2-135M-Instruct"
    verdicts = summary["judge_verdicts"]
    named = sum(v is not None for r in rows for v in (r["verdict_ab"], r["verdict_ba"]))
    assert verdicts["verdicts"] == 8 and verdicts["unparseable"] == 8 - named and verdicts["failed"] == 0
    print(f"local judge: parse rate {verdicts['parse_rate']}, verdicts "
          f"{[(r['verdict_ab'], r['verdict_ba']) for r in rows]}")
    again = run_winrate(args)
    assert again["judge_cache"]["misses"] == 0 and again["judge_verdicts"] == verdicts
    assert [r["outcome"] for r in json.loads(output.read_text())["per_prompt"]] == [r["outcome"] for r in rows]


def test_policy_without_a_chat_template_is_a_clear_error(tmp_path, policies):
    from trl_mars.align.winrate import generate_responses

    with pytest.raises(ValueError, match="chat template"):
        generate_responses(None, None, ["a text prompt"])
