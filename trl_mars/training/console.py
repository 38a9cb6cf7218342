"""A readable console: CPU threads, CPU dataloader settings and the expected "new reward head" load report.

None of this changes what is trained; it only removes noise and idle cores that a newcomer would otherwise meet.
"""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger("trl_mars")

# Names of the freshly initialised reward head (and the pooler some encoders add before it) across architectures:
# BERT/DeBERTa/RoBERTa `classifier`, decoder-only `score`, DistilBERT `pre_classifier`, DeBERTa `pooler`.
_HEAD_PREFIXES = ("classifier.", "score.", "pre_classifier.", "pooler.")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REPORT_ROW = re.compile(r"^\s*([\w.]+)\s*\|\s*(\w+)\s*\|")


def cpu_threads(requested: int | None = None) -> int | None:
    """Sets torch's intra-op threads for a CPU run and returns the number set (None: left as it was).

    `accelerate launch` without a config file exports `OMP_NUM_THREADS=1`, which runs a CPU job on one core. We
    therefore treat `OMP_NUM_THREADS=1` under accelerate as accelerate's default, not the user's choice, and use
    the cores this process may run on, shared among the processes of this machine (`LOCAL_WORLD_SIZE`). Any other
    `OMP_NUM_THREADS` (or `OMP_NUM_THREADS=1` outside accelerate) is respected; `requested` wins over both.
    """
    import torch

    if requested is None:
        omp = os.environ.get("OMP_NUM_THREADS")
        under_accelerate = "ACCELERATE_MIXED_PRECISION" in os.environ
        if omp is not None and not (under_accelerate and omp.strip() == "1"):
            return None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        requested = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if requested < 1:
        raise ValueError(f"`cpu_threads` must be >= 1, got {requested}.")
    torch.set_num_threads(requested)
    return requested


def quiet_cpu_dataloader(args) -> None:
    """Pinned memory only helps copies to an accelerator; on CPU, PyTorch warns on every dataloader. Turn it off."""
    if args.dataloader_pin_memory and args.device.type == "cpu":
        args.dataloader_pin_memory = False


class _NewHeadReportFilter(logging.Filter):
    """Rewrites transformers' load report to one line when the only finding is a newly initialised reward head."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [_REPORT_ROW.match(_ANSI.sub("", line)) for line in message.splitlines()]
        rows = [(m.group(1), m.group(2)) for m in rows if m and m.group(1) != "Key"]
        if not rows or any(status != "MISSING" or not key.startswith(_HEAD_PREFIXES) for key, status in rows):
            return True  # anything else in the report is worth reading in full
        model_class = _ANSI.sub("", message).split(" LOAD REPORT", 1)[0].strip()
        record.msg = (
            f"{model_class}: new reward head ({', '.join(key for key, _ in rows)}) initialised randomly, as expected "
            "for a checkpoint without one; training learns it."
        )
        record.args = ()
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_FILTER = _NewHeadReportFilter()


def explain_new_head_report() -> None:
    """Installs the one-line rewrite of the "new head" load report (idempotent)."""
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    if _FILTER not in transformers_logger.filters:
        transformers_logger.addFilter(_FILTER)
