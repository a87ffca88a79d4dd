"""The exploration bandit's shared state in Redis: `BanditStore`'s contract for server
processes on different nodes (KServe replicas), which share no disk.

Keys (one hash tag, so a Redis Cluster keeps them in one slot for WATCH/MULTI):
    {hyperrec:bandit}:state              hash: dim, ridge, a_inv, b (float64 bytes), updates,
                                         version (+1 on every write), epoch (new on every init)
    {hyperrec:bandit}:pending            sorted set: request id -> time it was remembered
    {hyperrec:bandit}:pending:<request>  hash: item, x (float64 bytes), owner, credited

As in the SQLite store, `remember` only appends to an in-memory buffer; a background thread
writes it every `flush_s` (one MULTI per chunk) and re-reads the state when its version
moved, checked at most every `refresh_s`. `credit` applies Sherman–Morrison to the *stored*
state under WATCH on the state and the request's row, retried when another process wrote
either in between: concurrent credits serialise and none is lost. The newest `limit` pending
rows are kept (trimmed every 10 s by any process); a credited row stays, flagged.

Redis trouble never reaches the request path: the buffer is kept for the next flush, bounded
to the newest `limit` rows (older ones would be trimmed anyway; `dropped` counts them), and a
server that starts while Redis is down serves with a fresh bandit and joins the stored state
when Redis answers. `credit` (the feedback path) raises the Redis error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque

import numpy as np
import redis

from hyperrec.online.bandit import Credit, LinUCB, sherman_morrison
from hyperrec.services import redis_client

log = logging.getLogger(__name__)

PREFIX = "{hyperrec:bandit}:"
FLUSH_CHUNK = 1000  # rows per MULTI: a backlog after an outage goes in bounded transactions
MAX_ATTEMPTS = 1000  # WATCH retries of one credit before giving up (each lost race is another's success)

Row = tuple[str, str, bytes, float, str]  # request id, item, x, time, owner


def _keys(prefix: str) -> tuple[str, str, str]:
    return prefix + "state", prefix + "pending", prefix + "pending:"


def _fresh_state(dim: int, ridge: float, version: int) -> dict:
    return {"dim": dim, "ridge": ridge, "a_inv": (np.eye(dim) / ridge).tobytes(), "b": np.zeros(dim).tobytes(),
            "updates": 0, "version": version, "epoch": os.urandom(8).hex()}


def init_redis_state(client: redis.Redis, dim: int, ridge: float = 1.0, prefix: str = PREFIX) -> bool:
    """Create the initial state (A⁻¹ = I/ridge, b = 0) unless a state of this dimension is
    there; a state of another dimension is replaced and the pending rows dropped. Atomic
    (WATCH), so several processes may call it at once. True if it wrote a state."""
    state, index, row_prefix = _keys(prefix)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(state, index)
                current, version = pipe.hmget(state, ["dim", "version"])
                if current is not None and int(current) == dim:
                    return False
                if current is not None:
                    log.warning("bandit state of dim %s replaced by a fresh one of dim %s", int(current), dim)
                rows = [row_prefix + r.decode() for r in pipe.zrange(index, 0, -1)]
                pipe.multi()
                pipe.delete(state, index)
                for start in range(0, len(rows), FLUSH_CHUNK):
                    pipe.delete(*rows[start:start + FLUSH_CHUNK])
                pipe.hset(state, mapping=_fresh_state(dim, ridge, int(version or 0) + 1))
                pipe.execute()
                return True
            except redis.WatchError:
                continue


class RedisBanditStore:
    """Keeps `bandit` (this process's LinUCB, read by the request path) in step with Redis."""

    def __init__(self, url: str, bandit: LinUCB, limit: int = 100_000, flush_s: float = 0.05,
                 refresh_s: float = 0.25, timeout_s: float = 1.0, prefix: str = PREFIX):
        self.url, self.bandit, self.limit = url, bandit, int(limit)
        self.flush_s, self.refresh_s, self.prefix = flush_s, refresh_s, prefix
        self._state, self._index, self._row = _keys(prefix)
        self.client = redis_client(url, timeout_s=timeout_s)  # every call fails within timeout_s
        self._buffer: deque[Row] = deque(maxlen=self.limit)
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time (the thread's, or a credit's)
        self._lock = threading.Lock()  # compare-and-assign of the local state
        self._seen: tuple[str, int] | None = None  # (epoch, version) of the state `bandit` holds
        self._ready = False  # the stored state exists (checked once per process)
        self.dropped = 0  # remembered rows dropped while Redis was unreachable (beyond `limit`)
        self.races = 0  # credits read again because another process wrote in between
        self._failing = False
        self._logged_at = -60.0
        try:
            self._ensure_ready()
            self.refresh()
        except redis.RedisError as exc:
            self._failed(exc)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bandit-store-redis", daemon=True)
        self._thread.start()

    # --- the request path --------------------------------------------------------------
    def remember(self, request_id: str, item_id: str, x, owner: str = "") -> None:
        """An explored item was shown: keep its context for a later credit (buffered)."""
        row = (request_id, item_id, np.asarray(x, np.float64).tobytes(), time.time(), owner)
        with self._buffer_lock:
            if len(self._buffer) == self.limit:
                self.dropped += 1  # the deque drops the oldest
            self._buffer.append(row)

    # --- feedback -----------------------------------------------------------------------
    def credit(self, request_id: str, item_id: str, reward: float, owner: str | None = None) -> Credit:
        """Credit the exploration slot of `request_id` if `item_id` was its explored item
        (and, given `owner`, the list was that owner's: `owner_of`)."""
        self._ensure_ready()
        self.flush()  # a request this process served is in Redis before we look
        row_key = self._row + request_id
        with self.client.pipeline() as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    pipe.watch(self._state, row_key)
                    item, x, row_owner, credited = pipe.hmget(row_key, ["item", "x", "owner", "credited"])
                    if item is None:
                        return Credit.UNKNOWN
                    if item.decode() != item_id or credited or (owner is not None and row_owner.decode() != owner):
                        return Credit.REFUSED
                    stored = self._read_state(pipe)
                    if stored is None:  # the state was deleted under us (FLUSHDB): make it again
                        pipe.unwatch()
                        self._ensure_ready(force=True)
                        continue
                    A_inv, b, updates, version, epoch = stored
                    A_inv, b = sherman_morrison(A_inv, b, np.frombuffer(x, np.float64), reward)
                    pipe.multi()
                    pipe.hset(self._state, mapping={"a_inv": A_inv.tobytes(), "b": b.tobytes(),
                                                    "updates": updates + 1, "version": version + 1})
                    pipe.hset(row_key, "credited", 1)
                    pipe.execute()
                except redis.WatchError:  # another process wrote the state or the row: read again
                    self.races += 1
                    continue
                self._assign(A_inv, b, updates + 1, version + 1, epoch)
                return Credit.CREDITED
        raise RuntimeError(f"bandit credit of {request_id} lost {MAX_ATTEMPTS} races in a row")

    # --- background: flush the buffer, follow other processes' credits ---------------------
    def _read_state(self, client) -> tuple[np.ndarray, np.ndarray, int, int, str] | None:
        dim, a_inv, b, updates, version, epoch = client.hmget(
            self._state, ["dim", "a_inv", "b", "updates", "version", "epoch"])
        if dim is None:
            return None
        dim = int(dim)
        return (np.frombuffer(a_inv, np.float64).reshape(dim, dim).copy(), np.frombuffer(b, np.float64).copy(),
                int(updates), int(version), epoch.decode())

    def _assign(self, A_inv, b, updates: int, version: int, epoch: str) -> bool:
        """Take a state read from Redis unless the local one is as new (same init, same or later version)."""
        with self._lock:
            if self._seen is not None and self._seen[0] == epoch and self._seen[1] >= version:
                return False
            self.bandit.assign(A_inv, b, updates)
            self._seen = (epoch, version)
            return True

    def _ensure_ready(self, force: bool = False) -> None:
        if force or not self._ready:
            init_redis_state(self.client, self.bandit.dim, self.bandit.ridge, self.prefix)
            self._ready = True

    def refresh(self) -> bool:
        """Take the stored state if its version moved since this process last saw it."""
        epoch, version = self.client.hmget(self._state, ["epoch", "version"])
        if epoch is None:  # deleted under us (FLUSHDB): make it again
            self._ensure_ready(force=True)
            epoch, version = self.client.hmget(self._state, ["epoch", "version"])
        with self._lock:
            if self._seen == (epoch.decode(), int(version)):
                return False
        stored = self._read_state(self.client)
        return stored is not None and self._assign(*stored)

    def flush(self) -> int:
        """Write the buffered rows (INSERT OR IGNORE: a row already there is left as it is).
        On a Redis error the unwritten rows go back to the buffer and the error is raised."""
        with self._flush_lock:
            with self._buffer_lock:
                rows, self._buffer = list(self._buffer), deque(maxlen=self.limit)
            for start in range(0, len(rows), FLUSH_CHUNK):
                try:
                    with self.client.pipeline(transaction=True) as pipe:
                        for request_id, item_id, x, at, owner in rows[start:start + FLUSH_CHUNK]:
                            key = self._row + request_id
                            pipe.hsetnx(key, "item", item_id)
                            pipe.hsetnx(key, "x", x)
                            pipe.hsetnx(key, "owner", owner)
                            pipe.zadd(self._index, {request_id: at}, nx=True)
                        pipe.execute()
                except redis.RedisError:
                    self._put_back(rows[start:])
                    raise
            return len(rows)

    def _put_back(self, rows: list[Row]) -> None:
        with self._buffer_lock:
            kept = deque(rows, maxlen=self.limit)
            kept.extend(self._buffer)  # newer rows remembered meanwhile; the oldest fall off
            self.dropped += len(rows) + len(self._buffer) - len(kept)
            self._buffer = kept

    def trim(self) -> int:
        """Keep the newest `limit` pending rows (all processes together). Returns how many went."""
        removed = 0
        while (excess := self.client.zcard(self._index) - self.limit) > 0:
            oldest = [r.decode() for r in self.client.zrange(self._index, 0, min(excess, FLUSH_CHUNK) - 1)]
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*(self._row + r for r in oldest))
                pipe.zrem(self._index, *oldest)
                pipe.execute()
            removed += len(oldest)
        return removed

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("bandit store: Redis %s unreachable (%s); remembered contexts are buffered "
                        "(newest %d kept) and retried", self.url, exc, self.limit)

    def _run(self) -> None:
        last_refresh = last_trim = 0.0
        while not self._stop.wait(self.flush_s):
            now = time.monotonic()
            try:
                self._ensure_ready()
                self.flush()
                if now - last_refresh >= self.refresh_s:
                    last_refresh = now
                    self.refresh()
                if now - last_trim >= 10.0:
                    last_trim = now
                    self.trim()
            except redis.RedisError as exc:  # an unreachable Redis must not stop serving: retried
                self._failed(exc)
                continue
            except Exception:  # e.g. a state of another dimension written by a newer server
                if time.monotonic() - self._logged_at >= 60:
                    self._logged_at = time.monotonic()
                    log.exception("bandit store: background step failed")
                continue
            if self._failing:
                self._failing = False
                log.info("bandit store: Redis %s answers again (%d contexts dropped meanwhile)", self.url,
                         self.dropped)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(redis.RedisError):
            self.flush()
        self.client.close()
