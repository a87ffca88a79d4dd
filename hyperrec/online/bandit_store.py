"""The exploration bandit's shared state: one SQLite file (WAL) that every server process
of a workspace reads and writes, so feedback may reach any of them.

- `bandit`: one row, the LinUCB state (A⁻¹, b as float64 bytes, and the update count,
  which doubles as its version).
- `pending`: request id -> (explored item, its context vector) for every served list
  with an exploration slot, the newest `limit` kept. A credited row stays, flagged, so
  a second credit is refused at once.

The request path only appends to an in-memory buffer (`remember`); a background thread
writes the buffer every `flush_s`, and re-reads the bandit when another process changed
the file (`PRAGMA data_version`, microseconds) at most every `refresh_s`. A credit
(`credit`) looks the request up and applies the Sherman–Morrison update to the *stored*
state in one `BEGIN IMMEDIATE` transaction, so concurrent credits from several processes
serialise and none is lost; the crediting process swaps the result into its own bandit at
once, the others within `refresh_s`.

The state outlives the processes: a restarted server keeps what the bandit learned
(delete the file to start over; a state of another dimension is replaced).

Processes on several nodes share no file: with `Settings.bandit_redis` set, `open_bandit_store`
returns the same contract kept in Redis (`hyperrec.online.bandit_redis`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hyperrec.online.bandit import Credit, LinUCB, sherman_morrison
from hyperrec.sqlite_wal import connect_wal

if TYPE_CHECKING:
    from hyperrec.config import Settings

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS bandit (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    dim INTEGER NOT NULL,
    ridge REAL NOT NULL,
    a_inv BLOB NOT NULL,   -- float64 [dim, dim]
    b BLOB NOT NULL,       -- float64 [dim]
    updates INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    item_id TEXT NOT NULL,
    x BLOB NOT NULL,       -- float64 [dim]: the explored item's context when it was shown
    credited INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT ''  -- owner_of(request, user): who may credit it with a user token
);
"""


def owner_of(request_id: str, user_id: str | None) -> str:
    """The list's owner as the store keeps it: a hash salted by the request, so the file
    holds no user id and links no two requests of one user."""
    return "" if user_id is None else hashlib.sha256(f"{request_id}|{user_id}".encode()).hexdigest()[:32]


def store_path(home: Path) -> Path:
    return home / "serving" / "bandit.db"


def _connect(path: Path, timeout_s: float) -> sqlite3.Connection:
    # bandit learning, not acknowledged data: durable at checkpoints
    return connect_wal(path, synchronous="NORMAL", timeout_s=timeout_s)


