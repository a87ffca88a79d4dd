"""Cluster mode of the stream processor: the same ingestion and fold behind a Kafka consumer.

Each poll goes through the event log's front door (schema check, dead letters with raw
bytes, dedupe on `event_id`), then the StreamProcessor folds and pushes what is new, and
only then are the Kafka offsets committed. A crash anywhere before the commit replays the
records; the dedupe makes the replay a no-op, so the effect is exactly once. A poison
record is dead-lettered and skipped, never retried forever.

Offsets go to Kafka when a consumer group is configured; otherwise (brokers without
group support, such as the local test broker) to the event log's offset table.
"""

from __future__ import annotations

from collections.abc import Callable

from hyperrec.eventlog import AppendResult
from hyperrec.schemas import Event
from hyperrec.stream import StreamProcessor


class KafkaEventConsumer:
    def __init__(self, processor: StreamProcessor, bootstrap: str, topic: str, partitions: list[int] | None = None,
                 group_id: str | None = None, check: Callable[[Event], str | None] | None = None):
        from kafka import KafkaConsumer, TopicPartition

        self.processor, self.log, self.check = processor, processor.log, check
        self.group_id = group_id
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest")
        self.partitions = [TopicPartition(topic, p) for p in (partitions or [0])]
        self.consumer.assign(self.partitions)
        if group_id is None:
            for tp in self.partitions:
                self.consumer.seek(tp, self.log.committed(self._offset_key(tp)))

    @staticmethod
    def _offset_key(tp) -> str:
        return f"kafka:{tp.topic}:{tp.partition}"

    def run_once(self, timeout_ms: int = 1000, max_records: int = 10_000) -> AppendResult:
        """Poll once; ingest, fold and push; then commit. Returns the ingestion counts."""
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = [r for tp in self.partitions for r in batches.get(tp, [])]
        result = self.log.append([r.value for r in records], check=self.check)
        self.processor.run_once()  # pushes online before any offset moves
        next_offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}
        if self.group_id is not None:
            from kafka.structs import OffsetAndMetadata

            self.consumer.commit({tp: OffsetAndMetadata(o, None, -1) for tp, o in next_offsets.items()})
        else:
            for tp, offset in next_offsets.items():
                self.log.commit(self._offset_key(tp), offset)
        return result

    def close(self) -> None:
        self.consumer.close()
