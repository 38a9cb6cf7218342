"""Save or restore a gzipped copy of an augmentation cache (the SQLite file under `mars_cache_dir`).

Generation is the slow part of the local grids on CPU (hours for a first round); a snapshot lets a fresh machine start
from what earlier runs generated. Cached answers are keyed by back-end, model, decoding settings and request, so a
snapshot only ever answers the requests it was made for.

    python scripts/cache_snapshot.py save outputs/local-cache benchmarks/results/cache/local-cache.sqlite.gz
    python scripts/cache_snapshot.py restore outputs/local-cache benchmarks/results/cache/local-cache.sqlite.gz
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trl_mars.augment.cache import CACHE_FILENAME, AugmentationCache  # noqa: E402


def _entries(cache_dir: Path) -> int:
    with AugmentationCache(cache_dir) as cache:
        return len(cache)


def save(cache_dir: Path, snapshot: Path) -> None:
    """A consistent copy (SQLite's backup API: the WAL's pages included), compacted, then gzipped."""
    source = cache_dir / CACHE_FILENAME
    if not source.exists():
        raise SystemExit(f"no cache at {source}. Fix: pass the folder given as mars_cache_dir.")
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / CACHE_FILENAME
        # `with sqlite3.connect()` only commits; closing() closes, so no handle outlives the copy
        with closing(sqlite3.connect(source)) as reader, closing(sqlite3.connect(copy)) as writer:
            reader.backup(writer)
            writer.execute("VACUUM")
        with open(copy, "rb") as raw, gzip.open(snapshot, "wb", compresslevel=9) as packed:
            shutil.copyfileobj(raw, packed)
        entries = _entries(Path(scratch))
    print(f"{entries} entries -> {snapshot} ({snapshot.stat().st_size / 1e6:.1f} MB)")


def restore(cache_dir: Path, snapshot: Path) -> None:
    """Unpacks the snapshot as the cache file; refuses to overwrite a cache that is already there."""
    target = cache_dir / CACHE_FILENAME
    if target.exists():
        raise SystemExit(f"{target} exists. Fix: restore into an empty mars_cache_dir, or move that file away first.")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(snapshot, "rb") as packed, open(target, "wb") as raw:
        shutil.copyfileobj(packed, raw)
    print(f"{_entries(cache_dir)} entries restored to {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "restore"])
    parser.add_argument("cache_dir", type=Path, help="the mars_cache_dir folder")
    parser.add_argument("snapshot", type=Path, help="the .sqlite.gz file")
    args = parser.parse_args()
    (save if args.action == "save" else restore)(args.cache_dir, args.snapshot)


if __name__ == "__main__":
    main()
