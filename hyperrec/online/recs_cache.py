"""Served recommendation lists cached in Redis, dropped when the user's online features change.

A list depends on the model versions serving, the request (k, device, page, exclusions),
the hour it is asked in, and the user's online features. The first three make the entry's
field; the last is handled by invalidation: the stream processor calls `invalidate` for
every user whose online features it just wrote (and erasure for an erased user), so the
next request recomputes. `ttl_s` bounds everything else (popularity, the bandit's learning).

Layout (one hash per user, `recs_cache_key`; erasure calls `erase_user_lists`):
    hyperrec:recs:<user_id>   field <scope>|<request shape>  -> JSON entry with its write time
                              field _v                       -> the last invalidation's token
Invalidation replaces the whole hash by a fresh token (MULTI: DEL + HSET _v, expiring in
`FENCE_S`). A batch that looked the user up before that and computes from features read
before the online write would otherwise store a stale list after it; its write is a script
that stores only while `_v` still holds the token the lookup saw, so it is dropped.

Only personalized requests of a named, consenting user with nothing the request itself
adds (no session items, no explicit time) are cached: consent is checked before the lookup
on every request, so a withdrawal counts from the next one. Redis trouble never fails a
request: it is a miss, counted, and the cache is skipped for `cooldown_s`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import orjson

from hyperrec.features.views import REQUEST_TS, request_context
from hyperrec.online.serving_path import Recommended, Request
from hyperrec.services import redis_client

log = logging.getLogger(__name__)

RECS_CACHE_PREFIX = "hyperrec:recs:"  # cache keys: hyperrec:recs:<user_id> or hyperrec:recs:<user_id>:<suffix>

TOKEN = "_v"
FENCE_S = 60  # how long an invalidation's token lives: far longer than any batch that looked up before it
# Store only while the invalidation token is the one the lookup saw ("" = none yet).
_WRITE_IF_UNCHANGED = """
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


def recs_cache_key(user_id: str, *parts: str) -> str:
    """The one place cache keys are built: hyperrec:recs:<user_id>[:<part>...]."""
    return ":".join([RECS_CACHE_PREFIX + user_id, *parts])


def erase_user_lists(client, user_id: str) -> int:
    """Delete hyperrec:recs:<user_id> and hyperrec:recs:<user_id>:* -- not <user_id>* (that
    would take u10's cache along with u1's) -- and fence off lists still being computed from
    the user's old features. Returns the number of keys removed."""
    glob_safe = re.sub(r"([*?\[\]\\])", r"\\\1", recs_cache_key(user_id))
    keys = [recs_cache_key(user_id), *client.scan_iter(match=glob_safe + ":*", count=1000)]
    removed = int(client.delete(*keys))
    invalidate(client, [user_id])
    return removed


def invalidate(client, users: Sequence[str]) -> None:
    """Drop every cached list of `users` and fence off writes that started before."""
    token = f"{time.time_ns():x}{os.urandom(4).hex()}"
    with client.pipeline(transaction=True) as pipe:
        for user in dict.fromkeys(users):
            key = recs_cache_key(user)
            pipe.delete(key)
            pipe.hset(key, TOKEN, token)
            pipe.expire(key, FENCE_S)
        pipe.execute()


def invalidator(settings) -> Callable[[Sequence[str]], None] | None:
    """What the stream processor calls with the users whose online features it wrote, when
    `settings.recs_cache` is set. A cache outage must not stall the online features: the
    failure is logged and the TTL bounds what stays cached."""
    if not settings.recs_cache:
        return None
    client = redis_client(settings.recs_cache, timeout_s=1.0)

    def drop(users: Sequence[str]) -> None:
        try:
            invalidate(client, users)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not invalidate %d users' cached lists (%s: %s); they expire within the TTL",
                        len(users), type(exc).__name__, exc)
    return drop


def cacheable(request: Request) -> bool:
    return (request.user_id is not None and request.personalization and not request.recent_items
            and request.time is None)


def request_field(scope: str, request: Request, hour: int) -> str:
    """Everything besides the user's features that the list depends on."""
    exclude = hashlib.sha1(",".join(sorted(request.exclude)).encode()).hexdigest()[:16] if request.exclude else ""
    return f"{scope}|h{hour}|k{request.k}|{request.device}|{request.page}|{exclude}"


