"""Repeats across requests, against a real Kafka-protocol broker (tansu) and a real Redis: two
servers' event logs share the ids the broker acknowledged (`SeenEventIds`), so a batch sent
again to either is counted duplicates and not produced again; a Redis that stops answering
costs the dedupe, not an event; a batch the broker never acknowledged is not remembered, so
its retry is stored."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from hyperrec.data.kafka_log import BrokerUnavailable, KafkaEventLog, SeenEventIds
from hyperrec.services import free_port, kafka_broker, redis_client, redis_server

pytestmark = pytest.mark.slow
TOPIC = "dedupe-events"


def events(first: int, last: int) -> list[dict]:
    at = datetime.now(UTC) - timedelta(minutes=5)
    return [{"event_id": f"u{i % 3}-click-{i}", "user_id": f"u{i % 3}", "item_id": "i1", "event_type": "view",
             "ts": (at + timedelta(seconds=i)).isoformat()} for i in range(first, last)]


def test_a_batch_sent_again_to_another_server_is_counted_duplicates_and_not_produced_again(topic_records):
    from kafka.admin import KafkaAdminClient, NewTopic

    with kafka_broker() as bootstrap, redis_server() as url:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
        admin.close()

        def topic_ids(bootstrap):
            return [json.loads(r.value)["event_id"] for r in topic_records(bootstrap, TOPIC)]

        server_a, server_b = (KafkaEventLog(bootstrap, topic=TOPIC, seen_ids=SeenEventIds(redis_client(url, 0.5)))
                              for _ in range(2))
        try:
            first = server_a.append(events(0, 10))
            assert (first.received, first.stored, first.duplicates) == (10, 10, 0)
            again = server_b.append(events(5, 15))  # a client's retry of half of it, and five new
            assert (again.received, again.stored, again.duplicates) == (10, 5, 5)
            assert sorted(topic_ids(bootstrap)) == sorted(e["event_id"] for e in events(0, 15))
            keys = redis_client(url).keys("*")
            assert len(keys) == 15 and not any(b"u0" in k or b"click" in k for k in keys)  # ids hashed

            # no broker: nothing acknowledged, nothing remembered; the retry is stored
            dead = KafkaEventLog(f"127.0.0.1:{free_port()}", topic=TOPIC, ack_timeout_s=1.0,
                                 seen_ids=SeenEventIds(redis_client(url, 0.5)))
            with pytest.raises(BrokerUnavailable):
                dead.append(events(15, 20))
            dead.close()
            retried = server_a.append(events(15, 20))
            assert (retried.stored, retried.duplicates) == (5, 0)
        finally:
            server_b.close()
        # Redis gone: the repeats are produced again (the consumers dedupe them), none refused
        told: list[str] = []
        gone = KafkaEventLog(bootstrap, topic=TOPIC, seen_ids=SeenEventIds(
            redis_client(f"127.0.0.1:{free_port()}", 0.5), on_failure=told.append))
        try:
            blind = gone.append(events(10, 25))
            assert (blind.stored, blind.duplicates) == (15, 0) and told == ["read", "write"]
            assert len(topic_ids(bootstrap)) == 20 + 15
        finally:
            gone.close()
            server_a.close()
