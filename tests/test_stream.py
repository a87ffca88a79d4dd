"""The stream processor against the real embedded Feast store: a new event changes the
user's online features; a failed online write is retried, never lost or doubled."""

from datetime import timedelta

import pandas as pd
import pytest

from hyperrec.data.eventlog import EventLog
from hyperrec.features.store import online_features, online_user_features, open_store
from hyperrec.features.stream import StreamProcessor
from hyperrec.features.views import ITEM_POPULARITY, MISSING

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(make_workspace):
    with make_workspace("stream", users=80, items=40, days=8, events=4_000, seed=21) as built:
        yield built


def clicks(user, item, at, n, prefix):
    return [{"event_id": f"{prefix}{k}", "user_id": user, "item_id": item, "event_type": "click",
             "ts": (at + timedelta(seconds=k)).isoformat(), "dwell_s": 20.0} for k in range(n)]


def test_new_events_reach_the_online_store(env, tmp_path):
    settings, world = env
    store = open_store(settings)
    log = EventLog(tmp_path / "events.db")
    proc = StreamProcessor(store, log)
    proc.warm_start(world.events)
    user, item = world.users["user_id"].iloc[0], world.items["item_id"].iloc[-1]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=1)
    before = online_user_features(store, [user], now=at)
    log.append(clicks(user, item, at, 3, "a"), now=at + timedelta(minutes=1))
    assert proc.run_once() == 3
    after = online_user_features(store, [user], now=at + timedelta(seconds=5))
    assert after.loc[0, "clicks_30m"] == 3 and after.loc[0, "clicks_7d"] >= before.loc[0, "clicks_7d"] + 3
    assert after.loc[0, "recent_items"][:3] == [item] * 3
    pop = online_features(store, (ITEM_POPULARITY,), "item_id", [item], now=at + timedelta(seconds=5))
    assert pop.loc[0, "item_clicks_1d"] >= 3
    assert proc.run_once() == 0  # nothing new: nothing pushed again


def test_a_batch_only_arm_keeps_its_materialized_features(env, tmp_path):
    """The ablation's real-time-off arm: the stream processor skips its users' events (the
    log keeps them for the next batch run); everyone else's still reach the online store."""
    from hyperrec.online.serving_path import EXPERIMENTS

    settings, world = env
    store = open_store(settings)
    log = EventLog(tmp_path / "events.db")
    ablation = EXPERIMENTS["ablation"]
    proc = StreamProcessor(store, log, batch_only=ablation.batch_only)
    proc.warm_start(world.events)
    users = world.users["user_id"].tolist()
    skipped = next(u for u in users if ablation.assign(u) == "no-realtime")
    streamed = next(u for u in users if ablation.assign(u) != "no-realtime")
    item = world.items["item_id"].iloc[-2]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=10)
    before = online_user_features(store, [skipped, streamed], now=at).set_index("user_id")
    log.append(clicks(skipped, item, at, 2, "s") + clicks(streamed, item, at, 2, "t"), now=at + timedelta(minutes=1))
    assert proc.run_once() == 4  # all consumed (and committed): the skipped ones are not retried
    after = online_user_features(store, [skipped, streamed], now=at + timedelta(seconds=5)).set_index("user_id")
    assert after.loc[streamed, "clicks_30m"] == 2 and after.loc[streamed, "recent_items"][:2] == [item] * 2
    assert after.loc[skipped, "clicks_7d"] == before.loc[skipped, "clicks_7d"]
    assert after.loc[skipped, "recent_items"] == before.loc[skipped, "recent_items"]
    assert len(log.read(0, limit=100)[1]) == 4  # the events themselves are kept


