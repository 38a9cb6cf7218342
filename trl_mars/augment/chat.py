"""OpenAI-compatible chat back-ends: the paraphraser and the judge (the refiner lives in `refiner`).

The HTTP side (retries, redaction, concurrency, the answer cache) is `client.ChatClient`; the prompts are the
versioned templates of `templates`. Both are re-exported here because they are what a user of the chat back-ends
configures.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from .client import ChatClient, sanitize_url
from .templates import Messages, PromptTemplate, load_template, render_messages

__all__ = [
    "ChatClient",
    "ChatJudge",
    "ChatParaphraser",
    "PromptTemplate",
    "load_template",
    "render_messages",
    "sanitize_url",
]


# --------------------------------------------------------------------------------------------------------------------
# Paraphraser
# --------------------------------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class ChatParaphraser:
    """`Paraphraser` back-ed by a chat model: asks for JSON ``{"paraphrases": [...]}`` per text.

    Outputs that are empty, identical to the source (ignoring case and whitespace) or duplicates of each other are
    dropped; at most `n` are kept. After each `paraphrase` call, `last_failed` holds the indices (into that call's
    `texts`) whose request failed after all retries; those come back as ``[]`` and must not be cached as answers.
    """

    name = "chat"

    def __init__(self, client: ChatClient, temperature: float = 0.0, prompt_version: str = "v1"):
        self.client = client
        self.temperature = float(temperature)
        self.template = load_template("paraphrase", prompt_version)
        self.last_failed: set[int] = set()

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "chat", **self.client.fingerprint(), "temperature": self.temperature,
                **self.template.fingerprint}

    def build_messages(self, text: str, n: int) -> Messages:
        return self.template.render(text=text, n=n)

    def paraphrase(self, texts: Sequence[str], n: int) -> list[list[str]]:
        self.last_failed = set()
        if n <= 0 or not texts:
            return [[] for _ in texts]
        answers = self.client.complete_json(
            [self.build_messages(t, n) for t in texts], {"paraphrases": list}, temperature=self.temperature
        )
        out: list[list[str]] = []
        for i, (text, answer) in enumerate(zip(texts, answers)):
            if answer is None:
                self.last_failed.add(i)
                out.append([])
                continue
            seen = {_norm(text)}
            kept: list[str] = []
            for item in answer["paraphrases"]:
                if not isinstance(item, str):
                    continue
                candidate = item.strip()
                key = _norm(candidate)
                if not key or key in seen:
                    continue
                seen.add(key)
                kept.append(candidate)
                if len(kept) == n:
                    break
            out.append(kept)
        return out


# --------------------------------------------------------------------------------------------------------------------
# Judge
# --------------------------------------------------------------------------------------------------------------------


class ChatJudge:
    """LLM judge for the refiner's label check and harm filter.

    Position bias: LLM judges tend to favour the first (or second) response shown. With ``order="hashed"`` (the
    default) each triple is shown as (chosen, rejected) or (rejected, chosen) according to one bit of a SHA-256 of its
    texts: about half of the triples each way, and the same order on every run (so answers are cacheable and
    reproducible). ``order="fixed"`` always shows the chosen response as A; ``order="both"`` asks twice, in both
    orders, and counts the chosen response as preferred only when both answers agree (twice the calls).

    Answers are cached by the client (`ChatClient(cache=...)`): every completed answer is stored as it arrives,
    so a re-run makes no judge calls for the same inputs.
    """

    name = "chat"
    ORDERS = ("hashed", "fixed", "both")
    # The schemas sent to endpoints that take one: a conforming server cannot answer anything else.
    PREFERENCE_SCHEMA = {"type": "object", "properties": {"better": {"type": "string", "enum": ["A", "B"]}},
                         "required": ["better"], "additionalProperties": False}

    def __init__(self, client: ChatClient, *, order: str = "hashed", prompt_version: str = "v1"):
        if order not in self.ORDERS:
            raise ValueError(f"order must be one of {self.ORDERS}, got {order!r}")
        self.client = client
        self.order = order
        self.preference_template = load_template("judge_preference", prompt_version)
        self.harm_template = load_template("judge_harm", prompt_version)

    def _ask(self, template: PromptTemplate, fields: list[dict[str, str]], key: str, kind: type,
             validate: Callable[[dict], bool], json_schema: dict[str, Any] | None = None) -> list[Any]:
        """One answer per distinct field set (identical questions in a batch are asked once); None: no answer."""
        keys = [json.dumps(f, sort_keys=True, ensure_ascii=False) for f in fields]
        todo = sorted(set(keys))
        by_key = dict(zip(keys, fields))
        answers = self.client.complete_json([template.render(**by_key[k]) for k in todo], {key: kind},
                                            validate=validate, json_schema=json_schema)
        found = {k: a[key] for k, a in zip(todo, answers) if a is not None}
        return [found.get(k) for k in keys]

    def _swap(self, prompt: str, chosen: str, rejected: str) -> bool:
        if self.order == "fixed":
            return False
        digest = hashlib.sha256("\x00".join((prompt, chosen, rejected)).encode("utf-8")).digest()
        return bool(digest[0] & 1)

    def prefers_chosen(self, triples: Sequence[tuple[str, str, str]]) -> list[bool | None]:
        """For (prompt, chosen, rejected) triples: is the chosen response still the better one? None: no answer."""
        fields, plan = [], []
        for prompt, chosen, rejected in triples:
            swaps = [False, True] if self.order == "both" else [self._swap(prompt, chosen, rejected)]
            plan.append((len(fields), swaps))
            for swap in swaps:
                a, b = (rejected, chosen) if swap else (chosen, rejected)
                fields.append({"prompt": prompt, "response_a": a, "response_b": b})
        answers = self._ask(
            self.preference_template, fields, "better", str,
            lambda obj: obj["better"].strip().upper() in ("A", "B"), self.PREFERENCE_SCHEMA,
        )
        out: list[bool | None] = []
        for start, swaps in plan:
            votes = []
            for j, swap in enumerate(swaps):
                answer = answers[start + j]
                if answer is None:
                    votes.append(None)
                else:
                    votes.append((answer.strip().upper() == "A") != swap)
            if any(v is None for v in votes):
                out.append(None)
            else:
                out.append(all(votes))
        return out

    def is_harmful(self, texts_with_prompts: Sequence[tuple[str, str]]) -> list[bool | None]:
        """For (prompt, response) pairs: is the response harmful? None: no answer after the retries."""
        fields = [{"prompt": p, "response": r} for p, r in texts_with_prompts]
        return self._ask(self.harm_template, fields, "harmful", bool, lambda obj: True)
