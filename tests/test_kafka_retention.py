"""A stream consumer rebuilding partitions the topic's retention has trimmed, against a real
Kafka-protocol broker (tansu) and a real PostgreSQL: the offline sink's copy of the trimmed
events stands in for them, so a replica that restarts folds exactly what the replica before it
folded live, and one without that copy folds less.

tansu keeps every record (no retention, no DeleteRecords), so the trimming is the one thing
told, not done: the followers are told each partition's first retained offset is half way
(`PartitionFollower._first_offsets`), and read the broker from there."""

import json
import time
from collections import defaultdict
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from hyperrec.data.offline_sink import OfflineSink, sunk_events_below
from hyperrec.features.kafka_source import PartitionFollower, _NoLetters
from hyperrec.features.stream import StreamProcessor

pytestmark = pytest.mark.slow
TOPIC, PARTITIONS = "retention-events", 2
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 30000}


@pytest.fixture(scope="module")
def env(make_workspace):
    from kafka.admin import KafkaAdminClient, NewTopic

    from hyperrec.services import kafka_broker, postgres_server

    with kafka_broker() as bootstrap, postgres_server() as url:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        admin.close()
        mp = pytest.MonkeyPatch()
        mp.setenv("HYPERREC_DATABASE_URL", url)
        try:
            with make_workspace("kafka-retention", users=50, items=30, days=6, events=2_500, seed=11) as (settings,
                                                                                                         world):
                assert settings.database_url == url
                events = live_events(world)
                ends = produce(bootstrap, events)
                sink_all(settings, bootstrap, len(events))
                yield {"settings": settings, "world": world, "bootstrap": bootstrap, "events": events, "ends": ends}
        finally:
            mp.undo()


def live_events(world, n: int = 600, n_users: int = 30, seed: int = 3) -> list[dict]:
    """Events after the world's, one second apart, with one repeat of an early event late
    (a client's retry: the same event_id in a second record)."""
    rng = np.random.default_rng(seed)
    users, items = world.users["user_id"].astype(str).tolist()[:n_users], world.items["item_id"].astype(str).tolist()
    at = pd.Timestamp(world.events["ts"].max()) + timedelta(minutes=1)
    out = []
    for i in range(n):
        kind = ("view", "view", "click", "add_to_cart", "purchase")[rng.integers(5)]
        event = {"event_id": f"kept-{i}", "user_id": users[rng.integers(n_users)],
                 "item_id": items[rng.integers(len(items))], "event_type": kind,
                 "ts": (at + timedelta(seconds=i)).isoformat()}
        if kind == "click":
            event["dwell_s"] = float(rng.integers(1, 90))
        out.append(event)
    return [*out, dict(out[3])]


def produce(bootstrap, events) -> dict[int, int]:
    """Send the events keyed by user; each partition's next offset, from the acknowledgements."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    futures = [producer.send(TOPIC, key=e["user_id"].encode(), value=json.dumps(e).encode()) for e in events]
    producer.flush()
    producer.close()
    ends: dict[int, int] = {}
    for future in futures:
        meta = future.get(timeout=10)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    assert len(ends) == PARTITIONS, "the users should spread over both partitions"
    return ends


def sink_all(settings, bootstrap, n: int) -> None:
    sink = OfflineSink(bootstrap, settings.offline_events_dir, topic=TOPIC, group_id="retention-sink",
                       database_url=settings.database_url, **FAST_GROUP)
    received, deadline = 0, time.monotonic() + 60
    try:
        while received < n:
            assert time.monotonic() < deadline, f"the sink got {received} of {n} records"
            received += sink.run_once(timeout_ms=500).received
    finally:
        sink.close()


class Trimmed(PartitionFollower):
    """A follower told the broker kept each partition from half way on."""

    def _first_offsets(self, tps: list) -> dict:
        return {tp: self.trimmed_to[tp.partition] for tp in tps}


def follower(env, scope: str, group: str, trimmed_to: dict | None = None, from_sink: bool = True):
    from hyperrec.data.world_db import recorded_events
    from hyperrec.features.store import open_store

    settings = env["settings"]
    past = recorded_events(settings)
    past["ts"] = pd.to_datetime(past["ts"], utc=True)
    processor = StreamProcessor(open_store(settings), _NoLetters(), scope=scope)
    sunk = (lambda before: sunk_events_below(settings, TOPIC, before)) if from_sink else None
    member = (PartitionFollower if trimmed_to is None else Trimmed)(
        processor, env["bootstrap"], TOPIC, group, history=past, trimmed=sunk, **FAST_GROUP)
    member.trimmed_to = trimmed_to  # read at the rebuild, on the first assignment
    return member, record_folds(member)


def record_folds(member) -> dict:
    """What this member's state folded, per user, in order."""
    folds, applied = member.processor.folds, defaultdict(list)
    fold_event = folds.fold_event

    def recording_fold(rows, user, item, kind, t, d, from_list):
        applied[user].append((item, kind, int(t)))
        return fold_event(rows, user, item, kind, t, d, from_list)

    folds.fold_event = recording_fold
    return applied


