"""A real OpenAI-compatible server for the tests: `transformers serve` on loopback with the packaged SmolLM2 model.

    chat_server (session fixture) -> RealServer(base_url, model, api_key_env, ...)

The server is started once per test session on a free 127.0.0.1 port, with the converted
`packaged:SmolLM2-135M-Instruct` folder preloaded, and stopped at the end. The fixture waits (bounded by
`TRL_MARS_SERVE_START_TIMEOUT` seconds, default 300) until `GET /v1/models` answers. If the server cannot start
(missing `transformers[serving]`, a crash, a timeout) the tests that use it FAIL with the server's stderr: a
missing server is a broken environment, not a reason to skip.

`transformers serve` decodes greedily whatever the request's temperature, unless its generation config samples:
`SAMPLING_BODY` (passed as `ChatClient(extra_body=...)`) turns sampling on, and the request's `seed` then makes
each sample reproducible. It ignores `response_format`, so JSON-mode requests get whatever the model writes.
Keep `max_tokens` small in tests: on 2 shared CPU cores the server makes a few tokens per second.

`start_transformers_serve` is the same start-up as a context manager, for benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SERVE_KEY_ENV = "TRL_MARS_SERVE_TEST_KEY"  # transformers serve checks no key; ChatClient needs one to be set
SAMPLING_BODY = {"generation_config": json.dumps({"do_sample": True})}


class ServerStartError(RuntimeError):
    """`transformers serve` did not come up; the message holds its stderr."""


@dataclass
class RealServer:
    base_url: str  # ".../v1"
    model: str  # the model id the server serves (the converted folder)
    api_key_env: str
    process: subprocess.Popen
    log_path: Path
    start_s: float  # seconds from launch until /v1/models answered

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_command() -> list[str]:
    script = Path(sys.executable).with_name("transformers")
    if script.is_file():
        return [sys.executable, str(script), "serve"]
    found = shutil.which("transformers")
    if found:
        return [found, "serve"]
    return [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.exit(main())",
            "serve"]


def _models_answer(base_url: str) -> list[str] | None:
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=5) as response:
            payload = json.load(response)
        return [entry["id"] for entry in payload.get("data", [])]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def start_transformers_serve(model_folder: str, *, timeout: float | None = None, log_dir: str | None = None,
                             extra_args: list[str] | None = None) -> Iterator[RealServer]:
    """Runs `transformers serve MODEL_FOLDER` on a free loopback port until the block ends.

    Raises `ServerStartError` with the server's stderr when it exits early or `/v1/models` does not answer within
    `timeout` seconds (default: $TRL_MARS_SERVE_START_TIMEOUT or 300).
    """
    timeout = float(timeout if timeout is not None else os.environ.get("TRL_MARS_SERVE_START_TIMEOUT", 300))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_dir = log_dir or tempfile.mkdtemp(prefix="trl_mars_serve_")
    log_path = Path(log_dir) / "transformers_serve.log"
    command = _serve_command() + [model_folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                  "--log-level", "warning", *(extra_args or [])]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                   start_new_session=True)
    server = RealServer(base_url, model_folder, SERVE_KEY_ENV, process, log_path, 0.0)
    try:
        while True:
            if process.poll() is not None:
                raise ServerStartError(f"`{' '.join(command)}` exited with code {process.returncode} before it "
                                       f"answered:\n{server.log_tail()}")
            models = _models_answer(base_url)
            if models is not None:
                if model_folder not in models:
                    raise ServerStartError(f"the server at {base_url} serves {models}, not {model_folder!r}:\n"
                                           f"{server.log_tail()}")
                break
            if time.monotonic() - started > timeout:
                raise ServerStartError(f"`{' '.join(command)}` did not answer GET /v1/models within {timeout:.0f} "
                                       f"s:\n{server.log_tail()}")
            time.sleep(0.5)
        server.start_s = time.monotonic() - started
        yield server
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and anything it started
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory) -> Iterator[RealServer]:
    """`transformers serve` with the packaged SmolLM2-135M-Instruct model, for the whole session."""
    from trl_mars.augment.packaged import PACKAGED_SMOLLM2, resolve_packaged_model

    folder = resolve_packaged_model(PACKAGED_SMOLLM2)
    old_key = os.environ.get(SERVE_KEY_ENV)
    os.environ[SERVE_KEY_ENV] = "not-checked-by-transformers-serve"
    try:
        try:
            context = start_transformers_serve(folder, log_dir=str(tmp_path_factory.mktemp("transformers_serve")))
            server = context.__enter__()
        except ServerStartError as exc:
            pytest.fail(f"transformers serve could not start: {exc}", pytrace=False)
        try:
            yield server
        finally:
            context.__exit__(None, None, None)
    finally:
        if old_key is None:
            os.environ.pop(SERVE_KEY_ENV, None)
        else:
            os.environ[SERVE_KEY_ENV] = old_key
