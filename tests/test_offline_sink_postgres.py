"""The offline sink on the cluster's database, against a real Kafka-protocol broker (tansu) and a
real PostgreSQL: events produced to the topic land in `offline.events` once, even when the sink
restarts mid-stream with its offset commit lost; a retrain's snapshot reads them from the table,
and an item only the Kafka events name is in the training set built from that snapshot."""

import json
import time
from pathlib import Path

import pandas as pd
import psycopg
import pytest

from hyperrec.data.kafka_log import TOPIC

pytestmark = pytest.mark.slow
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 10000}


@pytest.fixture(scope="module")
def cluster(make_workspace):
    """A broker with the event topic, a PostgreSQL, and a workspace built in that mode."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from hyperrec.services import kafka_broker, postgres_server

    with kafka_broker() as bootstrap, postgres_server() as url:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
        admin.close()
        env = pytest.MonkeyPatch()
        env.setenv("HYPERREC_DATABASE_URL", url)
        try:
            with make_workspace("sink-postgres", users=150, items=60, days=8, events=6_000,
                                seed=5) as (settings, world):
                assert settings.database_url == url
                yield {"bootstrap": bootstrap, "url": url, "settings": settings, "world": world}
        finally:
            env.undo()


def produce(bootstrap: str, events: list[dict]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for e in events:
        producer.send(TOPIC, key=e["user_id"].encode(), value=json.dumps(e).encode())
    producer.flush()
    producer.close()


def drain(cluster, group: str, lose_commits: bool = False) -> int:
    """Run a sink until it holds the partition and three polls came back empty; returns the
    rows it inserted. `lose_commits`: its offset commits never reach Kafka (a crash between
    the insert and the commit)."""
    from hyperrec.data.offline_sink import OfflineSink

    settings = cluster["settings"]
    sink = OfflineSink(cluster["bootstrap"], settings.offline_events_dir, group_id=group,
                       database_url=settings.database_url, **FAST_GROUP)
    if lose_commits:
        sink.consumer.commit = lambda *args, **kwargs: None
    written, quiet, deadline = 0, 0, time.monotonic() + 60
    try:
        while quiet < 3 and time.monotonic() < deadline:
            result = sink.run_once(timeout_ms=500)
            written += result.written
            quiet = quiet + 1 if sink.consumer.assignment() and not result.received else 0
    finally:
        sink.close()
    assert quiet == 3, "the sink never got the partition"
    return written


def kafka_only_item(world, n_users: int = 6):
    """An item to be known only from Kafka (the caller removes its world events), and
    purchases of it by consenting users, stamped mid-history (so they land in train)."""
    counts = world.events["item_id"].value_counts()
    item = counts.index[len(counts) // 2]
    mid = world.events["ts"].quantile(0.5)
    consenting = world.users["consent_personalization"] & (world.users["consent_ts"] <= mid)
    users = world.users[consenting]["user_id"].iloc[:n_users].tolist()
    return item, [{"event_id": f"pg-kafka-only-{i}", "user_id": u, "item_id": item, "event_type": "purchase",
                   "ts": (mid + pd.Timedelta(minutes=i)).isoformat()} for i, u in enumerate(users)]


def test_sunk_events_reach_the_snapshot_once_and_the_training_set(cluster, tmp_path):
    from components.snapshot_data import snapshot_data
    from hyperrec.data.offline_sink import read_sunk_events
    from hyperrec.data.world import World, load_world, save_world
    from hyperrec.training.dataset import build_training_set

    settings, world = cluster["settings"], cluster["world"]
    item, purchases = kafka_only_item(world)
    users = world.users["user_id"].tolist()
    views = [{"event_id": f"pg-view-{i}", "user_id": users[i % len(users)], "item_id": item, "event_type": "view",
              "ts": (world.events["ts"].quantile(0.4) + pd.Timedelta(seconds=i)).isoformat()} for i in range(40)]
    first, second = purchases[:3] + views[:20], purchases[3:] + views[20:]
    produce(cluster["bootstrap"], first + [first[0]])  # the same event twice (a client's retry)
    assert drain(cluster, "pg-sink", lose_commits=True) == len(first)
    # restarted mid-stream: the commit was lost, so Kafka hands the same records over again
    produce(cluster["bootstrap"], second)
    assert drain(cluster, "pg-sink") == len(second)
    assert drain(cluster, "pg-sink") == 0  # resumes after its commit
    assert drain(cluster, "pg-sink-offsets-gone") == 0  # a whole new group rereads the topic
    expected = sorted(e["event_id"] for e in first + second)
    with psycopg.connect(cluster["url"]) as conn:
        stored = sorted(r[0] for r in conn.execute("SELECT event_id FROM offline.events"))
    assert stored == expected
    sunk = read_sunk_events(settings)
    assert sorted(sunk["event_id"]) == expected and str(sunk["ts"].dtype) == "datetime64[us, UTC]"
    assert not settings.offline_events_dir.exists()  # no parquet in this mode

    # a world in which the item has no events: only the Kafka events name it
    base = save_world(World(world.users, world.items, world.events[world.events["item_id"] != item], None,
                            world.meta), tmp_path / "world")
    snapshot = Path(snapshot_data.python_func(home=str(settings.home), world_dir=str(base), merge_logged_events=True,
                                              run_id="pg-run"))
    events = load_world(snapshot).events
    assert sorted(events.loc[events["event_id"].str.startswith("pg-"), "event_id"]) == expected  # each once
    build_training_set(settings, snapshot, tmp_path / "training_set")
    train = pd.read_parquet(tmp_path / "training_set" / "train.parquet")
    assert item in set(train["item_id"])
    assert set(train.loc[train["item_id"] == item, "user_id"]) <= {e["user_id"] for e in first + second}


def test_erasure_removes_the_users_rows_from_the_database(cluster):
    from hyperrec.features.postgres import erase_user

    user = cluster["world"].users["user_id"].iloc[0]
    produce(cluster["bootstrap"], [{"event_id": "pg-erase-me", "user_id": user, "item_id": "i1",
                                    "event_type": "view", "ts": pd.Timestamp.now(tz="UTC").isoformat()}])
    drain(cluster, "pg-sink")
    removed = erase_user(cluster["url"], user)
    assert removed["offline.events"] >= 1 and removed["offline.user_profile"] == 1
    assert erase_user(cluster["url"], user) == dict.fromkeys(removed, 0)
