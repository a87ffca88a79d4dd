"""The impression log on a cluster, against a real Kafka-protocol broker (tansu): the server
(or its writer) produces served lists to the impression topic without waiting for the
broker; the monitoring job drains the topic into its own impression log, each record once
across an interrupted drain; a broker that is down costs no request, and the drops are
counted; an erased user's lists never land in the monitor's log."""

import sqlite3
import time

import numpy as np
import pytest
import requests
from test_privacy import _use_keys

from hyperrec.data.impressions import ImpressionLog, QuerySample
from hyperrec.data.kafka_impressions import (
    TOPIC,
    ImpressionDrain,
    KafkaImpressionWriter,
    drain_impressions,
    impression_record,
)
from hyperrec.online.serving_path import Recommended
from hyperrec.services import kafka_broker


def served(user: str | None, version: int = 1) -> Recommended:
    return Recommended(item_ids=["i1", "i2"], titles=["a", "b"], categories=["c", "d"], scores=[0.5, 0.25],
                       reasons=["", ""], policy="personalized" if user else "popular", arm="control",
                       model_version=version, query=np.arange(4, dtype=np.float32) if user else None,
                       monitored={"hour_of_day": 3.0, "n_events_7d": 2.0})


def add(writer, prefix: str, users: list, t0: float = 1_000.0) -> list[str]:
    ids = [f"{prefix}-{i}" for i in range(len(users))]
    writer.add(ids, users, [served(u) for u in users], [served(u).monitored for u in users],
               [t0 + i for i in range(len(users))])
    return ids


def create_topic(bootstrap: str, topic: str, partitions: int = 2) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def stored_rows(path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"SELECT {', '.join(ImpressionLog.COLUMNS)} FROM impressions ORDER BY request_id").fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def broker():
    with kafka_broker() as bootstrap:
        yield bootstrap


def test_a_drain_interrupted_and_restarted_stores_every_impression_once(broker, tmp_path, monkeypatch):
    topic = "impressions-once"
    create_topic(broker, topic)
    users = [f"u{i % 9}" if i % 4 else None for i in range(60)]  # anonymous lists are keyed by request
    writer = KafkaImpressionWriter(broker, topic, query_every=3)
    ids = add(writer, "r", users)
    assert writer.flush() == 0 and writer.sent == 60 and writer.dropped == {"buffer_full": 0, "broker": 0}
    writer.close()
    expected = QuerySample(3).rows(ids, users, [served(u) for u in users], [served(u).monitored for u in users],
                                   [1_000.0 + i for i in range(60)])

    monitor = ImpressionLog(tmp_path / "monitor" / "impressions.db")
    first = ImpressionDrain(broker, monitor, topic)
    part = first.run(max_records=10, max_polls=2)  # interrupted: the job stopped after two polls
    first.close()
    assert not part.complete and 0 < part.received == part.stored <= 20

    # the next one dies in its second write: the first write's rows and offsets stand, the second's do not
    real_write, calls = ImpressionLog.write, []

    def failing_write(self, rows, offsets=None):
        calls.append(len(rows))
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real_write(self, rows, offsets)

    monkeypatch.setattr(ImpressionLog, "write", failing_write)
    crashed = ImpressionDrain(broker, monitor, topic)
    with pytest.raises(sqlite3.OperationalError):
        crashed.run(max_records=10)
    crashed.close()
    monkeypatch.undo()
    kept = len(monitor.read())  # the first drain's rows and the crashed drain's first write
    assert part.stored < kept < 60

    rest = ImpressionDrain(broker, monitor, topic)
    done = rest.run(max_records=10)
    rest.close()
    # resumed from the offsets stored with the rows: the stored records were not read again
    assert done.complete and done.received == done.stored == 60 - kept
    assert stored_rows(monitor.db.execute("PRAGMA database_list").fetchone()[2]) == sorted(expected)

    # later lists: only they are read
    writer = KafkaImpressionWriter(broker, topic)
    later = add(writer, "s", ["u1", None], t0=2_000.0)
    writer.close()
    again = ImpressionDrain(broker, monitor, topic)
    tail = again.run()
    again.close()
    assert tail.received == tail.stored == 2
    frame = monitor.read()
    assert len(frame) == 62 and frame["request_id"].is_unique and set(later) <= set(frame["request_id"])
    assert set(frame.columns) >= {"hour_of_day", "n_events_7d", "interleaved"}
    monitor.close()


def test_a_broker_that_is_down_costs_no_request_and_drops_are_counted(free_port):
    drops: list[tuple[str, int]] = []
    writer = KafkaImpressionWriter(f"127.0.0.1:{free_port}", capacity=50, flush_s=0.01,
                                   on_drop=lambda reason, n: drops.append((reason, n)))
    started = time.monotonic()
    for n in range(10):
        add(writer, f"b{n}", ["u1"] * 10)  # 100 lists: the buffer holds 50
    assert time.monotonic() - started < 1.0  # no broker wait on the request path
    writer.close(timeout_s=1)
    assert writer.dropped["buffer_full"] == 50 and writer.dropped["broker"] == 50 and writer.sent == 0
    assert sum(n for reason, n in drops if reason == "buffer_full") == 50
    assert sum(n for _, n in drops) == 100


@pytest.fixture(scope="module")
def world_workspace(make_workspace):
    mp = pytest.MonkeyPatch()
    mp.delenv("HYPERREC_ONLINE_STORE", raising=False)
    _use_keys(mp)
    try:
        with make_workspace("kafka-impressions", users=40, items=30, days=6, events=2_000, seed=11) as built:
            yield built
    finally:
        mp.undo()


