#!/usr/bin/env python3
"""Send interaction events to hyperrec: to its Kafka topic, to its HTTP endpoint, or both.

A standalone example to copy into your own service: it needs Python 3.9+ and, for --kafka,
`pip install kafka-python`. Nothing here imports hyperrec.

The contract (one JSON object per event) is published by the server at
`GET /v1/schema/event` and in the repository at docs/schemas/event.schema.json; the
example event in examples/event.json shows one. In short:

    event_id    unique per event (the dedupe key: a re-sent event is stored once)
    user_id     who
    item_id     what
    event_type  view | click | add_to_cart | purchase | rating
    ts          ISO 8601 with a timezone, not in the future
    dwell_s     seconds, required for a click
    rating      0.5 to 5, required for a rating
    session_id, device, request_id (the recommendation list it came from): optional

Kafka: one record per event on the topic (default `hyperrec.events`), key = the user id
(so one user's events stay in order on one partition), value = the event as JSON bytes.

HTTP: `POST {URL}/v1/events` with a JSON list of events, in batches. The server answers
200 with counts {received, stored, duplicates, dead_lettered, suppressed, errors}; a bad
event is dead-lettered alone and named in `errors`. A 5xx or a lost connection is retried
with exponential backoff; a 4xx is our mistake and is reported, not retried.

    python produce_events.py --kafka localhost:9092 --count 100
    python produce_events.py --http http://localhost:8080 --events my_events.jsonl
    python produce_events.py --kafka localhost:9092 --topic hyperrec.events --http http://localhost:8080

The last line printed on stdout is a JSON summary; the exit status is 0 only if every event
was accepted (sent to Kafka; stored or a duplicate over HTTP).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

DEFAULT_TOPIC = "hyperrec.events"
EVENT_TYPES = ["view", "view", "view", "click", "click", "add_to_cart", "purchase", "rating"]  # views are common


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the events


def read_events(path: str) -> list[dict]:
    """Events from a file: JSON Lines (one event per line), or one JSON event or list."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        whole = json.loads(text)
        return whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def example_events(count: int, users: int = 10, items: int = 50, seed: int | None = None) -> list[dict]:
    """`count` made-up events of a few users, stamped over the last minutes."""
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)  # noqa: UP017 (datetime.UTC is 3.11+; this runs on 3.9)
    events = []
    for i in range(count):
        event_type = rng.choice(EVENT_TYPES)
        event = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user_id": f"user-{rng.randrange(users):04d}",
            "item_id": f"item-{rng.randrange(items):05d}",
            "event_type": event_type,
            "ts": (now - timedelta(seconds=count - i)).isoformat(),
            "device": rng.choice(["mobile", "desktop", "tablet"]),
        }
        if event_type == "click":
            event["dwell_s"] = round(rng.uniform(1, 120), 1)
        if event_type == "rating":
            event["rating"] = rng.choice([1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0])
        events.append(event)
    return events


# ---------------------------------------------------------------- Kafka


def send_to_kafka(events: list[dict], bootstrap: str, topic: str) -> int:
    """One record per event, keyed by user id; returns how many the broker acknowledged."""
    from kafka import KafkaProducer  # pip install kafka-python

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",  # acknowledged = written to every in-sync replica
        retries=5,
        key_serializer=lambda key: key.encode("utf-8"),
        value_serializer=lambda event: json.dumps(event, separators=(",", ":")).encode("utf-8"),
    )
    try:
        futures = [producer.send(topic, key=event["user_id"], value=event) for event in events]
        producer.flush()
        for future in futures:
            future.get(timeout=30)  # raises if the broker refused a record
    finally:
        producer.close()
    return len(futures)


# ---------------------------------------------------------------- HTTP


class RequestFailed(Exception):
    def __init__(self, message: str, status: int | None, attempts: int):
        super().__init__(message)
        self.status, self.attempts = status, attempts


