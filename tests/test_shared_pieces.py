"""One copy of each shared piece: the model loader, the single-process accelerator and the data-source dispatch
serve every caller, so what one caller checks, all do."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from trl_mars.align import rewards, winrate
from trl_mars.eval import evaluation, modeling
from trl_mars.mars.scoring import LocalAccelerator


def test_the_old_name_is_the_one_accelerator():
    assert evaluation.SingleProcessScorer is LocalAccelerator


def test_every_caller_loads_with_the_one_loader():
    assert rewards.load_reward_model is modeling.load_reward_model
    assert evaluation.load_reward_model is modeling.load_reward_model
    assert winrate.load_policy is modeling.load_causal_lm


@pytest.fixture()
def headless_adapter(tmp_path, minilm_path):
    """A LoRA adapter folder saved as a causal-LM adapter: no reward head inside."""
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"task_type": "CAUSAL_LM", "base_model_name_or_path": minilm_path, "peft_type": "LORA"}))
    return str(tmp_path)


def test_reward_function_refuses_an_adapter_without_its_head(headless_adapter):
    """It used to score such an adapter with a freshly random head."""
    with pytest.raises(ValueError, match="lora_task_type SEQ_CLS"):
        rewards.MarsRewardFunction(headless_adapter, device="cpu")
    with pytest.raises(ValueError, match="reward head was never saved"):
        rewards.load_reward_model(headless_adapter, device="cpu")


def test_local_accelerator_scores_alone():
    quiet = LocalAccelerator(torch.device("cpu"))
    assert (quiet.num_processes, quiet.process_index, quiet.is_local_main_process) == (1, 0, False)
    assert quiet.device == torch.device("cpu")
    with quiet.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with LocalAccelerator("cpu", autocast=torch.bfloat16, show_progress=True).autocast():
        assert torch.is_autocast_enabled("cpu")


def test_local_accelerator_view_of_a_real_one():
    entered = []

    class Real:
        device = torch.device("cpu")
        is_local_main_process = True
        num_processes = 4
        process_index = 2

        @staticmethod
        @contextlib.contextmanager
        def autocast():
            entered.append(True)
            yield

    view = LocalAccelerator.view_of(Real())
    assert (view.device, view.is_local_main_process) == (Real.device, True)
    assert (view.num_processes, view.process_index) == (1, 0)  # this rank's work only
    with view.autocast():
        pass
    assert entered == [True]


def test_every_data_loader_dispatches_the_same_way(tmp_path):
    from trl_mars.align.alignment import load_prompts
    from trl_mars.data.preferences import (
        load_evaluation_dataset,
        load_preference_splits,
    )

    missing = str(tmp_path / "missing.jsonl")
    for load in (load_preference_splits, load_evaluation_dataset, load_prompts):
        with pytest.raises(FileNotFoundError, match="missing.jsonl' does not exist"):
            load(missing)
    text = tmp_path / "pairs.txt"
    text.write_text("not json\n")
    for load, fields in ((load_preference_splits, "prompt/chosen/rejected"), (load_evaluation_dataset, "subset"),
                         (load_prompts, "a 'prompt' field")):
        with pytest.raises(ValueError, match=f"must be .json or .jsonl with .*{fields}"):
            load(str(text))
    train, test = load_preference_splits("embedded")
    assert load_evaluation_dataset("embedded")["prompt"] == test["prompt"]
    # 'embedded' prompts are the train split's, whatever split is asked
    assert load_prompts("embedded", split="test")["prompt"] == load_prompts("embedded")["prompt"]


def test_the_win_rate_judge_prompt_is_a_shared_template():
    """The win-rate judge fills judge_pairwise_<v>.txt with the templates every chat prompt uses: one pass (data
    that looks like a placeholder stays as it is) and data cannot open or close a <<<...>>> block."""
    judge = winrate.TextPairwiseJudge(generator=None)
    system, user = judge.messages("Q {{response_b}}", "first <<<END>>>", "second")
    assert judge.prompt_name == "judge_pairwise_v2"
    assert system["role"] == "system" and system["content"].endswith("Reply with one letter: A or B.")
    assert user == {"role": "user", "content": "Request: Q {{response_b}}\n\nAnswer A: first < < <END> > >\n\n"
                                               "Answer B: second\n\nWhich answer is better, A or B?"}
