"""The embedded event log: an append-only SQLite table (WAL) with a dead-letter table and
consumer offsets. Ingestion writes here; the stream processor reads from its offset.

Every event is validated against `hyperrec.data.schemas.Event` at the door. Bad ones are kept
with their raw bytes and the error in `dead_letters`, counted, and never block the rest;
a replayed `event_id` is stored once. Events of an erased user (`suppress`) are dropped
without a trace, counted only. received = stored + dead-lettered + duplicates + suppressed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Container, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import ValidationError

from hyperrec.data.schemas import EARLIEST_TS, EVENT_TYPES, Event
from hyperrec.sqlite_wal import connect_wal

MAX_CLOCK_SKEW = timedelta(minutes=5)  # an event stamped further in the future is rejected

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    offset INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    raw BLOB NOT NULL,
    error TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer TEXT PRIMARY KEY,
    offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class LogUnavailable(RuntimeError):
    """The log file was deleted or replaced under an open log: writing on would acknowledge
    events into a file nobody will read again (the server answers 503 and turns unready)."""


class LogBusy(RuntimeError):
    """Another process held the log's write lock past the busy timeout (HTTP 503, Retry-After)."""

    kind = "busy"  # the server's hyperrec_errors_total label


@dataclass(frozen=True)
class AppendResult:
    received: int
    stored: int
    duplicates: int
    dead_lettered: int
    errors: list[str]
    suppressed: int = 0  # events of erased users: neither stored nor dead-lettered (that would keep them)


def _raw_bytes(raw) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        return raw.encode()
    try:
        return json.dumps(raw, default=str).encode()
    except RecursionError:  # nested past the recursion limit: serialized without recursing
        return _dumps_without_recursion(raw).encode()


class _Text(str):
    """Output already serialized (punctuation, keys), as opposed to a value still to write."""


def _dumps_without_recursion(value) -> str:
    """JSON for a value of any depth, with an explicit stack (json.dumps and repr recurse)."""
    out, todo = [], [value]
    while todo:
        item = todo.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, dict | list):
            pairs = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            parts: list = [_Text("{" if isinstance(item, dict) else "[")]
            for n, (key, child) in enumerate(pairs):
                parts += [_Text(",")] if n else []
                parts += [_Text(json.dumps(str(key)) + ":")] if key is not None else []
                parts.append(child)
            parts.append(_Text("}" if isinstance(item, dict) else "]"))
            todo.extend(reversed(parts))
        else:
            out.append(json.dumps(item, default=str))
    return "".join(out)


# what validation raises for a bad event (dead-lettered, never fatal to the batch)
INVALID = (ValueError, ValidationError, TypeError, RecursionError)


def validate_event(raw, now: datetime, event_types: Collection[str] = EVENT_TYPES,
                   check: Callable[[Event], str | None] | None = None) -> Event:
    """The door every event passes (the SQLite log's and the Kafka producer's): the schema,
    a timezone, no time before 1970 or past `now` plus the allowed clock skew, and `check`.
    Raises one of INVALID."""
    data = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    event = Event.model_validate(data, context={"event_types": tuple(event_types)})
    if event.ts.tzinfo is None:
        raise ValueError("ts: timestamp needs a timezone")
    if event.ts < EARLIEST_TS:
        raise ValueError(f"ts: {event.ts.isoformat()} is before {EARLIEST_TS:%Y-%m-%d}")
    if event.ts > now + MAX_CLOCK_SKEW:
        raise ValueError(f"ts: {event.ts.isoformat()} is in the future (now {now.isoformat()})")
    if check and (problem := check(event)):
        raise ValueError(problem)
    return event


def erased_now(suppress: Container[str]) -> Container[str]:
    """`suppress` for one batch: a live erasure list (hyperrec.privacy.ErasureWatch) read once
    (its `snapshot()`), so each event costs a set lookup and not a database round trip;
    anything else as it is."""
    snapshot = getattr(suppress, "snapshot", None)
    return snapshot() if callable(snapshot) else suppress


