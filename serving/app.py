"""What the recommendation server adds to KServe's FastAPI app: v1 predict straight to the KServe
model without FastAPI's routing (serving/direct.py), a request-size limit (413),
400 instead of FastAPI's 422 for a v2 body that fails its schema (every client mistake is
a 400 with {"error": ...}), the answering process in a response header, /metrics over
every worker under --workers (serving/metrics.py), the bandit
feedback endpoint, and event ingestion (`POST /v1/events` into the durable event log the
stream processor tails; its JSON Schema at `GET /v1/schema/event`)."""

from __future__ import annotations

import json
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_BODY_BYTES = 1 << 20


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, by Content-Length when
    given and by counting otherwise (chunked uploads), before the app reads them whole."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await self._too_large(send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send):
        body = json.dumps({"error": f"request body over {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
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
    events = body.get("events") if isinstance(body, dict) else body
    if not isinstance(events, list):
        raise ValueError('body must be a JSON list of events or {"events": [...]}')
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise ValueError(f"at most {MAX_EVENTS_PER_BATCH} events per request, got {len(events)}")
    return events


def install(app: FastAPI, models: dict, events=None) -> None:
    """Add the middleware, the 400 handler, `POST /v1/models/{name}:feedback`, the event
    contract at `GET /v1/schema/event` (hyperrec.data.contract) and, given an EventLog,
    `POST /v1/events`."""
    from serving import oip
    from serving.direct import DirectV1Predict

    app.add_middleware(DirectV1Predict, models=models, fastapi_app=app)  # added first: innermost
    oip.install(app)  # Open Inference Protocol conformance, inside the body limit (serving/oip.py)
    app.add_middleware(BodyLimit)
    app.add_middleware(WorkerHeader)

    async def schema_error(_, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"error": problems[:2000]})

    app.add_exception_handler(RequestValidationError, schema_error)

    from serving import metrics

    if metrics.MULTIPROCESS:  # registered before KServe's own /metrics, so this one answers
        @app.get("/metrics")
        async def all_workers_metrics(request: Request):
            body, content_type = metrics.scrape(request.headers.get("accept"))
            return Response(content=body, headers={"content-type": content_type})

    if events is not None:
        _install_ingestion(app, events)

    from hyperrec.data.contract import event_json_schema
    from hyperrec.data.schemas import EVENT_TYPES

    # the contract of POST /v1/events and the Kafka topic's records, with the workspace's event types
    event_schema = event_json_schema(events.event_types if events is not None else EVENT_TYPES)

    @app.get("/v1/schema/event")
    async def event_contract():
        return JSONResponse(content=event_schema)

    @app.post("/v1/models/{model_name}:feedback")
    async def feedback(model_name: str, request: Request):
        model = models.get(model_name)
        if model is None:
            return JSONResponse(status_code=404, content={"error": f"Model with name {model_name} does not exist."})
        try:
            body = Feedback.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse(status_code=400, content={"error": str(exc.errors(include_url=False))[:2000]})
        if not await model.feedback(body.request_id, body.item_id, body.reward):
            return JSONResponse(status_code=404, content={
                "error": f"no exploration slot for request {body.request_id} and item {body.item_id} "
                         "(not an explored item, already credited, or expired)"})
        return {"updated": True}


def _install_ingestion(app: FastAPI, log) -> None:
    from starlette.concurrency import run_in_threadpool

    from serving import metrics

    @app.post("/v1/events")
    async def ingest(request: Request):
        """Acknowledged = durable (the log commits with synchronous=FULL before we answer).
        200 with counts even when some events were dead-lettered: those are the client's to
        fix, and the rest must not be refused with them. received = stored + duplicates +
        dead_lettered + suppressed (events of erased users, dropped)."""
        raw = await request.body()
        try:
            batch = event_batch(raw)
        except ValueError as exc:
            await run_in_threadpool(log.dead_letter, raw, str(exc))
            metrics.EVENTS.labels("dead_lettered").inc()
            return JSONResponse(status_code=400, content={"error": str(exc), "dead_lettered": 1})
        result = await run_in_threadpool(log.append, batch)
        for outcome in ("stored", "duplicates", "dead_lettered", "suppressed"):
            metrics.EVENTS.labels(outcome).inc(getattr(result, outcome))
        return {"received": result.received, "stored": result.stored, "duplicates": result.duplicates,
                "dead_lettered": result.dead_lettered, "suppressed": result.suppressed,
                "errors": result.errors[:20]}
