"""The impression log: what the server showed, to whom, under which model and arm, with the
serving-time features it used. Monitoring joins it with the outcome events (clicks,
purchases) of the event log to judge drift, CTR per arm and hit rate on served traffic.

Written off the request path: `ImpressionRecorder` buffers rows in memory and a background
thread writes them in one transaction every `flush_s` (a crash loses at most that much
monitoring data, never an acknowledged event). Query embeddings are kept for a sample of
the personalized requests (every `query_every`-th): enough for embedding drift and the
index-recall probe, a few bytes per request on average. Lists served to an erased user are
never stored (`suppress`), as the event log drops their events.

On a cluster the server produces the rows to a Kafka topic instead, and the monitoring job
copies them into a log of its own, with the topic offsets in `consumer_offsets`
(`hyperrec.data.kafka_impressions`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Collection, Container, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.data.eventlog import erased_now
from hyperrec.sqlite_wal import connect_wal

SCHEMA = """
CREATE TABLE IF NOT EXISTS impressions (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,            -- the request's time (seconds; the simulated clock in a simulated world)
    user_id TEXT,                -- NULL for an anonymous session
    arm TEXT NOT NULL,
    policy TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    features TEXT NOT NULL,      -- JSON: the monitored serving-time features
    items TEXT NOT NULL,         -- JSON: [[item_id, category, score], ...] in shown order; an interleaved
                                 -- list adds each item's team (the model version that placed it)
    query BLOB                   -- float32 query embedding, for a sample of personalized requests
);
CREATE INDEX IF NOT EXISTS impressions_ts ON impressions (ts);
CREATE TABLE IF NOT EXISTS consumer_offsets (  -- a reader of the impression topic: its next offset per partition
    consumer TEXT PRIMARY KEY,   -- kafka:<topic>:<partition>
    offset INTEGER NOT NULL
);
"""


class ImpressionLog:
    def __init__(self, path: Path, suppress: Container[str] = frozenset()):
        """`suppress`: users whose lists are never stored (a live `hyperrec.privacy.ErasureWatch`
        in the server): an erased user's rows are dropped at the write, counted in `suppressed`."""
        self.db = connect_wal(path, synchronous="NORMAL")  # monitoring data: durable at checkpoints is enough
        self.db.executescript(SCHEMA)
        self.suppress = suppress
        self.suppressed = 0
        self._lock = threading.Lock()

    def write(self, rows: Sequence[tuple], offsets: dict[str, int] | None = None) -> int:
        """Store rows, except those of suppressed users; returns how many were new (a
        request_id already stored is ignored). `offsets` (consumer -> next offset) are stored
        in the same transaction: a reader of the impression topic that resumes from them
        stores each record once. The write lock is taken before the erasure list is asked:
        an erasure lists the user, then deletes their rows under this lock, so a row either
        sees the listing or is written before that delete."""
        with self._lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            erased = erased_now(self.suppress)
            kept = [row for row in rows if row[2] is None or row[2] not in erased]
            before = self.db.total_changes
            self.db.executemany("INSERT OR IGNORE INTO impressions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", kept)
            new = self.db.total_changes - before
            self.db.executemany("INSERT INTO consumer_offsets (consumer, offset) VALUES (?, ?) "
                                "ON CONFLICT (consumer) DO UPDATE SET offset = excluded.offset",
                                list((offsets or {}).items()))
        self.suppressed += len(rows) - len(kept)
        return new

    def committed(self, consumer: str) -> int | None:
        """The next offset `consumer` stored with its rows (None: it stored none)."""
        with self._lock:
            row = self.db.execute("SELECT offset FROM consumer_offsets WHERE consumer = ?", (consumer,)).fetchone()
        return None if row is None else row[0]

    def forget(self, users: Collection[str]) -> int:
        """Delete the rows of `users` (erased since they were stored); returns how many."""
        if not users:
            return 0
        with self._lock, self.db:
            self.db.execute("PRAGMA secure_delete=ON")
            self.db.execute("BEGIN IMMEDIATE")
            return self.db.execute("DELETE FROM impressions WHERE user_id IN (SELECT value FROM json_each(?))",
                                   (json.dumps(sorted(users)),)).rowcount

    COLUMNS = ("request_id", "ts", "user_id", "arm", "policy", "model_version", "features", "items", "query")

    def read(self, start: float = 0.0, end: float = float("inf")) -> pd.DataFrame:
        """Impressions with start <= ts < end: one row per served list; `features` expanded
        into columns, `items` a list of (item_id, category, score[, team]), `interleaved`
        (whether the entries carry teams), `query` an array or None."""
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(self.COLUMNS)} FROM impressions WHERE ts >= ? AND ts < ? "
                                   "ORDER BY ts", (start, min(end, 1e18))).fetchall()
        return _decode(rows)

    def read_after(self, rowid: int) -> tuple[int, pd.DataFrame]:
        """Rows logged after `rowid`, in logging order, and the last rowid: for a reader that
        keeps what it decoded before (`monitoring.job`)."""
        with self._lock:
            rows = self.db.execute(f"SELECT rowid, {', '.join(self.COLUMNS)} FROM impressions WHERE rowid > ? "
                                   "ORDER BY rowid", (rowid,)).fetchall()
        return (rows[-1][0] if rows else rowid), _decode([r[1:] for r in rows])

    def fingerprint(self, rowid: int) -> tuple[int, str | None]:
        """(rows up to `rowid`, the request id at `rowid`): changes when any of those rows is
        deleted (an erasure), even if SQLite later reuses the last rowid."""
        with self._lock:
            count = self.db.execute("SELECT COUNT(*) FROM impressions WHERE rowid <= ?", (rowid,)).fetchone()[0]
            last = self.db.execute("SELECT request_id FROM impressions WHERE rowid = ?", (rowid,)).fetchone()
        return count, (last[0] if last else None)

    def span(self) -> tuple[float, float] | None:
        with self._lock:
            lo, hi = self.db.execute("SELECT MIN(ts), MAX(ts) FROM impressions").fetchone()
        return None if lo is None else (lo, hi)

    def close(self) -> None:
        self.db.close()


