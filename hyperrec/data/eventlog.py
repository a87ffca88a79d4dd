"""The embedded event log: an append-only SQLite table (WAL) with a dead-letter table and
consumer offsets. Ingestion writes here; the stream processor reads from its offset.

Every event is validated against `hyperrec.data.schemas.Event` at the door. Bad ones are kept
with their raw bytes and the error in `dead_letters`, counted, and never block the rest;
a replayed `event_id` is stored once. Events of an erased user (`suppress`) are dropped
without a trace, counted only. received = stored + dead-lettered + duplicates + suppressed.
"""

from __future__ import annotations

import json
import threading
import time
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
"""


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
    return raw.encode() if isinstance(raw, str) else json.dumps(raw, default=str).encode()


class EventLog:
    def __init__(self, path: Path, suppress: Container[str] = frozenset(),
                 event_types: Collection[str] = EVENT_TYPES):
        """`suppress`: user ids whose events are dropped at the door (a live
        `hyperrec.privacy.ErasureWatch` in the server and consumers). `event_types`: the
        types accepted (the workspace's, hyperrec.data.event_types)."""
        self.suppress = suppress
        self.event_types = tuple(event_types)
        self.db = connect_wal(path, synchronous="FULL")  # an acknowledged event survives a crash
        self.db.executescript(SCHEMA)
        self._lock = threading.Lock()  # one connection, shared by the server's worker threads

    def _check(self, raw, now: datetime, check: Callable[[Event], str | None] | None) -> Event:
        data = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        event = Event.model_validate(data, context={"event_types": self.event_types})
        if event.ts.tzinfo is None:
            raise ValueError("ts: timestamp needs a timezone")
        if event.ts < EARLIEST_TS:
            raise ValueError(f"ts: {event.ts.isoformat()} is before {EARLIEST_TS:%Y-%m-%d}")
        if event.ts > now + MAX_CLOCK_SKEW:
            raise ValueError(f"ts: {event.ts.isoformat()} is in the future (now {now.isoformat()})")
        if check and (problem := check(event)):
            raise ValueError(problem)
        return event

    def append(self, raws: Iterable, check: Callable[[Event], str | None] | None = None,
               now: datetime | None = None) -> AppendResult:
        """Validate and store a batch in one transaction; bad events go to dead_letters."""
        now = now or datetime.now(UTC)
        stored = dup = dead = received = suppressed = 0
        errors: list[str] = []
        t = time.time()
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for raw in raws:
                received += 1
                try:
                    event = self._check(raw, now, check)
                except (ValueError, ValidationError, TypeError) as exc:
                    message = _describe(exc)
                    self.db.execute("INSERT INTO dead_letters (raw, error, received_at) VALUES (?, ?, ?)",
                                    (_raw_bytes(raw), message, t))
                    dead += 1
                    errors.append(message)
                    continue
                if event.user_id in self.suppress:
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


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON: {exc}"
    return str(exc)
