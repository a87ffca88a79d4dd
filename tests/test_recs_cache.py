"""The recommendation cache on a real redis-server: hits, what is never cached, the hour and
request shape in the key, TTL, invalidation (and the fence against a list computed from
features older than the invalidation), an outage, and the stream processor's hook."""

import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from hyperrec.features.views import REQUEST_TS
from hyperrec.online.recs_cache import RecsCache, invalidate, recs_cache_key
from hyperrec.online.serving_path import Recommended, Request
from hyperrec.services import free_port, redis_client, redis_server

TS = int(datetime(2026, 1, 14, 15, 30, tzinfo=UTC).timestamp())


@pytest.fixture(scope="module")
def redis_url():
    with redis_server() as url:
        yield url


class Counting:
    """A compute function that makes a distinct list per call and remembers what it was asked."""

    def __init__(self):
        self.asked: list[list[Request]] = []

    def __call__(self, requests):
        self.asked.append(list(requests))
        n = len(self.asked)
        return [Recommended(item_ids=[f"i{n}-{j}" for j in range(r.k)], titles=["t"] * r.k, categories=["c"] * r.k,
                            scores=[1.0 / (j + 1) for j in range(r.k)], reasons=["because"] * r.k,
                            policy="personalized", arm="control", model_version=3, explored_item=f"i{n}-0",
                            explored_x=np.arange(4, dtype=np.float64), query=np.ones(8, np.float32),
                            monitored={REQUEST_TS: TS, "recency_s": 600, "hour_of_day": 15, "ctr_7d": 0.25},
                            teams=None)
                for r in requests]


@pytest.fixture
def cache(redis_url):
    outcomes: dict[str, int] = {}
    cache = RecsCache(redis_url, ttl_s=30, on_outcome=lambda o, n: outcomes.__setitem__(o, outcomes.get(o, 0) + n))
    cache.outcomes = outcomes
    cache.client.flushdb()
    yield cache
    cache.close()


def test_a_repeated_request_is_served_from_the_cache_exactly(cache):
    compute = Counting()
    first = cache.serve([Request(user_id="u1", k=3)], "s", TS, compute)
    again = cache.serve([Request(user_id="u1", k=3)], "s", TS + 60, compute)
    assert len(compute.asked) == 1 and cache.outcomes == {"hit": 1, "miss": 1}
    a, b = first[0], again[0]
    assert (b.item_ids, b.scores, b.reasons, b.explored_item, b.model_version) == \
        (a.item_ids, a.scores, a.reasons, a.explored_item, a.model_version)
    np.testing.assert_array_equal(b.explored_x, a.explored_x)
    np.testing.assert_array_equal(b.query, a.query)
    assert b.query.dtype == np.float32
    # what the impression log keeps is stamped with this request's time, not the cached one's
    assert b.monitored[REQUEST_TS] == TS + 60 and b.monitored["recency_s"] == 660
    assert b.monitored["ctr_7d"] == 0.25 and b.monitored["hour_of_day"] == 15


def test_only_named_consenting_users_without_request_state_are_cached(cache):
    compute = Counting()
    never = [Request(user_id=None, recent_items=("i1",)), Request(user_id="u2", recent_items=("i1",)),
             Request(user_id="u3", personalization=False), Request(user_id="u4", time=datetime.now(UTC))]
    for _ in range(2):
        cache.serve(never, "s", TS, compute)
    assert [len(a) for a in compute.asked] == [4, 4] and cache.outcomes == {}
    assert not cache.client.keys("hyperrec:recs:*")


def test_the_key_holds_scope_hour_and_request_shape(cache):
    compute = Counting()
    base = Request(user_id="u5", k=5, device="mobile", page="home")
    cache.serve([base], "v1", TS, compute)
    variants = [(base, "v2", TS), (base, "v1", TS + 3600),
                *((r, "v1", TS) for r in (Request(user_id="u5", k=4, device="mobile", page="home"),
                                          Request(user_id="u5", k=5, device="desktop", page="home"),
                                          Request(user_id="u5", k=5, device="mobile", page="category:Books"),
                                          Request(user_id="u5", k=5, device="mobile", page="home", exclude=("i9",))))]
    for request, scope, ts in variants:
        cache.serve([request], scope, ts, compute)
    assert len(compute.asked) == 1 + len(variants)  # each a miss
    cache.serve([base], "v1", TS + 59, compute)  # same hour, same shape: a hit
    assert len(compute.asked) == 1 + len(variants)


def test_a_version_redacted_since_is_a_new_scope(cache):
    """The server's scope names each serving target with its erasure redaction count: the
    lists the unredacted unit made are not served once the redacted one is loaded."""
    from hyperrec.online.hotswap import Target
    from serving.recommender import cache_scope

    compute, request = Counting(), Request(user_id="u6", k=5)
    before, after = cache_scope("s", Target(3, 0), None), cache_scope("s", Target(3, 1), None)
    assert before == cache_scope("s", 3, None) and before != after != cache_scope("s", Target(3, 1), Target(2, 0))
    cache.serve([request], before, TS, compute)
    cache.serve([request], before, TS, compute)
    cache.serve([request], after, TS, compute)
    assert len(compute.asked) == 2  # a hit under the same target, a miss once redacted


