"""What a round strategy is: its inputs, its result, its summary, and the registry that names it.

A strategy (`mars`, `mars_nosem`, `uniform`, `adaboost`, `won`, or one of yours) turns one round's inputs (the
original tuples and r^{t-1}'s margins on them, the back-ends, the run state it may update) into
- the synthetic rows to add to D^t, and/or
- one loss weight per original tuple,
plus a typed `RoundSummary` that the evidence writer reads. It knows nothing of Trainer: scoring, sharding and
growing the dataset stay with `MarsAugmentationCallback`, which hands the strategy what it may call through
`RoundServices`. A new strategy is one class and one `register_strategy` call (docs/architecture.md):

    @register_strategy("my_strategy")
    class MyStrategy(RoundStrategy):
        def run(self, inputs, services):
            ...
            return RoundResult(round=inputs.round_index, allocation=..., allocation_rows=..., synthetic_rows=...,
                               summary=RoundSummary(...))

    MarsRewardConfig(mars_strategy="my_strategy", ...)

Built-in strategies are registered by import path and imported on first use, so importing this module (and
`trl_mars.training.config`, which validates names against the registry) loads no back-end.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..augment.base import Paraphraser, RefinementResult, Refiner
    from ..training.config import MarsRewardConfig
    from .allocation import Allocation

GenerateMap = Callable[[Callable[[list], list], list], list]
ScoreResponses = Callable[[Sequence[tuple[int, str]]], np.ndarray]


def run_here(fn: Callable[[list], list], items: list) -> list:
    """The single-process `generate_map`: run `fn` on all items here."""
    return fn(items) if items else []


@dataclass
class RoundInputs:
    """Everything one round reads (and the two pieces of run state it updates: `refinements`, `used_pairs`).

    `originals` are explicit-prompt rows (prompt/chosen/rejected, text or chat messages), `margins` the current
    model's r(x, y+) - r(x, y-) on them. `distances`/`labels` are the semantic step's output (None unless the
    strategy uses them). `refinements` maps tuple index -> its refinement (a tuple is refined at most once per run;
    later rounds paraphrase the kept rewrite). `used_pairs` maps tuple index -> `pair_key`s already trained on;
    tuples missing from it start with their original pair.
    """

    round_index: int
    originals: Sequence[dict[str, Any]]
    margins: np.ndarray
    paraphraser: Paraphraser | None
    strategy: str = "mars"
    tau: float = 0.5
    margin_mode: str = "signed"
    margin_scale: str = "none"
    max_budget_share: float | None = None
    budget_ratio: float = 5.0
    rounding: str = "largest_remainder"
    seed: int = 0
    paraphrase_prompts: bool = False
    distances: np.ndarray | None = None
    labels: Sequence[str] | None = None
    refiner: Refiner | None = None
    refinements: dict[int, RefinementResult] = field(default_factory=dict)
    used_pairs: dict[int, set[str]] = field(default_factory=dict)
    generate_map: GenerateMap = run_here
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class RoundSummary:
    """One round's figures: the entry of `summary.json["rounds"]` and of the trainer's `mars/*` logs.

    Every strategy fills the first block; the optional fields belong to some strategies (None: not this one's,
    and left out of the JSON). The callback adds `epoch`, `timings` and the back-ends' counters (`backend`).
    """

    round: int
    num_original_pairs: int
    margin: dict[str, Any]
    allocation_entropy: float
    allocation_entropy_uniform: float
    budget: int
    synthetic_pairs_added: int
    pairs_short_of_budget: int
    # mars, mars_nosem, uniform: where budget a tuple could not fill went
    budget_moved: int | None = None
    tuples_short_of_budget: int | None = None
    tuples_given_moved_budget: int | None = None
    # strategies that add pairs
    tuples_augmented: int | None = None
    operations: dict[str, int] | None = None
    # adaboost: the round's loss weights
    adaboost_beta: float | None = None
    weights: dict[str, Any] | None = None
    # won: candidates and draws
    won: dict[str, Any] | None = None
    # set by the callback once the round has run
    epoch: int | None = None
    timings: dict[str, float] | None = None
    backend: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON entry: set fields in declaration order, then the back-end counters as top-level keys."""
        entry = {f.name: getattr(self, f.name) for f in fields(self)
                 if f.name != "backend" and getattr(self, f.name) is not None}
        return {**entry, **self.backend}


