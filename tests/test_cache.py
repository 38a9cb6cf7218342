"""CachedParaphraser + AugmentationCache: no repeated calls, crash safety, several processes on one file."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from openai_server import TEST_KEY_ENV, openai_server  # noqa: F401

from trl_mars.augment.base import Paraphraser
from trl_mars.augment.cache import CACHE_FILENAME, AugmentationCache
from trl_mars.augment.cached import CachedParaphraser, paraphrase_key
from trl_mars.augment.chat import ChatClient, ChatParaphraser


class CountingParaphraser:
    """An offline back-end that records what it was asked; `fail` texts fail, `boom_after` chunks raise."""

    name = "counting"

    def __init__(self, fail: set[str] = frozenset(), boom_after: int | None = None, empty: set[str] = frozenset()):
        self.seen: list[str] = []
        self.calls = 0
        self.fail = fail
        self.empty = empty
        self.boom_after = boom_after
        self.last_failed: set[int] = set()

    def fingerprint(self):
        return {"backend": "counting", "version": 1}

    def paraphrase(self, texts, n):
        if self.boom_after is not None and self.calls >= self.boom_after:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        self.seen.extend(texts)
        self.last_failed = {i for i, t in enumerate(texts) if t in self.fail}
        return [[] if (t in self.fail or t in self.empty) else [f"{t} #{k}" for k in range(n)] for t in texts]


def make_chat(server, **kwargs) -> ChatParaphraser:
    options = dict(base_url=server.base_url, api_key_env=TEST_KEY_ENV, timeout=2.0, max_retries=1,
                   max_concurrency=4, backoff_base=0.01)
    options.update(kwargs)
    return ChatParaphraser(ChatClient("fake-model", **options))


def test_wrapper_is_a_paraphraser(tmp_path):
    inner = CountingParaphraser()
    cached = CachedParaphraser(inner, AugmentationCache(tmp_path))
    assert isinstance(cached, Paraphraser)
    assert cached.name == "counting" and cached.fingerprint() == inner.fingerprint()


def test_second_run_makes_zero_requests(openai_server, tmp_path):
    texts = [f"sentence {i} about apples" for i in range(10)] + ["sentence 3 about apples"]  # one duplicate
    first = CachedParaphraser(make_chat(openai_server), AugmentationCache(tmp_path), chunk_size=4)
    out1 = first.paraphrase(texts, 2)
    assert openai_server.chat_requests == 10  # duplicates are asked once
    assert first.calls_made == 10 and first.misses == 10 and first.hits == 0
    assert out1[3] == out1[10] and all(len(v) == 2 for v in out1)

    second = CachedParaphraser(make_chat(openai_server), AugmentationCache(tmp_path), chunk_size=4)
    out2 = second.paraphrase(texts, 2)
    assert openai_server.chat_requests == 10  # ZERO new requests
    assert out2 == out1
    assert second.calls_made == 0 and second.hits == 10
    # a different n is a different request
    second.paraphrase(texts[:2], 3)
    assert openai_server.chat_requests == 12


def test_namespace_follows_the_fingerprint(openai_server, tmp_path):
    cache = AugmentationCache(tmp_path)
    CachedParaphraser(make_chat(openai_server), cache).paraphrase(["one text"], 2)
    CachedParaphraser(make_chat(openai_server), cache).paraphrase(["one text"], 2)
    assert openai_server.chat_requests == 1
    warm = make_chat(openai_server)
    warm.temperature = 0.7  # other decoding parameters -> other namespace
    CachedParaphraser(warm, cache).paraphrase(["one text"], 2)
    assert openai_server.chat_requests == 2


def test_failed_items_are_not_cached_but_genuine_empty_answers_are(tmp_path):
    inner = CountingParaphraser(fail={"bad"}, empty={"nothing to say"})
    cache = AugmentationCache(tmp_path)
    cached = CachedParaphraser(inner, cache)
    out = cached.paraphrase(["good", "bad", "nothing to say"], 2)
    assert out == [["good #0", "good #1"], [], []]
    assert cached.failed == 1
    inner.seen.clear()
    inner.fail = set()
    out = cached.paraphrase(["good", "bad", "nothing to say"], 2)
    assert inner.seen == ["bad"]  # only the failed one is asked again
    assert out[1] == ["bad #0", "bad #1"] and out[2] == []


def test_failed_chat_items_are_requested_again(openai_server, tmp_path):
    cache = AugmentationCache(tmp_path)
    openai_server.faults.extend(["500", "500"])  # first text: both tries fail (max_retries=1)
    cached = CachedParaphraser(make_chat(openai_server, max_concurrency=1), cache)
    out = cached.paraphrase(["alpha text", "beta text"], 2)
    assert out[0] == [] and len(out[1]) == 2 and cached.failed == 1
    openai_server.seen_texts.clear()
    out = CachedParaphraser(make_chat(openai_server), cache).paraphrase(["alpha text", "beta text"], 2)
    assert openai_server.seen_texts == ["alpha text"] and len(out[0]) == 2


def test_each_chunk_is_committed_as_it_returns(tmp_path):
    texts = [f"t{i}" for i in range(10)]
    crashing = CountingParaphraser(boom_after=2)
    with pytest.raises(KeyboardInterrupt):
        CachedParaphraser(crashing, AugmentationCache(tmp_path), chunk_size=3).paraphrase(texts, 1)
    # a fresh connection sees the two finished chunks
    fresh = AugmentationCache(tmp_path)
    ns = {"op": "paraphrase", **crashing.fingerprint()}
    assert set(fresh.get_many(ns, [paraphrase_key(t, 1) for t in texts])) == {paraphrase_key(t, 1) for t in texts[:6]}
    resumed = CountingParaphraser()
    CachedParaphraser(resumed, fresh, chunk_size=3).paraphrase(texts, 1)
    assert resumed.seen == texts[6:]


# ----- several processes on one cache file --------------------------------------------------------------------------


def _writer(directory: str, worker: int, count: int) -> None:
    cache = AugmentationCache(directory)
    ns = {"op": "test", "backend": "mp"}
    for start in range(0, count, 10):
        cache.put_many(ns, {f"w{worker}-{i}": [f"value {worker} {i}"] * 3 for i in range(start, start + 10)})
        cache.get_many(ns, [f"w{(worker + 1) % 3}-{i}" for i in range(start, start + 10)])  # read others' rows
    cache.close()


def test_several_processes_share_one_cache_file(tmp_path):
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    workers = [context.Process(target=_writer, args=(str(tmp_path), w, 300)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    cache = AugmentationCache(tmp_path)
    ns = {"op": "test", "backend": "mp"}
    keys = [f"w{w}-{i}" for w in range(3) for i in range(300)]
    found = cache.get_many(ns, keys)
    assert len(found) == 900 and len(cache) == 900
    assert all(found[f"w{w}-{i}"] == [f"value {w} {i}"] * 3 for w in range(3) for i in range(300))
    with sqlite3.connect(tmp_path / CACHE_FILENAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _open_at_once(directory: str, barrier) -> None:
    barrier.wait()  # every process opens the same new file in the same instant, as the ranks of a launch do
    cache = AugmentationCache(directory)
    cache.put_many({"op": "test"}, {str(os.getpid()): 1})
    cache.close()


def test_processes_opening_a_new_cache_file_together_all_succeed(tmp_path):
    # Switching a new file to WAL takes an exclusive lock that SQLite does not wait for: without a retry, one rank of
    # a 2-process launch failed with "database is locked" about one run in three.
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    for attempt in range(20):
        directory = tmp_path / str(attempt)
        barrier = context.Barrier(6)
        workers = [context.Process(target=_open_at_once, args=(str(directory), barrier)) for _ in range(6)]
        for p in workers:
            p.start()
        for p in workers:
            p.join(timeout=60)
        assert [p.exitcode for p in workers] == [0] * 6
        assert len(AugmentationCache(directory)) == 6


# ----- SIGKILL in the middle of a run, then resume ------------------------------------------------------------------

_CHILD = r"""
import json, sys
from trl_mars.augment.cache import AugmentationCache
from trl_mars.augment.cached import CachedParaphraser
from trl_mars.augment.chat import ChatClient, ChatParaphraser