def run_until(member, condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        member.run_once(timeout_ms=300)


@pytest.mark.parametrize("scope", ["users", "items"])
def test_a_replica_rebuilding_trimmed_partitions_folds_what_its_predecessor_folded(env, scope):
    group, n = f"retention-{scope}", len(env["events"])
    live, folded_live = follower(env, scope, group)
    try:
        run_until(live, lambda: live.counts["folded"] + live.counts["duplicates"] == n, "the live folds")
    finally:
        live.close()
    assert live.counts["duplicates"] == 1  # the retried event, folded once
    half = {p: end // 2 for p, end in env["ends"].items()}

    restarted, folded_rebuilt = follower(env, scope, group, trimmed_to=half)
    try:
        run_until(restarted, lambda: restarted.rebuilds, "the rebuild")
    finally:
        restarted.close()
    rebuild = restarted.rebuilds[-1]
    assert rebuild["trimmed"] == sum(half.values())  # the events below half way came from the sink
    assert rebuild["records"] == n - 1  # ... the rest from the broker; the retry once in all
    assert dict(folded_rebuilt) == dict(folded_live)

    blind, folded_blind = follower(env, scope, group, trimmed_to=half, from_sink=False)
    try:
        run_until(blind, lambda: blind.rebuilds, "the rebuild without the sink")
    finally:
        blind.close()
    lost = sum(len(v) for v in folded_live.values()) - sum(len(v) for v in folded_blind.values())
    # without the sink's copy the trimmed events are gone, but for the retried one: its second
    # record, no longer a repeat of anything this member saw, stands in for it
    assert lost == sum(half.values()) - 1


def test_the_sinks_files_give_the_events_below_each_partitions_offset(settings):
    """Without a database the sink's parquet files answer the same question: per partition,
    the events below an offset, each event_id once (its first offset), in time order."""
    import pyarrow as pa

    from hyperrec.data.offline_sink import _schema, file_name, write_durably

    settings = settings.model_copy(update={"database_url": None})  # the module's env names one
    at = pd.Timestamp("2026-01-01T00:00:00Z")
    root = settings.offline_events_dir

    def file(partition: int, offsets: range, ids: list[str]):
        rows = pd.DataFrame({"event_id": ids, "user_id": "u1", "item_id": "i1", "event_type": "view",
                             "ts": [at + timedelta(seconds=o * 10 + partition) for o in offsets],
                             "dwell_s": np.nan, "rating": np.nan, "session_id": None, "device": None,
                             "request_id": None, "kafka_partition": partition, "kafka_offset": list(offsets)})
        path = root / "date=2026-01-01" / "hour=00" / file_name(TOPIC, partition, offsets[0], offsets[-1])
        write_durably(pa.Table.from_pandas(rows, schema=_schema(), preserve_index=False), path)

    file(0, range(0, 4), ["a0", "a1", "a2", "a3"])
    file(0, range(4, 8), ["a4", "a1", "a6", "a7"])  # a1 again at offset 5: a client's retry
    file(1, range(0, 3), ["b0", "b1", "b2"])
    file(1, range(3, 6), ["b3", "b4", "b5"])  # wholly above partition 1's offset: not read
    got = sunk_events_below(settings, TOPIC, {0: 6, 1: 2, 2: 5})
    assert got["event_id"].tolist() == ["a0", "b0", "a1", "b1", "a2", "a3", "a4"]
    assert got["kafka_offset"].tolist() == [0, 0, 1, 1, 2, 3, 4]
    assert sunk_events_below(settings, TOPIC, {0: 0}).empty
