"""Persistent augmentation cache: no back-end call is ever paid for twice.

One SQLite file under `mars_cache_dir`. A key is the SHA-256 of a namespace (back-end, model, decoding
parameters, prompt-template version: whatever `fingerprint()` returns) and the input key (usually the input text
and the number of variants asked for). Values are JSON. Every `put_many` commits before it returns; the chat client
writes each answer the moment it arrives, so a run killed with SIGKILL loses at most the requests in flight. WAL journaling and a busy timeout let several processes (ranks,
concurrent jobs) read and write the same file safely.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CACHE_FILENAME = "augmentation_cache.sqlite"


def _digest(namespace: Mapping[str, Any], key: str) -> str:
    payload = json.dumps({"ns": namespace, "key": key}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _retry_while_locked(statement, seconds: float = 60.0):
    """Runs `statement`, retrying for up to `seconds` while another connection holds the lock it needs."""
    deadline = time.monotonic() + seconds
    pause = 0.01
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


class AugmentationCache:
    """A key-value store for back-end answers, safe across threads and processes."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / CACHE_FILENAME
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
        # Switching a new file to WAL needs an exclusive lock, and SQLite answers "database is locked" at once,
        # without the busy timeout, when another process (a second rank) opens the same new file at that moment.
        _retry_while_locked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"))
        self._conn.execute("PRAGMA synchronous=NORMAL")
        _retry_while_locked(lambda: self._conn.execute(
            "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, namespace TEXT NOT NULL, value TEXT NOT NULL)"
        ))
        self.hits = 0
        self.misses = 0

    def get_many(self, namespace: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
        """Returns the cached values of those `keys` that are present; counts hits and misses."""
        digests = {_digest(namespace, key): key for key in keys}
        found: dict[str, Any] = {}
        items = list(digests)
        with self._lock:
            for start in range(0, len(items), 500):  # SQLite limits the number of bound parameters
                chunk = items[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for digest, value in self._conn.execute(
                    f"SELECT key, value FROM entries WHERE key IN ({marks})", chunk
                ):
                    found[digests[digest]] = json.loads(value)
        unique = len(digests)
        self.hits += len(found)
        self.misses += unique - len(found)
        return found

    def put_many(self, namespace: Mapping[str, Any], items: Mapping[str, Any]) -> None:
        """Stores `items` (key -> JSON-serialisable value) and commits before returning."""
        if not items:
            return
        ns = json.dumps(namespace, sort_keys=True, default=str)
        rows = [(_digest(namespace, key), ns, json.dumps(value, ensure_ascii=False)) for key, value in items.items()]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO entries (key, namespace, value) VALUES (?, ?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AugmentationCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
