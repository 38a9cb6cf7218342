"""The West-of-N baseline (`mars_strategy="won"`, Pace et al. 2024): best vs worst of N scored candidates.

Per round, with the same budget B = ratio * N_pairs as MARS and the same round structure (round t scores with
r^{t-1} at the start of epoch t; evidence in `round_<t>/allocation.jsonl` and `synthetic.jsonl`):

1. every original prompt gets b_i = B / N_pairs draws (`allocation.uniform_budgets`: West-of-N has no margin-based
   allocation; margins are still scored and recorded);
2. a generator writes b_i * N candidate responses for the prompt (N = `mars_won_candidates`);
3. the current reward model scores each (prompt, candidate);
4. the candidates are split at random (seeded) into b_i disjoint draws; each draw's highest- and lowest-scored
   candidates become one synthetic pair (`west_of_n_pairs`), so a round adds up to B pairs.

Our choices, where the paper leaves room: disjoint draws (each pair is an independent West-of-N sample, rather
than 2nd-best vs 2nd-worst of one big pool); a prompt with fewer than b_i * N candidates gets fewer draws (at least
one while it has two candidates), and the round reports pairs added against the budget; a draw whose best and
worst score within `MIN_SCORE_GAP` adds nothing (no preference); and, as for MARS, a round never adds a pair that is
already in the training data: when best-vs-worst is (the original pair, or an earlier round's pair from a
deterministic generator), the draw's widest-gap pair not yet trained on is used instead.

Generators (`CandidateGenerator`): `ParaphrasePoolGenerator` (the offline default: the prompt's original chosen and
rejected responses and their paraphrases from the configured paraphraser, so the best-vs-worst pair may be
a paraphrase of either side, ordered by the model rather than by the label), `CausalLMGenerator` (samples from a
causal LM with the in-process engine) and `ChatGenerator` (an OpenAI-compatible endpoint).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..augment.base import Paraphraser
from ..data.preferences import prompt_text, response_text, with_response_text
from ..mars.allocation import (
    Allocation,
    allocation_entropy,
    margin_statistics,
    split_budget,
    total_budget,
    uniform_budgets,
)
from ..mars.rounds import pair_key
from ..mars.strategies import (
    RoundInputs,
    RoundResult,
    RoundServices,
    RoundStrategy,
    RoundSummary,
    ScoreResponses,
)

# A best-vs-worst gap at or below this is no preference at all (equal texts, or the model cannot tell them apart).
MIN_SCORE_GAP = 1e-6


@runtime_checkable
class CandidateGenerator(Protocol):
    """Writes candidate responses for prompts. `name` goes into every synthetic row's provenance."""

    name: str

    def fingerprint(self) -> dict[str, Any]: ...

    def candidates(self, rows: Sequence[dict[str, str]], n: int) -> list[list[str]]:
        """For each row (text `prompt`, `chosen`, `rejected`), up to `n` distinct candidate responses."""
        ...


def _distinct(texts) -> list[str]:
    seen: set[str] = set()
    return [t for t in texts if t and t.strip() and not (t in seen or seen.add(t))]


class ParaphrasePoolGenerator:
    """Candidates from the data itself: [chosen, rejected, paraphrases of chosen, paraphrases of rejected].

    n - 2 paraphrases are asked for, the chosen side getting the odd one; what the paraphraser cannot produce is
    simply missing (the round then has fewer draws for that prompt).
    """

    def __init__(self, paraphraser: Paraphraser):
        self.paraphraser = paraphraser
        self.name = f"paraphrase_pool:{paraphraser.name}"

    def fingerprint(self) -> dict[str, Any]:
        return {"generator": "paraphrase_pool", **self.paraphraser.fingerprint()}

    def candidates(self, rows: Sequence[dict[str, str]], n: int) -> list[list[str]]:
        extra = max(0, n - 2)
        n_chosen, n_rejected = extra - extra // 2, extra // 2
        chosen = self.paraphraser.paraphrase([r["chosen"] for r in rows], n_chosen) if n_chosen else [[]] * len(rows)
        rejected = (self.paraphraser.paraphrase([r["rejected"] for r in rows], n_rejected) if n_rejected
                    else [[]] * len(rows))
        return [_distinct([row["chosen"], row["rejected"], *c[:n_chosen], *r[:n_rejected]])[:n]
                for row, c, r in zip(rows, chosen, rejected)]


