"""What the recommendation server adds to KServe's FastAPI app: v1 predict straight to the KServe
model without FastAPI's routing (serving/direct.py), a request-size limit (413),
400 instead of FastAPI's 422 for a v2 body that fails its schema (every client mistake is
a 400 with {"error": ...}), the answering process in a response header, /metrics over
every worker under --workers (serving/metrics.py), the bandit
feedback endpoint, and event ingestion (`POST /v1/events` into the durable event log the
stream processor tails, or the Kafka topic it consumes; its JSON Schema at `GET /v1/schema/event`)."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.errors import send_error

MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_S = 30.0


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, by Content-Length when
    given and by counting otherwise (chunked uploads), before the app reads them whole; and
    bodies that take longer than `timeout_s` to arrive with 408 (a trickling client holds a
    connection and a request's memory; serving/timeouts.py bounds the headers)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, timeout_s: float = BODY_TIMEOUT_S):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await send_error(send, 413, f"request body over {self.limit} bytes")
        seen, complete, deadline = 0, False, asyncio.get_running_loop().time() + self.timeout_s

        async def counted():
            nonlocal seen, complete
            if complete:  # after the body: the app waits for a disconnect, for as long as it serves
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):  # a timer, not a task per receive
                    message = await receive()
            except TimeoutError:
                raise _TooSlow from None
            complete = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await send_error(send, 413, f"request body over {self.limit} bytes")
        except _TooSlow:
            await send_error(send, 408, f"request body not received within {self.timeout_s:.0f} s")


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class WorkerHeader:
    """ASGI middleware: every response names the process that answered it
    (`x-hyperrec-worker: <pid>`), so a client or a test can tell the workers apart."""

    def __init__(self, app, worker: str | None = None):
        self.app = app
        self.header = (b"x-hyperrec-worker", (worker or str(os.getpid())).encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, named)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=128)
    reward: float = Field(ge=0.0, le=1.0)


MAX_EVENTS_PER_BATCH = 10_000


def event_batch(raw: bytes) -> list:
    """The events of a `POST /v1/events` body: a JSON list, or {"events": [...]}. Each event
    is validated by the log itself, so one bad event is dead-lettered alone."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("body is nested too deeply to be events") from None
    events = body.get("events") if isinstance(body, dict) else body
    if not isinstance(events, list):
        raise ValueError('body must be a JSON list of events or {"events": [...]}')
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise ValueError(f"at most {MAX_EVENTS_PER_BATCH} events per request, got {len(events)}")
    return events


def install(app: FastAPI, models: dict, events=None, authenticator=None,
            body_timeout_s: float = BODY_TIMEOUT_S) -> None:
    """Add the middleware, the 400 and 403 handlers, `POST /v1/models/{name}:feedback`, the
    event contract at `GET /v1/schema/event` (hyperrec.data.contract) and, given an
    EventLog, `POST /v1/events`. Given an Authenticator, every other route needs a
    credential (serving/auth.py)."""
    from hyperrec.online.access import Forbidden
    from serving import oip
    from serving.auth import RequireAuth, forbidden_response
    from serving.direct import DirectV1Predict

    app.add_middleware(DirectV1Predict, models=models, fastapi_app=app)  # added first: innermost
    oip.install(app)  # Open Inference Protocol conformance, inside the body limit (serving/oip.py)
    if authenticator is not None:  # outside the direct path, so it too is authenticated
        app.add_middleware(RequireAuth, authenticator=authenticator)
    app.add_middleware(BodyLimit, timeout_s=body_timeout_s)
    app.add_middleware(WorkerHeader)

    async def schema_error(_, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"error": problems[:2000]})

    app.add_exception_handler(RequestValidationError, schema_error)
    app.add_exception_handler(Forbidden, lambda _, exc: forbidden_response(exc))

    from serving import metrics

    if metrics.MULTIPROCESS:  # registered before KServe's own /metrics, so this one answers
        @app.get("/metrics")
        async def all_workers_metrics(request: Request):
            body, content_type = metrics.scrape(request.headers.get("accept"))
            return Response(content=body, headers={"content-type": content_type})

    @app.get("/v2/health/ready")  # before KServe's, which answers true once the process serves
    async def ready():
        """Kubernetes' readiness: every model healthy (loaded, and its health checks pass)."""
        unready = [name for name, model in models.items() if not await model.healthy()]
        if unready:
            return JSONResponse(status_code=503, content={"ready": False, "error": f"models not ready: {unready}"})
        return {"ready": True}

    if events is not None:
        _install_ingestion(app, events)

    from hyperrec.data.contract import event_json_schema
    from hyperrec.data.schemas import EVENT_TYPES

    # the contract of POST /v1/events and the Kafka topic's records, with the workspace's event types
    event_schema = event_json_schema(events.event_types if events is not None else EVENT_TYPES)

    @app.get("/v1/schema/event")
    async def event_contract():
        return JSONResponse(content=event_schema)

    from serving.auth import current_caller

    @app.post("/v1/models/{model_name}:feedback")
    async def feedback(model_name: str, request: Request):
        model = models.get(model_name)
        if model is None:
            return JSONResponse(status_code=404, content={"error": f"Model with name {model_name} does not exist."})
        try:
            body = Feedback.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse(status_code=400, content={"error": str(exc.errors(include_url=False))[:2000]})
        if not await model.feedback(body.request_id, body.item_id, body.reward, current_caller()):
            return JSONResponse(status_code=404, content={
                "error": f"no exploration slot for request {body.request_id} and item {body.item_id} "
                         "(not an explored item, already credited, or expired)"})
        return {"updated": True}


