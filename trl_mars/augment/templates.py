"""Versioned prompt templates for the chat back-ends (paraphraser, refiner, judge).

Templates are text files in `trl_mars/augment/prompts/` (`<task>_v<N>.txt`) with a `[system]` and a `[user]`
section. Data (dialogue context, responses, texts to paraphrase) is always placed between `<<<NAME>>>` /
`<<<END NAME>>>` markers and every system message says that text between markers is data, never instructions.
Marker-like sequences inside the data are defused (`<<<` -> `< < <`) so data cannot close its own block and pose
as instructions.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from importlib import resources
from typing import Any

Messages = list[dict[str, str]]

__all__ = ["Messages", "PromptTemplate", "load_template", "render_messages"]



_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)


def _defuse(text: str) -> str:
    """Makes sure data cannot open or close a `<<<...>>>` block of its own."""
    return text.replace("<<<", "< < <").replace(">>>", "> > >")


class PromptTemplate:
    """A versioned prompt file: a `[system]` section and a `[user]` section with `{{field}}` placeholders."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.sha = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        parts = _SECTION.split(text)
        # split() with one capture group gives ['', 'system', body, 'user', body]
        sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
        if set(sections) != {"system", "user"}:
            raise ValueError(f"Prompt template {name!r} needs exactly a [system] and a [user] section.")
        self.system = sections["system"].strip()
        self.user = sections["user"].strip()

    @property
    def fingerprint(self) -> dict[str, str]:
        """The template's identity for cache keys: its file name (with version) and a hash of its text."""
        return {"template": self.name, "template_sha": self.sha}

    def render(self, **fields: Any) -> Messages:
        """Fills the placeholders in one pass (so data that looks like `{{field}}` is never expanded)."""

        def fill(template: str) -> str:
            def sub(match: re.Match[str]) -> str:
                key = match.group(1)
                if key not in fields:
                    raise KeyError(f"Prompt template {self.name!r} needs the field {key!r}.")
                return _defuse(str(fields[key]))

            return _PLACEHOLDER.sub(sub, template)

        # An empty [system] section sends no system message: the model's chat template then uses its own default.
        system = [{"role": "system", "content": fill(self.system)}] if self.system else []
        return [*system, {"role": "user", "content": fill(self.user)}]


@lru_cache(maxsize=None)
def load_template(task: str, version: str = "v1") -> PromptTemplate:
    """Loads `prompts/<task>_<version>.txt` from the installed package."""
    name = f"{task}_{version}"
    path = resources.files("trl_mars.augment").joinpath("prompts", f"{name}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"No prompt template {name!r} in trl_mars/augment/prompts/.")
    return PromptTemplate(name, path.read_text(encoding="utf-8"))


def render_messages(task: str, version: str = "v1", **fields: Any) -> Messages:
    return load_template(task, version).render(**fields)
