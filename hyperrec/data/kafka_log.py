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
- Duplicates: the broker keeps no index of event ids. A repeat within one request is counted
  a duplicate. Across requests (a client's retry after a timeout, a replayed batch), the
  servers share `SeenEventIds` in Redis when they have one (the cluster's online store):
  an event_id acknowledged in the last day is counted a duplicate and not produced again.
  Without it, or when Redis does not answer, a repeat is produced again and counted
  `stored` (= acknowledged by the broker). Either way every consumer dedupes on `event_id`
  (the stream per partition, the offline sink by the table's key), so a repeat that gets
  through has no second effect; the check runs before the produce and the ids are recorded
  only after the acknowledgement, so it never turns an event away that was not stored.
"""

from __future__ import annotations

import hashlib
import logging
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

log = logging.getLogger(__name__)
TOPIC = "hyperrec.events"  # one typed topic: every event type, keyed by user (per-user order)
DEAD_LETTER_TOPIC = "hyperrec.events.dead-letters"  # what failed the door: raw bytes, `error` header


class BrokerUnavailable(LogBusy):
    """The broker did not acknowledge a batch in time (HTTP 503, Retry-After): nothing is
    claimed stored."""

    kind = "broker_unavailable"


class SeenEventIds:
    """The event ids the broker acknowledged in the last `ttl_s`, in Redis, shared by every
    server: `seen` before a produce, `remember` after its acknowledgement. Keys are a hash of
    the id (a client's ids may name its users), values empty. A Redis that does not answer
    costs the dedupe, never an event: `seen` then says none (counted in `failures`, and told
    to `on_failure(what)`: the server's degraded-responses metric)."""

    PREFIX = "hyperrec:event-seen:"

    def __init__(self, client, ttl_s: int = 86_400, on_failure: Callable[[str], None] | None = None):
        self.client, self.ttl_s, self.on_failure, self.failures = client, ttl_s, on_failure, 0

    def _key(self, event_id: str) -> str:
        return self.PREFIX + hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()

    def seen(self, event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        try:
            found = self.client.mget([self._key(i) for i in event_ids])
        except Exception as exc:  # noqa: BLE001  (any Redis failure: the consumers still dedupe)
            self._failed("read", exc)
            return set()
        return {i for i, value in zip(event_ids, found) if value is not None}

    def remember(self, event_ids: list[str]) -> None:
        if not event_ids:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for event_id in event_ids:
                pipe.set(self._key(event_id), b"", ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            self._failed("write", exc)

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        if self.on_failure is not None:
            self.on_failure(what)
        log.warning("event-id dedupe: Redis %s failed (%s: %s); repeats across requests are produced again "
                    "and deduped by the consumers", what, type(exc).__name__, exc)


class KafkaEventLog:
    def __init__(self, bootstrap: str, topic: str = TOPIC, dead_letter_topic: str = DEAD_LETTER_TOPIC,
                 suppress: Container[str] = frozenset(), event_types: Collection[str] = EVENT_TYPES,
                 ack_timeout_s: float = 10.0, seen_ids: SeenEventIds | None = None, **producer_config):
        """`ack_timeout_s`: the longest an append waits for the broker's acknowledgements
        (and for its metadata, when it has none yet) before BrokerUnavailable. `seen_ids`: the
        ids acknowledged lately, across requests and servers (None: within a request only)."""
        self.seen_ids = seen_ids
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
        if self.seen_ids is not None and events:
            before = self.seen_ids.seen([e.event_id for e in events])
            dup += len(before)
            events = [e for e in events if e.event_id not in before]
        self._produce([(self.topic, e.user_id.encode(), e.model_dump_json().encode(), None) for e in events]
                      + [self._letter(raw, error) for raw, error in letters])
        if self.seen_ids is not None:
            self.seen_ids.remember([e.event_id for e in events])
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
