"""examples/produce_events.py run the way a user runs it (a subprocess, from a folder of its
own): against a real Kafka-protocol broker (tansu) and a real model server, the events
arrive keyed by user with their JSON bodies, are stored once over HTTP even when re-sent,
and a server's 5xx is retried with backoff while a 4xx is reported at once."""

import ast
import json
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hyperrec.data.schemas import Event

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "produce_events.py"


def run_example(tmp_path, *args, timeout=120):
    """The script copied into a folder of its own and run there, as a user would."""
    script = tmp_path / "produce_events.py"
    shutil.copy(SCRIPT, script)
    done = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=timeout)
    summary = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    return done, summary


def test_the_example_imports_nothing_from_hyperrec():
    tree = ast.parse(SCRIPT.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in modules if m and m.split(".")[0] == "hyperrec"}
    assert modules <= {"__future__", "argparse", "json", "random", "sys", "time", "urllib.error", "urllib.request",
                       "uuid", "datetime", "kafka"}, modules


# ---------------------------------------------------------------- retries, against a stub server


class Stub(BaseHTTPRequestHandler):
    """Answers the statuses in `server.script` in turn (then 200), counting the requests."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        status = self.server.script.pop(0) if self.server.script else 200
        answer = ({"received": len(body), "stored": len(body), "duplicates": 0, "dead_lettered": 0,
                   "suppressed": 0, "errors": []} if status == 200 else {"error": f"stub says {status}"})
        payload = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    server.script, server.bodies = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("statuses, attempts, rc", [
    ([503, 503], 3, 0),  # two 5xx, then stored: 3 attempts
    ([400], 1, 1),  # the client's mistake: not retried, reported
    ([500, 502, 503, 504], 4, 1),  # --tries 4: gives up
], ids=["503-503-then-200", "400-not-retried", "5xx-gives-up"])
def test_5xx_is_retried_with_backoff_and_4xx_is_not(stub, tmp_path, statuses, attempts, rc):
    stub.script = list(statuses)
    url = f"http://127.0.0.1:{stub.server_address[1]}"
    t0 = time.monotonic()
    done, summary = run_example(tmp_path, "--http", url, "--count", 4, "--seed", 1, "--tries", 4, "--backoff", 0.1)
    elapsed = time.monotonic() - t0
    assert done.returncode == rc, done.stderr
    assert len(stub.bodies) == attempts and summary["http"]["attempts"] == [attempts]
    assert all(body == stub.bodies[0] and len(body) == 4 for body in stub.bodies)  # the same batch each time
    if attempts > 1:  # waited 0.1 s, 0.2 s, ... between attempts (up to 25% jitter)
        assert elapsed >= 0.1 * (2 ** (attempts - 1) - 1)
        assert done.stderr.count("retrying in") == attempts - 1
    if rc:
        assert summary["http"]["failed"] == 4 and f"HTTP {statuses[-1]}" in done.stderr
        assert "stub says" in summary["http"]["errors"][0]
    else:
        assert summary["http"]["stored"] == 4


# ---------------------------------------------------------------- the real broker and server


@pytest.fixture(scope="module")
def server(champion_server):
    with champion_server("producer") as built:
        yield built


@pytest.fixture(scope="module")
def broker():
    from hyperrec.services import kafka_broker

    with kafka_broker() as bootstrap:
        yield bootstrap


def create_topic(bootstrap, topic, partitions):
    """As the cluster does it (a Strimzi KafkaTopic): the topic exists before producers write."""
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def consume(bootstrap, topic, n, timeout=30.0):
    """Every record of the topic, read from the start of each partition (no consumer group:
    tansu's group support is partial), until `n` arrived or `timeout` passed."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        deadline = time.monotonic() + timeout
        while not (partitions := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions or ())])
        consumer.seek_to_beginning()
        records = []
        while len(records) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
        return records
    finally:
        consumer.close()


