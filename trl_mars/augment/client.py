"""The HTTP client of the chat back-ends: one robust request per item (a JSON answer, or plain text), many at once.

Everything goes through the official `openai` client (so any OpenAI-compatible server works: OpenAI, Azure-style
gateways, vLLM, TGI, llama.cpp, ...). The client's own retries are switched off; `ChatClient` retries by itself so
that it can also retry *malformed answers* (content that is not the JSON object asked for), count what happened, and
give up on one item without stopping the run.

Structured output: every request asks for a JSON object. Where the endpoint supports it (OpenAI, vLLM, ...) the
request carries the answer's JSON schema (`response_format` of type `json_schema`, strict), so a conforming server
cannot answer with other keys; an endpoint that refuses schemas (HTTP 400/422 naming the response format) is asked
again at once in JSON mode (`json_object`), and the client stays in JSON mode for the rest of the run. With a cache
the choice is remembered per endpoint and model, so a re-run does not pay for the refusal again.

The answer cache: with an `AugmentationCache`, every answer the endpoint *completed* (HTTP 200 with a chat
completion), usable or not, is written to the cache the moment it arrives, keyed by the exact request body and
the answer's number k (0 for the first completed answer to that request, 1 for the second, ...). Retries of a
malformed answer within a run still happen (the next try is answer k + 1, a different key); an identical re-run
replays answers 0, 1, ... from the cache and reaches the same result without a request. Only transport failures
(connection errors, timeouts, 429, 5xx, a body that is not a chat completion) are never cached, so they, and only
they, are asked again. A run killed mid-way loses at most the requests in flight.

Plain text: `complete_text` asks without `response_format` and takes any completed answer as it is (for models that
do not follow JSON, such as a 135M model behind `transformers serve`); `ChatTextGenerator` builds the
`TextGenerator` protocol of `base.py` on it: k sampled answers per request (answer k carries seed `seed + k`, so it
is its own request and cache entry) and one-word verdicts read by `parse_option`. The cache, retries and
concurrency are the same as for JSON answers.

Secrets: the API key is read from an environment variable (by default `OPENAI_API_KEY`) and handed to the `openai`
client only. It is never stored on our objects, never part of a `fingerprint()` (so never part of a cache key),
and it is redacted from every message we log or raise.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .cache import AugmentationCache
from .templates import Messages

logger = logging.getLogger("trl_mars")

Schema = Mapping[str, "type | tuple[type, ...]"] | Sequence[str]

__all__ = ["ChatClient", "ChatTextGenerator", "MalformedAnswer", "json_schema_for", "parse_option", "sanitize_url"]

# A 400/422 whose message names one of these is an endpoint that does not take JSON schemas: use JSON mode.
_SCHEMA_REFUSAL = re.compile(r"json_schema|response_format|structured output|guided_json", re.IGNORECASE)
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object"}


def json_schema_for(schema: Schema) -> dict[str, Any]:
    """A strict JSON schema for an answer object with the keys of `schema` (key -> Python type(s)).

    `str`/`bool`/`int`/`float`/`dict` map to their JSON types and `list` to an array of strings (every list answer
    of this package is one); a key given without a type, or with a tuple of types, may hold any JSON value.
    """
    items = schema.items() if isinstance(schema, Mapping) else ((key, object) for key in schema)
    properties: dict[str, Any] = {}
    for key, kind in items:
        if kind is list:
            properties[key] = {"type": "array", "items": {"type": "string"}}
        elif kind in _JSON_TYPES:
            properties[key] = {"type": _JSON_TYPES[kind]}
        else:
            properties[key] = {}
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}




def sanitize_url(url: str | None) -> str | None:
    """Drops user:password, query and fragment from a URL (they may carry credentials)."""
    if url is None:
        return None
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class MalformedAnswer(ValueError):
    """The model answered, but not with the JSON object asked for."""


class _Fatal(RuntimeError):
    pass


def _extract_json(content: str | None) -> Any:
    if content is None:
        raise MalformedAnswer("empty message content")
    text = content.strip()
    fenced = re.fullmatch(r"```(?:json|JSON)?\s*\n?(.*?)\n?\s*```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedAnswer(f"content is not JSON ({exc.msg})") from None


class _NotACompletion(RuntimeError):
    """The body is not a chat completion (a proxy's HTML page, ...): a transport failure, never cached."""


def _completion(response: Any) -> dict[str, Any]:
    """The first choice of a completion as a cacheable record: {"content": str | None, "finish_reason": str}."""
    try:
        choices = response.choices
        if not choices:
            return {"content": None, "finish_reason": "no_choices"}
        choice = choices[0]
        record = {"content": choice.message.content, "finish_reason": choice.finish_reason}
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "completion_tokens", None) if usage is not None else None
        if isinstance(tokens, int):
            record["completion_tokens"] = tokens
        return record
    except (AttributeError, TypeError, IndexError, KeyError):
        raise _NotACompletion(f"the body is not a chat completion ({type(response).__name__})") from None


