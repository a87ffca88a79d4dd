"""The cluster's impression log: the server produces served lists to a Kafka topic, and the
monitoring job copies the topic into an impression log of its own. No file is shared.

`KafkaImpressionWriter` (the server, when `Settings.kafka_bootstrap` is set) has the face
of `ImpressionRecorder`. Impressions are monitoring data, not acknowledged user data, so
the request path never waits for the broker: `add` puts the rows in a bounded buffer and
returns; a daemon thread produces them to `TOPIC` (key = the user, or the request for an
anonymous list; value = the row as JSON, `ImpressionLog.COLUMNS`). What cannot be sent is
dropped and counted by reason: `buffer_full` (the buffer is full, e.g. while the broker
is away) and `broker` (the producer refused a row or the broker never acknowledged it).
An erased user's lists are never produced (`suppress`, as the SQLite log).

`ImpressionDrain` (the monitoring job) reads the topic from the offsets its own log holds
and writes each poll's rows and the next offsets in one SQLite transaction, so an
interrupted drain resumes where its last transaction ended and stores every record once
(`request_id` is the table's key as well). It drops the rows of users on the erasure list
and deletes from its log those erased since the rows were stored. Its consumer group
(`GROUP`) is told the offsets after each write, for lag dashboards; the log's offsets are
the ones that count.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass

from hyperrec.data.impressions import ImpressionLog, QuerySample

log = logging.getLogger(__name__)
TOPIC = "hyperrec.impressions"  # served lists, keyed by user (anonymous: by request)
GROUP = "hyperrec-monitor"  # the monitoring job's consumer group


def impression_record(row: tuple) -> tuple[bytes, bytes]:
    """(key, value) of one `ImpressionLog` row. `features` and `items` are JSON already
    and go in as they are; the query embedding as base64 of its float32 bytes."""
    request_id, ts, user_id, arm, policy, model_version, features, items, query = row
    head = json.dumps({"request_id": request_id, "ts": ts, "user_id": user_id, "arm": arm, "policy": policy,
                       "model_version": model_version,
                       "query": base64.b64encode(query).decode() if query is not None else None})
    return (user_id or request_id).encode(), f'{head[:-1]}, "features": {features}, "items": {items}}}'.encode()


def impression_row_of(value: bytes) -> tuple:
    """The `ImpressionLog` row of a record's value (raises ValueError, KeyError or TypeError
    on a malformed one)."""
    d = json.loads(value)
    query = d.get("query")
    return (str(d["request_id"]), float(d["ts"]), d["user_id"], str(d["arm"]), str(d["policy"]),
            int(d["model_version"]), json.dumps(d["features"]), json.dumps(d["items"]),
            base64.b64decode(query) if query is not None else None)


class KafkaImpressionWriter:
    def __init__(self, bootstrap: str, topic: str = TOPIC, suppress: Container[str] = frozenset(),
                 capacity: int = 20_000, query_every: int = 10, flush_s: float = 0.05,
                 on_drop: Callable[[str, int], None] = lambda reason, n: None, **producer_config):
        """`capacity`: most rows buffered or sent and not yet acknowledged (the bound on what
        a broker outage holds in memory); `on_drop(reason, n)` is told of every drop (the
        server's Prometheus counter)."""
        self.bootstrap, self.topic, self.suppress, self.capacity = bootstrap, topic, suppress, capacity
        self.flush_s, self.on_drop = flush_s, on_drop
        self.dropped = {"buffer_full": 0, "broker": 0}
        self.suppressed = self.sent = 0  # sent: acknowledged by the broker
        # acks=all and retries: a record the broker acknowledged is not lost with one broker;
        # max_block_ms bounds how long the sending thread (never a request) waits for
        # metadata; an unacknowledged record fails after delivery_timeout_ms.
        # Large batches: the producer's per-request work, not the records, is most of its CPU.
        self._config = {"acks": "all", "enable_idempotence": False, "linger_ms": 50, "batch_size": 256 * 1024,
                        "retries": 3, "retry_backoff_ms": 200, "max_block_ms": 2000, "request_timeout_ms": 5000,
                        "delivery_timeout_ms": 15_000, "bootstrap_timeout_ms": 2000, **producer_config}
        self._producer = None
        self._buffer: deque[tuple] = deque()
        self._sample = QuerySample(query_every)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Condition(self._lock)
        self._sending = 0  # rows taken from the buffer and not yet handed to the producer
        self._unacked = 0  # rows handed to the producer and not yet acknowledged or failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="impressions-kafka", daemon=True)
        self._thread.start()

    # --- the request path: no I/O, no waiting ------------------------------------------
    def add(self, request_ids, user_ids, results, features: list[dict], times: list[float]) -> None:
        with self._lock:
            rows = self._sample.rows(request_ids, user_ids, results, features, times)
            room = self.capacity - len(self._buffer) - self._sending - self._unacked
            self._buffer.extend(rows[:max(room, 0)])
            lost = len(rows) - max(min(room, len(rows)), 0)
        if lost:
            self._drop("buffer_full", lost)

    def _drop(self, reason: str, n: int) -> None:
        with self._lock:
            self.dropped[reason] += n
        self.on_drop(reason, n)

    # --- the sending thread -------------------------------------------------------------
    def _producer_or_none(self):
        if self._producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            try:
                self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, **self._config)
            except KafkaError as exc:
                log.warning("impressions: no Kafka broker at %s (%s); buffering", self.bootstrap, exc)
        return self._producer

    def _acked(self, _metadata) -> None:  # on the producer's IO thread
        with self._lock:
            self._unacked -= 1
            self.sent += 1
            self._idle.notify_all()

    def _failed(self, _exc) -> None:  # on the producer's IO thread
        with self._lock:
            self._unacked -= 1
            self._idle.notify_all()
        self._drop("broker", 1)

    def _send_buffered(self) -> bool:
        """Hand every buffered row to the producer; False when the producer cannot take them
        now (they stay buffered, the thread backs off)."""
        from kafka.errors import KafkaError

        producer = self._producer_or_none()
        if producer is None:
            return False
        while True:
            with self._lock:
                if not self._buffer:
                    return True
                row = self._buffer.popleft()
                self._sending += 1
            try:
                if row[2] is not None and row[2] in self.suppress:  # an erased user's list
                    self.suppressed += 1
                    continue
                key, value = impression_record(row)
                try:
                    future = producer.send(self.topic, key=key, value=value)
                except KafkaError as exc:  # no metadata within max_block_ms: the broker is away
                    self._drop("broker", 1)
                    log.warning("impressions: the producer refused a row (%s: %s)", type(exc).__name__, exc)
                    return False
                with self._lock:
                    self._unacked += 1
                future.add_callback(self._acked).add_errback(self._failed)
            finally:
                with self._lock:
                    self._sending -= 1
                    self._idle.notify_all()

    def _run(self) -> None:
        backoff = self.flush_s
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            try:
                ok = self._send_buffered()
            except Exception:  # never let the thread die: monitoring data is best effort
                log.exception("impressions: sending failed")
                ok = False
            backoff = self.flush_s if ok else min(max(backoff * 2, 0.5), 5.0)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait until the buffer is handed over and the broker acknowledged it or failed (tests,
        close); returns the rows still buffered."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        with self._lock:
            while (self._buffer or self._sending) and time.monotonic() < deadline and self._thread.is_alive():
                self._wake.set()
                self._idle.wait(0.05)
            left = len(self._buffer)
        if self._producer is not None:
            from kafka.errors import KafkaError

            try:
                self._producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as exc:
                log.warning("impressions: flush did not complete (%s)", exc)
        with self._lock:  # the futures' callbacks run after the producer's flush returns
            while self._unacked and time.monotonic() < deadline:
                self._idle.wait(0.05)
        return left

    def close(self, timeout_s: float = 5.0) -> None:
        left = self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        if left:
            self._drop("broker", left)
        if self._producer is not None:
            self._producer.close(timeout=timeout_s)
            self._producer = None


