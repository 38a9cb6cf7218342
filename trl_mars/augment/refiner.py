"""Semantic-distance refinement with a chat model (DESIGN.md 1, step 5; paper appendix, "Response rewriting").

For each low-distance pair the REJECTED response is rewritten first (up to `max_attempts` tries) so that it stays
worse than the chosen one but moves away from it; an attempt succeeds when the new distance
d' = 1 - e(chosen) . e(rejected') is larger than the pair's original distance. Only when no rejected rewrite
succeeds is the CHOSEN response rewritten (up to `max_attempts` tries) the same way. The first successful rewrite is
then kept only if the label check says the chosen response is still preferred and the harm check (when given) finds
nothing harmful in the rewritten text; otherwise the original pair is kept.

Attempt k of every pending request goes out in one batch (`ChatClient.complete_json`, concurrent requests), so
refining N pairs costs about 2 * max_attempts round trips, not N * 2 * max_attempts. Attempts differ: the attempt
number is part of the request, attempts after the first are sampled with `retry_temperature` > 0, and the attempt
number is part of the cache namespace. Every usable rewrite answer is cached, so a re-run makes no rewrite calls.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Embedder, PreferenceCheck, RefinementRequest, RefinementResult, RefinementStats
from .cache import AugmentationCache
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
    side: str | None = None  # side of the successful rewrite
    text: str | None = None
    new_distance: float | None = None


class ChatRefiner:
    """`Refiner` back-ed by an OpenAI-compatible chat model.

    Args:
        client: the `ChatClient` (its model is the rewriting model, the paper's GPT-4.1).
        embedder: the same embedder that computed the original distances.
        label_check: (prompt, chosen, rejected) triples -> "chosen still preferred?" per triple. A None answer (a
            judge that failed after its retries) rejects the rewrite with reason "failed".
        harm_check: optional; (prompt, rewritten response) pairs -> "harmful?" per pair (True = harmful). A None
            answer rejects the rewrite with reason "failed" (the filter fails closed).
        max_attempts: tries per side (paper: 5).
        cache: optional `AugmentationCache` for the rewrite answers.
        temperature: sampling temperature of the first attempt; retry_temperature: of later attempts (> 0 so that
            they differ from the first).
        min_gain: an attempt succeeds when d' > distance + min_gain (a tiny margin, so that float noise between the
            stored distance and a re-embedding never counts as a gain). A rewrite that only changes case or
            whitespace of the original text never counts.
    """

    name = "chat"

    def __init__(
        self,
        client: ChatClient,
        embedder: Embedder,
        label_check: PreferenceCheck,
        harm_check: HarmCheck | None = None,
        max_attempts: int = 5,
        cache: AugmentationCache | None = None,
        *,
        temperature: float = 0.0,
        retry_temperature: float = 0.8,
        min_gain: float = 1e-6,
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
        self.cache = cache
        self.temperature = float(temperature)
        self.retry_temperature = float(retry_temperature)
        self.min_gain = float(min_gain)
        self.templates = {
            "rejected": load_template("rewrite_rejected", prompt_version),
            "chosen": load_template("rewrite_chosen", prompt_version),
        }
        self.calls_made = 0  # rewrite requests sent (cache misses)
        self.cache_hits = 0

    def fingerprint(self) -> dict[str, Any]:
        return {
            "backend": "chat",
            **self.client.fingerprint(),
            "templates": {side: t.fingerprint for side, t in self.templates.items()},
            "temperature": self.temperature,
            "retry_temperature": self.retry_temperature,
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

    def _namespace(self, side: str, attempt: int) -> dict[str, Any]:
        return {
            "op": f"rewrite_{side}",
            "backend": "chat",
            **self.client.fingerprint(),
            **self.templates[side].fingerprint,
            "attempt": attempt,
            "temperature": self.attempt_temperature(attempt),
        }

    @staticmethod
    def _key(request: RefinementRequest) -> str:
        return json.dumps([request.prompt, request.chosen, request.rejected], ensure_ascii=False)

    def _rewrite(self, requests: list[RefinementRequest], side: str, attempt: int) -> list[str | None]:
        """One attempt for every request in `requests`: cached answers first, the rest in one concurrent batch."""
        namespace = self._namespace(side, attempt)
        keys = [self._key(r) for r in requests]
        found = self.cache.get_many(namespace, keys) if self.cache is not None else {}
        self.cache_hits += sum(1 for k in set(keys) if k in found)
        todo = [i for i, k in enumerate(keys) if k not in found]
        # identical requests in one batch are asked once
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(keys[i], i)
        if first:
            order = list(first.values())
            answers = self.client.complete_json(
                [self.build_messages(requests[i], side, attempt) for i in order],
                {"response": str},
                temperature=self.attempt_temperature(attempt),
            )
            self.calls_made += len(order)
            fresh = {keys[i]: a["response"].strip() for i, a in zip(order, answers) if a is not None}
            fresh = {k: v for k, v in fresh.items() if v}
            if self.cache is not None:
                self.cache.put_many(namespace, fresh)
            found.update(fresh)
        return [found.get(k) for k in keys]

    # ----- algorithm ----------------------------------------------------------------------------------------------

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(list(texts)), dtype=np.float64)

    def _run_side(self, states: list[_State], side: str) -> None:
        pending = list(states)
        if not pending:
            return
        # embeddings of the side that stays fixed
        fixed = "rejected" if side == "chosen" else "chosen"
        fixed_emb = self._encode([getattr(s.request, fixed) for s in pending])
        fixed_by_id = {id(s): fixed_emb[j] for j, s in enumerate(pending)}
        for attempt in range(1, self.max_attempts + 1):
            if not pending:
                break
            texts = self._rewrite([s.request for s in pending], side, attempt)
            usable = [(s, t) for s, t in zip(pending, texts) if t]
            for s in pending:
                s.attempts += 1
            if usable:
                emb = self._encode([t for _, t in usable])
                for (s, text), e in zip(usable, emb):
                    s.usable += 1
                    if _same(text, getattr(s.request, side)):
                        continue
                    d_new = float(1.0 - np.dot(fixed_by_id[id(s)], e))
                    if d_new > s.request.distance + self.min_gain:
                        s.side, s.text, s.new_distance = side, text, d_new
            pending = [s for s in pending if s.side is None]
            logger.debug("refine[%s] rewrite %s attempt %d: %d still pending", self.name, side, attempt, len(pending))

    def refine(self, requests: Sequence[RefinementRequest]) -> list[RefinementResult]:
        states = [_State(r) for r in requests]
        if not states:
            return []
        self._run_side(states, "rejected")
        self._run_side([s for s in states if s.side is None], "chosen")

        found = [s for s in states if s.side is not None]
        reasons: dict[int, str] = {}
        if found:
            triples = []
            for s in found:
                r = s.request
                chosen, rejected = (s.text, r.rejected) if s.side == "chosen" else (r.chosen, s.text)
                triples.append((r.prompt, chosen, rejected))
            kept = list(self.label_check(triples))
            if len(kept) != len(found):
                raise RuntimeError(f"label_check returned {len(kept)} answers for {len(found)} triples")
            survivors = []
            for s, ok in zip(found, kept):
                if ok is None:  # the check gave no answer: keep the original pair
                    reasons[id(s)] = "failed"
                elif bool(ok):
                    survivors.append(s)
                else:
                    reasons[id(s)] = "label_flipped"
            if self.harm_check is not None and survivors:
                harmful = list(self.harm_check([(s.request.prompt, s.text) for s in survivors]))
                if len(harmful) != len(survivors):
                    raise RuntimeError(f"harm_check returned {len(harmful)} answers for {len(survivors)} texts")
                for s, flag in zip(survivors, harmful):
                    if flag is None:  # no answer: the filter fails closed
                        reasons[id(s)] = "failed"
                    elif bool(flag):
                        reasons[id(s)] = "harmful"

        results = []
        for s in states:
            r = s.request
            if s.side is not None and id(s) not in reasons:
                chosen, rejected = (s.text, r.rejected) if s.side == "chosen" else (r.chosen, s.text)
                results.append(
                    RefinementResult(
                        index=r.index, chosen=chosen, rejected=rejected, distance=r.distance,
                        new_distance=float(s.new_distance), accepted=True, rewritten=s.side,
                        attempts=s.attempts, reason="improved",
                    )
                )
                continue
            if s.side is not None:
                reason = reasons[id(s)]
            elif s.usable == 0:
                reason = "failed"
            else:
                reason = "no_distance_gain"
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