def _decode(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(ImpressionLog.COLUMNS))
    features = pd.DataFrame([json.loads(f) for f in frame.pop("features")], index=frame.index)
    frame["items"] = [json.loads(i) for i in frame["items"]]
    frame["interleaved"] = [bool(items) and len(items[0]) > 3 for items in frame["items"]]  # entries carry teams
    frame["query"] = [np.frombuffer(q, np.float32) if q is not None else None for q in frame["query"]]
    return pd.concat([frame, features], axis=1)


def impression_row(request_id: str, ts: float, user_id: str | None, rec, features: dict,
                   keep_query: bool) -> tuple:
    """One row for `ImpressionLog.write` from a served `hyperrec.online.serving_path.Recommended`."""
    items = [[i, c, round(float(s), 6)] for i, c, s in zip(rec.item_ids, rec.categories, rec.scores)]
    if rec.teams is not None:
        items = [[*entry, int(team)] for entry, team in zip(items, rec.teams)]
    query = rec.query.astype(np.float32).tobytes() if keep_query and rec.query is not None else None
    return (request_id, float(ts), user_id, rec.arm, rec.policy, int(rec.model_version),
            json.dumps(features), json.dumps(items), query)


class QuerySample:
    """Which personalized requests keep their query embedding: every `every`-th. Not thread-safe:
    callers hold their own lock."""

    def __init__(self, every: int = 10):
        self.every, self._personalized = every, 0

    def rows(self, request_ids, user_ids, results, features: list[dict], times: list[float]) -> list[tuple]:
        rows = []
        for rid, user, rec, feats, ts in zip(request_ids, user_ids, results, features, times):
            keep = False
            if rec.query is not None:
                self._personalized += 1
                keep = self._personalized % self.every == 1 or self.every == 1
            rows.append(impression_row(rid, ts, user, rec, feats, keep))
        return rows


class ImpressionRecorder:
    """Buffers impression rows from the request path; a daemon thread writes them."""

    def __init__(self, log: ImpressionLog, flush_s: float = 0.2, query_every: int = 10):
        self.log, self.flush_s, self.query_every = log, flush_s, query_every
        self._buffer: list[tuple] = []
        self._lock = threading.Lock()
        self._sample = QuerySample(query_every)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._thread.start()

    def add(self, request_ids, user_ids, results, features: list[dict], times: list[float]) -> None:
        with self._lock:
            self._buffer.extend(self._sample.rows(request_ids, user_ids, results, features, times))

    def flush(self) -> int:
        with self._lock:
            rows, self._buffer = self._buffer, []
        if rows:
            try:
                self.log.write(rows)
            except sqlite3.Error:
                with self._lock:  # keep them for the next flush
                    self._buffer[:0] = rows
                raise
        return len(rows)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            with contextlib.suppress(sqlite3.Error):  # a locked or full disk must not stop serving: retried
                self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.flush()
