"""`recipes/eval_rm.py` on reward models saved by a tiny MarsRewardTrainer run (full and LoRA) and a local file in
RewardBench's format (prompt, chosen, rejected, subset, plus its id/chosen_model/rejected_model columns)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import mars_args, tiny_rows
from datasets import Dataset

from trl_mars.eval.evaluation import encode_pairs, load_reward_model, score_pairs

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = ["alpacaeval-easy", "alpacaeval-hard", "mt-bench-hard", "xstest-should-respond", "donotanswer", "hep-python"]


def rewardbench_rows() -> list[dict]:
    rows = []
    for i, row in enumerate(tiny_rows(24)[12:]):
        rows.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"],
                     "chosen_model": "GPT-4", "rejected_model": "Llama-2-70b-chat", "subset": SUBSETS[i % 6],
                     "id": 1000 + i})
    # A long prompt, so that keep-the-end truncation matters in the comparison with the trainer's encoding.
    rows[0]["prompt"] = "Please read carefully. " * 40 + rows[0]["prompt"]
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory, minilm_path):
    """A MiniLM reward model trained for one epoch with MARS rounds off, saved as the trainer saves it."""
    from trl_mars import MarsRewardTrainer

    root = tmp_path_factory.mktemp("rm")
    args = mars_args(root / "full", num_train_epochs=1, mars_strategy="none", max_length=48)
    trainer = MarsRewardTrainer(model=minilm_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)),
                                eval_dataset=Dataset.from_list(rewardbench_rows()))
    trainer.train()
    trainer.save_model(str(root / "full"))
    return trainer, root


def test_pairs_are_encoded_exactly_as_the_trainer_encodes_them(trained):
    trainer, root = trained
    model, tokenizer = load_reward_model(str(root / "full"), device="cpu")
    chosen, rejected = encode_pairs(Dataset.from_list(rewardbench_rows()), tokenizer, max_length=48)
    assert chosen == trainer.eval_dataset["chosen_ids"][:]
    assert rejected == trainer.eval_dataset["rejected_ids"][:]
    assert len(chosen[0]) == 48  # the long prompt was truncated from the left


def test_recipe_writes_the_report(trained, tmp_path):
    trainer, root = trained
    data = tmp_path / "rewardbench_sample.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rewardbench_rows()))
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "recipes" / "eval_rm.py"), "--model_name_or_path",
                             str(root / "full"), "--dataset_name", str(data), "--max_length", "48",
                             "--output_json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"accuracy", "margin_mean", "snr", "subsets", "sections", "average"} <= set(report)
    assert report["n"] == 12 and set(report["subsets"]) == set(SUBSETS)
    assert all(report["subsets"][s]["n"] == 2 for s in SUBSETS)
    assert set(report["sections"]) == {"Chat", "Chat Hard", "Safety", "Reasoning"}
    # The same numbers as the trained model in memory, scored on the trainer's own encoding of the pairs.
    from trl_mars.eval.evaluation import SingleProcessScorer, evaluate_margins
    from trl_mars.mars.scoring import score_margins

    margins, _ = score_margins(trainer.model, trainer.eval_dataset["chosen_ids"][:],
                               trainer.eval_dataset["rejected_ids"][:],
                               pad_token_id=trainer.processing_class.pad_token_id, batch_size=8,
                               accelerator=SingleProcessScorer("cpu"))
    expected = evaluate_margins(margins, SUBSETS * 2)
    assert report["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["margin_mean"] == pytest.approx(expected["margin_mean"], abs=1e-4)
    assert report["average"] == pytest.approx(expected["average"])
    assert "RewardBench sections" in result.stdout and "hep-python" in result.stdout


def test_lora_adapter_is_loaded_and_merged(tmp_path, minilm_path):
    from peft import LoraConfig

    from trl_mars import MarsRewardTrainer

    args = mars_args(tmp_path / "lora", num_train_epochs=1, mars_strategy="none", learning_rate=1e-3)
    trainer = MarsRewardTrainer(model=minilm_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)),
                                peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                       target_modules=["query", "value"]))
    trainer.train()
    trainer.save_model(str(tmp_path / "lora"))
    assert (tmp_path / "lora" / "adapter_config.json").is_file()
    pairs = Dataset.from_list(rewardbench_rows())
    trainer.model.eval()
    in_memory = score_pairs(trainer.model, trainer.processing_class, pairs, max_length=64)
    model, tokenizer = load_reward_model(str(tmp_path / "lora"), device="cpu")
    merged = score_pairs(model, tokenizer, pairs, max_length=64)
    np.testing.assert_allclose(merged, in_memory, atol=1e-4)
    assert np.abs(in_memory).max() > 0


def test_adapter_without_a_saved_head_is_refused(tmp_path, minilm_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"task_type": "CAUSAL_LM", "base_model_name_or_path": minilm_path, "peft_type": "LORA"}))
    with pytest.raises(ValueError, match="lora_task_type SEQ_CLS"):
        load_reward_model(str(tmp_path))