@dataclass
class DrainResult:
    received: int = 0  # records read from the topic
    stored: int = 0  # new rows in the log
    suppressed: int = 0  # rows of erased users, not stored
    invalid: int = 0  # records that are not an impression row
    forgotten: int = 0  # rows deleted because their user was erased since
    complete: bool = False  # caught up: past the end offsets the drain started with, nothing more to read

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class ImpressionDrain:
    """Copies the impression topic into an `ImpressionLog`, exactly once per record."""

    def __init__(self, bootstrap: str, impressions: ImpressionLog, topic: str = TOPIC, group_id: str | None = GROUP,
                 erased=None, **consumer_config):
        """`erased`: a `hyperrec.privacy.ErasureWatch` (or None): its users' rows are dropped
        and deleted. `impressions.suppress` should be the same watch."""
        from kafka import KafkaConsumer

        self.log, self.topic, self.group_id, self.erased = impressions, topic, group_id, erased
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", **consumer_config)

    def _key(self, tp) -> str:
        return f"kafka:{tp.topic}:{tp.partition}"

    def _assign(self) -> list:
        """Every partition of the topic, each at the offset the log stored (else its start):
        never at the group's offset, which may be ahead of a log that was lost."""
        from kafka import TopicPartition

        partitions = self.consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        for tp in tps:
            offset = self.log.committed(self._key(tp))
            if offset is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        return tps

    def run(self, max_s: float = 600.0, timeout_ms: int = 1000, max_records: int = 5000,
            max_polls: int | None = None) -> DrainResult:
        """Read until every partition is past the end offset it had when the drain started
        and a poll finds nothing more (or for `max_s`, or `max_polls` polls); each poll's
        rows and offsets in one transaction. The empty poll is asked for as well because
        some brokers (tansu) report end offsets that lag the records."""
        result = DrainResult()
        if self.erased is not None:  # erased since the rows were stored (erasure may run in another pod)
            result.forgotten = self.log.forget(self.erased.poll())
        tps = self._assign()
        if not tps:
            result.complete = True
            return result
        ends = self.consumer.end_offsets(tps)
        deadline, polls = time.monotonic() + max_s, 0
        while time.monotonic() < deadline and (max_polls is None or polls < max_polls):
            batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
            polls += 1
            if batches:
                self._store(batches, result)
            elif all(self.consumer.position(tp) >= ends[tp] for tp in tps):
                result.complete = True
                break
        return result

    def _store(self, batches: dict, result: DrainResult) -> None:
        rows, offsets = [], {}
        for tp, records in batches.items():
            for r in records:
                result.received += 1
                try:
                    rows.append(impression_row_of(r.value))
                except (ValueError, KeyError, TypeError):
                    result.invalid += 1
            offsets[self._key(tp)] = records[-1].offset + 1
        before = self.log.suppressed
        result.stored += self.log.write(rows, offsets)
        result.suppressed += self.log.suppressed - before
        if self.group_id is not None:  # for lag dashboards; the log's offsets are the ones used
            from kafka.errors import KafkaError
            from kafka.structs import OffsetAndMetadata

            try:
                self.consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, None, -1)
                                      for tp, records in batches.items()})
            except KafkaError as exc:
                log.warning("impressions: offset commit to the group failed (%s); the log holds the offsets", exc)

    def close(self) -> None:
        self.consumer.close()


def drain_impressions(settings, topic: str = TOPIC, **run_args) -> DrainResult:
    """The monitoring job's first step on a cluster: the impression topic into this
    workspace's impression log (`Settings.impression_log`, which only this job writes there).
    An unreadable erasure list fails the drain (nothing stored, no offset moved) rather than
    dropping the rows for good."""
    from hyperrec.privacy import ErasureWatch

    watch = ErasureWatch(settings)
    impressions = ImpressionLog(settings.impression_log, suppress=watch)
    try:
        drain = ImpressionDrain(settings.kafka_bootstrap, impressions, topic, erased=watch)
        try:
            return drain.run(**run_args)
        finally:
            drain.close()
    finally:
        impressions.close()
        watch.close()