class CausalLMGenerator:
    """Samples candidates from a chat causal LM with the in-process engine (`augment.engine.LocalEngine`): the prompt
    as a user turn, nucleus sampling, candidate k of a prompt seeded by the prompt and k (the same texts however
    generation is sharded across ranks), every answer cached when the engine has a cache.
    """

    def __init__(self, engine, *, max_new_tokens: int = 64, temperature: float = 1.0, name: str | None = None):
        self.engine = engine
        self.max_new_tokens, self.temperature = int(max_new_tokens), float(temperature)
        self.name = name or f"causal_lm:{engine.model_id}"

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, max_new_tokens: int = 64, temperature: float = 1.0,
                        top_p: float = 0.95, seed: int = 0, cache=None) -> CausalLMGenerator:
        from ..augment.engine import LocalEngine

        engine = LocalEngine(name_or_path, cache=cache, seed=seed, top_p=top_p)
        return cls(engine, max_new_tokens=max_new_tokens, temperature=temperature, name=f"causal_lm:{name_or_path}")

    def fingerprint(self) -> dict[str, Any]:
        return {"generator": "causal_lm", **self.engine.fingerprint(), "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature}

    def candidates(self, rows: Sequence[dict[str, str]], n: int) -> list[list[str]]:
        if n <= 0 or not rows:
            return [[] for _ in rows]
        answers = self.engine.generate([[{"role": "user", "content": row["prompt"]}] for row in rows], samples=n,
                                       temperature=self.temperature, max_new_tokens=self.max_new_tokens)
        return [_distinct(text for text in texts if text)[:n] for texts in answers]


class ChatGenerator:
    """Asks an OpenAI-compatible chat model for `n` different responses to each prompt (JSON `{"responses": []}`)."""

    def __init__(self, client, *, temperature: float = 1.0, prompt_version: str = "v1"):
        from ..augment.templates import load_template

        self.client = client
        self.temperature = float(temperature)
        self.template = load_template("respond", prompt_version)
        self.name = f"chat:{client.model}" if getattr(client, "model", None) else "chat"

    def fingerprint(self) -> dict[str, Any]:
        return {"generator": "chat", **self.client.fingerprint(), "temperature": self.temperature,
                **self.template.fingerprint}

    def candidates(self, rows: Sequence[dict[str, str]], n: int) -> list[list[str]]:
        if n <= 0 or not rows:
            return [[] for _ in rows]
        answers = self.client.complete_json([self.template.render(prompt=row["prompt"], n=n) for row in rows],
                                            {"responses": list}, temperature=self.temperature)
        return [[] if answer is None else
                _distinct(item.strip() for item in answer["responses"] if isinstance(item, str))[:n]
                for answer in answers]


def build_generator(args, paraphraser: Paraphraser | None, cache=None) -> CandidateGenerator:
    """The generator `mars_won_generator` names."""
    if args.mars_won_generator == "paraphrase":
        if paraphraser is None:
            raise ValueError("`mars_won_generator='paraphrase'` needs a paraphrase back-end (`mars_paraphraser`).")
        return ParaphrasePoolGenerator(paraphraser)
    if args.mars_won_generator == "causal_lm":
        from ..augment.engine import DEFAULT_LOCAL_MODEL
        from ..augment.factory import build_local_engine

        model = args.mars_won_model or DEFAULT_LOCAL_MODEL
        return CausalLMGenerator(build_local_engine(args, model, cache), max_new_tokens=args.mars_max_new_tokens,
                                 name=f"causal_lm:{model}")
    if args.mars_won_generator == "chat":
        from ..augment.factory import build_chat_client

        return ChatGenerator(build_chat_client(args, args.mars_won_model or args.mars_chat_model, cache))
    raise ValueError(f"Unknown `mars_won_generator` {args.mars_won_generator!r}.")


# ----------------------------------------------------------------------------------------------------------------
# pairing
# ----------------------------------------------------------------------------------------------------------------


def split_draws(num_candidates: int, draws: int, per_draw: int, rng: np.random.Generator | None = None
                ) -> list[list[int]]:
    """Candidate indices split into disjoint draws: min(draws, num_candidates // per_draw) of them (one draw of
    all candidates when there are fewer than `per_draw` but at least 2), shuffled by `rng` when given."""
    if draws <= 0 or num_candidates < 2:
        return []
    count = min(draws, num_candidates // per_draw) if num_candidates >= per_draw else 1
    order = rng.permutation(num_candidates) if rng is not None else np.arange(num_candidates)
    return [[int(i) for i in part] for part in np.array_split(order, count)]


def west_of_n_pairs(scores_per_prompt: Sequence[Sequence[float]], draws_per_prompt: Sequence[Sequence[Sequence[int]]],
                    *, min_gap: float = MIN_SCORE_GAP, exclude: Callable[[int, int, int], bool] | None = None,
                    ) -> list[list[tuple[int, int] | None]]:
    """For each prompt and each draw (a list of candidate indices): (argmax, argmin) of the draw's scores, or None
    when best and worst are within `min_gap`. Ties go to the earlier candidate in the draw.

    `exclude(prompt, best, worst)` marks pairs that must not be used (ours: pairs already in the training data);
    an excluded argmax/argmin gives way to the draw's widest-gap pair that is not excluded (None if there is none).
    """
    out = []
    for p, (scores, draws) in enumerate(zip(scores_per_prompt, draws_per_prompt)):
        pairs: list[tuple[int, int] | None] = []
        for draw in draws:
            values = [float(scores[i]) for i in draw]
            best, worst = draw[int(np.argmax(values))], draw[int(np.argmin(values))]
            pair = (best, worst) if best != worst and scores[best] - scores[worst] > min_gap else None
            if pair is not None and exclude is not None and exclude(p, *pair):
                ranked = sorted(((scores[a] - scores[b], -k, a, b) for k, (a, b) in
                                 enumerate((a, b) for a in draw for b in draw if a != b)), reverse=True)
                pair = next(((a, b) for gap, _, a, b in ranked if gap > min_gap and not exclude(p, a, b)), None)
            pairs.append(pair)
        out.append(pairs)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the round
# ----------------------------------------------------------------------------------------------------------------


class WestOfNStrategy(RoundStrategy):
    """'won': generated candidates scored by r^{t-1}, best vs worst of each draw (`west_of_n_round`)."""

    @classmethod
    def uses_paraphraser(cls, args) -> bool:
        return args.mars_won_generator == "paraphrase"  # its candidate pool is paraphrases of the two responses

    def run(self, inputs: RoundInputs, services: RoundServices) -> RoundResult:
        return west_of_n_round(inputs, services.won_generator, services.score_responses,
                               candidates_per_draw=self.args.mars_won_candidates)


def candidate_requests(budgets: Sequence[int], candidates_per_draw: int) -> dict[int, list[int]]:
    """{candidates per prompt: the prompts (indices) that want that many}, in ascending count: b_i draws of N
    candidates each, prompts without budget left out. One generator call per count, in the round and in
    `scripts/pregenerate_won.py`, so both ask the engine exactly the same requests."""
    by_count: dict[int, list[int]] = defaultdict(list)
    for i, b in enumerate(budgets):
        if b > 0:
            by_count[int(b) * candidates_per_draw].append(i)
    return dict(sorted(by_count.items()))


def west_of_n_round(inputs: RoundInputs, generator: CandidateGenerator, score: ScoreResponses, *,
                    candidates_per_draw: int) -> RoundResult:
    """One West-of-N round: generate, score, pair best vs worst per draw; rows and evidence as a MARS round."""
    originals, timings = inputs.originals, inputs.timings
    n = len(originals)
    budget = total_budget(n, inputs.budget_ratio)
    budgets = uniform_budgets(n, budget)
    used = {i: inputs.used_pairs.setdefault(i, set()) for i in range(n)}
    for i in range(n):
        used[i].add(pair_key(response_text(originals[i]["chosen"]), response_text(originals[i]["rejected"])))
    text_rows = [{"prompt": prompt_text(row["prompt"]) if row["prompt"] else "",
                  "chosen": response_text(row["chosen"]), "rejected": response_text(row["rejected"])}
                 for row in originals]

    # generate: b_i * N candidates per prompt, one generator call per distinct count, sharded across ranks
    start = time.perf_counter()
    candidates: list[list[str]] = [[] for _ in range(n)]
    for count, indices in candidate_requests(budgets, candidates_per_draw).items():
        answers = inputs.generate_map(lambda shard, count=count: generator.candidates(shard, count),
                                      [text_rows[i] for i in indices])
        for i, texts in zip(indices, answers):
            candidates[i] = _distinct(texts)[:count]
    timings["generate"] = time.perf_counter() - start

    # score: every candidate with the current model, in one batched pass
    start = time.perf_counter()
    flat = [(i, c) for i in range(n) for c in range(len(candidates[i]))]
    rewards = score([(i, candidates[i][c]) for i, c in flat]) if flat else np.zeros(0)
    scores: list[list[float]] = [[] for _ in range(n)]
    for (i, _), reward in zip(flat, rewards):
        scores[i].append(float(reward))
    timings["score_candidates"] = time.perf_counter() - start

    # pair: b_i disjoint draws per prompt, best vs worst of each
    draws = [split_draws(len(candidates[i]), int(budgets[i]), candidates_per_draw,
                         np.random.default_rng([inputs.seed, inputs.round_index, i])) for i in range(n)]
    def trained_on(i: int, best: int, worst: int) -> bool:
        return pair_key(candidates[i][best], candidates[i][worst]) in used[i]

    plain = west_of_n_pairs(scores, draws)
    pairs = west_of_n_pairs(scores, draws, exclude=trained_on)
    rows: list[dict[str, Any]] = []
    allocation_rows = []
    no_preference = replaced = 0
    for i in range(n):
        best_scores, worst_scores, added = [], [], 0
        for draw, pair, first_choice in zip(draws[i], pairs[i], plain[i]):
            replaced += int(first_choice is not None and first_choice != pair)
            if pair is None:
                no_preference += int(first_choice is None)
                continue
            best, worst = pair
            used[i].add(pair_key(candidates[i][best], candidates[i][worst]))
            best_scores.append(scores[i][best])
            worst_scores.append(scores[i][worst])
            added += 1
            rows.append({
                "prompt": originals[i]["prompt"],
                "chosen": with_response_text(originals[i]["chosen"], candidates[i][best]),
                "rejected": with_response_text(originals[i]["rejected"], candidates[i][worst]),
                "source_index": i,
                "round": inputs.round_index,
                "operation": "won",
                "backend": generator.name,
                "won_scores": [scores[i][best], scores[i][worst]],
                "won_draw_size": len(draw),
            })
        allocation_rows.append({
            "index": i,
            "margin": float(inputs.margins[i]),
            "budget": int(budgets[i]),
            "candidates": len(candidates[i]),
            "candidate_scores": scores[i],
            "draws": len(draws[i]),
            "best_scores": best_scores,
            "worst_scores": worst_scores,
            "pairs_added": added,
        })
    margins = np.asarray(inputs.margins, dtype=np.float64)
    n_chosen, n_rejected = split_budget(budgets)
    allocation = Allocation(margins=margins, probs=np.full(n, 1.0 / n), budgets=budgets, n_chosen=n_chosen,
                            n_rejected=n_rejected)
    summary = RoundSummary(
        round=inputs.round_index,
        num_original_pairs=n,
        margin=margin_statistics(margins),
        allocation_entropy=allocation_entropy(allocation.probs),
        allocation_entropy_uniform=float(math.log(n)),
        budget=budget,
        synthetic_pairs_added=len(rows),
        pairs_short_of_budget=budget - len(rows),
        tuples_augmented=sum(1 for row in allocation_rows if row["pairs_added"]),
        operations={"won": len(rows)} if rows else {},
        won={
            "generator": generator.name,
            "candidates_per_draw": candidates_per_draw,
            "candidates_wanted": int(sum(budgets)) * candidates_per_draw,
            "candidates_generated": int(sum(len(c) for c in candidates)),
            "draws": int(sum(len(d) for d in draws)),
            "draws_without_preference": no_preference,
            # best-vs-worst already trained on: the draw's widest-gap new pair was used instead, when it had one
            "draws_best_worst_already_trained_on": replaced,
            "draws_without_new_pair": sum(1 for i in range(n) for p, f in zip(pairs[i], plain[i])
                                          if p is None and f is not None),
        },
    )
    return RoundResult(round=inputs.round_index, allocation=allocation, allocation_rows=allocation_rows,
                       synthetic_rows=rows, summary=summary, timings=timings)
