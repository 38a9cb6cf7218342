"""The rounds of a run inside Trainer's checkpoints, so a resumed run rebuilds D^t without calling a back-end.

Beside Trainer's own files, `checkpoint-<step>/` gets `mars_state.json` (rounds done, refinements, the evidence
summary, the loss weights) and each completed round's synthetic rows (`mars_round_<t>_synthetic.jsonl`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..augment.base import RefinementResult
from ..eval.evidence import read_jsonl, write_json

MARS_STATE_FILE = "mars_state.json"


@dataclass
class RoundState:
    """What a checkpoint holds of the rounds: done (round, epoch, num_synthetic), their rows, and run state."""

    completed: list[dict[str, Any]] = field(default_factory=list)
    synthetic_rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    refinements: dict[int, RefinementResult] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    example_weights: list[float] | None = None


def save_round_state(checkpoint: Path, state: RoundState, synthetic_files: dict[int, Path]) -> None:
    """Writes the rounds into `checkpoint` (the rows are copied from the evidence files of each round)."""
    checkpoint = Path(checkpoint)
    for entry in state.completed:
        shutil.copyfile(synthetic_files[entry["round"]], checkpoint / f"mars_round_{entry['round']}_synthetic.jsonl")
    write_json(checkpoint / MARS_STATE_FILE, {
        "completed_rounds": state.completed,
        "refinements": {str(k): v.to_dict() for k, v in state.refinements.items()},
        "summary": state.summary,
        "example_weights": state.example_weights,
    })


def load_round_state(checkpoint: str | Path) -> RoundState:
    """The rounds stored in `checkpoint`; a clear error when it was not written by a MARS run."""
    checkpoint = Path(checkpoint)
    state_file = checkpoint / MARS_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{checkpoint} has no {MARS_STATE_FILE}: it was not written with MARS rounds, so the synthetic pairs "
            "of its rounds are unknown. Resume from a checkpoint of a MARS run or start afresh.")
    stored = json.loads(state_file.read_text(encoding="utf-8"))
    completed = list(stored["completed_rounds"])
    return RoundState(
        completed=completed,
        synthetic_rows={entry["round"]: read_jsonl(checkpoint / f"mars_round_{entry['round']}_synthetic.jsonl")
                        for entry in completed},
        refinements={int(k): RefinementResult(**v) for k, v in stored.get("refinements", {}).items()},
        summary=stored.get("summary"),
        example_weights=stored.get("example_weights"),
    )
