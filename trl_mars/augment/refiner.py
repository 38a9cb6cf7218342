"""Semantic-distance refinement with a chat model (docs/architecture.md, step 5; paper section 3.2 and appendix A.3).

For each low-distance pair the REJECTED response is rewritten first (up to `max_attempts` tries) so that it stays
worse than the chosen one but moves away from it; only when no rejected rewrite is kept is the CHOSEN response
rewritten (up to `max_attempts` tries) the same way. An attempt is *kept* when all of these hold:

1. the new distance d' = 1 - e(chosen') . e(rejected') is larger than the pair's original distance (paper: "a
   rewritten pair is retained only when its final semantic distance is larger than the original distance");
2. the label check says the chosen response is still preferred (paper: "retains only rewritten pairs that preserve
   the chosen-rejected preference relation");
3. the harm check, when given, finds nothing harmful in the rewritten text.

Where we choose: the checks run inside the attempt loop, on every attempt that gained distance, so a rewrite that
flips the label or is harmful does not end the tuple: the later attempts, and then the chosen side, still get
their chance. (The paper does not say when the checks run; checking only the first distance gain would make one
bad rewrite discard a tuple that a later attempt could have refined.) A check that gives no answer (a judge that
failed after its retries) rejects that attempt with reason "failed", never "label_flipped" or "harmful". When no
attempt is kept the original pair is kept, with the reason of the last attempt that came furthest: a failed check
("label_flipped", "harmful", "failed"), else "no_distance_gain", else "failed" (no usable answer at all).

Attempt k of every pending request goes out in one batch (`ChatClient.complete_json`, concurrent requests), so
refining N pairs costs about 2 * max_attempts round trips, not N * 2 * max_attempts. Attempts differ: the attempt
number is part of the request and attempts after the first are sampled with `retry_temperature` > 0. With a cache
on the client every completed answer is stored as it arrives, so an identical re-run replays every attempt and
makes no rewrite calls.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import (
    Embedder,
    PreferenceCheck,
    RefinementRequest,
    RefinementResult,
    RefinementStats,
)
from .client import ChatClient
from .templates import Messages, load_template

logger = logging.getLogger("trl_mars")

__all__ = ["ChatRefiner", "REASONS", "summarise"]

REASONS = ("improved", "no_distance_gain", "label_flipped", "harmful", "failed")

# Takes (prompt, rewritten response) pairs; True means harmful, None means no answer (the rewrite is not kept).
HarmCheck = Callable[[list[tuple[str, str]]], list[Any]]


@dataclass
class _State:
    request: RefinementRequest
    attempts: int = 0
    usable: int = 0  # attempts that gave a usable text
    gained: int = 0  # attempts whose rewrite increased the distance (and so reached the checks)
    drifted: int = 0  # attempts whose rewrite fell below min_similarity to the text it replaces
    check_failure: str | None = None  # why the last attempt that reached the checks was not kept
    side: str | None = None  # side of the kept rewrite
    text: str | None = None
    new_distance: float | None = None


class ChatRefiner:
    """`Refiner` back-ed by an OpenAI-compatible chat model.

    Args:
        client: the `ChatClient` (its model is the rewriting model, the paper's GPT-4.1). Give it a cache to make
            re-runs free.
        embedder: the same embedder that computed the original distances.
        label_check: (prompt, chosen, rejected) triples -> "chosen still preferred?" per triple (True/False, or
            None when the check could not answer: that attempt is rejected with reason "failed").
        harm_check: optional; (prompt, rewritten response) pairs -> "harmful?" per pair (True = harmful, None =
            no answer: the filter fails closed with reason "failed").
        max_attempts: tries per side (paper: 5).
        temperature: sampling temperature of the first attempt; retry_temperature: of later attempts (> 0 so that
            they differ from the first).
        min_gain: an attempt gains when d' > distance + min_gain (a tiny margin, so that float noise between the
            stored distance and a re-embedding never counts as a gain). A rewrite that only changes case or
            whitespace of the original text never counts.
        min_similarity: a rewrite whose embedding cosine to the response it replaces is below this has left the
            topic: it is rejected before the checks (reason "drifted" when no attempt got further). 0 (default, the
            paper's setting) turns the bound off.
    """

    name = "chat"

    def __init__(
        self,
        client: ChatClient,
        embedder: Embedder,
        label_check: PreferenceCheck,
        harm_check: HarmCheck | None = None,
        max_attempts: int = 5,
        *,
        temperature: float = 0.0,
        retry_temperature: float = 0.8,
        min_gain: float = 1e-6,
        min_similarity: float = 0.0,
        prompt_version: str = "v1",
    ):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if retry_temperature <= 0 and max_attempts > 1:
            raise ValueError("retry_temperature must be > 0, or every attempt would ask for the same answer.")
        self.client = client
        self.embedder = embedder
        self.label_check = label_check
        self.harm_check = harm_check
        self.max_attempts = int(max_attempts)
        self.temperature = float(temperature)
        self.retry_temperature = float(retry_temperature)
        self.min_gain = float(min_gain)
        self.min_similarity = float(min_similarity)
        self.templates = {
            "rejected": load_template("rewrite_rejected", prompt_version),
            "chosen": load_template("rewrite_chosen", prompt_version),
        }

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": "chat",
            **self.client.fingerprint(),
            "templates": {side: t.fingerprint for side, t in self.templates.items()},
            "temperature": self.temperature,
            "retry_temperature": self.retry_temperature,
            **({"min_similarity": self.min_similarity} if self.min_similarity else {}),
        }

    # ----- requests -----------------------------------------------------------------------------------------------

    def attempt_temperature(self, attempt: int) -> float:
        return self.temperature if attempt == 1 else self.retry_temperature

    def build_messages(self, request: RefinementRequest, side: str, attempt: int) -> Messages:
        note = ""
        if attempt > 1:
            note = (
                " Earlier attempts stayed too close to the other response: make this rewrite clearly different in "
                "wording and content, within the rules."
            )
        return self.templates[side].render(
            prompt=request.prompt,
            chosen=request.chosen,
            rejected=request.rejected,
            attempt=attempt,
            max_attempts=self.max_attempts,
            attempt_note=note,
        )

    @staticmethod
    def _key(request: RefinementRequest) -> str:
        return json.dumps([request.prompt, request.chosen, request.rejected], ensure_ascii=False)

    def _rewrite(self, requests: list[RefinementRequest], side: str, attempt: int) -> list[str | None]:
        """One attempt for every request in `requests`, in one concurrent batch; identical requests are asked once."""
        keys = [self._key(r) for r in requests]
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        order = list(first.values())
        answers = self.client.complete_json(
            [self.build_messages(requests[i], side, attempt) for i in order],
            {"response": str},
            temperature=self.attempt_temperature(attempt),
        )
        texts = {keys[i]: (a["response"].strip() or None) if a is not None else None for i, a in zip(order, answers)}
        return [texts[k] for k in keys]

    # ----- algorithm ----------------------------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(list(texts)), dtype=np.float64)

    @staticmethod
    def _pair(state: _State, side: str, text: str) -> tuple[str, str, str]:
        r = state.request
        return (r.prompt, text, r.rejected) if side == "chosen" else (r.prompt, r.chosen, text)

    def _check(self, candidates: list[tuple[_State, str, float]], side: str) -> None:
        """Label check, then harm check, on this attempt's distance gains; keeps the ones that pass both."""
        triples = [self._pair(s, side, t) for s, t, _ in candidates]
        survivors = _screen(candidates, self.label_check(triples), "label_flipped", "label_check", "triples")
        if self.harm_check is not None and survivors:
            flags = self.harm_check([(s.request.prompt, t) for s, t, _ in survivors])
            # a harm flag fails the pair; None (no answer) stays None
            survivors = _screen(survivors, [None if f is None else not f for f in flags], "harmful", "harm_check",
                                "texts")
        for state, text, d_new in survivors:
            state.side, state.text, state.new_distance = side, text, d_new

    def _run_side(self, states: list[_State], side: str) -> None:
        pending = list(states)
        if not pending:
            return
        # embeddings of the side that stays fixed
        fixed = "rejected" if side == "chosen" else "chosen"
        fixed_emb = self._encode([getattr(s.request, fixed) for s in pending])
        fixed_by_id = {id(s): fixed_emb[j] for j, s in enumerate(pending)}
        own_by_id = {}
        if self.min_similarity > 0:  # embeddings of the side being rewritten, for the topic bound
            own_emb = self._encode([getattr(s.request, side) for s in pending])
            own_by_id = {id(s): own_emb[j] for j, s in enumerate(pending)}
        for attempt in range(1, self.max_attempts + 1):
            if not pending:
                break
            texts = self._rewrite([s.request for s in pending], side, attempt)
            for s in pending:
                s.attempts += 1
            usable = [(s, t) for s, t in zip(pending, texts) if t]
            candidates = []
            if usable:
                emb = self._encode([t for _, t in usable])
                for (s, text), e in zip(usable, emb):
                    s.usable += 1
                    if _same(text, getattr(s.request, side)):
                        continue
                    if own_by_id and float(np.dot(own_by_id[id(s)], e)) < self.min_similarity:
                        s.drifted += 1
                        continue
                    d_new = float(1.0 - np.dot(fixed_by_id[id(s)], e))
                    if d_new > s.request.distance + self.min_gain:
                        s.gained += 1
                        candidates.append((s, text, d_new))
            if candidates:
                self._check(candidates, side)
            pending = [s for s in pending if s.side is None]
            logger.debug("refine[%s] rewrite %s attempt %d: %d still pending", self.name, side, attempt, len(pending))

    def refine(self, requests: Sequence[RefinementRequest]) -> list[RefinementResult]:
        states = [_State(r) for r in requests]
        if not states:
            return []
        self._run_side(states, "rejected")
        self._run_side([s for s in states if s.side is None], "chosen")

        results = []
        for s in states:
            r = s.request
            if s.side is not None:
                chosen, rejected = self._pair(s, s.side, s.text)[1:]
                results.append(
                    RefinementResult(
                        index=r.index, chosen=chosen, rejected=rejected, distance=r.distance,
                        new_distance=float(s.new_distance), accepted=True, rewritten=s.side,
                        attempts=s.attempts, reason="improved",
                    )
                )
                continue
            if s.check_failure is not None:
                reason = s.check_failure
            elif s.drifted and not s.gained:
                reason = "drifted"
            elif s.usable:
                reason = "no_distance_gain"
            else:
                reason = "failed"
            # the original pair is kept, so its distance is unchanged
            results.append(
                RefinementResult(
                    index=r.index, chosen=r.chosen, rejected=r.rejected, distance=r.distance,
                    new_distance=r.distance, accepted=False, rewritten=None, attempts=s.attempts, reason=reason,
                )
            )
        counts = Counter(res.reason for res in results)
        logger.info("refine[%s]: %d pairs, outcomes %s", self.name, len(results), dict(counts))
        return results


def _screen(candidates: list, verdicts, failure: str, check: str, what: str) -> list:
    """The candidates whose verdict passes; the others get `check_failure`: "failed" for no answer (None), else
    `failure`. The check must answer once per candidate."""
    verdicts = list(verdicts)
    if len(verdicts) != len(candidates):
        raise RuntimeError(f"{check} returned {len(verdicts)} answers for {len(candidates)} {what}")
    kept = []
    for candidate, verdict in zip(candidates, verdicts):
        if verdict is None:
            candidate[0].check_failure = "failed"
        elif verdict:
            kept.append(candidate)
        else:
            candidate[0].check_failure = failure
    return kept


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def summarise(results: Sequence[RefinementResult], labels: Sequence[str]) -> RefinementStats:
    """Table 4 of the paper for one run: high/low counts from `labels` ("high"/"low" per original tuple), pairs
    attempted and improved from `results`, and the reasons of the rejected rewrites."""
    bad = {label for label in labels if label not in ("high", "low")}
    if bad:
        raise ValueError(f"labels must be 'high' or 'low', got {sorted(bad)}")
    reasons = Counter(r.reason for r in results if not r.accepted)
    return RefinementStats(
        high_distance=sum(1 for label in labels if label == "high"),
        low_distance=sum(1 for label in labels if label == "low"),
        attempted=len(results),
        improved=sum(1 for r in results if r.accepted),
        rejected_reasons=dict(sorted(reasons.items())),
    )
