"""Cluster mode of the stream processor: the same ingestion and fold behind a Kafka consumer.

Each poll goes through the event log's front door (schema check, dead letters with raw
bytes, dedupe on `event_id`), then the StreamProcessor folds and pushes what is new, and
only then are the Kafka offsets committed. A crash anywhere before the commit replays the
records; the dedupe makes the replay a no-op, so the effect is exactly once. A poison
record is dead-lettered and skipped, never retried forever.

Two ways to own partitions:
- a consumer group (`group_id`): the group coordinator assigns the topic's partitions
  (several replicas share the work) and offsets are committed to Kafka. A commit that a
  rebalance refused is logged and skipped: the partition's new owner replays from the last
  committed offset, and the dedupe absorbs it.
- explicit partitions (no group): offsets live in the event log's offset table, in the same
  SQLite file as the events, for brokers without group support.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from hyperrec.data.eventlog import AppendResult
from hyperrec.data.kafka_log import TOPIC  # noqa: F401  (one typed topic, keyed by user; the server produces to it)
from hyperrec.data.schemas import Event
from hyperrec.features.stream import StreamProcessor

log = logging.getLogger(__name__)
GROUP = "hyperrec-online-features"


class KafkaEventConsumer:
    def __init__(self, processor: StreamProcessor, bootstrap: str, topic: str, partitions: list[int] | None = None,
                 group_id: str | None = None, check: Callable[[Event], str | None] | None = None,
                 **consumer_config):
        """`consumer_config`: more KafkaConsumer settings, e.g. session_timeout_ms and
        max_poll_interval_ms, which bound how long a dead member holds its partitions."""
        from kafka import KafkaConsumer, TopicPartition

        self.processor, self.log, self.check = processor, processor.log, check
        self.group_id = group_id
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", **consumer_config)
        if group_id is not None:
            self.consumer.subscribe([topic])
        else:
            self.consumer.assign([TopicPartition(topic, p) for p in (partitions or [0])])
            for tp in self.consumer.assignment():
                self.consumer.seek(tp, self.log.committed(self._offset_key(tp)))

    @staticmethod
    def _offset_key(tp) -> str:
        return f"kafka:{tp.topic}:{tp.partition}"

    def run_once(self, timeout_ms: int = 1000, max_records: int = 10_000) -> AppendResult:
        """Poll once; ingest, fold and push; then commit. Returns the ingestion counts."""
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = [r for batch in batches.values() for r in batch]  # in order within each partition
        result = self.log.append([r.value for r in records], check=self.check)
        self.processor.run_once()  # pushes online before any offset moves
        next_offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}
        if self.group_id is not None and next_offsets:
            from kafka.errors import CommitFailedError
            from kafka.structs import OffsetAndMetadata

            try:
                self.consumer.commit({tp: OffsetAndMetadata(o, None, -1) for tp, o in next_offsets.items()})
            except CommitFailedError as exc:  # rebalanced away mid-batch: the new owner replays it
                log.warning("offset commit refused after a rebalance (%s); the batch will be replayed", exc)
        else:
            for tp, offset in next_offsets.items():
                self.log.commit(self._offset_key(tp), offset)
        return result

    def close(self) -> None:
        self.consumer.close()


def run(settings, bootstrap: str, topic: str = TOPIC, group_id: str | None = GROUP,
        stop: threading.Event | None = None, log=print, batch_only=None) -> None:
    """`hyperrec stream --kafka`: the cluster's event consumer (one per replica of the
    Deployment, sharing the topic's partitions through the consumer group)."""
    from hyperrec.data.event_types import EventTypes
    from hyperrec.data.eventlog import EventLog
    from hyperrec.features.store import open_store
    from hyperrec.features.stream import history
    from hyperrec.online.recs_cache import invalidator
    from hyperrec.privacy import ErasureWatch

    stop = stop or threading.Event()
    erasures = ErasureWatch(settings)
    types = EventTypes.for_workspace(settings.home)
    events = EventLog(settings.event_log, suppress=erasures, event_types=types.known)
    processor = StreamProcessor(open_store(settings), events, erasures=erasures, batch_only=batch_only,
                                users_changed=invalidator(settings), engaged=types.engaged)
    processor.warm_start(history(events, settings.data_dir / "world"))
    consumer = KafkaEventConsumer(processor, bootstrap, topic, group_id=group_id)
    log(f"kafka consumer on {bootstrap} topic {topic} group {group_id}")
    try:
        while not stop.is_set():
            consumer.run_once(timeout_ms=500)
    finally:
        consumer.close()