def test_an_erased_users_lists_never_land_in_the_monitor_log(world_workspace, monkeypatch):
    from hyperrec.privacy import ErasureWatch, erase_user
    from monitoring.job import run_once

    settings, world = world_workspace
    gone, kept, late = (str(u) for u in world.users["user_id"].iloc[:3])
    with kafka_broker() as bootstrap:
        create_topic(bootstrap, TOPIC, partitions=1)
        cluster = settings.model_copy(update={"kafka_bootstrap": bootstrap})
        writer = KafkaImpressionWriter(bootstrap, suppress=ErasureWatch(settings))  # as the server has it
        add(writer, "before", [gone, kept, None])
        writer.flush()
        # the monitoring pass drains first (no champion yet: that is all it does)
        report = run_once(cluster, dashboard=False, probe_index=False)
        assert report["impressions_drained"]["stored"] == 3
        assert set(ImpressionLog(settings.impression_log).read()["user_id"].dropna()) == {gone, kept}

        # still on the topic, not yet drained, when the user is erased
        add(writer, "in-flight", [gone, kept])
        writer.flush()
        assert erase_user(settings, gone, "ticket IMP-1").removed["impressions"] == 1  # the local file
        add(writer, "after", [gone, kept])  # served after the erasure: never produced
        writer.flush()
        assert writer.suppressed == 1 and writer.sent == 6

        # a row the erasure could not reach (it ran in another pod, away from the monitor's
        # file): the next drain deletes it
        erase_user(settings, late, "ticket IMP-2")
        stray = ImpressionLog(settings.impression_log)
        stray.write([(f"stray-{late}", 1.0, late, "control", "personalized", 1, "{}", "[]", None)])
        stray.close()

        result = drain_impressions(cluster)
        writer.close()
    assert (result.received, result.stored, result.suppressed, result.forgotten) == (3, 2, 1, 1)
    rows = ImpressionLog(settings.impression_log).read()
    assert gone not in set(rows["user_id"]) and late not in set(rows["user_id"])
    assert set(rows["request_id"]) == {"before-1", "before-2", "in-flight-1", "after-1"}
    for path in settings.home.glob("impressions.db*"):
        assert gone.encode() not in path.read_bytes(), path.name


def test_the_record_carries_the_row_as_json():
    import json

    row = QuerySample(1).rows(["r1"], ["u1"], [served("u1")], [{"hour_of_day": 3.0}], [5.0])[0]
    key, value = impression_record(row)
    body = json.loads(value)
    assert key == b"u1" and body["items"] == [["i1", "c", 0.5], ["i2", "d", 0.25]]
    assert body["features"] == {"hour_of_day": 3.0} and body["model_version"] == 1 and body["query"]
    assert impression_record(QuerySample(1).rows(["r2"], [None], [served(None)], [{}], [5.0])[0])[0] == b"r2"


# ---------------------------------------------------------------- a real server


@pytest.mark.slow
def test_a_real_servers_lists_reach_the_monitor_once_and_a_dead_broker_costs_no_request(champion_server,
                                                                                          monkeypatch):
    from contextlib import ExitStack

    from hyperrec.privacy import erase_user

    broker = ExitStack()
    try:
        bootstrap = broker.enter_context(kafka_broker())
        create_topic(bootstrap, TOPIC)
        monkeypatch.setenv("HYPERREC_KAFKA_BOOTSTRAP", bootstrap)
        with champion_server("kafka-impressions") as srv:
            settings, world = srv["settings"], srv["world"]
            assert settings.kafka_bootstrap == bootstrap
            users = [str(u) for u in world.users["user_id"].iloc[:4]]

            def predict(instances):
                answer = requests.post(f"{srv['url']}/v1/models/recommender:predict",
                                       json={"instances": instances}, timeout=30)
                assert answer.status_code == 200, answer.text
                return [p["request_id"] for p in answer.json()["predictions"]]

            def logged() -> set[str]:
                return set(ImpressionLog(settings.impression_log).read()["request_id"])

            def drain_until(ids: set[str]) -> None:
                deadline = time.monotonic() + 20
                while not ids <= logged():
                    assert time.monotonic() < deadline, "the server's lists did not reach the monitor's log"
                    time.sleep(0.2)
                    drain_impressions(settings)

            # the server writes no file: its lists reach the monitor's log through the topic, once
            assert not settings.impression_log.exists()
            shown = predict([{"user_id": u, "k": 3} for u in users] + [{"session": {"recent_items": []}, "k": 2}])
            drain_until(set(shown))
            drain_impressions(settings)  # a second pass adds nothing
            rows = ImpressionLog(settings.impression_log).read()
            assert len(rows) == len(shown) and set(rows["request_id"]) == set(shown)

            # an erased user's lists are not produced
            erase_user(settings, users[0], "ticket IMP-3")
            erased_list, kept_list = predict([{"user_id": users[0], "k": 3}, {"user_id": users[1], "k": 3}])
            drain_until({kept_list})
            assert erased_list not in logged() and users[0] not in set(ImpressionLog(settings.impression_log)
                                                                          .read()["user_id"])

            # the broker stops under the running server: requests still succeed, drops are counted
            broker.close()
            started = time.monotonic()
            for _ in range(20):
                predict([{"user_id": users[1], "k": 3}])
            assert time.monotonic() - started < 15  # no request waited for the broker
            deadline, dropped = time.monotonic() + 40, 0.0
            while not dropped and time.monotonic() < deadline:
                time.sleep(1)
                for line in requests.get(f"{srv['url']}/metrics", timeout=10).text.splitlines():
                    if line.startswith("hyperrec_impressions_dropped_total{"):
                        dropped += float(line.rsplit(" ", 1)[1])
            assert dropped >= 20
    finally:
        broker.close()
