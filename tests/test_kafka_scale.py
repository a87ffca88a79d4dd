"""Several stream consumers in one group, against a real Kafka-protocol broker (tansu) and a
real Redis online store they share: each member rebuilds the window state of the partitions
it is given from the topic, one member dies between its push and its offset commit, the other
takes its partitions over, and every user's online features end as one consumer folding every
event once would have made them. No event is lost and none is folded twice into a member's state."""

import json
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from hyperrec.features.kafka_source import StreamReplica
from hyperrec.services import kafka_broker, redis_server

pytestmark = pytest.mark.slow
TOPIC, GROUP, PARTITIONS = "scale-events", "scale-features", 4
# a dead member's partitions move after session_timeout; a rebuild must end within max_poll_interval
CONFIG = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 30000}
VIEWS = ("user_activity", "user_recent_items", "user_purchases", "user_recent_views")


@pytest.fixture(scope="module")
def env(make_workspace):
    from hyperrec.features.store import apply_repo

    with make_workspace("kafka-scale", users=60, items=30, days=6, events=3_000, seed=37) as (settings, world), \
            redis_server() as url:
        mp = pytest.MonkeyPatch()
        mp.setenv("HYPERREC_REDIS", url)  # open_store sets it: undo restores it
        try:
            on_redis = settings.model_copy(update={"online_store": "redis", "redis_url": url})
            apply_repo(on_redis)
            yield on_redis, world
        finally:
            mp.undo()


def live_events(world, n: int = 900, n_users: int = 40, seed: int = 5) -> list[dict]:
    """Events after the world's, one second apart (so (user, ts) names each one)."""
    rng = np.random.default_rng(seed)
    users, items = world.users["user_id"].astype(str).tolist()[:n_users], world.items["item_id"].astype(str).tolist()
    at = pd.Timestamp(world.events["ts"].max()) + timedelta(minutes=1)
    out = []
    for i in range(n):
        kind = ("view", "view", "view", "click", "add_to_cart", "purchase")[rng.integers(6)]
        event = {"event_id": f"live-{i}", "user_id": users[rng.integers(n_users)],
                 "item_id": items[rng.integers(len(items))], "event_type": kind,
                 "ts": (at + timedelta(seconds=i)).isoformat()}
        if kind == "click":
            event["dwell_s"] = float(rng.integers(1, 90))
        if kind == "view" and i % 2:
            event["request_id"] = f"req-{i}"
        out.append(event)
    return out


def produce(bootstrap, events, raw=(), ends: dict | None = None) -> dict:
    """Send the events keyed by user (and `raw` values); returns each partition's next offset
    after them, from the broker's acknowledgements (tansu's ListOffsets is not to be relied on)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    futures = [producer.send(TOPIC, key=e["user_id"].encode(), value=json.dumps(e).encode()) for e in events]
    futures += [producer.send(TOPIC, key=b"u-poison", value=value) for value in raw]
    producer.flush()
    producer.close()
    ends = dict(ends or {})
    for future in futures:
        meta = future.get(timeout=10)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    return ends


def instrument(replica) -> dict:
    """Record, per user, the events folded into this member's state since its state for the
    user was last dropped: the same (user, ts) twice is an event applied twice."""
    folds, applied = replica.users.processor.folds, defaultdict(list)
    fold_event, forget = folds.fold_event, folds.forget

    def recording_fold(rows, user, item, kind, t, d, from_list):
        applied[user].append((item, kind, int(t)))
        return fold_event(rows, user, item, kind, t, d, from_list)

    def recording_forget(users):
        for user in users:
            applied.pop(user, None)
        return forget(users)

    folds.fold_event, folds.forget = recording_fold, recording_forget
    return applied


class Crash(Exception):
    pass


def crash_after_next_push(replica, crashed: dict) -> None:
    """The member's next batch is folded and pushed, then it dies before committing."""
    process_batch = replica.users.processor.process_batch

    def push_then_die(events):
        process_batch(events)
        crashed["events"] = len(events)
        raise Crash(f"died after pushing {len(events)} events, before the commit")

    replica.users.processor.process_batch = push_then_die