def some_events(world, n, prefix):
    users = world.users["user_id"].iloc[:4].tolist()
    items = world.items["item_id"].iloc[:10].tolist()
    now = datetime.now(UTC) - timedelta(seconds=n)
    events = []
    for i in range(n):
        event = {"event_id": f"{prefix}-{i}", "user_id": users[i % len(users)], "item_id": items[i % len(items)],
                 "event_type": "click" if i % 3 == 0 else "view", "ts": (now + timedelta(seconds=i)).isoformat()}
        if event["event_type"] == "click":
            event["dwell_s"] = 12.5
        events.append(event)
    return events


@pytest.mark.slow
def test_events_reach_the_topic_keyed_by_user_and_the_server_stores_them_once(server, broker, tmp_path):
    from hyperrec.data.eventlog import EventLog

    topic, n = "hyperrec.events", 30  # the topic the stream consumer reads by default
    events = some_events(server["world"], n, "example-file")
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    create_topic(broker, topic, partitions=3)

    done, summary = run_example(tmp_path, "--kafka", broker, "--http", server["url"], "--events", path,
                                "--batch-size", 12)
    assert done.returncode == 0, done.stderr
    assert summary["kafka"] == {"sent": n, "topic": topic}
    http = summary["http"]
    assert (http["received"], http["stored"], http["duplicates"], http["dead_lettered"], http["failed"]) == (
        n, n, 0, 0, 0)
    assert http["attempts"] == [1, 1, 1]  # 12 + 12 + 6

    records = consume(broker, topic, n)
    assert len(records) == n
    assert sorted((r.key, json.loads(r.value)["event_id"]) for r in records) == sorted(
        (e["user_id"].encode(), e["event_id"]) for e in events)
    by_id = {e["event_id"]: e for e in events}
    for r in records:
        assert json.loads(r.value) == by_id[json.loads(r.value)["event_id"]]  # the event, byte for byte as JSON
        assert r.key == json.loads(r.value)["user_id"].encode()
    for user in {e["user_id"] for e in events}:  # keyed by user: one partition each, in order
        mine = [r for r in records if r.key == user.encode()]
        assert len({r.partition for r in mine}) == 1
        assert [json.loads(r.value)["event_id"] for r in sorted(mine, key=lambda r: r.offset)] == [
            e["event_id"] for e in events if e["user_id"] == user]

    stored = EventLog(server["settings"].event_log).read(0, 10**9)[1]
    assert set(stored["event_id"]) >= set(by_id)

    # re-sent (at-least-once delivery): the server dedupes on event_id, nothing is stored twice
    again, summary = run_example(tmp_path, "--http", server["url"], "--events", path)
    assert again.returncode == 0, again.stderr
    assert (summary["http"]["stored"], summary["http"]["duplicates"]) == (0, n)
    stored = EventLog(server["settings"].event_log).read(0, 10**9)[1]
    assert stored["event_id"].isin(list(by_id)).sum() == n


@pytest.mark.slow
def test_generated_example_events_are_valid_and_arrive(server, broker, tmp_path):
    from hyperrec.data.eventlog import EventLog

    topic, n = "example-generated", 25
    done, summary = run_example(tmp_path, "--kafka", broker, "--topic", topic, "--http", server["url"],
                                "--count", n, "--seed", 11)
    assert done.returncode == 0, done.stderr
    assert summary["kafka"]["sent"] == n and summary["http"]["stored"] == n
    records = consume(broker, topic, n)  # a topic the broker creates on first write
    assert len(records) == n
    for r in records:
        event = Event.model_validate_json(r.value)
        assert r.key == event.user_id.encode() and event.ts.tzinfo is not None
    assert {json.loads(r.value)["event_type"] for r in records} >= {"view", "click"}

    # the single example event of examples/event.json, as a user would try it first
    example = json.loads((ROOT / "examples" / "event.json").read_text())
    done, summary = run_example(tmp_path, "--http", server["url"], "--events", ROOT / "examples" / "event.json")
    assert done.returncode == 0, done.stderr
    assert summary["events"] == 1 and summary["http"]["stored"] + summary["http"]["duplicates"] == 1
    assert example["event_id"] in set(EventLog(server["settings"].event_log).read(0, 10**9)[1]["event_id"])