@dataclass
class RoundResult:
    """Everything one round produced: rows to add, loss weights per original tuple (None: unchanged), evidence."""

    round: int
    allocation: Allocation
    allocation_rows: list[dict[str, Any]]
    synthetic_rows: list[dict[str, Any]]
    summary: RoundSummary
    timings: dict[str, float] = field(default_factory=dict)
    loss_weights: np.ndarray | None = None


@dataclass
class RoundServices:
    """What a strategy may ask of the run beyond its inputs (the callback provides them).

    `score_responses` scores (tuple index, response text) with r^{t-1}, tokenised as training tokenises (all ranks
    call it together); `won_generator` is West-of-N's candidate generator.
    """

    score_responses: ScoreResponses | None = None
    won_generator: Any = None


class RoundStrategy:
    """Base class of a round strategy. Subclasses set the class attributes and implement `run`.

    The class-level questions are asked of the config before any round runs (which back-ends to build, whether
    a weighted loss must be mixed into the trainer), so they take the settings, not an instance.
    """

    name: ClassVar[str] = ""
    #: rounds add synthetic pairs to D^t (False: they only change loss weights)
    adds_pairs: ClassVar[bool] = True

    def __init__(self, args: MarsRewardConfig):
        self.args = args

    @classmethod
    def uses_paraphraser(cls, args: MarsRewardConfig) -> bool:
        """Whether rounds call the paraphrase back-end."""
        return cls.adds_pairs

    @classmethod
    def uses_semantic_labels(cls, args: MarsRewardConfig) -> bool:
        """Whether rounds read the semantic distance labels (and so need the embedding model)."""
        return False

    @classmethod
    def sets_loss_weights(cls, args: MarsRewardConfig) -> bool:
        """Whether rounds return `loss_weights` (the trainer then needs the weighted loss from the start)."""
        return False

    def run(self, inputs: RoundInputs, services: RoundServices) -> RoundResult:
        raise NotImplementedError


# name -> the class, or "module:Class" for a built-in not imported yet
_REGISTRY: dict[str, type[RoundStrategy] | str] = {
    "mars": "trl_mars.mars.rounds:MarsStrategy",
    "mars_nosem": "trl_mars.mars.rounds:MarsStrategy",
    "uniform": "trl_mars.mars.rounds:MarsStrategy",
    "adaboost": "trl_mars.baselines.adaboost:AdaBoostStrategy",
    "won": "trl_mars.baselines.west_of_n:WestOfNStrategy",
}


def register_strategy(name: str) -> Callable[[type[RoundStrategy]], type[RoundStrategy]]:
    """Class decorator: makes `mars_strategy=name` run the decorated `RoundStrategy` subclass."""

    def register(cls: type[RoundStrategy]) -> type[RoundStrategy]:
        if not (isinstance(cls, type) and issubclass(cls, RoundStrategy)):
            raise TypeError(f"{cls!r} is not a RoundStrategy subclass.")
        if name == "none":
            raise ValueError("'none' means plain training without rounds; pick another strategy name.")
        _REGISTRY[name] = cls
        return cls

    return register


def strategy_names() -> tuple[str, ...]:
    """Every registered `mars_strategy` value that runs rounds (built-in first)."""
    return tuple(_REGISTRY)


def strategy_class(name: str) -> type[RoundStrategy]:
    """The class registered under `name` (built-ins are imported here, on first use)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"No round strategy named {name!r}; registered: {list(_REGISTRY)} (or 'none' for plain "
                         "training). Register yours with `trl_mars.mars.strategies.register_strategy`.")
    if isinstance(entry, str):
        module, attribute = entry.split(":")
        entry = getattr(importlib.import_module(module), attribute)
    return entry


def build_strategy(args: MarsRewardConfig) -> RoundStrategy:
    """The strategy object of a run, from its settings."""
    return strategy_class(args.mars_strategy)(args)