MAX_EVENT_DEPTH = 32  # an event is a flat object with a few small ones inside


def depth(value) -> int:
    """How deeply a parsed JSON value nests (iteratively: a hostile body must not recurse us)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_EVENT_DEPTH:
                todo.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def split_too_deep(batch: list) -> tuple[list, list[int]]:
    """The events shallow enough to validate, and the positions of the others (dead-lettered
    alone: serializing or validating them would exhaust Python's recursion limit)."""
    deep = [i for i, event in enumerate(batch) if depth(event) > MAX_EVENT_DEPTH]
    skip = set(deep)
    return [event for i, event in enumerate(batch) if i not in skip], deep


def others_events(batch: list, caller) -> list[int]:
    """Positions of events a user token may not post: another user's. (A service key with
    the ingest scope posts for anyone; an event with no user_id is dead-lettered anyway.)"""
    return [i for i, event in enumerate(batch)
            if isinstance(event, dict) and "user_id" in event and not caller.acts_for(event["user_id"])]


def _install_ingestion(app: FastAPI, log) -> None:
    from starlette.concurrency import run_in_threadpool

    from hyperrec.data.eventlog import LogBusy, LogUnavailable
    from serving import metrics
    from serving.auth import current_caller

    @app.post("/v1/events")
    async def ingest(request: Request):
        """Acknowledged = durable (the log commits with synchronous=FULL before we answer; on
        a cluster, hyperrec.data.kafka_log: the broker acknowledged every record, acks=all).
        200 with counts even when some events were dead-lettered: those are the client's to
        fix, and the rest must not be refused with them. received = stored + duplicates +
        dead_lettered + suppressed (events of erased users, dropped). 503 when the log cannot
        take them (busy past the wait: Retry-After; deleted or replaced: until restarted)."""
        raw = await request.body()
        try:
            return await run_in_threadpool(store, raw, current_caller())
        except LogBusy as exc:  # busy past the wait; on Kafka: the broker did not acknowledge in time
            metrics.ERRORS.labels(exc.kind).inc()
            return JSONResponse(status_code=503, content={"error": f"{exc}; retry"}, headers={"Retry-After": "1"})
        except LogUnavailable as exc:
            metrics.ERRORS.labels("log_unavailable").inc()
            return JSONResponse(status_code=503, content={"error": f"{exc}; nothing was stored"})

    def store(raw: bytes, caller):
        try:
            batch = event_batch(raw)
        except ValueError as exc:
            log.dead_letter(raw, str(exc))
            metrics.EVENTS.labels("dead_lettered").inc()
            return JSONResponse(status_code=400, content={"error": str(exc), "dead_lettered": 1})
        batch, too_deep = split_too_deep(batch)
        if strangers := others_events(batch, caller):
            return JSONResponse(status_code=403, content={
                "error": f"events {strangers[:20]} are for another user than {caller.name}; nothing was stored"})
        result = log.append(batch)
        for i in too_deep:  # kept whole: the request's own bytes, named by position
            log.dead_letter(raw, f"events[{i}]: nested over {MAX_EVENT_DEPTH} levels")
        result = replace(result, received=result.received + len(too_deep),
                         dead_lettered=result.dead_lettered + len(too_deep),
                         errors=[f"events[{i}]: nested too deeply" for i in too_deep] + result.errors)
        for outcome in ("stored", "duplicates", "dead_lettered", "suppressed"):
            metrics.EVENTS.labels(outcome).inc(getattr(result, outcome))
        return {"received": result.received, "stored": result.stored, "duplicates": result.duplicates,
                "dead_lettered": result.dead_lettered, "suppressed": result.suppressed,
                "errors": result.errors[:20]}
