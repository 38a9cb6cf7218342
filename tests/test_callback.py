"""`MarsAugmentationCallback` in real training runs: a user's own RewardTrainer subclass, the round-plan guard,
the LR re-plan after a short round, one eval scoring per epoch, and a quiet console."""

from __future__ import annotations

import json

import pytest
from conftest import OneVariantParaphraser, mars_args, tiny_rows
from datasets import Dataset
from transformers import Trainer
from trl import RewardTrainer

from trl_mars import MarsAugmentationCallback
from trl_mars.eval.reporting import QuietProgressCallback
from trl_mars.training.plan_guard import RoundPlanError
from trl_mars.training.trainer import MarsRewardTrainer


def test_plain_reward_trainer_subclass_runs_rounds_with_the_callback(tmp_path, minilm_path):
    class MyRewardTrainer(RewardTrainer):
        """A user's own trainer: TRL's tokenisation, its own loss bookkeeping."""

        losses_computed = [0]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            self.losses_computed[0] += 1
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = mars_args(tmp_path, num_train_epochs=2, mars_strategy="mars_nosem", eos_token="[SEP]")
    trainer = MyRewardTrainer(minilm_path, args=args, train_dataset=Dataset.from_list(tiny_rows(16)))
    callback = MarsAugmentationCallback().attach(trainer)
    trainer.train()
    assert [entry["round"] for entry in callback.completed] == [1, 2]
    assert len(trainer.train_dataset) == 16 + 2 * 16
    assert trainer.state.global_step == trainer.state.max_steps == 32 // 4 + 48 // 4
    assert isinstance(trainer, MyRewardTrainer)
    assert MyRewardTrainer.losses_computed[0] == trainer.state.global_step
    synthetic = [json.loads(line) for line in (tmp_path / "mars" / "round_2" / "synthetic.jsonl").read_text()
                 .splitlines()]
    assert len(synthetic) == 16 and not any(row["chosen"].endswith("[SEP]") for row in synthetic)
    # Synthetic pairs went through the user's trainer's own tokenisation (TRL appends the EOS to the text).
    assert trainer.train_dataset[-1]["chosen"].endswith("[SEP]")


@pytest.mark.parametrize("bypassed", ["_run_epoch", "set_initial_training_values"])
def test_round_plan_guard_fires_when_an_override_is_bypassed(tmp_path, minilm_path, tiny_dataset, bypassed):
    """If transformers stopped calling an adapter override, training must fail instead of silently skipping MARS."""
    bypass = type("Bypassed", (MarsRewardTrainer,), {bypassed: getattr(Trainer, bypassed)})
    trainer = bypass(minilm_path, args=mars_args(tmp_path, num_train_epochs=1, mars_strategy="mars_nosem"),
                     train_dataset=tiny_dataset)
    with pytest.raises(RoundPlanError, match="round plan not followed"):
        trainer.train()
    assert trainer.state.global_step == 0  # caught before the first optimizer step


def test_short_round_replans_lr_eval_once_per_epoch_and_quiet_console(tmp_path, minilm_path, tiny_dataset,
                                                                       tiny_eval_dataset, capfd):
    args = mars_args(tmp_path, num_train_epochs=2, mars_strategy="mars_nosem", mars_budget_ratio=3.0,
                     eval_strategy="epoch")
    trainer = MarsRewardTrainer(minilm_path, args=args, train_dataset=tiny_dataset, eval_dataset=tiny_eval_dataset,
                                paraphraser=OneVariantParaphraser())
    trainer.train()
    added = [entry["num_synthetic"] for entry in trainer.mars_callback.completed]
    # Round 1 uses each tuple's 3 candidates; round 2 finds none left that is not already trained on.
    assert added == [48, 0]
    planned = trainer.mars_callback.schedule.max_steps(trainer.mars_callback.added)
    assert planned == 64 // 4 + 64 // 4 < 64 // 4 + 112 // 4  # re-planned down from the budgeted 44 steps
    assert trainer.state.global_step == trainer.state.max_steps == planned
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # LR ends at the last step
    progress = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, QuietProgressCallback)]
    assert len(progress) == 1 and progress[0].current_step == planned  # the bar reached its (re-planned) total

    summary = json.loads((tmp_path / "mars" / "summary.json").read_text())
    after_epochs = [e for e in summary["eval"] if e["when"].startswith("after epoch")]
    assert [e["source"] for e in after_epochs] == ["evaluate", "evaluate"]  # scored once, by Trainer.evaluate
    assert summary["rounds"][0]["synthetic_pairs_added"] == added[0]

    console = capfd.readouterr()
    text = console.out + console.err
    assert "[MARS] round 1 (epoch 1)" in text and "[MARS] round 2 (epoch 2)" in text and "48 short of budget" in text
    assert "'mars/" not in text  # raw figures go to loggers, not the console
    logged = [entry for entry in trainer.mars_callback.log_history if "mars/round" in entry]
    assert [entry["mars/round"] for entry in logged] == [1, 2]


def test_round_plan_guard_fires_when_resume_bypasses_init_training_state(tmp_path, minilm_path, tiny_dataset):
    """Epochs of 8, 12, 16 steps: Trainer alone would resume step 20 at epoch 3 with 4 batches skipped."""
    from transformers import TrainerCallback

    class StopAt20(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 20

    args = dict(num_train_epochs=3, mars_strategy="mars_nosem", save_strategy="steps", save_steps=20)
    first = MarsRewardTrainer(minilm_path, args=mars_args(tmp_path / "first", **args), train_dataset=tiny_dataset,
                              callbacks=[StopAt20()])
    first.train()
    checkpoint = tmp_path / "first" / "checkpoint-20"
    assert first.state.global_step == 20 and checkpoint.is_dir()

    bypass = type("Bypassed", (MarsRewardTrainer,), {"_init_training_state": Trainer._init_training_state})
    resumed = bypass(minilm_path, args=mars_args(tmp_path / "resumed", **args), train_dataset=tiny_dataset)
    with pytest.raises(RoundPlanError, match="_init_training_state"):
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 20  # caught before a step ran on the wrong batches