job = json.load(open(sys.argv[1]))
cache = AugmentationCache(job["cache_dir"])
client = ChatClient("fake-model", base_url=job["base_url"], api_key_env=job["key_env"], max_concurrency=4,
                    backoff_base=0.01, cache=cache)
# the default chunk of 32 texts: the paraphrase-level cache commits nothing before the kill
cached = CachedParaphraser(ChatParaphraser(client), cache, progress=False)
print("started", flush=True)
cached.paraphrase(job["texts"], 2)
print("finished", flush=True)
"""

IN_FLIGHT = 4  # the child's max_concurrency


def test_sigkill_mid_run_costs_at_most_the_requests_in_flight(openai_server, tmp_path):
    openai_server.delay = 0.08
    texts = [f"resume test sentence number {i}" for i in range(40)]
    cache_dir = tmp_path / "cache"
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"base_url": openai_server.base_url, "key_env": TEST_KEY_ENV,
                               "cache_dir": str(cache_dir), "texts": texts}))
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    child = subprocess.Popen([sys.executable, str(script), str(job)], env=dict(os.environ),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and child.poll() is None and openai_server.answered < 14:
            time.sleep(0.005)
        assert child.poll() is None, f"the child ended before it could be killed: {child.communicate()}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.3)  # let the server finish the requests that were in flight

    paid_for = openai_server.answered  # answers the endpoint completed for the killed run
    first_run_requests = openai_server.chat_requests
    assert 14 <= paid_for < 40
    cache = AugmentationCache(cache_dir)
    probe = ChatParaphraser(ChatClient("fake-model", base_url=openai_server.base_url, api_key_env=TEST_KEY_ENV,
                                       max_concurrency=4, backoff_base=0.01, cache=cache))
    namespace = {"op": "paraphrase", **probe.fingerprint()}
    assert cache.get_many(namespace, [paraphrase_key(t, 2) for t in texts]) == {}  # no chunk was finished

    openai_server.delay = 0.0
    resumed = CachedParaphraser(probe, cache)
    out = resumed.paraphrase(texts, 2)
    assert all(len(v) == 2 for v in out)
    asked_again = openai_server.chat_requests - first_run_requests
    # every answer that reached the client was written as it arrived: only the requests in flight are lost
    assert 40 - paid_for <= asked_again <= 40 - paid_for + IN_FLIGHT
    assert probe.client.cache_hits >= paid_for - IN_FLIGHT
    # and a third run costs nothing
    total = openai_server.chat_requests
    CachedParaphraser(make_chat(openai_server), cache).paraphrase(texts, 2)
    assert openai_server.chat_requests == total


def test_a_snapshot_restores_every_entry_the_wal_held(tmp_path):
    """scripts/cache_snapshot.py: entries still in the write-ahead log are in the snapshot; restoring it into a new
    folder answers the same requests, and restoring over an existing cache is refused."""
    script = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "cache_snapshot.py")
    namespace = {"backend": "test", "model": "m"}
    items = {f"text {i}": [f"variant {i}"] for i in range(50)}
    cache = AugmentationCache(tmp_path / "live")  # left open: its writes may still sit in the WAL
    cache.put_many(namespace, items)
    snapshot = tmp_path / "snap" / "cache.sqlite.gz"
    run = [sys.executable, script]
    assert subprocess.run(run + ["save", str(tmp_path / "live"), str(snapshot)], capture_output=True).returncode == 0
    restored = subprocess.run(run + ["restore", str(tmp_path / "fresh"), str(snapshot)], capture_output=True,
                              text=True)
    assert restored.returncode == 0 and "50 entries" in restored.stdout
    with AugmentationCache(tmp_path / "fresh") as fresh:
        assert fresh.get_many(namespace, list(items)) == items
    again = subprocess.run(run + ["restore", str(tmp_path / "fresh"), str(snapshot)], capture_output=True, text=True)
    assert again.returncode != 0 and "Fix:" in again.stderr
    cache.close()
