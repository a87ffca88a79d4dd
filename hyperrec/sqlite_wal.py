"""SQLite files that several processes open at once (server workers, the stream processor,
the CLI): one way to open them.

`PRAGMA journal_mode=WAL` on a file that another connection is switching at the same moment
fails with "database is locked" at once: SQLite does not call the busy handler for it, so
the connection's `timeout` does not help. Measured: 3 processes opening 200 new files each
at a barrier, 2 of 600 opens failed within 1 ms, 30 s timeout set. The switch is retried
here for the same timeout; once a file is in WAL mode it stays so and the pragma is a read.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

RETRY_S = 0.01


def connect_wal(path: Path, synchronous: str | None = None, timeout_s: float = 30.0) -> sqlite3.Connection:
    """An autocommit connection in WAL mode, usable from any thread (callers serialize with
    their own lock); other processes' writes are waited for up to `timeout_s`, not failed.
    `synchronous`: FULL for acknowledged data, NORMAL where a checkpoint's durability is enough."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(RETRY_S)
    if synchronous is not None:
        db.execute(f"PRAGMA synchronous={synchronous}")
    return db
