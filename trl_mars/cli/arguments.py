"""Command-line front end of the recipes: a `TrlParser` whose `--help` leads with MARS, and clean set-up errors.

- `MarsParser` is `trl.TrlParser` (YAML via `--config`, CLI overrides) with a short usage line and its options
  regrouped: the MARS sections first (`config.MARS_HELP_SECTIONS`), then the recipe's data and model options, then
  the long tail of `TrainingArguments` / `RewardConfig`. Each default the recipe changes shows both values.
- `exit_on_setup_error` turns the errors a user can fix (configuration, data, models) into one message on stderr
  and exit status 2, without a traceback. Set `TRL_MARS_TRACEBACK=1` to see the traceback anyway.
- `configure_logging` is the one logging set-up of the recipes and command-line entry points.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trl import TrlParser

from ..training.config import MARS_HELP_SECTIONS

EXIT_SETUP_ERROR = 2
TRACEBACK_ENV = "TRL_MARS_TRACEBACK"
# The errors set-up raises for bad input: ValueError (config, data, models: ModelSourceError), OSError (missing files,
# unloadable models), RuntimeError (chat endpoint without key or unreachable).
SETUP_ERRORS = (ValueError, OSError, RuntimeError)

_GROUP_TITLES = {
    "MarsScriptArguments": "Recipe: data and CPU threads",
    "ModelConfig": "Model (trl.ModelConfig)",
}
_TAIL_TITLE = "Training (transformers.TrainingArguments and trl.RewardConfig)"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(root_level: int = logging.INFO, *, trl_mars_level: int | None = None) -> None:
    """Timestamped log lines on stderr at `root_level`; `trl_mars_level`, when given, sets trl-mars's own logger
    apart (e.g. its round progress at INFO under a WARNING root that keeps other libraries quiet).

    Like `logging.basicConfig`, it changes nothing when the root logger already has handlers."""
    logging.basicConfig(format=LOG_FORMAT, level=root_level)
    if trl_mars_level is not None:
        logging.getLogger("trl_mars").setLevel(trl_mars_level)


class MarsParser(TrlParser):
    """`TrlParser` with MARS-first `--help` and recipe defaults that keep the library's defaults visible.

    Args:
        dataclass_types: as for `TrlParser`.
        recipe_defaults: defaults the recipe sets over the dataclasses' own (applied like a YAML config; YAML and
            CLI values still win). `--help` shows each as "default: <recipe value>; library default: <value>".
    """

    def __init__(self, dataclass_types, recipe_defaults: dict[str, Any] | None = None, **kwargs):
        kwargs.setdefault("usage", "%(prog)s [--config YAML] [--OPTION VALUE ...]   (-h for the options)")
        kwargs.setdefault(
            "description",
            "Options come from a YAML file (--config) and the command line (which wins). MARS options first, then "
            "data and model, then the TrainingArguments of transformers and TRL.",
        )
        super().__init__(dataclass_types, **kwargs)
        self._regroup()
        if recipe_defaults:
            self.set_recipe_defaults(**recipe_defaults)

    def set_recipe_defaults(self, **defaults: Any) -> None:
        """Applies the recipe's defaults and notes, in each changed option's help, the library default."""
        for action in self._actions:
            if action.dest in defaults and action.help and action.default != defaults[action.dest]:
                library = str(action.default).replace("%", "%%")
                action.help = f"{action.help} (default: %(default)s; library default: {library})"
        unused = self.set_defaults_with_config(**defaults)
        if unused:
            raise ValueError(f"Recipe defaults name unknown options: {unused}.")

    def _regroup(self) -> None:
        """Moves each option into its section and puts the sections in reading order."""
        by_dest: dict[str, list[argparse.Action]] = {}
        for action in self._optionals._group_actions:
            by_dest.setdefault(action.dest, []).append(action)
            # Show `--mars_tau`, not also `--mars-tau`: both still parse (`_option_string_actions` keeps them).
            names = action.option_strings
            if len(names) == 2 and names[1] == names[0].replace("_", "-"):
                action.option_strings = names[:1]
        groups = []

        def take(title: str, dests) -> None:
            group = self.add_argument_group(title)
            for dest in dests:
                for action in by_dest.pop(dest, []):
                    self._optionals._group_actions.remove(action)
                    group._group_actions.append(action)
            if group._group_actions:
                groups.append(group)

        for title, names in MARS_HELP_SECTIONS.items():
            take(title, names)
        take("MARS: other", [d for d in list(by_dest) if d.startswith("mars_")])
        for dtype in self.dataclass_types:
            if dtype.__name__ in _GROUP_TITLES:
                take(_GROUP_TITLES[dtype.__name__], [f.name for f in dataclasses.fields(dtype)])
        self._optionals.title = _TAIL_TITLE
        self._action_groups = [self._positionals, *groups, self._optionals]


def _rank_prefix() -> str:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"[rank {os.environ.get('RANK', '?')}] " if world > 1 else ""


@contextmanager
def exit_on_setup_error() -> Iterator[None]:
    """Inside: set-up (parsing, data, models). A `SETUP_ERRORS` exception prints one line and exits with status 2.

    Training itself should run outside this block, so a failure there keeps its traceback.
    """
    try:
        yield
    except SETUP_ERRORS as exc:
        if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            raise
        kind = "" if isinstance(exc, ValueError) else f" ({type(exc).__name__})"
        print(f"{_rank_prefix()}[MARS] error{kind}: {exc}", file=sys.stderr)
        print(f"(set {TRACEBACK_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(EXIT_SETUP_ERROR)