def encode(rec: Recommended, now: float) -> bytes:
    return orjson.dumps({"t": now, "rec": asdict(rec)}, option=orjson.OPT_SERIALIZE_NUMPY)


def decode(blob: bytes, now: float, ttl_s: float, request_ts: int) -> Recommended | None:
    """The cached list, its monitored context moved to `request_ts`; None past its TTL."""
    entry = orjson.loads(blob)
    if now - entry["t"] > ttl_s:
        return None
    fields = entry["rec"]
    for name in ("explored_x", "query"):
        if fields[name] is not None:
            fields[name] = np.asarray(fields[name], np.float32 if name == "query" else np.float64)
    monitored = fields["monitored"]
    if monitored is not None and REQUEST_TS in monitored:  # recency and hour as of this request
        recency = monitored.get("recency_s", -1)
        last = monitored[REQUEST_TS] - recency if recency is not None and recency >= 0 else -1
        context = request_context(np.array([request_ts]), np.array([last]))
        monitored |= {REQUEST_TS: request_ts, **{k: int(v[0]) for k, v in context.items() if k in monitored}}
    return Recommended(**fields)


class RecsCache:
    """`serve(requests, scope, request_ts, compute)`: cached lists where there are fresh ones,
    `compute(misses)` for the rest, which are then stored."""

    def __init__(self, connection_string: str, ttl_s: float = 120.0, timeout_s: float = 0.05,
                 cooldown_s: float = 1.0, on_outcome: Callable[[str, int], None] | None = None):
        self.client = redis_client(connection_string, timeout_s)
        self.ttl_s, self.cooldown_s = ttl_s, cooldown_s
        self.on_outcome = on_outcome or (lambda outcome, n: None)
        self._skip_until = 0.0

    def serve(self, requests: list[Request], scope: str, request_ts: int,
              compute: Callable[[list[Request]], list[Recommended]]) -> list[Recommended]:
        hour = int(request_ts // 3600 % 24)
        looked = [i for i, r in enumerate(requests) if cacheable(r)]
        if not looked or time.monotonic() < self._skip_until:
            return compute(requests)
        keys = [recs_cache_key(requests[i].user_id) for i in looked]
        fields = [request_field(scope, requests[i], hour) for i in looked]
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, field in zip(keys, fields):
                    pipe.hmget(key, field, TOKEN)
                replies = pipe.execute()
        except Exception as exc:  # noqa: BLE001 (a cache outage is a miss, never a failed request)
            self._failed(exc, len(looked))
            return compute(requests)
        now = time.time()
        out: list[Recommended | None] = [None] * len(requests)
        tokens = {}
        for i, key, field, (blob, token) in zip(looked, keys, fields, replies):
            out[i] = decode(blob, now, self.ttl_s, request_ts) if blob is not None else None
            tokens[i] = (key, field, (token or b"").decode())
        hits = sum(r is not None for r in out)
        self.on_outcome("hit", hits)
        self.on_outcome("miss", len(looked) - hits)
        missing = [i for i, r in enumerate(out) if r is None]
        if missing:
            for i, rec in zip(missing, compute([requests[i] for i in missing]), strict=True):
                out[i] = rec
            # a list made without the user's features is not kept: the next request may have them
            self._store([(tokens[i], out[i]) for i in missing if i in tokens and not out[i].degraded], now)
        return out

    def _store(self, entries: list, now: float) -> None:
        if not entries:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for (key, field, token), rec in entries:
                    pipe.eval(_WRITE_IF_UNCHANGED, 1, key, TOKEN, token, field, encode(rec, now), int(self.ttl_s) + 1)
                stored = sum(pipe.execute())
            if stored < len(entries):
                self.on_outcome("fenced", len(entries) - stored)  # invalidated while being computed
        except Exception as exc:  # noqa: BLE001
            self._failed(exc, 0)

    @property
    def available(self) -> bool:
        """False while an outage's cooldown lasts (lists are then computed for every request)."""
        return time.monotonic() >= self._skip_until

    def _failed(self, exc: Exception, requests: int) -> None:
        self.on_outcome("error", max(requests, 1))
        self._skip_until = time.monotonic() + self.cooldown_s
        log.warning("recommendation cache unavailable (%s: %s); computing without it for %.1f s",
                    type(exc).__name__, exc, self.cooldown_s)

    def close(self) -> None:
        self.client.close()
