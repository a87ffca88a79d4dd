"""Cluster-grade event state, against a real Kafka-protocol broker (tansu) and a real model
server configured for Kafka (HYPERREC_KAFKA_BOOTSTRAP): `POST /v1/events` produces to the
topic and answers after the broker acknowledged; dead letters go to their topic; a stopped
broker is a 503 with nothing claimed stored; the offline sink writes the events to parquet,
once, and a retrain's training set built afterwards learns from them. And the compiled
pipeline runs its mutable-state tasks uncached, with the run's id for MLflow."""

import json
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import requests

from hyperrec.data.kafka_log import DEAD_LETTER_TOPIC, TOPIC


@pytest.fixture(scope="module")
def kafka_server(champion_server):
    """A broker with the two topics, and a server whose workspace says HYPERREC_KAFKA_BOOTSTRAP;
    `stop_broker()` stops the broker under the running server."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from hyperrec.services import kafka_broker

    broker = ExitStack()
    env = pytest.MonkeyPatch()
    try:
        bootstrap = broker.enter_context(kafka_broker())
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, 1, 1), NewTopic(DEAD_LETTER_TOPIC, 1, 1)])
        admin.close()
        env.setenv("HYPERREC_KAFKA_BOOTSTRAP", bootstrap)
        with champion_server("kafka-ingest", extra_args=("--ingest_wait_s", "3")) as srv:
            assert srv["settings"].kafka_bootstrap == bootstrap
            yield {**srv, "bootstrap": bootstrap, "stop_broker": broker.close}
    finally:
        broker.close()
        env.undo()


def unseen_item_and_events(world, n_users: int = 5):
    """An item to be known only from Kafka (its world events are removed by the caller),
    and purchases of it by consenting users, stamped mid-history (so they land in train)."""
    counts = world.events["item_id"].value_counts()
    item = counts.index[len(counts) // 2]
    mid = world.events["ts"].quantile(0.5)
    consenting = world.users["consent_personalization"] & (world.users["consent_ts"] <= mid)
    users = world.users[consenting]["user_id"].iloc[:n_users].tolist()
    events = [{"event_id": f"kafka-only-{i}", "user_id": u, "item_id": item, "event_type": "purchase",
               "ts": (mid + pd.Timedelta(minutes=i)).isoformat()} for i, u in enumerate(users)]
    return item, events


@pytest.mark.slow
def test_posted_events_reach_the_topic_once_acknowledged(kafka_server, topic_records):
    srv, bootstrap = kafka_server, kafka_server["bootstrap"]
    item, events = unseen_item_and_events(srv["world"])
    bad = {"event_id": "no-item", "user_id": events[0]["user_id"], "event_type": "view",
           "ts": datetime.now(UTC).isoformat()}
    answer = requests.post(f"{srv['url']}/v1/events", json=[*events, events[0], bad], timeout=30)
    assert answer.status_code == 200, answer.text
    counts = answer.json()
    assert (counts["received"], counts["stored"], counts["duplicates"], counts["dead_lettered"],
            counts["suppressed"]) == (len(events) + 2, len(events), 1, 1, 0)
    # acknowledged = on the broker: every record is readable the moment the answer arrives
    got = topic_records(bootstrap, TOPIC)
    assert sorted(json.loads(r.value)["event_id"] for r in got) == sorted(e["event_id"] for e in events)
    assert all(r.key.decode() == json.loads(r.value)["user_id"] for r in got)  # keyed by user
    letters = topic_records(bootstrap, DEAD_LETTER_TOPIC)
    assert len(letters) == 1 and json.loads(letters[0].value) == bad
    assert "item_id" in dict(letters[0].headers)["error"].decode()
    # a body that is not a batch is dead-lettered whole, to the topic too
    assert requests.post(f"{srv['url']}/v1/events", data=b"{not json", timeout=30).status_code == 400
    assert [r.value for r in topic_records(bootstrap, DEAD_LETTER_TOPIC)][-1] == b"{not json"
    # nothing went to the SQLite log: the broker is the log
    assert not (srv["settings"].event_log.exists() and _logged(srv["settings"]))


def _logged(settings) -> int:
    from hyperrec.data.eventlog import EventLog

    return EventLog(settings.event_log).counts()["events"]


@pytest.mark.slow
def test_the_sink_writes_each_event_once_and_a_retrain_learns_from_it(kafka_server, tmp_path):
    from components.snapshot_data import snapshot_data
    from hyperrec.data.offline_sink import OfflineSink, read_offline_events
    from hyperrec.data.world import World, load_world, save_world
    from hyperrec.training.dataset import build_training_set

    srv, bootstrap, settings = kafka_server, kafka_server["bootstrap"], kafka_server["settings"]
    item, events = unseen_item_and_events(srv["world"])
    root = settings.offline_events_dir

    def drain(group):
        """Run a sink until it has the partition and three polls after that came back empty."""
        # a short session: the group forms in ~3 s on tansu (~23 s with the defaults)
        sink = OfflineSink(bootstrap, root, group_id=group, session_timeout_ms=6000, heartbeat_interval_ms=1000,
                           max_poll_interval_ms=10000)
        written, files, quiet, deadline = 0, [], 0, time.monotonic() + 60
        try:
            while quiet < 3 and time.monotonic() < deadline:
                result = sink.run_once(timeout_ms=500)
                written, files = written + result.written, files + result.files
                quiet = quiet + 1 if sink.consumer.assignment() and not result.received else 0
        finally:
            sink.close()
        assert quiet == 3, "the sink never got the partition"
        return written, files

    written, files = drain("offline-sink")
    assert written == len(events) and files
    assert all(f.parent.name.startswith("hour=") and f.parent.parent.name.startswith("date=") for f in files)
    sunk = read_offline_events(root)
    assert sorted(sunk["event_id"]) == sorted(e["event_id"] for e in events)
    assert str(sunk["ts"].dtype) == "datetime64[us, UTC]"
    # restarted: resumes after its commit; and with the commit lost (a new group), after its files
    assert drain("offline-sink")[0] == 0
    assert drain("offline-sink-commit-lost")[0] == 0
    assert len(read_offline_events(root)) == len(events)

    # a world in which the item has no events: only the Kafka events name it
    world = load_world(settings.data_dir / "world")
    base = save_world(World(world.users, world.items, world.events[world.events["item_id"] != item], None,
                            world.meta), tmp_path / "world")
    # the pipeline's first task, as a cluster's run calls it
    snapshot = Path(snapshot_data.python_func(home=str(settings.home), world_dir=str(base), merge_logged_events=True,
                                              run_id="kafka-run"))
    assert snapshot == settings.snapshots_dir / "kafka-run"
    assert snapshot_data.python_func(home=str(settings.home), world_dir=str(base), merge_logged_events=False,
                                     run_id="local") == str(base)
    build_training_set(settings, snapshot, tmp_path / "training_set")
    train = pd.read_parquet(tmp_path / "training_set" / "train.parquet")
    assert item in set(train["item_id"])
    assert set(train.loc[train["item_id"] == item, "user_id"]) <= {e["user_id"] for e in events}
    assert (train["item_id"] == item).sum() <= len(events)  # each event once


@pytest.mark.slow
def test_the_sink_process_drops_erased_users_and_unreadable_records(kafka_server, tmp_path):
    """`hyperrec sink`'s loop on a workspace of its own, records produced straight to the topic
    (as any producer may): an erased user's event and a record that is not an event are not
    written; the valid event is, once."""
    import sqlite3
    import threading

    from kafka import KafkaProducer

    from hyperrec.config import load_settings
    from hyperrec.data.offline_sink import read_offline_events, run
    from hyperrec.privacy import ErasureWatch, privacy_db

    settings, bootstrap = load_settings(tmp_path / "home"), kafka_server["bootstrap"]
    settings.home.mkdir()
    ErasureWatch(settings).close()  # makes privacy.db with its tables
    with sqlite3.connect(privacy_db(settings)) as db:
        db.execute("INSERT INTO erased_users (user_id, first_erased_at) VALUES ('u-erased', 0)")
    now = datetime.now(UTC).isoformat()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for user, event_id in (("u-erased", "direct-erased"), ("u-kept", "direct-kept")):
        producer.send(TOPIC, key=user.encode(), value=json.dumps(
            {"event_id": event_id, "user_id": user, "item_id": "i1", "event_type": "view", "ts": now}).encode())
    producer.send(TOPIC, value=b"\x00not an event")
    producer.flush()
    producer.close()
    stop, ready = threading.Event(), tmp_path / "sink.ready"
    lines: list[str] = []
    worker = threading.Thread(target=run, args=(settings, bootstrap), daemon=True,
                              kwargs={"group_id": "direct-sink", "stop": stop, "log": lines.append,
                                      "ready_file": ready, "session_timeout_ms": 6000,
                                      "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 10000})
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while "direct-kept" not in set(read_offline_events(settings.offline_events_dir)["event_id"]):
            assert time.monotonic() < deadline and worker.is_alive(), lines
            time.sleep(0.3)
    finally:
        stop.set()
        worker.join(30)
    assert ready.exists()
    ids = list(read_offline_events(settings.offline_events_dir)["event_id"])
    assert "direct-kept" in ids and "direct-erased" not in ids and ids.count("direct-kept") == 1
    assert any("suppressed" in line and "invalid" in line for line in lines), lines


@pytest.mark.slow
def test_a_broker_that_does_not_ack_is_a_503_and_nothing_is_claimed(kafka_server):
    srv = kafka_server
    _, events = unseen_item_and_events(srv["world"])
    kafka_server["stop_broker"]()
    answer = requests.post(f"{srv['url']}/v1/events", json=[{**events[0], "event_id": "after-the-broker"}],
                           timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "1"
    assert "stored" not in answer.json() and "did not acknowledge" in answer.json()["error"]


def test_compiled_pipeline_runs_mutable_state_tasks_uncached(tmp_path):
    import yaml

    from pipelines.run import compile_pipeline

    ir = next(yaml.safe_load_all(compile_pipeline(tmp_path / "pipeline.yaml").read_text()))
    caching = {}

    def walk(dag):
        for name, task in dag["tasks"].items():
            component = ir["components"][task["componentRef"]["name"]]
            if "dag" in component:
                walk(component["dag"])
            else:
                caching[name] = task.get("cachingOptions", {}).get("enableCache", False)

    walk(ir["root"]["dag"])
    mutable = {"snapshot-data", "validate-data", "build-training-set", "train-retrieval", "evaluate-model",
               "register-model", "deploy"}
    assert mutable <= set(caching) and not any(caching[t] for t in mutable), caching
    assert all(caching[t] for t in set(caching) - mutable), "pure tasks keep their cache"
    register = ir["components"]["comp-condition-1"]["dag"]["tasks"]["register-model"]
    assert register["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    # every task after the snapshot reads the snapshot's world, not the parameter
    validate = ir["root"]["dag"]["tasks"]["validate-data"]["inputs"]["parameters"]["world_dir"]
    assert validate["taskOutputParameter"]["producerTask"] == "snapshot-data"
    for task in ("build-training-set", "register-model"):
        world = ir["components"]["comp-condition-1"]["dag"]["tasks"][task]["inputs"]["parameters"]["world_dir"]
        assert world == {"componentInputParameter": "pipelinechannel--snapshot-data-Output"}
