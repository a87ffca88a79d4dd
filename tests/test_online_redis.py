"""Feast's Redis online store against a real redis-server: same answers as SQLite, and the
values really are read from Redis."""

from datetime import timedelta

import pandas as pd
import pytest
import redis

from hyperrec.data.generate import WorldConfig, generate_world
from hyperrec.data.world import save_world
from hyperrec.features.store import apply_repo, materialize, online_user_features, open_store, write_offline_tables
from hyperrec.features.views import MISSING, USER_VIEWS
from hyperrec.services import redis_server

pytestmark = pytest.mark.slow
UNKNOWN = "someone-new"


def _history(world):
    """The whole history, as `feature_step` materializes it."""
    end = pd.Timestamp(world.events["ts"].max()).to_pydatetime()
    start = pd.Timestamp(min(world.users["signup_ts"].min(), world.items["created_ts"].min())).to_pydatetime()
    return start, end


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One workspace materialized into both online stores: SQLite and our own Redis."""
    from hyperrec.config import load_settings

    home = tmp_path_factory.mktemp("redis-home")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("HYPERREC_ONLINE_STORE", raising=False)
    mp.setenv("HYPERREC_HOME", str(home))  # open_store sets these two: undo restores them
    mp.setenv("HYPERREC_REDIS", "127.0.0.1:1")
    try:
        with redis_server() as url:
            sqlite = load_settings(home)
            assert sqlite.online_store == "sqlite"
            on_redis = sqlite.model_copy(update={"online_store": "redis", "redis_url": url})
            world = generate_world(WorldConfig(users=120, items=60, days=10, events=6_000, seed=11))
            save_world(world, sqlite.data_dir / "world")
            write_offline_tables(world, sqlite)  # shared by both: same home, same registry
            start, end = _history(world)
            for settings in (sqlite, on_redis):
                apply_repo(settings)
                materialize(settings, start, end)
            yield sqlite, on_redis, world, url
    finally:
        mp.undo()


def _users(world) -> list[str]:
    """~20 real users, most of them recently active (live activity values), plus an unknown one."""
    recent = world.events.sort_values("ts", ascending=False)["user_id"].astype(str).drop_duplicates()
    others = [u for u in world.users["user_id"].astype(str) if u not in set(recent[:12])]
    return [*recent[:12], *others[:8], UNKNOWN]


def _read(settings, ids, now) -> pd.DataFrame:
    df = online_user_features(open_store(settings), ids, now=now)
    return df.sort_values("user_id").reset_index(drop=True)


def _defaults(df: pd.DataFrame) -> pd.Series:
    """Per row: every user feature holds its typed default (empty string, zero, empty list)."""
    ok = pd.Series(True, index=df.index)
    for view in USER_VIEWS:
        for f, kind in view.features.items():
            ok &= df[f].map(lambda v, d=MISSING[kind]: (list(v) == d) if isinstance(d, list) else v == d)
    return ok


def test_redis_serves_the_same_user_features_as_sqlite(stores):
    sqlite, on_redis, world, _ = stores
    ids = _users(world)
    now = pd.Timestamp(world.events["ts"].max()).to_pydatetime() + timedelta(hours=1)
    want = _read(sqlite, ids, now)
    got = _read(on_redis, ids, now)
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(ids)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    known = got["user_id"] != UNKNOWN
    assert _defaults(got[~known]).all()  # the unknown user: typed defaults
    assert not _defaults(got[known]).any()  # every real user has a profile at least
    assert (got.loc[known, "recent_items"].map(len) > 0).any()


def test_values_live_in_our_redis_and_reads_hit_it(stores):
    sqlite, on_redis, world, url = stores
    host, port = url.split(":")
    ids = _users(world)
    now = pd.Timestamp(world.events["ts"].max()).to_pydatetime() + timedelta(hours=1)
    client = redis.Redis(host=host, port=int(port))
    try:
        assert client.dbsize() > 0
        before = _read(on_redis, ids, now)
        assert not _defaults(before[before["user_id"] != UNKNOWN]).any()
        client.flushall()
        assert client.dbsize() == 0
        flushed = _read(on_redis, ids, now)
        assert _defaults(flushed).all()  # nothing left to read: defaults for everyone
        assert not _defaults(_read(sqlite, ids, now)).all()  # SQLite untouched
    finally:
        # refill, so the module's other tests see a loaded store whatever the order
        materialize(on_redis, *_history(world))
        client.close()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_direct_reader_returns_what_feast_returns(stores, store):
    """The serving path's OnlineUserReader reads Feast's tables itself: it must agree with
    Feast's own get_online_features, value for value, fresh and past the TTL, known and unknown."""
    from hyperrec.features.online_reader import UNAVAILABLE, OnlineUserReader

    sqlite, on_redis, world, _ = stores
    settings = sqlite if store == "sqlite" else on_redis
    ids = _users(world)
    last = pd.Timestamp(world.events["ts"].max()).to_pydatetime()
    for now in (last + timedelta(hours=1), last + timedelta(days=8), last + timedelta(days=40)):  # some TTLs lapse
        want = online_user_features(open_store(settings), ids, now=now)
        got = OnlineUserReader(settings).read(ids, now=now)
        assert not got.pop(UNAVAILABLE).any()  # the reader's own flag: every row was read
        assert set(got) == set(want.columns)
        for col in want.columns:
            assert [list(v) if isinstance(v, list) else v for v in got[col]] == \
                   [list(v) if isinstance(v, list) else v for v in want[col]], (col, now)
    assert not _defaults(want).all()  # the comparison saw real values, not only defaults


def test_an_unreachable_online_store_is_flagged_not_failed_or_waited_for(tmp_path):
    import time

    from hyperrec.config import load_settings
    from hyperrec.features.online_reader import UNAVAILABLE, OnlineUserReader
    from hyperrec.services import free_port

    settings = load_settings(tmp_path).model_copy(update={"online_store": "redis",
                                                          "redis_url": f"127.0.0.1:{free_port()}"})
    reader = OnlineUserReader(settings)
    started = time.monotonic()
    first = reader.read(["u1", "u2"])
    second = reader.read(["u3"])  # inside the cooldown: not asked again
    assert time.monotonic() - started < 1.0
    assert first[UNAVAILABLE].tolist() == [True, True] and second[UNAVAILABLE].tolist() == [True]
    assert first["last_event_ts"].tolist() == second["last_event_ts"].tolist()[:1] * 2  # typed defaults
