"""The cluster's event log: `POST /v1/events` produces to Kafka instead of the SQLite file.

`KafkaEventLog` has the face the server's ingestion uses of `hyperrec.data.eventlog.EventLog`
(`append`, `dead_letter`, `problem`, `event_types`) and the same door: every event is checked by
`validate_event`, an erased user's events are dropped and counted (`suppressed`), a bad one is
kept with its raw bytes and the error. The differences:

- Valid events go to the typed event topic (`TOPIC`), key = user id (each user's events in
  order on one partition), value = the event as JSON: the records `hyperrec stream --kafka`
  and `hyperrec sink` consume.
- Dead letters go to `DEAD_LETTER_TOPIC` (value = the raw bytes, the error in the record's
  `error` header, key = the user id it claims when it names one): no pod-local file.
- An append answers only once the broker acknowledged every record (`acks=all`, the
  producer's futures). A broker that does not acknowledge within `ack_timeout_s` raises
  `BrokerUnavailable` (a `LogBusy`: the server answers 503 with Retry-After and claims
  nothing stored). Some of the batch may have reached the topic anyway; the client's retry
  sends them again, and the consumers store each `event_id` once.
- Duplicates: the broker keeps no index of event ids, so a replayed `event_id` is counted as
  a duplicate only within one request; across requests it is produced again and counted
  `stored` (= acknowledged by the broker), and every consumer dedupes on `event_id`: the stream
  processor through its event log, the offline sink when the training data is read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Container, Iterable
from datetime import UTC, datetime

from hyperrec.data.eventlog import (
    INVALID,
    AppendResult,
    LogBusy,
    _claimed_user,
    _describe,
    _raw_bytes,
    erased_now,
    validate_event,
)
from hyperrec.data.schemas import EVENT_TYPES, Event

TOPIC = "hyperrec.events"  # one typed topic: every event type, keyed by user (per-user order)
DEAD_LETTER_TOPIC = "hyperrec.events.dead-letters"  # what failed the door: raw bytes, `error` header


class BrokerUnavailable(LogBusy):
    """The broker did not acknowledge a batch in time (HTTP 503, Retry-After): nothing is
    claimed stored."""

    kind = "broker_unavailable"


class KafkaEventLog:
    def __init__(self, bootstrap: str, topic: str = TOPIC, dead_letter_topic: str = DEAD_LETTER_TOPIC,
                 suppress: Container[str] = frozenset(), event_types: Collection[str] = EVENT_TYPES,
                 ack_timeout_s: float = 10.0, **producer_config):
        """`ack_timeout_s`: the longest an append waits for the broker's acknowledgements
        (and for its metadata, when it has none yet) before BrokerUnavailable."""
        self.bootstrap, self.topic, self.dead_letter_topic = bootstrap, topic, dead_letter_topic
        self.suppress, self.event_types = suppress, tuple(event_types)
        self.ack_timeout_s = ack_timeout_s
        timeout_ms = int(ack_timeout_s * 1000)
        # acks=all: a record is acknowledged once every in-sync replica has it. Idempotence
        # (the broker's dedupe of the producer's own retries) is left off: the consumers
        # dedupe on event_id, which also covers a client's retry after a 503.
        request_ms = max(1000, timeout_ms // 2)
        config = {"acks": "all", "enable_idempotence": False, "linger_ms": 0, "max_block_ms": timeout_ms,
                  "request_timeout_ms": request_ms, "delivery_timeout_ms": max(timeout_ms, request_ms),
                  "retries": 3, "retry_backoff_ms": 100, "bootstrap_timeout_ms": timeout_ms, **producer_config}
        self._config = config
        self._producer = None
        self._lock = threading.Lock()

    @property
    def producer(self):
        """Made on first use, so a server starts while the broker is still coming up."""
        with self._lock:
            if self._producer is None:
                from kafka import KafkaProducer
                from kafka.errors import KafkaError

                try:
                    self._producer = KafkaProducer(bootstrap_servers=self.bootstrap, **self._config)
                except KafkaError as exc:
                    raise BrokerUnavailable(f"no Kafka broker at {self.bootstrap}: {exc}") from exc
            return self._producer

    def problem(self) -> str | None:
        """Nothing makes this log unwritable for good: a broker outage is a 503 per request."""
        return None

    def append(self, raws: Iterable, check: Callable[[Event], str | None] | None = None,
               now: datetime | None = None) -> AppendResult:
        """Validate a batch, produce the events and the dead letters, wait for the broker's
        acknowledgement of every record; the counts as EventLog.append's."""
        now = now or datetime.now(UTC)
        stored = dup = dead = received = suppressed = 0
        errors: list[str] = []
        events: list[Event] = []
        letters: list[tuple[object, str]] = []
        seen: set[str] = set()
        erased = erased_now(self.suppress)
        for raw in raws:
            received += 1
            try:
                event = validate_event(raw, now, self.event_types, check)
            except INVALID as exc:
                if _claimed_user(raw) in erased:  # an erased user's: not kept, even as a dead letter
                    suppressed += 1
                    continue
                message = _describe(exc)
                letters.append((raw, message))
                errors.append(message)
                dead += 1
                continue
            if event.user_id in erased:
                suppressed += 1
            elif event.event_id in seen:
                dup += 1
            else:
                seen.add(event.event_id)
                events.append(event)
        self._produce([(self.topic, e.user_id.encode(), e.model_dump_json().encode(), None) for e in events]
                      + [self._letter(raw, error) for raw, error in letters])
        stored = len(events)
        return AppendResult(received, stored, dup, dead, errors, suppressed)

    def dead_letter(self, raw, error: str) -> None:
        """Keep a body that could not even be split into events (not JSON, not a list)."""
        self._produce([self._letter(raw, error)])

    def _letter(self, raw, error: str) -> tuple:
        user = _claimed_user(raw)
        return (self.dead_letter_topic, user.encode() if user else None, _raw_bytes(raw),
                [("error", error.encode()[:4000])])

    def _produce(self, records: list[tuple]) -> None:
        """Send every (topic, key, value, headers), then wait for every acknowledgement
        within ack_timeout_s."""
        if not records:
            return
        import time

        from kafka.errors import KafkaError

        deadline = time.monotonic() + self.ack_timeout_s
        producer = self.producer
        try:
            futures = [producer.send(topic, key=key, value=value, headers=headers)
                       for topic, key, value, headers in records]
            for future in futures:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:
            raise BrokerUnavailable(f"the Kafka broker at {self.bootstrap} did not acknowledge the events within "
                                    f"{self.ack_timeout_s:g} s ({type(exc).__name__}: {exc}); nothing is claimed "
                                    "stored") from exc

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self.ack_timeout_s)
                self._producer = None
