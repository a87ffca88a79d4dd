"""The stream processor behind Kafka, against a real Kafka-protocol broker started here:
records reach the online store, a poison record is dead-lettered, and a replay after a
lost offset commit has no second effect."""

import json
import time
from datetime import timedelta

import pytest

from hyperrec.data.eventlog import EventLog
from hyperrec.features.kafka_source import KafkaEventConsumer
from hyperrec.features.store import online_user_features, open_store
from hyperrec.features.stream import StreamProcessor
from hyperrec.services import kafka_broker

pytestmark = pytest.mark.slow
TOPIC = "interactions"


@pytest.fixture(scope="module")
def env(make_workspace):
    with make_workspace("kafka", users=60, items=30, days=6, events=3_000, seed=31) as built:
        yield built


def produce(bootstrap, values, topic=TOPIC):
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    if topic not in admin.list_topics():
        admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for v in values:
        producer.send(topic, v)
    producer.flush()
    producer.close()


def test_records_flow_to_the_online_store_exactly_once(env, tmp_path):
    settings, world = env
    user, item = world.users["user_id"].iloc[3], world.items["item_id"].iloc[2]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=1)
    clicks = [json.dumps({"event_id": f"k{i}", "user_id": user, "item_id": item, "event_type": "click",
                          "ts": (at + timedelta(seconds=i)).isoformat(), "dwell_s": 5.0}).encode() for i in range(4)]
    with kafka_broker() as bootstrap:
        produce(bootstrap, clicks[:2] + [b"\x00poison"] + clicks[2:] + [clicks[0]])  # a replayed record too
        log = EventLog(tmp_path / "consumer.db")
        consumer = KafkaEventConsumer(StreamProcessor(open_store(settings), log), bootstrap, TOPIC)
        result = consumer.run_once(timeout_ms=3000)
        consumer.close()
        assert (result.received, result.stored, result.dead_lettered, result.duplicates) == (6, 4, 1, 1)
        assert log.dead_letters()[0][0] == b"\x00poison"
        features = online_user_features(open_store(settings), [user], now=at + timedelta(seconds=10))
        assert features.loc[0, "clicks_30m"] == 4

        # the offset commit was lost: a new consumer starts from 0 and sees everything again
        log.commit(f"kafka:{TOPIC}:0", 0)
        again = KafkaEventConsumer(StreamProcessor(open_store(settings), log), bootstrap, TOPIC)
        replay = again.run_once(timeout_ms=3000)
        again.close()
        assert (replay.received, replay.stored) == (6, 0)  # deduped on event_id: no second effect
        features = online_user_features(open_store(settings), [user], now=at + timedelta(seconds=10))
        assert features.loc[0, "clicks_30m"] == 4
        assert log.committed(f"kafka:{TOPIC}:0") == 6


CONSUMER = """
import sys
from pathlib import Path
from hyperrec.config import load_settings
from hyperrec.data.eventlog import EventLog
from hyperrec.features.store import open_store
from hyperrec.features.kafka_source import KafkaEventConsumer
from hyperrec.features.stream import StreamProcessor, history

settings, log = load_settings(), EventLog(Path(sys.argv[2]))
processor = StreamProcessor(open_store(settings), log)
processor.warm_start(history(log, None))  # a restart refolds what it already committed
# a killed member's partitions move after session_timeout (the defaults take ~1 min here)
consumer = KafkaEventConsumer(processor, sys.argv[1], sys.argv[3], group_id=sys.argv[4] or None,
                              session_timeout_ms=6000, heartbeat_interval_ms=1000, max_poll_interval_ms=10000)
while True:
    result = consumer.run_once(timeout_ms=500, max_records=7)  # small batches: a kill lands mid-stream
    print(result.stored, flush=True)
"""


def committed(bootstrap, topic, group) -> int:
    """The group's committed offset of partition 0 (asked without joining the group)."""
    from kafka import KafkaConsumer, TopicPartition

    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return probe.committed(TopicPartition(topic, 0)) or 0
    finally:
        probe.close()


def test_a_consumer_killed_mid_stream_loses_nothing_and_doubles_nothing(env, tmp_path, group="online-features"):
    """SIGKILL the consumer process while it works through the topic, start a new one: every
    record is stored once and the user's click count is exactly the number of clicks. The
    cluster's setup: a consumer group, partitions assigned by the group coordinator, offsets
    in Kafka (offsets in the log are covered by the replay test above; `group=""` runs this
    one that way too)."""
    import signal
    import subprocess
    import sys

    from hyperrec.config import export_env

    settings, world = env
    topic, n = f"kill-test-{group or 'log'}", 120
    user, item = world.users["user_id"].iloc[9], world.items["item_id"].iloc[4]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=2)
    clicks = [json.dumps({"event_id": f"kill{i}", "user_id": user, "item_id": item, "event_type": "click",
                          "ts": (at + timedelta(milliseconds=i)).isoformat(), "dwell_s": 5.0}).encode()
              for i in range(n)]
    log_path = tmp_path / "consumer.db"
    with kafka_broker() as bootstrap:
        produce(bootstrap, clicks, topic=topic)

        def consumer():
            return subprocess.Popen([sys.executable, "-c", CONSUMER, bootstrap, str(log_path), topic, group],
                                    env=export_env(settings), stdout=subprocess.PIPE, text=True)

        def offset():
            return committed(bootstrap, topic, group) if group else EventLog(log_path).committed(f"kafka:{topic}:0")

        first, stored = consumer(), 0
        for line in first.stdout:
            stored += int(line)
            if stored >= 40:
                break
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert stored < n, "the kill must land before the topic is drained"
        second = consumer()
        try:
            deadline = time.monotonic() + 120
            while offset() < n and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            second.kill()
            second.wait(10)
        assert offset() == n
    log = EventLog(log_path)
    assert log.counts()["events"] == n
    features = online_user_features(open_store(settings), [user], now=at + timedelta(seconds=10))
    assert features.loc[0, "clicks_30m"] == n