def _answer_object(record: Mapping[str, Any]) -> Any:
    if record["finish_reason"] == "no_choices":
        raise MalformedAnswer("no choices in the answer")
    if record["finish_reason"] == "length":
        raise MalformedAnswer("answer cut off at the token limit")
    return _extract_json(record["content"])


def _answer_text(record: Mapping[str, Any]) -> str:
    if record["finish_reason"] == "no_choices":
        raise MalformedAnswer("no choices in the answer")
    return (record["content"] or "").strip()


def _check_schema(obj: Any, schema: Schema, validate: Callable[[dict], bool] | None) -> dict:
    if not isinstance(obj, dict):
        raise MalformedAnswer(f"expected a JSON object, got {type(obj).__name__}")
    items = schema.items() if isinstance(schema, Mapping) else ((key, object) for key in schema)
    for key, kind in items:
        if key not in obj:
            raise MalformedAnswer(f"missing key {key!r}")
        value = obj[key]
        # bool is a subclass of int: only accept it where bool is asked for
        if isinstance(value, bool) and kind is not object and not _allows_bool(kind):
            raise MalformedAnswer(f"key {key!r} has the wrong type (bool)")
        if not isinstance(value, kind):
            raise MalformedAnswer(f"key {key!r} has the wrong type ({type(value).__name__})")
    if validate is not None and not validate(obj):
        raise MalformedAnswer("answer failed validation")
    return obj


def _allows_bool(kind: Any) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return bool in kinds


