"""The HTTP client of the chat back-ends: one robust JSON-answer request per item, many items at once.

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

__all__ = ["ChatClient", "MalformedAnswer", "json_schema_for", "sanitize_url"]

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
        return {"content": choice.message.content, "finish_reason": choice.finish_reason}
    except (AttributeError, TypeError, IndexError, KeyError):
        raise _NotACompletion(f"the body is not a chat completion ({type(response).__name__})") from None


def _answer_object(record: Mapping[str, Any]) -> Any:
    if record["finish_reason"] == "no_choices":
        raise MalformedAnswer("no choices in the answer")
    if record["finish_reason"] == "length":
        raise MalformedAnswer("answer cut off at the token limit")
    return _extract_json(record["content"])


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
            refuses schemas) or "json_object" (JSON mode only).
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
        self.cache = cache
        # True: send JSON schemas; False: JSON mode. A refusal recorded in the cache by an earlier run counts.
        self.use_json_schema = structured_output == "auto" and self._recorded_schema_support() is not False

    @classmethod
    def from_config(cls, config: Any, model: str | None = None, **overrides: Any) -> ChatClient:
        """Builds a client from a `MarsRewardConfig` (`mars_chat_*` fields); `model` overrides `mars_chat_model`."""
        kwargs: dict[str, Any] = dict(
            base_url=config.mars_chat_base_url,
            api_key_env=config.mars_chat_api_key_env,
            timeout=config.mars_chat_timeout,
            max_retries=config.mars_chat_max_retries,
            max_concurrency=config.mars_chat_max_concurrency,
        )
        kwargs.update(overrides)
        return cls(model or config.mars_chat_model, **kwargs)

    def __repr__(self) -> str:
        return f"ChatClient(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        if self.cache_tag:
            out["cache_tag"] = self.cache_tag
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
        return request

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

    def _one(
        self,
        messages: Messages,
        schema: Schema,
        validate: Callable[[dict], bool] | None,
        temperature: float,
        json_schema: Mapping[str, Any],
        stop: threading.Event,
    ) -> dict | None:
        import openai

        namespace = self._answer_namespace()
        completed = 0  # answers the endpoint completed for this item so far (cached or fresh): the cache key's k
        tries = 0
        while tries <= self.max_retries:
            if stop.is_set():
                return None
            request = self._request_body(messages, temperature, json_schema)
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
                    record = _completion(self._client.chat.completions.create(**request))
                    if self.cache is not None:  # written as it arrives: a crash loses only what is in flight
                        self.cache.put_many(namespace, {key: record})
                completed += 1
                return _check_schema(_answer_object(record), schema, validate)
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
                delay = 0.0 if replay_next and self._is_cached(namespace, messages, temperature, json_schema,
                                                                 completed) else self._backoff(tries, error)
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

    def _is_cached(self, namespace, messages, temperature, json_schema, number: int) -> bool:
        """Whether the next answer is a replay (then there is nothing to wait for)."""
        key = self._answer_key(self._request_body(messages, temperature, json_schema), number)
        return key in self.cache.get_many(namespace, [key])

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
        if not messages_list:
            return []
        json_schema = json_schema if json_schema is not None else json_schema_for(schema_keys)
        stop = threading.Event()
        workers = min(self.max_concurrency, len(messages_list))
        if workers == 1:
            try:
                return [self._one(m, schema_keys, validate, temperature, json_schema, stop) for m in messages_list]
            except _Fatal as exc:
                raise RuntimeError(str(exc)) from None
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="trl_mars_chat") as pool:
            futures = [pool.submit(self._one, m, schema_keys, validate, temperature, json_schema, stop)
                       for m in messages_list]
            results: list[dict | None] = []
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


def _make_redactor(secret: str) -> Callable[[str], str]:
    def redact(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    return redact