def test_a_failed_online_write_is_replayed_not_lost(env, tmp_path, monkeypatch):
    settings, world = env
    store = open_store(settings)
    log = EventLog(tmp_path / "events.db")
    user, item = world.users["user_id"].iloc[1], world.items["item_id"].iloc[0]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=2)
    log.append(clicks(user, item, at, 2, "b"), now=at + timedelta(minutes=1))
    crashing = StreamProcessor(store, log)

    def down(*args, **kwargs):
        raise ConnectionError("online store down")

    monkeypatch.setattr(store, "push", down)
    with pytest.raises(ConnectionError):
        crashing.run_once()
    assert log.committed("online-features") == 0  # nothing committed before the online write
    monkeypatch.undo()
    restarted = StreamProcessor(open_store(settings), log)  # a new process starts from the offset
    assert restarted.run_once() == 2
    after = online_user_features(store, [user], now=at + timedelta(seconds=5))
    assert after.loc[0, "clicks_30m"] == 2  # applied once, not lost or doubled


def test_an_erased_user_is_forgotten_by_the_running_stream_and_suppressed_at_ingestion(env, tmp_path):
    from hyperrec.privacy import ErasureWatch, erase_user

    settings, world = env
    store = open_store(settings)
    erasures = ErasureWatch(settings)
    log = EventLog(tmp_path / "events.db", suppress=erasures)
    proc = StreamProcessor(store, log, erasures=erasures)
    proc.warm_start(world.events)
    user, item = world.users["user_id"].iloc[7], world.items["item_id"].iloc[3]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=3)
    log.append(clicks(user, item, at, 3, "e"), now=at + timedelta(minutes=1))
    proc.run_once()
    assert online_user_features(store, [user], now=at + timedelta(seconds=5)).loc[0, "clicks_30m"] == 3
    assert user in proc.folds.viewed  # the history's views

    erase_user(settings, user, "ticket DSR-7", event_logs=[tmp_path / "events.db"])
    # a push racing the erasure writes the user's row back from the processor's memory...
    proc.process_batch(pd.DataFrame(clicks(user, item, at + timedelta(seconds=9), 1, "race")).assign(
        ts=lambda f: pd.to_datetime(f["ts"], utc=True)))
    assert online_user_features(store, [user], now=at + timedelta(seconds=15)).loc[0, "clicks_30m"] == 4
    # ...the next poll forgets the windows and deletes the row again
    proc.run_once()
    assert user not in proc.folds.users.state and user not in proc.folds.recent.state
    assert user not in proc.folds.viewed
    after = online_user_features(store, [user], now=at + timedelta(seconds=15))
    assert after.loc[0, "clicks_30m"] == MISSING["int"] and list(after.loc[0, "recent_items"]) == []
    # new events of the erased user are dropped at the door: counted, not kept, not folded
    result = log.append(clicks(user, item, at + timedelta(seconds=20), 2, "late"), now=at + timedelta(minutes=1))
    assert (result.received, result.stored, result.dead_lettered, result.suppressed) == (2, 0, 0, 2)
    assert log.counts() == {"events": 0, "dead_letters": 0} and proc.run_once() == 0
    assert user not in proc.folds.users.state


def test_the_ready_file_appears_once_history_is_folded_and_new_events_flow_after_it(env):
    """`hyperrec stream --ready-file`: what the demo waits on before users start."""
    import threading
    import time

    from hyperrec.features.stream import run

    settings, world = env
    ready, stop = settings.home / "logs" / "stream.ready", threading.Event()
    ready.unlink(missing_ok=True)
    thread = threading.Thread(target=run, args=(settings, stop), kwargs={"log": lambda *_: None, "ready_file": ready})
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert thread.is_alive() and time.monotonic() < deadline, "the processor never reported tailing"
            time.sleep(0.05)
        user, item = world.users["user_id"].iloc[5], world.items["item_id"].iloc[5]
        at = world.events["ts"].max().to_pydatetime() + timedelta(hours=1)
        EventLog(settings.event_log).append(clicks(user, item, at, 2, "ready-"), now=at)
        store = open_store(settings)
        while online_user_features(store, [user], now=at + timedelta(seconds=5)).loc[0, "clicks_30m"] != 2:
            assert time.monotonic() < deadline, "an event after the ready file never reached the online store"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