def test_a_mixed_batch_computes_only_its_misses_in_order(cache):
    compute = Counting()
    cache.serve([Request(user_id="u6", k=2)], "s", TS, compute)
    batch = [Request(user_id="u7", k=2), Request(user_id="u6", k=2), Request(user_id=None, recent_items=("i1",), k=2)]
    out = cache.serve(batch, "s", TS, compute)
    assert [r.user_id for r in compute.asked[1]] == ["u7", None]
    assert [r.item_ids for r in out] == [["i2-0", "i2-1"], ["i1-0", "i1-1"], ["i2-0", "i2-1"]]


def test_entries_expire_after_the_ttl(redis_url):
    cache = RecsCache(redis_url, ttl_s=0.3)
    compute = Counting()
    cache.serve([Request(user_id="u8")], "s", TS, compute)
    cache.serve([Request(user_id="u8")], "s", TS, compute)
    time.sleep(0.4)
    cache.serve([Request(user_id="u8")], "s", TS, compute)
    assert len(compute.asked) == 2
    assert 0 < cache.client.ttl(recs_cache_key("u8")) <= 2  # the hash goes too
    cache.close()


def test_invalidation_drops_every_list_of_the_user_only(cache):
    compute = Counting()
    for page in ("home", "search"):
        cache.serve([Request(user_id="u9", page=page), Request(user_id="u10", page=page)], "s", TS, compute)
    invalidate(cache.client, ["u9"])
    before = len(compute.asked)
    cache.serve([Request(user_id="u9", page="home"), Request(user_id="u10", page="home")], "s", TS, compute)
    assert [r.user_id for r in compute.asked[before]] == ["u9"]


def test_a_list_computed_across_an_invalidation_is_not_stored(cache):
    """The race the fence closes: the batch looked the user up, read the old features; the
    stream processor wrote new ones and invalidated; the batch's list must not land after."""
    compute = Counting()

    def stale(requests):
        out = compute(requests)
        invalidate(cache.client, [r.user_id for r in requests])  # lands while the batch computes
        return out

    cache.serve([Request(user_id="u11")], "s", TS, stale)
    assert cache.outcomes.get("fenced") == 1
    cache.serve([Request(user_id="u11")], "s", TS, compute)
    cache.serve([Request(user_id="u11")], "s", TS, compute)
    assert len(compute.asked) == 2  # recomputed once after the fence, then cached
    assert cache.outcomes["hit"] == 1


def test_an_unreachable_cache_is_a_miss_and_is_skipped_for_a_while():
    outcomes: dict[str, int] = {}
    cache = RecsCache(f"127.0.0.1:{free_port()}", cooldown_s=30,
                      on_outcome=lambda o, n: outcomes.__setitem__(o, outcomes.get(o, 0) + n))
    compute = Counting()
    started = time.monotonic()
    out = cache.serve([Request(user_id="u12", k=2)], "s", TS, compute)
    out += cache.serve([Request(user_id="u12", k=2)], "s", TS, compute)
    assert time.monotonic() - started < 1.0
    assert [r.item_ids for r in out] == [["i1-0", "i1-1"], ["i2-0", "i2-1"]]
    assert outcomes == {"error": 1}  # the second call did not try Redis again
    cache.close()


def test_the_stream_processor_invalidates_the_users_it_wrote(redis_url, settings):
    from hyperrec.data.eventlog import EventLog
    from hyperrec.features.stream import StreamProcessor
    from hyperrec.online.recs_cache import invalidator

    changed: list[list[str]] = []
    processor = StreamProcessor(store=None, log=EventLog(settings.event_log), users_changed=changed.append)
    processor.store = _PushRecorder()
    at = pd.Timestamp("2026-01-14T12:00:00Z")
    events = pd.DataFrame({"event_id": ["e1", "e2", "e3", "e4"], "user_id": ["u2", "u1", "u2", None],
                           "item_id": ["i1", "i2", "i3", "i4"], "event_type": ["click", "view", "purchase", "click"],
                           "ts": [at + pd.Timedelta(seconds=s) for s in range(4)],
                           "dwell_s": [3.0, 1.0, 0.0, 2.0], "rating": [np.nan] * 4, "session_id": ["s"] * 4})
    processor.process_batch(events)
    assert changed == [["u1", "u2"]] and processor.store.pushed  # after the online write; no anonymous

    on_cache = settings.model_copy(update={"recs_cache": redis_url})
    client = redis_client(redis_url)
    client.hset(recs_cache_key("u1"), "s|h0|k10|unknown|home|", b"{}")
    invalidator(on_cache)(["u1"])
    assert client.hkeys(recs_cache_key("u1")) == [b"_v"]
    assert invalidator(settings) is None  # no cache configured: nothing to call
    invalidator(on_cache.model_copy(update={"recs_cache": f"127.0.0.1:{free_port()}"}))(["u1"])  # logged, not raised


class _PushRecorder:
    def __init__(self):
        self.pushed = []

    def push(self, name, frame, to):
        self.pushed.append(name)