def init_store(path: Path, dim: int, ridge: float = 1.0, timeout_s: float = 30.0) -> None:
    """Create the file and the initial state (A⁻¹ = I/ridge, b = 0) unless a state of this
    dimension is there. Idempotent and safe from several processes at once; a supervisor
    calls it before starting its workers."""
    db = _connect(path, timeout_s)
    try:
        db.executescript(SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(pending)")}:  # a file from before owners
            db.execute("ALTER TABLE pending ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        row = db.execute("SELECT dim FROM bandit WHERE id = 1").fetchone()
        if row is None or row[0] != dim:
            if row is not None:
                log.warning("bandit state of dim %s replaced by a fresh one of dim %s", row[0], dim)
            db.execute("INSERT OR REPLACE INTO bandit VALUES (1, ?, ?, ?, ?, 0)",
                       (dim, ridge, (np.eye(dim) / ridge).tobytes(), np.zeros(dim).tobytes()))
            db.execute("DELETE FROM pending")
        db.execute("COMMIT")
    finally:
        db.close()


class BanditStore:
    """Keeps `bandit` (this process's LinUCB, read by the request path) in step with the file."""

    def __init__(self, path: Path, bandit: LinUCB, limit: int = 100_000, flush_s: float = 0.05,
                 refresh_s: float = 0.25, timeout_s: float = 30.0):
        self.path, self.bandit, self.limit = Path(path), bandit, int(limit)
        self.flush_s, self.refresh_s = flush_s, refresh_s
        init_store(self.path, bandit.dim, bandit.ridge, timeout_s)
        self._db = _connect(self.path, timeout_s)  # busy timeout: writers of other processes are waited for
        self._lock = threading.Lock()  # the connection, and state reads + assigns as one step
        self._buffer: list[tuple[str, str, bytes, float, str]] = []
        self._buffer_lock = threading.Lock()
        self._data_version = None
        self.refresh()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bandit-store", daemon=True)
        self._thread.start()

    # --- the request path --------------------------------------------------------------
    def remember(self, request_id: str, item_id: str, x, owner: str = "") -> None:
        """An explored item was shown: keep its context for a later credit (buffered)."""
        row = (request_id, item_id, np.asarray(x, np.float64).tobytes(), time.time(), owner)
        with self._buffer_lock:
            self._buffer.append(row)

    # --- feedback -----------------------------------------------------------------------
    def credit(self, request_id: str, item_id: str, reward: float, owner: str | None = None) -> Credit:
        """Credit the exploration slot of `request_id` if `item_id` was its explored item
        (and, given `owner`, the list was that owner's: `owner_of`)."""
        with self._lock:
            self._flush_locked()  # a request this process served is in the file before we look
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT item_id, x, credited, owner FROM pending WHERE request_id = ?",
                                       (request_id,)).fetchone()
                if row is None or row[0] != item_id or row[2] or (owner is not None and row[3] != owner):
                    self._db.execute("ROLLBACK")
                    return Credit.UNKNOWN if row is None else Credit.REFUSED
                A_inv, b, updates = self._read_state()
                A_inv, b = sherman_morrison(A_inv, b, np.frombuffer(row[1], np.float64), reward)
                self._db.execute("UPDATE bandit SET a_inv = ?, b = ?, updates = ? WHERE id = 1",
                                 (A_inv.tobytes(), b.tobytes(), updates + 1))
                self._db.execute("UPDATE pending SET credited = 1 WHERE request_id = ?", (request_id,))
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            self.bandit.assign(A_inv, b, updates + 1)
            return Credit.CREDITED

    # --- background: flush the buffer, follow other processes' credits ---------------------
    def _read_state(self) -> tuple[np.ndarray, np.ndarray, int]:
        a_inv, b, updates = self._db.execute("SELECT a_inv, b, updates FROM bandit WHERE id = 1").fetchone()
        dim = self.bandit.dim
        return np.frombuffer(a_inv, np.float64).reshape(dim, dim).copy(), np.frombuffer(b, np.float64).copy(), updates

    def refresh(self) -> bool:
        """Take the stored state if another process changed the file and the state moved on."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return False
            self._data_version = version
            (updates,) = self._db.execute("SELECT updates FROM bandit WHERE id = 1").fetchone()
            if updates == self.bandit.updates:
                return False
            self.bandit.assign(*self._read_state())
            return True

    def flush(self) -> int:
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> int:
        with self._buffer_lock:
            rows, self._buffer = self._buffer, []
        if not rows:
            return 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR IGNORE INTO pending (request_id, item_id, x, at, owner) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 rows)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            with self._buffer_lock:  # kept for the next flush
                self._buffer[:0] = rows
            raise
        return len(rows)

    def trim(self) -> None:
        """Keep the newest `limit` pending contexts (all processes together)."""
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE seq <= (SELECT MAX(seq) FROM pending) - ?", (self.limit,))

    def _run(self) -> None:
        last_refresh = last_trim = 0.0
        while not self._stop.wait(self.flush_s):
            now = time.monotonic()
            with contextlib.suppress(sqlite3.Error):  # a busy or full disk must not stop serving: retried
                self.flush()
                if now - last_refresh >= self.refresh_s:
                    last_refresh = now
                    self.refresh()
                if now - last_trim >= 10.0:
                    last_trim = now
                    self.trim()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(sqlite3.Error):
            self.flush()
        self._db.close()


def open_bandit_store(settings: Settings, bandit: LinUCB, limit: int = 100_000):
    """The workspace's shared store for `bandit`: Redis when `settings.bandit_redis` is set
    (server processes on several nodes), else the SQLite file under HOME/serving."""
    if settings.bandit_redis:
        from hyperrec.online.bandit_redis import RedisBanditStore

        return RedisBanditStore(settings.bandit_redis, bandit, limit=limit)
    return BanditStore(store_path(settings.home), bandit, limit=limit)


def init_bandit_state(settings: Settings, dim: int) -> None:
    """Create the shared state before any server process opens it (a supervisor's first step).
    An unreachable Redis is only logged: each process creates the state itself once it answers."""
    if settings.bandit_redis:
        import redis

        from hyperrec.online.bandit_redis import init_redis_state
        from hyperrec.services import redis_client

        client = redis_client(settings.bandit_redis, timeout_s=5.0)
        try:
            init_redis_state(client, dim)
        except redis.RedisError as exc:
            log.warning("bandit state in Redis %s not created yet: %s", settings.bandit_redis, exc)
        finally:
            client.close()
        return
    init_store(store_path(settings.home), dim)
