"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI API for the chat back-end tests.

    POST /v1/chat/completions  -> a ChatCompletion JSON whose message content is derived from the request
    GET  /v1/models            -> a model list

Answers are deterministic functions of the request (the task is recognised from the prompt templates):
paraphrase -> variants built from the source text (plus the source itself and a duplicate, which the client must
filter); rewrite -> `rewrite(side, blocks, attempt)` (default: a text sharing no words with the other response);
judges -> `judge_preference(prompt, a, b)` / `judge_harm(prompt, response)` (the win-rate judge's plain-letter
prompt gets the bare letter); West-of-N candidates -> n answers that
repeat the prompt 1..n times (plus a duplicate the generator must drop). Tests may replace those callables.

Fault injection: `faults` is a queue consumed one entry per chat request, in arrival order: "429" (with
Retry-After: 0), "500", "timeout" (sleeps `timeout_sleep` seconds before answering, longer than the client's
timeout), "malformed" (content that is not JSON), "badschema" (JSON without the required key), "fenced" (the right
JSON inside a ```json fence, which is accepted), "400" (a non-retryable client error), "garbage" (an HTML page with
status 200). Every request must carry `Authorization: Bearer <api_key>`, otherwise 401 (whose message echoes the
key it got, as a careless server would: the client must still never show it). `delay` slows every chat request
down (after the request has been recorded); `peak_in_flight` is the most chat requests the server held at once.

Structured output: requests may carry `response_format` of type `json_schema` (recorded in `bodies`). With
`schema_support = False` the server refuses them with HTTP 400 naming the response format, as endpoints without
schema support do; JSON-mode requests (`json_object`) are always served. `answer_override`, when set, replaces
every chat answer's content with `answer_override(body)` (e.g. JSON with other keys than the prompt asked for).

Use it through the `openai_server` fixture: `from openai_server import openai_server` in a test module.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TEST_KEY = "sk-test-DO-NOT-LEAK-0123456789abcdef"
TEST_KEY_ENV = "TRL_MARS_TEST_OPENAI_KEY"

_BLOCK = re.compile(r"<<<([A-Z ]+?)>>>\n(.*?)\n<<<END \1>>>", re.DOTALL)
_PLAIN_PAIR = re.compile(r"Request: (.*)\n\nAnswer A: (.*)\n\nAnswer B: (.*)\n\nWhich answer is better, A or B\?",
                         re.DOTALL)
_WORDS = ["Put differently", "In other words", "Said another way", "To rephrase", "Expressed otherwise",
          "Restated", "Alternatively put", "Phrased anew"]


def parse_blocks(text: str) -> dict[str, str]:
    """The data blocks `<<<NAME>>> ... <<<END NAME>>>` of a rendered user message."""
    return {name: body for name, body in _BLOCK.findall(text)}


def default_paraphrases(text: str, n: int) -> list[str]:
    # the source and a duplicate are included on purpose: the client must filter them out
    variants = [f"{_WORDS[i % len(_WORDS)]} ({i // len(_WORDS)}): {text}" for i in range(n)]
    return [text] + variants[:1] + variants


def default_rewrite(side: str, blocks: dict[str, str], attempt: int) -> str | None:
    other = blocks["CHOSEN" if side == "rejected" else "REJECTED"]
    # words that never occur in normal test texts: the bag-of-words distance to the other side grows to ~1
    return f"zq{side} xv{attempt} " + " ".join(f"w{len(other)}k{i}" for i in range(5))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeOpenAIServer:
    def __init__(self, api_key: str = TEST_KEY, delay: float = 0.0, timeout_sleep: float = 1.5):
        self.api_key = api_key
        self.delay = delay
        self.timeout_sleep = timeout_sleep
        self.faults: deque[str] = deque()
        self.lock = threading.Lock()
        self.chat_requests = 0
        self.answered = 0  # chat completions fully sent back (status 200)
        self.in_flight = 0  # chat requests between arrival and the end of their (simulated) work
        self.peak_in_flight = 0
        self.model_requests = 0
        self.unauthorised = 0
        self.bodies: list[dict[str, Any]] = []
        self.seen_texts: list[str] = []  # source texts of paraphrase requests, in arrival order
        self.rewrites_seen: list[tuple[str, int, str]] = []  # (side, attempt, prompt) in arrival order
        self.paraphrases: Callable[[str, int], list[str]] = default_paraphrases
        self.rewrite: Callable[[str, dict[str, str], int], str | None] = default_rewrite
        self.judge_preference: Callable[[str, str, str], str] = lambda prompt, a, b: "A"
        self.judge_harm: Callable[[str, str], bool] = lambda prompt, response: "HARMFUL" in response
        self.schema_support = True
        self.schema_refusals = 0
        self.answer_override: Callable[[dict[str, Any]], str] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- life cycle ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----- HTTP ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode("utf-8")
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout fault)
            pass

    @staticmethod
    def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        auth = handler.headers.get("Authorization", "")
        if auth != f"Bearer {self.api_key}":
            with self.lock:
                self.unauthorised += 1
            got = auth.removeprefix("Bearer ")
            self._send(handler, 401, self._error(f"Incorrect API key provided: {got}", "invalid_request_error",
                                                 "invalid_api_key"))
            return
        path = handler.path.split("?")[0]
        if method == "GET" and path == "/v1/models":
            with self.lock:
                self.model_requests += 1
            self._send(handler, 200, {"object": "list", "data": [
                {"id": "fake-model", "object": "model", "created": 0, "owned_by": "tests"}]})
            return
        if method != "POST" or path != "/v1/chat/completions":
            self._send(handler, 404, self._error(f"no route {method} {path}", "invalid_request_error"))
            return
        body = json.loads(raw or b"{}")
        with self.lock:
            self.chat_requests += 1
            self.bodies.append(body)
            refuse = not self.schema_support and (body.get("response_format") or {}).get("type") == "json_schema"
            self.schema_refusals += refuse
            fault = None if refuse else (self.faults.popleft() if self.faults else None)
        if refuse:
            self._send(handler, 400, self._error(
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
                "invalid_request_error", "unsupported_parameter"))
            return
        content = self._answer(body)  # records what was asked at arrival, before the (simulated) work
        with self.lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        if fault == "429":
            self._send(handler, 429, self._error("Rate limit reached", "requests", "rate_limit_exceeded"),
                       {"Retry-After": "0"})
            return
        if fault == "garbage":  # a proxy error page with status 200
            page = b"<html><body>Bad gateway, try later</body></html>"
            try:
                handler.send_response(200)
                handler.send_header("Content-Type", "text/html")
                handler.send_header("Content-Length", str(len(page)))
                handler.end_headers()
                handler.wfile.write(page)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if fault == "400":
            self._send(handler, 400, self._error("Invalid request", "invalid_request_error"))
            return
        if fault == "500":
            self._send(handler, 500, self._error("The server had an error", "server_error"))
            return
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
        if content is None:
            self._send(handler, 500, self._error("The server had an error", "server_error"))
            return
        if self.answer_override is not None:
            content = self.answer_override(body)
        if fault == "malformed":
            content = "Sure! Here are your paraphrases: " + content[: len(content) // 2]
        elif fault == "badschema":
            content = json.dumps({"something_else": 1})
        elif fault == "fenced":
            content = "```json\n" + content + "\n```"
        self._send(handler, 200, {
            "id": f"chatcmpl-{self.chat_requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        })
        with self.lock:
            self.answered += 1

    # ----- answers ------------------------------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any]) -> str | None:
        messages = body.get("messages") or []
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        blocks = parse_blocks(user)
        if '"paraphrases"' in system:
            text = blocks["TEXT"]
            n = int(re.search(r"Number of paraphrases: (\d+)", user).group(1))
            with self.lock:
                self.seen_texts.append(text)
            return json.dumps({"paraphrases": self.paraphrases(text, n)})
        if '"responses"' in system:  # West-of-N candidates: n answers of different quality, plus a duplicate
            n = int(re.search(r"Number of responses: (\d+)", user).group(1))
            answers = [f"Answer {i + 1}: " + " ".join(["about", blocks["PROMPT"]] * (i + 1)) for i in range(n)]
            return json.dumps({"responses": answers[:1] + answers})
        side_match = re.search(r"Response to rewrite: the (CHOSEN|REJECTED) response", user)
        if side_match:
            side = side_match.group(1).lower()
            attempt = int(re.search(r"Attempt (\d+) of", user).group(1))
            with self.lock:
                self.rewrites_seen.append((side, attempt, blocks["PROMPT"]))
            text = self.rewrite(side, blocks, attempt)
            return None if text is None else json.dumps({"response": text})
        plain = _PLAIN_PAIR.fullmatch(user)
        if plain:  # the win-rate judge's plain-letter prompt (judge_pairwise_v2)
            return self.judge_preference(*plain.groups())
        if '"better"' in system:
            return json.dumps({"better": self.judge_preference(blocks["PROMPT"], blocks["RESPONSE A"],
                                                               blocks["RESPONSE B"])})
        if '"harmful"' in system:
            return json.dumps({"harmful": bool(self.judge_harm(blocks["PROMPT"], blocks["RESPONSE"]))})
        # anything else (e.g. a connection check): a short plain answer
        return "pong"


@pytest.fixture
def openai_server(monkeypatch: pytest.MonkeyPatch):
    """A started `FakeOpenAIServer`; the test key is exported as $TRL_MARS_TEST_OPENAI_KEY."""
    monkeypatch.setenv(TEST_KEY_ENV, TEST_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()