def post_json(url: str, body, tries: int = 5, backoff_s: float = 0.5, timeout_s: float = 30.0):
    """POST `body` as JSON; returns (answer, attempts). A 5xx, a timeout or a refused
    connection is retried up to `tries` times, waiting backoff_s, 2*backoff_s, 4*backoff_s, ...
    (plus a little jitter, so many producers do not retry in step). A 4xx is not retried."""
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    for attempt in range(1, tries + 1):
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return json.loads(response.read()), attempt
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:500]
            if err.code < 500:
                raise RequestFailed(f"HTTP {err.code}: {detail}", err.code, attempt) from None
            problem, status = f"HTTP {err.code}: {detail}", err.code
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            problem, status = f"{type(err).__name__}: {getattr(err, 'reason', err)}", None
        if attempt == tries:
            raise RequestFailed(f"gave up after {tries} attempts, last: {problem}", status, attempt)
        delay = backoff_s * 2 ** (attempt - 1) * random.uniform(1.0, 1.25)
        log(f"  attempt {attempt} failed ({problem}); retrying in {delay:.2f} s")
        time.sleep(delay)
    raise AssertionError("unreachable")


def send_over_http(events: list[dict], base_url: str, batch_size: int, tries: int, backoff_s: float) -> dict:
    """POST the events in batches to /v1/events; returns the summed counts and the failures."""
    url = base_url.rstrip("/")
    if not url.endswith("/v1/events"):
        url += "/v1/events"
    totals = {"received": 0, "stored": 0, "duplicates": 0, "dead_lettered": 0, "suppressed": 0}
    attempts, errors, failed = [], [], 0
    for start in range(0, len(events), batch_size):
        batch = events[start:start + batch_size]
        try:
            answer, n = post_json(url, batch, tries=tries, backoff_s=backoff_s)
        except RequestFailed as exc:
            log(f"http: events {start}..{start + len(batch) - 1} NOT sent: {exc}")
            attempts.append(exc.attempts)
            errors.append(str(exc))
            failed += len(batch)
            continue
        attempts.append(n)
        for key in totals:
            totals[key] += answer.get(key, 0)
        errors += answer.get("errors", [])
        log(f"http: {len(batch)} events -> stored {answer.get('stored')}, duplicates {answer.get('duplicates')}, "
            f"dead-lettered {answer.get('dead_lettered')} ({n} attempt{'s' if n > 1 else ''})")
        for error in answer.get("errors", []):
            log(f"  refused: {error}")
    return {**totals, "failed": failed, "attempts": attempts, "errors": errors}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_argument_group("where to send (one or both)")
    where.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers, e.g. localhost:9092")
    where.add_argument("--topic", default=DEFAULT_TOPIC, help=f"Kafka topic (default {DEFAULT_TOPIC})")
    where.add_argument("--http", metavar="URL", help="the model server, e.g. http://localhost:8080")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--events", metavar="FILE", help="events to send: JSON Lines, or a JSON event or list")
    what.add_argument("--count", type=int, default=20, help="without --events: how many example events to make")
    parser.add_argument("--seed", type=int, default=None, help="make the same example events every time")
    parser.add_argument("--batch-size", type=int, default=500, help="events per HTTP request (server max 10000)")
    parser.add_argument("--tries", type=int, default=5, help="HTTP attempts per batch on 5xx or connection errors")
    parser.add_argument("--backoff", type=float, default=0.5, help="first HTTP retry delay in seconds (doubles)")
    args = parser.parse_args(argv)
    if not (args.kafka or args.http):
        parser.error("give --kafka BOOTSTRAP, --http URL, or both")

    events = read_events(args.events) if args.events else example_events(args.count, seed=args.seed)
    log(f"{len(events)} events from {args.events or 'the example generator'}")
    summary: dict = {"events": len(events)}
    ok = True

    if args.kafka:
        sent = send_to_kafka(events, args.kafka, args.topic)
        log(f"kafka: {sent} events sent to topic {args.topic} on {args.kafka}")
        summary["kafka"] = {"sent": sent, "topic": args.topic}

    if args.http:
        result = send_over_http(events, args.http, args.batch_size, args.tries, args.backoff)
        summary["http"] = result
        ok = ok and result["failed"] == 0 and result["dead_lettered"] == 0

    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
