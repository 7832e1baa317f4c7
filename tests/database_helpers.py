"""Job databases as an unlucky lab finds them: a real SQLite file with enough jobs to span many
pages, then a header written over, or pages in the middle of the file filled with garbage."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np

from service.store.sqlite import Database

PAGE = 4096  # SQLite's default page size, which the service never changes


def database_with_jobs(path: Path, n: int = 3000) -> Path:
    """``path`` at the current schema holding ``n`` finished jobs of about 1 KB each (some 3 MB, more
    than SQLite's default page cache of 2 MB), all in the main file (the WAL checkpointed)."""
    database = Database(path)
    spec = json.dumps({"kind": "inference", "note": "x" * 900})
    rows = [(f"job{i:06d}", spec, "2026-01-01T00:00:00+00:00", f"/out{i}.zarr::pred") for i in range(n)]
    with database.write() as db:
        db.executemany(
            "INSERT INTO jobs (id, kind, state, spec, created_at, output_key)"
            " VALUES (?, 'inference', 'succeeded', ?, ?, ?)",
            rows,
        )
    database.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def damage_pages(path: Path, first: float = 0.4, pages: int = 8) -> None:
    """Garbage over ``pages`` whole pages from ``first`` (a fraction of the file) on, as a failing
    disk or a stray write would leave them; the header page is left alone."""
    start = max(1, int(os.path.getsize(path) * first) // PAGE) * PAGE
    garbage = np.random.default_rng(0).integers(0, 256, PAGE * pages, dtype=np.uint8).tobytes()
    with open(path, "r+b") as handle:
        handle.seek(start)
        handle.write(garbage)
        handle.flush()
        os.fsync(handle.fileno())


def damage_header(path: Path) -> None:
    """The first bytes, where SQLite keeps its magic string and the page size."""
    with open(path, "r+b") as handle:
        handle.write(b"\xde\xad\xbe\xef" * 8)