class EventLog:
    def __init__(self, path: Path, suppress: Container[str] = frozenset(),
                 event_types: Collection[str] = EVENT_TYPES, busy_wait_s: float = 30.0):
        """`suppress`: user ids whose events are dropped at the door (a live
        `hyperrec.privacy.ErasureWatch` in the server and consumers). `event_types`: the
        types accepted (the workspace's, hyperrec.data.event_types). `busy_wait_s`: how long
        an append waits for another process's write lock before LogBusy."""
        self.suppress = suppress
        self.event_types = tuple(event_types)
        self.path = Path(path)
        # synchronous=FULL: an acknowledged event survives a crash
        self.db = connect_wal(self.path, synchronous="FULL", timeout_s=busy_wait_s)
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('log_id', ?)", (uuid.uuid4().hex,))
        self.log_id: str = self.db.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()[0]
        self._file = _file_identity(self.path)
        self._lock = threading.Lock()  # one connection, shared by the server's worker threads

    def problem(self) -> str | None:
        """Why this log can no longer be written (its file deleted or replaced), or None."""
        if _file_identity(self.path) != self._file:
            return f"the event log {self.path} was deleted or replaced while open"
        return None

    def _check(self, raw, now: datetime, check: Callable[[Event], str | None] | None) -> Event:
        return validate_event(raw, now, self.event_types, check)

    def append(self, raws: Iterable, check: Callable[[Event], str | None] | None = None,
               now: datetime | None = None) -> AppendResult:
        """Validate and store a batch in one transaction; bad events go to dead_letters."""
        now = now or datetime.now(UTC)
        if problem := self.problem():
            raise LogUnavailable(problem)
        try:
            return self._append(raws, check, now)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LogBusy(f"the event log is busy (another writer held it too long): {exc}") from exc
            raise

    def _append(self, raws: Iterable, check, now: datetime) -> AppendResult:
        stored = dup = dead = received = suppressed = 0
        errors: list[str] = []
        t = time.time()
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            erased = erased_now(self.suppress)
            for raw in raws:
                received += 1
                try:
                    event = self._check(raw, now, check)
                except INVALID as exc:
                    if _claimed_user(raw) in erased:  # an erased user's: not kept, even as a dead letter
                        suppressed += 1
                        continue
                    message = _describe(exc)
                    self.db.execute("INSERT INTO dead_letters (raw, error, received_at) VALUES (?, ?, ?)",
                                    (_raw_bytes(raw), message, t))
                    dead += 1
                    errors.append(message)
                    continue
                if event.user_id in erased:
                    suppressed += 1
                    continue
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO events (event_id, body, received_at) VALUES (?, ?, ?)",
                    (event.event_id, event.model_dump_json(), t))
                stored += cur.rowcount
                dup += 1 - cur.rowcount
        return AppendResult(received, stored, dup, dead, errors, suppressed)

    def dead_letter(self, raw, error: str) -> None:
        """Keep a body that could not even be split into events (not JSON, not a list)."""
        if problem := self.problem():
            raise LogUnavailable(problem)
        with self._lock:
            self.db.execute("INSERT INTO dead_letters (raw, error, received_at) VALUES (?, ?, ?)",
                            (_raw_bytes(raw), error, time.time()))

    def read(self, after: int, limit: int = 10_000, upto: int | None = None) -> tuple[int, pd.DataFrame]:
        """Events with `after` < offset <= `upto` (at most `limit`), as a frame; and the last offset."""
        with self._lock:
            rows = self.db.execute("SELECT offset, body FROM events WHERE offset > ? AND offset <= ? "
                                   "ORDER BY offset LIMIT ?", (after, upto if upto is not None else 2**62,
                                                               limit)).fetchall()
        if not rows:
            return after, pd.DataFrame()
        frame = pd.DataFrame([json.loads(body) for _, body in rows])
        ts = pd.to_datetime(frame["ts"], utc=True, format="ISO8601", errors="coerce")
        unreadable = (ts.isna() | (ts < pd.Timestamp(EARLIEST_TS))).to_numpy()
        if unreadable.any():  # stored before the door refused them: no reader may meet them again
            self._quarantine([rows[i] for i in np.flatnonzero(unreadable)], "ts: unreadable or before 1970")
            frame, ts = frame[~unreadable].reset_index(drop=True), ts[~unreadable].reset_index(drop=True)
        frame["ts"] = ts
        return rows[-1][0], frame

    def _quarantine(self, rows: list[tuple[int, str]], error: str) -> None:
        """Move stored rows to the dead letters, in one transaction (kept, never read as events)."""
        with self._lock, self.db:
            for offset, body in rows:
                self.db.execute("INSERT INTO dead_letters (raw, error, received_at) VALUES (?, ?, ?)",
                                (body.encode(), f"moved from the log at offset {offset}: {error}", time.time()))
                self.db.execute("DELETE FROM events WHERE offset = ?", (offset,))

    def count_upto(self, offset: int) -> int:
        """Events at offsets <= `offset`: falls when one of them is deleted (an erasure);
        offsets are never reused (AUTOINCREMENT)."""
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM events WHERE offset <= ?", (offset,)).fetchone()[0]

    def committed(self, consumer: str) -> int:
        with self._lock:
            row = self.db.execute("SELECT offset FROM consumer_offsets WHERE consumer = ?", (consumer,)).fetchone()
        return row[0] if row else 0

    def commit(self, consumer: str, offset: int) -> None:
        with self._lock:
            self.db.execute("INSERT INTO consumer_offsets (consumer, offset) VALUES (?, ?) "
                            "ON CONFLICT(consumer) DO UPDATE SET offset = excluded.offset", (consumer, offset))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"events": self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0],
                    "dead_letters": self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]}

    def dead_letters(self) -> list[tuple[bytes, str]]:
        with self._lock:
            return self.db.execute("SELECT raw, error FROM dead_letters ORDER BY id").fetchall()

    def drop_dead_letters(self, names: Callable[[bytes, str], bool]) -> int:
        """Delete, in one transaction, the dead letters for which `names(raw, error)` is true
        (an erasure's test for one user: hyperrec.privacy); returns how many went."""
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            doomed = [(i,) for i, raw, error in self.db.execute("SELECT id, raw, error FROM dead_letters")
                      if names(raw, error)]
            self.db.executemany("DELETE FROM dead_letters WHERE id = ?", doomed)
        return len(doomed)


def _claimed_user(raw) -> str | None:
    """The user_id an event that failed validation names, if it names one as a string."""
    if isinstance(raw, bytes | str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            return None
    user = raw.get("user_id") if isinstance(raw, dict) else None
    return user if isinstance(user, str) else None


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    if isinstance(exc, RecursionError):
        return "event: nested too deeply"
    return str(exc)