def serve(replica, stop: threading.Event, errors: list) -> threading.Thread:
    """The replica as `hyperrec stream --kafka` runs it (StreamReplica.serve: a thread per
    follower), in a thread of the test's."""
    def loop():
        try:
            replica.serve(stop, timeout_ms=250)
        except Exception as exc:  # noqa: BLE001  (the test reads it)
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def wait_for(condition, what: str, detail=lambda: "", timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {detail()}"
        time.sleep(0.2)


def behind(bootstrap, groups, ends: dict) -> int:
    """How many of the produced records the groups have not committed yet, over all partitions."""
    from kafka import KafkaConsumer, TopicPartition

    total = 0
    for group in groups:
        probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
        try:
            total += sum(end - (probe.committed(TopicPartition(TOPIC, p)) or 0) for p, end in ends.items())
        finally:
            probe.close()
    return total


def state(bootstrap, replicas, errors, ends) -> str:
    return (f"behind {behind(bootstrap, [GROUP], ends)} + {behind(bootstrap, [f'{GROUP}.items'], ends)} (items); "
            f"members {[member(r) for r in replicas]}; errors {errors}")


def member(replica) -> tuple:
    return (sorted(tp.partition for tp in replica.users.consumer.assignment()),
            len(replica.items.consumer.assignment()), dict(replica.users.counts), dict(replica.items.counts))


def reference(settings, world, events):
    """What one consumer folding the world's history and every live event once pushes last,
    per user and view, and its item state."""
    from hyperrec.data.event_types import EventTypes
    from hyperrec.features.windows import StreamFolds

    folds = StreamFolds.for_types(EventTypes.for_workspace(settings.home).engaged)
    live = pd.DataFrame(events)
    live["ts"] = pd.to_datetime(live["ts"], utc=True)
    past = world.events.copy()
    past["ts"] = pd.to_datetime(past["ts"], utc=True)
    snapshots = folds.fold_frame(pd.concat([past, live], ignore_index=True))
    start = live["ts"].min()
    last = {view: snapshots[view][snapshots[view]["event_timestamp"] > start].drop_duplicates("user_id", keep="last")
            .set_index("user_id") for view in VIEWS}
    return last, folds


def online(settings, view: str, users: list[str]) -> pd.DataFrame:
    from hyperrec.features.store import open_store
    from hyperrec.features.views import FEATURE_VIEWS

    spec = next(v for v in FEATURE_VIEWS if v.name == view)
    frame = open_store(settings).get_online_features(
        features=[f"{view}:{f}" for f in spec.features], entity_rows=[{"user_id": u} for u in users]).to_df()
    return frame.set_index("user_id")


def same(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return list(a) == list(b)
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-5, abs=1e-6)
    return a == b


def test_two_consumers_share_the_partitions_and_fold_each_event_once(env):
    from kafka.admin import KafkaAdminClient, NewTopic

    settings, world = env
    events = live_events(world)
    first, second = events[:450], events[450:]
    stop, errors = [threading.Event(), threading.Event()], [[], []]
    crashed: dict = {}
    with kafka_broker() as bootstrap:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        admin.close()
        # a repeat of an event (a client's retry) and a record that is not an event
        ends = produce(bootstrap, first + [first[7]], raw=[b"\x00not an event"])
        journals = [settings.home / f"journal-{i}.jsonl" for i in range(2)]
        replicas = [StreamReplica(settings, bootstrap, TOPIC, GROUP, journal=j, **CONFIG) for j in journals]
        applied = [instrument(r) for r in replicas]
        threads = [serve(r, s, e) for r, s, e in zip(replicas, stop, errors)]
        try:
            started = time.monotonic()
            wait_for(lambda: all(r.users.consumer.assignment() for r in replicas)
                     and behind(bootstrap, [GROUP, f"{GROUP}.items"], ends) == 0,
                     "both members to share the first half",
                     lambda: state(bootstrap, replicas, errors, ends))
            first_half_s = time.monotonic() - started
            shares = [sorted(tp.partition for tp in r.users.consumer.assignment()) for r in replicas]
            assert sorted(shares[0] + shares[1]) == list(range(PARTITIONS)) and all(shares), shares

            victim, survivor = replicas
            crash_after_next_push(victim, crashed)
            ends = produce(bootstrap, second, ends=ends)
            threads[0].join(60)
            assert crashed and isinstance(errors[0][0], Crash), errors
            victim.close()  # leaves the group without committing its last batch
            started = time.monotonic()
            wait_for(lambda: len(survivor.users.consumer.assignment()) == PARTITIONS
                     and len(survivor.items.consumer.assignment()) == PARTITIONS
                     and behind(bootstrap, [GROUP, f"{GROUP}.items"], ends) == 0,
                     "the survivor to take over and catch up",
                     lambda: state(bootstrap, replicas, errors, ends))
            takeover_s = time.monotonic() - started
        finally:
            for s in stop:
                s.set()
            for t in threads:
                t.join(30)
            survivor = replicas[1]
            survivor.close()
    assert not errors[1], errors[1]

    want, folds = reference(settings, world, events)
    # each event applied once per member state: the repeat, the replay after the crash and the
    # records below a rebuilt partition's committed offset were all folded at most once
    duplicates_applied = sum(len(a) - len(set(a)) for member in applied for a in member.values())
    assert duplicates_applied == 0
    # the members' fold journals (what `hyperrec bench cluster` counts) say the same: no event
    # twice in one state, and every live event folded and pushed by some member
    entries = [json.loads(line) for j in journals for line in j.read_text().splitlines()]
    per_state = Counter((e["replica"], e["scope"], e["partition"], e["generation"], i)
                        for e in entries for i in e["event_ids"])
    assert per_state and max(per_state.values()) == 1
    pushed = {i for e in entries if e["kind"] == "live" and e["scope"] == "users" for i in e["event_ids"]}
    assert {e["event_id"] for e in events} <= pushed
    # the repeated event_id was seen (live or in a rebuild) and skipped
    seen = [r.users.counts for r in replicas] + [b for r in replicas for b in r.users.rebuilds]
    assert sum(c.get("duplicates", 0) for c in seen) >= 1 and sum(c.get("dead_lettered", 0) for c in seen) >= 1
    assert crashed["events"] > 0, "the crash must leave pushed but uncommitted events to replay"
    # the survivor rebuilt the victim's partitions from the topic, including what the victim committed
    rebuilt = [b for b in survivor.users.rebuilds if set(b["partitions"]) & set(shares[0])]
    assert rebuilt and sum(b["records"] for b in rebuilt) > 0, survivor.users.rebuilds
    # no event lost, none doubled: every user's online features are the single consumer's
    for view in VIEWS:
        users = sorted(want[view].index)
        got = online(settings, view, users)
        wrong = [(u, f) for u in users for f in got.columns
                 if f in want[view].columns and not same(got.loc[u, f], want[view].loc[u, f])]
        assert not wrong, f"{view}: {len(wrong)} values differ, e.g. {wrong[:3]}"
    # item popularity: the item owner's counts are every event's, once
    owner = survivor.items.processor.folds.items.state
    for item, windows in folds.items.state.items():
        for name, window in windows.items():
            assert owner[item][name].counts == window.counts, (item, name)
    rebuilds = [(b["partitions"], b["records"], b["history"], round(b["seconds"], 2)) for b in survivor.users.rebuilds]
    print(f"first half shared in {first_half_s:.1f} s; takeover and catch-up {takeover_s:.1f} s; user rebuilds "
          f"(partitions, records, history rows, s) {rebuilds}; item rebuilds "
          f"{[(b['records'], b['history'], round(b['seconds'], 2)) for b in survivor.items.rebuilds]}")


def test_a_partitions_dedupe_keeps_only_its_newest_ids():
    """The dedupe's memory is bounded: the oldest id leaves once `capacity` newer ones came."""
    from hyperrec.features.kafka_source import RecentIds

    ids = RecentIds(capacity=3)
    for event_id in ("a", "b", "c", "d"):
        ids.add(event_id)
    assert len(ids) == 3 and "a" not in ids and all(i in ids for i in "bcd")
    ids.add("b")  # a repeat seen again stays where it was: the next to leave is still b
    ids.add("e")
    assert "b" not in ids and all(i in ids for i in "cde")