class ChatClient:
    """A small, robust wrapper over `openai.OpenAI` for many independent JSON-answer chat requests.

    Args:
        model: chat model name.
        base_url: OpenAI-compatible endpoint (e.g. ``http://localhost:8000/v1``). None: the `openai` client's own
            default (the ``OPENAI_BASE_URL`` variable, else api.openai.com).
        api_key_env: name of the environment variable that holds the API key. The key is read once here and given
            to the `openai` client; it is never stored on this object, logged, or put in a fingerprint.
        timeout: seconds per HTTP request before it counts as a timeout (and is retried).
        max_retries: retries per item after the first try, on HTTP 429, 408/409, 5xx, timeouts, connection errors
            and malformed answers (non-JSON content, or JSON missing the required keys). After that the item is
            marked failed (None) and the run goes on. Other 4xx answers fail the item at once; 401/403 stop the run.
        max_concurrency: requests in flight at once (a thread pool).
        backoff_base, backoff_max: exponential backoff with full jitter: before retry k (k = 1, 2, ...) sleep a
            uniform random time in [0, min(backoff_max, backoff_base * 2**(k-1))]; a server's ``Retry-After``
            header raises the sleep to that value (capped at ``backoff_max``).
        max_tokens: optional cap on generated tokens per request (sent as ``max_completion_tokens``).
        cache_tag: optional string added to `fingerprint()`. The endpoint is *not* part of the fingerprint (the same
            model name through different gateways shares cached answers); set a tag to keep them apart.
        cache: optional `AugmentationCache`: every completed answer is stored as it arrives and replayed on an
            identical request (see the module docstring).
        structured_output: "auto" (send the answer's JSON schema, strict; fall back to JSON mode when the endpoint
            refuses schemas) or "json_object" (JSON mode only). Plain-text requests (`complete_text`) carry none.
        extra_body: extra fields merged into every request body (and so into its cache key), for endpoint-specific
            options such as `transformers serve`'s ``{"generation_config": '{"do_sample": true}'}`` (that server
            decodes greedily, whatever the temperature, unless its generation config samples). Never a secret.
    """

    STRUCTURED_OUTPUT = ("auto", "json_object")

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        max_concurrency: int = 8,
        backoff_base: float = 1.0,
        backoff_max: float = 30.0,
        max_tokens: int | None = None,
        cache_tag: str | None = None,
        cache: AugmentationCache | None = None,
        structured_output: str = "auto",
        extra_body: Mapping[str, Any] | None = None,
    ):
        import openai

        if max_retries < 0 or max_concurrency < 1 or timeout <= 0:
            raise ValueError("ChatClient needs max_retries >= 0, max_concurrency >= 1 and timeout > 0.")
        if structured_output not in self.STRUCTURED_OUTPUT:
            raise ValueError(f"structured_output must be one of {self.STRUCTURED_OUTPUT}, got {structured_output!r}")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_concurrency = int(max_concurrency)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_tokens = max_tokens
        self.cache_tag = cache_tag
        self.extra_body = dict(extra_body or {})

        key = os.environ.get(api_key_env)
        if not key:
            raise RuntimeError(
                f"No API key for the chat back-end: the environment variable {api_key_env!r} is not set or empty. "
                f"Export it (or point `mars_chat_api_key_env` at the variable that holds the key)."
            )
        # Only used to scrub the key out of messages; a digest-free, in-memory closure, not an attribute.
        self._redact = _make_redactor(key)
        kwargs: dict[str, Any] = {"api_key": key, "timeout": self.timeout, "max_retries": 0}
        if base_url is not None:
            kwargs["base_url"] = base_url
        self._client = openai.OpenAI(**kwargs)
        self.base_url = sanitize_url(str(self._client.base_url))
        del key

        self._lock = threading.Lock()
        self.requests_sent = 0
        self.retries = 0
        self.failures = 0
        self.cache_hits = 0  # completed answers replayed from the cache instead of requested
        self.answers_generated = 0  # completed answers the endpoint sent in this run (not replays)
        self.completion_tokens = 0  # their generated tokens, where the endpoint reports usage
        self.cache = cache
        # True: send JSON schemas; False: JSON mode. A refusal recorded in the cache by an earlier run counts.
        self.use_json_schema = structured_output == "auto" and self._recorded_schema_support() is not False

    def __repr__(self) -> str:
        return f"ChatClient(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        if self.cache_tag:
            out["cache_tag"] = self.cache_tag
        if self.extra_body:
            out["extra_body"] = self.extra_body
        return out

    def stats(self) -> dict[str, int]:
        return {"requests_sent": self.requests_sent, "retries": self.retries, "failures": self.failures,
                "cache_hits": self.cache_hits}

    # ----- answer cache and structured output ------------------------------------------------------------------------

    def _answer_namespace(self) -> dict[str, Any]:
        return {"op": "chat_completion", "version": 1, **self.fingerprint()}

    def _capability_namespace(self) -> dict[str, Any]:
        # per endpoint: the same model name may take schemas through one gateway and not through another
        return {"op": "chat_capabilities", "base_url": self.base_url, **self.fingerprint()}

    def _recorded_schema_support(self) -> bool | None:
        if self.cache is None:
            return None
        return self.cache.get_many(self._capability_namespace(), ["json_schema"]).get("json_schema")

    def _refuse_schemas(self, exc: BaseException) -> None:
        with self._lock:
            if not self.use_json_schema:
                return
            self.use_json_schema = False
        logger.warning("chat endpoint %s refused JSON schemas (%s); using JSON mode", self.base_url,
                       self._describe(exc))
        if self.cache is not None:
            self.cache.put_many(self._capability_namespace(), {"json_schema": False})

    def _request_body(self, messages: Messages, temperature: float, json_schema: Mapping[str, Any]) -> dict:
        request: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature}
        if self.use_json_schema:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "strict": True, "schema": dict(json_schema)},
            }
        else:
            request["response_format"] = {"type": "json_object"}
        if self.max_tokens is not None:
            request["max_completion_tokens"] = self.max_tokens
        request.update(self.extra_body)
        return request

    def _text_body(self, messages: Messages, temperature: float, max_tokens: int | None, seed: int | None) -> dict:
        request: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature}
        cap = max_tokens if max_tokens is not None else self.max_tokens
        if cap is not None:
            request["max_completion_tokens"] = int(cap)
        if seed is not None:
            request["seed"] = int(seed)
        request.update(self.extra_body)
        return request

    def _create_kwargs(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The `openai` client's arguments for a request body: fields it does not know travel as `extra_body`."""
        kwargs = {k: v for k, v in request.items() if k not in self.extra_body}
        extra = {k: v for k, v in request.items() if k in self.extra_body}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    @staticmethod
    def _answer_key(request: Mapping[str, Any], number: int) -> str:
        return json.dumps(request, sort_keys=True, ensure_ascii=False) + f"\x00answer={number}"

    # ----- errors -------------------------------------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        status = getattr(exc, "status_code", None)
        text = str(exc)
        if len(text) > 300:
            text = text[:300] + "..."
        label = type(exc).__name__ + (f" (HTTP {status})" if status else "")
        return self._redact(f"{label}: {text}")

    def check_connection(self) -> None:
        """A cheap call that fails fast, with a clear message, when the endpoint or the key does not work.

        Lists the models (GET /models); servers that do not implement that get a 1-token chat completion instead.
        Connection errors and timeouts are retried like any request before giving up.
        """
        import openai

        where = f"{self.base_url} (model {self.model!r}, key from ${self.api_key_env})"
        last: BaseException | None = None
        for attempt in range(self.max_retries + 1):
            try:
                try:
                    self._count_request()
                    self._client.models.list()
                except (openai.NotFoundError, openai.UnprocessableEntityError):
                    self._count_request()
                    self._client.chat.completions.create(
                        model=self.model, messages=[{"role": "user", "content": "ping"}], max_completion_tokens=1
                    )
                return
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise RuntimeError(
                    f"The chat endpoint {where} rejected the API key ({self._describe(exc)}). Check the value of the "
                    f"environment variable {self.api_key_env!r}."
                ) from None
            except openai.NotFoundError as exc:
                raise RuntimeError(
                    f"The chat endpoint {where} does not know the model: {self._describe(exc)}"
                ) from None
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                last = exc
                if attempt < self.max_retries:
                    self._count_retry()
                    time.sleep(self._backoff(attempt + 1, exc))
            except openai.APIStatusError as exc:
                raise RuntimeError(f"The chat endpoint {where} answered with an error: {self._describe(exc)}") from None
        assert last is not None
        kind = "timed out" if isinstance(last, openai.APITimeoutError) else "is unreachable"
        raise RuntimeError(
            f"The chat endpoint {where} {kind} after {self.max_retries + 1} tries ({self._describe(last)}). Check "
            f"`mars_chat_base_url` / OPENAI_BASE_URL and that the server is running."
        ) from None

    # ----- requests -----------------------------------------------------------------------------------------------

    def _count_request(self) -> None:
        with self._lock:
            self.requests_sent += 1

    def _count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def _backoff(self, retry: int, exc: BaseException | None = None) -> float:
        delay = random.uniform(0.0, min(self.backoff_max, self.backoff_base * (2 ** (retry - 1))))
        response = getattr(exc, "response", None)
        if response is not None:
            try:
                after = float(response.headers.get("retry-after", ""))
            except (TypeError, ValueError):
                after = None
            if after is not None and after > 0:
                delay = max(delay, min(after, self.backoff_max))
        return delay

    def _one(self, build: Callable[[], dict[str, Any]], parse: Callable[[Mapping[str, Any]], Any],
             stop: threading.Event) -> Any:
        """One item: asks until `parse` accepts a completed answer, the retries run out, or the run stops.

        `build()` gives the request body (called on every try: a schema refusal changes it); `parse(record)`
        returns the item's result or raises `MalformedAnswer` (a completed but unusable answer: cached, retried).
        """
        import openai

        namespace = self._answer_namespace()
        completed = 0  # answers the endpoint completed for this item so far (cached or fresh): the cache key's k
        tries = 0
        while tries <= self.max_retries:
            if stop.is_set():
                return None
            request = build()
            key = self._answer_key(request, completed)
            tries += 1
            error: BaseException
            try:
                record = None
                if self.cache is not None:
                    record = self.cache.get_many(namespace, [key]).get(key)
                if record is not None:
                    with self._lock:
                        self.cache_hits += 1
                else:
                    self._count_request()
                    record = _completion(self._client.chat.completions.create(**self._create_kwargs(request)))
                    with self._lock:
                        self.answers_generated += 1
                        self.completion_tokens += record.get("completion_tokens") or 0
                    if self.cache is not None:  # written as it arrives: a crash loses only what is in flight
                        self.cache.put_many(namespace, {key: record})
                completed += 1
                return parse(record)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                stop.set()
                raise _Fatal(
                    f"The chat endpoint {self.base_url} rejected the API key from {self.api_key_env!r} in the middle "
                    f"of the run ({self._describe(exc)})."
                ) from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if "response_format" in request and request["response_format"]["type"] == "json_schema" and (
                    _SCHEMA_REFUSAL.search(str(exc))
                ):
                    self._refuse_schemas(exc)
                    tries -= 1  # the same try again, in JSON mode
                    continue
                logger.warning("chat request failed, not retryable: %s", self._describe(exc))
                break
            except (MalformedAnswer, _NotACompletion, openai.APIConnectionError,
                    openai.APIResponseValidationError) as exc:
                error = exc
            except openai.APIStatusError as exc:
                if not (exc.status_code in (408, 409, 429) or exc.status_code >= 500):
                    logger.warning("chat request failed, not retryable: %s", self._describe(exc))
                    break
                error = exc
            if tries <= self.max_retries:
                self._count_retry()
                replay_next = isinstance(error, MalformedAnswer) and self.cache is not None
                delay = 0.0 if replay_next and self._is_cached(namespace, build(), completed) else (
                    self._backoff(tries, error))
                logger.info(
                    "chat request failed (%s); retry %d/%d in %.2fs",
                    self._describe(error), tries, self.max_retries, delay,
                )
                time.sleep(delay)
            else:
                logger.warning("chat request failed after %d tries: %s", tries, self._describe(error))
        with self._lock:
            self.failures += 1
        return None

    def _is_cached(self, namespace, request: Mapping[str, Any], number: int) -> bool:
        """Whether the next answer is a replay (then there is nothing to wait for)."""
        key = self._answer_key(request, number)
        return key in self.cache.get_many(namespace, [key])

    def _run(self, items: Sequence[tuple[Callable[[], dict[str, Any]], Callable[[Mapping[str, Any]], Any]]]) -> list:
        """Runs (build, parse) items, up to `max_concurrency` at once; a rejected key stops the run."""
        if not items:
            return []
        stop = threading.Event()
        workers = min(self.max_concurrency, len(items))
        if workers == 1:
            try:
                return [self._one(build, parse, stop) for build, parse in items]
            except _Fatal as exc:
                raise RuntimeError(str(exc)) from None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trl_mars_chat") as pool:
            futures = [pool.submit(self._one, build, parse, stop) for build, parse in items]
            results: list[Any] = []
            fatal: BaseException | None = None
            for future in futures:
                try:
                    results.append(future.result())
                except _Fatal as exc:
                    fatal = exc
                    results.append(None)
        if fatal is not None:
            raise RuntimeError(str(fatal)) from None
        return results

    def complete_json(
        self,
        messages_list: Sequence[Messages],
        schema_keys: Schema,
        *,
        temperature: float = 0.0,
        validate: Callable[[dict], bool] | None = None,
        json_schema: Mapping[str, Any] | None = None,
    ) -> list[dict | None]:
        """Sends every message list as one chat request (up to `max_concurrency` at once).

        Returns, in order, the parsed JSON object of each answer, or None for an item that failed after the retries.
        `schema_keys` names the required keys, or maps them to the required Python type(s); `validate` may check more.
        `json_schema` is the schema sent to endpoints that take one (default: `json_schema_for(schema_keys)`).
        """
        json_schema = json_schema if json_schema is not None else json_schema_for(schema_keys)

        def item(messages: Messages):
            return (lambda: self._request_body(messages, temperature, json_schema),
                    lambda record: _check_schema(_answer_object(record), schema_keys, validate))

        return self._run([item(m) for m in messages_list])

    def complete_text(
        self,
        messages_list: Sequence[Messages],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        seeds: Sequence[int | None] | None = None,
    ) -> list[str | None]:
        """Plain-text answers (no `response_format`): one per message list, stripped, in order.

        For models that do not follow JSON (small local models). Every completed answer counts and is cached,
        whatever it says, an empty one or one cut off at `max_tokens` included (it is "" or the text so far); only
        a completion without choices is retried like a malformed answer. None: the item failed after the retries
        (a transport failure, never cached). `max_tokens` overrides the client's cap for these requests. `seeds`
        (one per item, None for none) are sent as the request's `seed`: endpoints that honour it sample
        reproducibly, and different seeds make the same messages different requests (their own cache entries).
        """
        seeds = list(seeds) if seeds is not None else [None] * len(messages_list)
        if len(seeds) != len(messages_list):
            raise ValueError(f"complete_text got {len(seeds)} seeds for {len(messages_list)} requests")

        def item(messages: Messages, seed: int | None):
            return (lambda: self._text_body(messages, temperature, max_tokens, seed), _answer_text)

        return self._run([item(m, s) for m, s in zip(messages_list, seeds)])


def _make_redactor(secret: str) -> Callable[[str], str]:
    def redact(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    return redact


# --------------------------------------------------------------------------------------------------------------------
# Plain-text answers: the TextGenerator protocol over HTTP
# --------------------------------------------------------------------------------------------------------------------


def parse_option(answer: str | None, options: Sequence[str]) -> str | None:
    """Which of `options` a short free-text answer gives, or None.

    Case-insensitive. The option the answer starts with (after quotes, brackets, "*" and white space), as a whole
    word ("B.", "Yes, it is", "**A**"), wins; otherwise the one option that occurs in it as a whole word ("Response
    B is better"). An answer naming several options as whole words and starting with none ("Either A or B") is
    ambiguous: None, like an answer naming none.
    """
    if not answer:
        return None
    text = answer.strip().lstrip("\"'`*([{<#>:- \t\n").casefold()
    words = {option: re.compile(r"(?<!\w)" + re.escape(option.casefold()) + r"(?!\w)") for option in options}
    for option in options:
        match = words[option].match(text)
        if match is not None:
            return option
    found = [option for option in options if words[option].search(text)]
    return found[0] if len(found) == 1 else None


class ChatTextGenerator:
    """`TextGenerator` (see `base.TextGenerator`) over an OpenAI-compatible endpoint, for models that do not follow
    JSON: `generate` asks for plain text (no `response_format`), `choose` for one short answer (`choose_max_tokens`
    tokens, temperature 0) that `parse_option` reads.

    Everything HTTP is the `ChatClient`'s: retries, concurrency, redaction and its answer cache, which stores every
    completed answer (unparseable verdicts included) keyed by the request body and never a transport failure.
    Answer k of a `generate` request carries the seed ``seed + k``, so the k samples of one request are different
    requests (and different cache entries), and an identical re-run replays every one of them. An endpoint that
    honours `seed` (vLLM, `transformers serve`) samples each of them reproducibly too; over one that does not, only
    the cache makes a re-run identical.

    `stats()` counts over this generator's calls: "generated" (answers the endpoint completed now), "cached" (answers
    replayed), "unparseable" (verdicts that named no option), "failed" (items without an answer after the retries),
    "choices" (verdicts asked) and "completion_tokens" (generated tokens the endpoint reported).
    """

    name = "chat"

    def __init__(self, client: ChatClient, *, seed: int = 0, choose_max_tokens: int = 4):
        if choose_max_tokens < 1:
            raise ValueError(f"choose_max_tokens must be >= 1, got {choose_max_tokens}")
        self.client = client
        self.seed = int(seed)
        self.choose_max_tokens = int(choose_max_tokens)
        self._counts = {"generated": 0, "cached": 0, "unparseable": 0, "failed": 0, "choices": 0,
                        "completion_tokens": 0}

    def __repr__(self) -> str:
        return f"ChatTextGenerator({self.client!r}, seed={self.seed})"

    def fingerprint(self) -> dict[str, Any]:
        return {"backend": "chat-text", **self.client.fingerprint(), "seed": self.seed,
                "choose_max_tokens": self.choose_max_tokens}

    def stats(self) -> dict[str, int]:
        return dict(self._counts)

    def _counted(self, call: Callable[[], list]) -> list:
        client = self.client
        before = (client.answers_generated, client.cache_hits, client.failures, client.completion_tokens)
        out = call()
        after = (client.answers_generated, client.cache_hits, client.failures, client.completion_tokens)
        for name, old, new in zip(("generated", "cached", "failed", "completion_tokens"), before, after):
            self._counts[name] += new - old
        return out

    def generate(
        self, requests: Sequence[Messages], *, samples: int = 1, temperature: float = 0.7, max_new_tokens: int = 192
    ) -> list[list[str | None]]:
        if samples < 0:
            raise ValueError(f"samples must be >= 0, got {samples}")
        flat = [(messages, k) for messages in requests for k in range(samples)]
        answers = self._counted(lambda: self.client.complete_text(
            [m for m, _ in flat], temperature=temperature, max_tokens=max_new_tokens,
            seeds=[self.seed + k for _, k in flat]))
        return [answers[i * samples:(i + 1) * samples] for i in range(len(requests))]

    def choose(self, requests: Sequence[Messages], options: Sequence[str]) -> list[str | None]:
        if not options:
            raise ValueError("choose needs at least one option")
        answers = self._counted(lambda: self.client.complete_text(
            list(requests), temperature=0.0, max_tokens=self.choose_max_tokens, seeds=[self.seed] * len(requests)))
        out = []
        for answer in answers:
            verdict = parse_option(answer, options)
            self._counts["choices"] += 1
            if verdict is None and answer is not None:
                self._counts["unparseable"] += 1
            out.append(verdict)
        return out
