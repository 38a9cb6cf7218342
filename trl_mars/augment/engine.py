"""The in-process generation engine: a local causal LM that writes plain-text answers and picks verdicts.

`LocalEngine` implements the `TextGenerator` protocol (`base.py`) on any `transformers` causal LM with a chat
template; its default is `packaged:SmolLM2-135M-Instruct`, the instruction-tuned model that installs from PyPI, so
every generative step of trl-mars (paraphrasing, rewriting, judging, West-of-N candidates, win-rate responses) runs
offline. What it does, and why:

- **Seeded per answer, not per batch.** Answer k of a request is sampled with its own random generator, seeded by
  the engine's seed, the request and k. So the same request gives the same answer whatever else shares its batch,
  however many ranks share the work, and `samples=2` extends `samples=1` instead of replacing it. (transformers'
  `generate` draws from one global generator for the whole batch; a logits processor does our draw per row and
  leaves `generate` a one-hot choice, which its greedy step takes.)
- **Batched and length-sorted**: requests are rendered with the chat template, sorted by length and generated
  `batch_size` at a time with left padding, on this rank's device (`accelerate.PartialState().device`).
- **Verdicts from the next-token distribution** (`choose`): one forward pass, and the option whose first token has
  the most probability wins. A small model does not follow answer formats reliably; reading the distribution
  needs no parsing. When the options together hold less than `min_option_mass` of the probability the model is
  answering something else: the verdict is None, cached and counted as unparseable.
- **Every answer is cached** in the `AugmentationCache` (the SQLite cache the chat back-end uses), unparseable
  verdicts included, keyed by the request, the decoding settings and k. An identical re-run generates nothing, and
  never loads the model: loading is deferred to the first answer that is not cached.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from .base import Messages, ProgressLine
from .cache import AugmentationCache
from .packaged import PACKAGED_SMOLLM2, resolve_packaged_model

logger = logging.getLogger("trl_mars")

__all__ = ["DEFAULT_LOCAL_MODEL", "LocalEngine", "SeededRowSampler", "length_sorted_batches"]

DEFAULT_LOCAL_MODEL = PACKAGED_SMOLLM2
_ENGINE_VERSION = 1  # bump when a change to this file changes answers for the same request


class SeededRowSampler:
    """A logits processor that samples every row from its own `torch.Generator` (temperature, then nucleus
    filtering) and returns a one-hot score row, so that greedy decoding in `generate` takes exactly that token.
    With temperature 0 it takes the most likely token."""

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float):
        import torch

        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    # Nucleus sampling only needs the most likely tokens: sorting the whole vocabulary for every row and step costs
    # ten times the model's forward pass on a CPU. The full sort remains for the rare row whose top tokens hold
    # less than top_p.
    CANDIDATES = 256

    def __call__(self, input_ids, scores):
        import torch

        logits = scores.float()
        if self.temperature <= 0:
            tokens = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            k = probs.shape[-1] if self.top_p >= 1.0 else min(self.CANDIDATES, probs.shape[-1])
            top, index = probs.topk(k, dim=-1)
            if self.top_p < 1.0 and bool((top.sum(dim=-1) < self.top_p).any()):
                top, index = probs.sort(dim=-1, descending=True)
            if self.top_p < 1.0:
                # keep the smallest prefix whose mass reaches top_p (the most likely token is always kept)
                top = top.masked_fill(top.cumsum(dim=-1) - top >= self.top_p, 0.0)
            top, index = top.cpu(), index.cpu()
            tokens = torch.stack([row_index[torch.multinomial(row, 1, generator=g)[0]]
                                  for row, row_index, g in zip(top, index, self.generators)]).to(scores.device)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, tokens.view(-1, 1), 0.0)
        return out


class LocalEngine:
    """Plain-text generation and option verdicts from a local causal LM (see the module docstring).

    Args:
        model: a Hub id, a local folder, or `packaged:SmolLM2-135M-Instruct` (the default). The model needs a chat
            template (any instruction-tuned model has one).
        cache: the `AugmentationCache` that stores every answer; None keeps nothing between calls.
        seed: the base of every answer's seed.
        batch_size: requests per forward batch.
        top_p: nucleus filtering for sampled answers (temperature > 0).
        min_option_mass: a verdict needs its options to hold at least this share of the next-token probability.
        device: where the model runs; default this rank's accelerator device.
        progress: show a progress bar over batches (on by default; tqdm hides it where stderr is not a terminal).
    """

    name = "local"

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, *, cache: AugmentationCache | None = None, seed: int = 0,
                 batch_size: int = 16, top_p: float = 0.95, min_option_mass: float = 0.5, device: Any = None,
                 progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.model_id = str(model)
        self.cache = cache
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.top_p = float(top_p)
        self.min_option_mass = float(min_option_mass)
        self.progress = progress
        self._device = device
        self._model = None
        self._tokenizer = None
        self.counts = {"generated": 0, "cached": 0, "unparseable": 0, "verdicts": 0, "new_tokens": 0}

    # ----- identity and loading -------------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "local", "model": self.model_id, "seed": self.seed, "top_p": self.top_p,
                "engine": _ENGINE_VERSION}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def __repr__(self) -> str:
        return f"LocalEngine(model={self.model_id!r}, seed={self.seed}, loaded={self._model is not None})"

    @classmethod
    def from_model(cls, model, tokenizer, **kwargs) -> LocalEngine:
        """An engine on an already loaded model (a policy being evaluated, a test's tiny model)."""
        name = kwargs.pop("name", None) or getattr(model.config, "name_or_path", "") or type(model).__name__
        engine = cls(name, **kwargs)
        engine._model, engine._tokenizer = model, _ready_tokenizer(tokenizer)
        return engine

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            self._load()
        return self._model

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_packaged_model(self.model_id)
        device = self._device
        if device is None:
            from accelerate import PartialState

            device = PartialState().device
        device = torch.device(device)
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        logger.info("local engine: loading %s on %s", self.model_id, device)
        self._tokenizer = _ready_tokenizer(AutoTokenizer.from_pretrained(path))
        self._model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()

    # ----- the protocol ---------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[Messages], *, samples: int = 1, temperature: float = 0.7,
                 max_new_tokens: int = 192) -> list[list[str | None]]:
        if samples < 1 or not requests:
            return [[] for _ in requests]
        settings = {"temperature": float(temperature), "max_new_tokens": int(max_new_tokens)}
        keys = [[_key({"messages": list(r), **settings, "k": k}) for k in range(samples)] for r in requests]
        namespace = {"op": "generate", **self.fingerprint()}
        found = self._cached(namespace, [key for row in keys for key in row])
        todo: dict[str, tuple[int, int]] = {}
        for i, row in enumerate(keys):
            for k, key in enumerate(row):
                if key not in found:
                    todo.setdefault(key, (i, k))
        if todo:
            items = list(todo.items())
            batches = self._sample([requests[i] for _, (i, _) in items],
                                   [self._row_seed(requests[i], k) for _, (i, k) in items], **settings)
            for positions, texts in batches:  # stored batch by batch: an interrupted run keeps what it made
                fresh = {items[p][0]: text for p, text in zip(positions, texts)}
                self._store(namespace, fresh)
                found.update(fresh)
        return [[found[key] for key in row] for row in keys]

    def choose(self, requests: Sequence[Messages], options: Sequence[str]) -> list[str | None]:
        options = [str(o) for o in options]
        if len(set(options)) < 2:
            raise ValueError(f"choose needs at least two distinct options, got {options}")
        if not requests:
            return []
        keys = [_key({"messages": list(r), "options": options}) for r in requests]
        namespace = {"op": "choose", "min_option_mass": self.min_option_mass, **self.fingerprint()}
        found = self._cached(namespace, keys)
        todo: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in found:
                todo.setdefault(key, i)  # a question asked twice in one call is answered once
        if todo:
            order = list(todo.items())
            for positions, answers in self._option_probabilities([requests[i] for _, i in order], options):
                fresh = {}
                for p, probs in zip(positions, answers):
                    mass = sum(probs.values())
                    best = max(options, key=lambda o: probs[o])
                    fresh[order[p][0]] = {"choice": best if mass >= self.min_option_mass else None, "probs": probs}
                self._store(namespace, fresh)
                found.update(fresh)
        verdicts = [found[key]["choice"] for key in keys]
        self.counts["verdicts"] += len(verdicts)
        self.counts["unparseable"] += sum(v is None for v in verdicts)
        return verdicts

    # ----- cache ----------------------------------------------------------------------------------------------

    def _cached(self, namespace: dict[str, Any], keys: list[str]) -> dict[str, Any]:
        found = self.cache.get_many(namespace, list(dict.fromkeys(keys))) if self.cache is not None else {}
        self.counts["cached"] += len(found)
        return found

    def _store(self, namespace: dict[str, Any], items: dict[str, Any]) -> None:
        if self.cache is not None and items:
            self.cache.put_many(namespace, items)

    def _row_seed(self, request: Messages, k: int) -> int:
        digest = zlib.crc32(_key(list(request)).encode("utf-8"))
        return (self.seed * 1_000_003 + digest * 7919 + k) % (2**63)

    # ----- compute --------------------------------------------------------------------------------------------

    def encode(self, request: Messages) -> list[int]:
        """Token ids of a request as the model sees it: the chat template with the assistant turn opened."""
        ids = self.tokenizer.apply_chat_template(list(request), add_generation_prompt=True, tokenize=True,
                                                 return_dict=False)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def _batches(self, requests: Sequence[Messages], desc: str):
        encoded = [self.encode(r) for r in requests]
        return length_sorted_batches(encoded, self.batch_size, self.tokenizer.pad_token_id, self.model.device,
                                     desc=desc, progress=self.progress)

    def _sample(self, requests: list[Messages], seeds: list[int], *, temperature: float, max_new_tokens: int):
        """Yields (positions, answers) batch by batch."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tokenizer = self.tokenizer
        config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
        for positions, ids, mask in self._batches(requests, f"generate [{self.name}]"):
            sampler = SeededRowSampler([seeds[i] for i in positions], temperature=temperature, top_p=self.top_p)
            with torch.no_grad():
                generated = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                                logits_processor=LogitsProcessorList([sampler]))
            new = generated[:, ids.shape[1]:]
            self.counts["new_tokens"] += int((new != tokenizer.pad_token_id).sum())
            self.counts["generated"] += len(positions)
            yield positions, [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _option_tokens(self, option: str) -> list[int]:
        """First tokens of the spellings of an option that a model may start its answer with."""
        spellings = {option, option.lower(), option.upper(), option.capitalize()}
        ids = set()
        for text in spellings | {" " + s for s in spellings}:
            tokens = self.tokenizer.encode(text, add_special_tokens=False)
            if tokens:
                ids.add(tokens[0])
        ids.discard(self.tokenizer.unk_token_id)  # a spelling the vocabulary lacks says nothing about the option
        return sorted(ids)

    def _option_probabilities(self, requests: list[Messages], options: list[str]):
        """Yields (positions, {option: probability of its first tokens}) batch by batch."""
        import torch

        token_sets = {o: self._option_tokens(o) for o in options}
        shared = set.intersection(*(set(t) for t in token_sets.values()))
        if shared:
            raise ValueError(f"options {options} share a first token, so the model's answer cannot tell them apart")
        for positions, ids, mask in self._batches(requests, f"judge [{self.name}]"):
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, -1, :].float()
            probs = torch.softmax(logits, dim=-1).cpu()
            yield positions, [{o: float(probs[row, tokens].sum()) for o, tokens in token_sets.items()}
                              for row in range(len(positions))]


def length_sorted_batches(encoded: Sequence[Sequence[int]], batch_size: int, pad_id: int, device, *,
                          left_pad: bool = True, desc: str = "generate", progress: bool = True):
    """Yields (positions, input_ids, attention_mask) for token-id lists, longest first, `batch_size` at a time,
    padded with `pad_id` on the left (decoder-only generation) or the right (encoder inputs), on `device`.
    Sorting by length keeps the padding, and so the wasted compute, small. Shared by every generator of trl-mars
    (this engine, the seq2seq back-end)."""
    import torch

    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    line = ProgressLine(desc, len(order), "inputs")
    with tqdm(total=len(order), desc=desc, unit="input", leave=False, disable=not progress or None) as bar:
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in positions)
            ids = torch.full((len(positions), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(positions), width), dtype=torch.long)
            for row, i in enumerate(positions):
                span = slice(width - len(encoded[i]), width) if left_pad else slice(0, len(encoded[i]))
                ids[row, span] = torch.as_tensor(list(encoded[i]), dtype=torch.long)
                mask[row, span] = 1
            yield positions, ids.to(device), mask.to(device)
            bar.update(len(positions))
            if progress and bar.disable:  # tqdm draws nothing off a terminal: a line a minute instead
                line.update(min(start + batch_size, len(order)))


def _ready_tokenizer(tokenizer):
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("The local engine needs a model with a chat template (an instruction-tuned model): "
                         f"{getattr(tokenizer, 'name_or_path', tokenizer)!r} has none.")
    return tokenizer


def _key(payload: Any) -> str:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False)
