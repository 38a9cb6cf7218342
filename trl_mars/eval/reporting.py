"""What a run tells people and loggers: round and held-out lines on the console, `mars/*` figures for `report_to`,
and the evidence files (docs/evidence.md). Nothing here changes what is trained.

`RunReporter` is the reporting half of `MarsAugmentationCallback`: the callback decides and trains, the reporter
writes. Only the main process prints or writes files; every rank may call it.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer

from ..mars.strategies import RoundSummary
from . import heldout
from .evidence import Evidence, eval_line, round_figures, round_line

logger = logging.getLogger("trl_mars")


class RunReporter:
    """Console lines, logger figures, held-out reports and `summary.json` of one trainer's run.

    `log_history` keeps every figure sent to the trainer's loggers, with its step, out of `state.log_history` so
    Trainer's own entries keep their places (see `log_figures`).
    """

    def __init__(self, trainer: Trainer, args, evidence: Evidence, *, rounds_enabled: bool):
        self.trainer = trainer
        self.args = args  # the MARS settings (the trainer's own args may be a plain RewardConfig)
        self.evidence = evidence
        self.rounds_enabled = rounds_enabled
        self.log_history: list[dict[str, Any]] = []

    @property
    def is_main(self) -> bool:
        return self.trainer.is_world_process_zero()

    # ------------------------------------------------------------------ rounds

    def round_done(self, summary: RoundSummary, allocation_rows, synthetic_rows, *, seconds: float) -> None:
        """Evidence files, summary, logger figures and one console line for a finished round."""
        if not self.is_main:
            return
        train_pairs = len(self.trainer.train_dataset)
        self.evidence.write_round(summary, allocation_rows, synthetic_rows)
        self.write_summary()
        self.log_figures(round_figures(summary, train_pairs))
        tqdm.write(round_line(summary, train_pairs, seconds))

    def round_skipped(self, round_index: int, epoch: int, error) -> None:
        """A round that added nothing because the margins were not finite, with the reason."""
        if not self.is_main:
            return
        reason = f"round {round_index} skipped: {error}"
        logger.warning("MARS: %s", reason)
        entry = {"round": round_index, "epoch": epoch + 1, "skipped": str(error), "synthetic_pairs_added": 0,
                 "nonfinite_rewards": error.count, "timings": {}}
        self.evidence.write_round(entry, [], [])
        self.write_summary()
        tqdm.write(f"[MARS] {reason}")

    def epoch_time(self, epoch: int, seconds: float) -> None:
        """Adds the training time of the epoch that the last round opened to that round's entry."""
        last = self.evidence.last_round()
        if last is None or last["epoch"] != epoch + 1 or not self.is_main:
            return
        last["timings"]["train_epoch"] = seconds
        outside = sum(v for k, v in last["timings"].items()
                      if k not in ("paraphrase", "refine", "train_epoch", "round_total"))
        last["overhead_share_excluding_generation"] = outside / seconds if seconds else None
        self.write_summary()

    # ---------------------------------------------------------------- held out

    def report_heldout(self, when: str, batch_size: int) -> None:
        """Pairwise accuracy and margin SNR on each eval set, printed once and logged."""
        for name, dataset in heldout.named_eval_datasets(self.trainer.eval_dataset):
            if not isinstance(dataset, Dataset):  # a streamed eval set cannot be scored without consuming it
                continue
            record = heldout.score_heldout(self.trainer, dataset, name=name, when=when, batch_size=batch_size)
            self.add_eval(record, log=True)

    def report_evaluate(self, metrics: dict[str, float], *, when: str, global_step: int) -> None:
        """The held-out report read from Trainer's own evaluation (no second scoring pass)."""
        for name, _ in heldout.named_eval_datasets(self.trainer.eval_dataset):
            record = heldout.from_evaluate(metrics, name=name, when=when, global_step=global_step)
            if record is not None:
                self.add_eval(record, log=False)

    def add_eval(self, record: dict[str, Any], *, log: bool) -> None:
        if not self.is_main:
            return
        tqdm.write(eval_line(record))
        self.evidence.add_eval(record)
        if self.rounds_enabled:
            self.write_summary()
        if log:
            self.log_figures(heldout.figures(record))

    # ----------------------------------------------------------------- outputs

    def write_summary(self) -> None:
        if not self.is_main:
            return
        truncated = getattr(self.trainer, "_mars_truncated", {})
        self.evidence.write_summary(config={k: v for k, v in self.args.to_dict().items() if k.startswith("mars_")},
                                    truncated_examples=dict(truncated))

    def log_figures(self, figures: dict[str, float]) -> None:
        """Sends MARS figures to the trainer's loggers (`report_to`, `on_log` callbacks) without appending them to
        `state.log_history`: code that reads Trainer's entries by position (`log_history[0]`, `[-1]`) finds them
        where `RewardTrainer` puts them. The figures are kept in `self.log_history` and in `summary.json`."""
        trainer = self.trainer
        logs = dict(figures)
        if trainer.state.epoch is not None:
            logs["epoch"] = trainer.state.epoch
        self.log_history.append({**logs, "step": trainer.state.global_step})
        trainer.control = trainer.callback_handler.on_log(trainer.args, trainer.state, trainer.control, logs)


# ------------------------------------------------------------------------------------------- a quiet console


class QuietProgressCallback(ProgressCallback):
    """Trainer's progress bar, minus raw `mars/*` dicts (the round prints its own line) and with a total that
    follows a re-planned `max_steps`, so the bar ends at 100%."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and self.training_bar.total != state.max_steps:
            self.training_bar.total = state.max_steps
            self.training_bar.refresh()
        super().on_step_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = console_logs(logs)
        if logs:
            super().on_log(args, state, control, logs=logs, **kwargs)


class QuietPrinterCallback(PrinterCallback):
    """`PrinterCallback` (used with `disable_tqdm`) minus raw `mars/*` dicts."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = console_logs(logs)
        if logs:
            super().on_log(args, state, control, logs=logs, **kwargs)


def console_logs(logs: dict | None) -> dict:
    """`logs` without the figures MARS prints as its own lines; empty when nothing else is left to show."""
    kept = {k: v for k, v in (logs or {}).items()
            if not (k.startswith("mars/") or k.endswith("_pairwise_accuracy") or k.endswith("_margin_snr"))}
    return kept if set(kept) - {"epoch", "num_input_tokens_seen", "step"} else {}


def quiet_console_printers(trainer: Trainer) -> None:
    """Swaps Trainer's progress bar / printer for the quiet ones above."""
    for plain, quiet in ((ProgressCallback, QuietProgressCallback), (PrinterCallback, QuietPrinterCallback)):
        present = [cb for cb in trainer.callback_handler.callbacks if type(cb) is plain]
        for callback in present:
            trainer.callback_handler.remove_callback(callback)
            trainer.callback_handler.add_callback(quiet())
