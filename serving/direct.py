"""`POST /v1/models/{name}:predict` with a plain JSON body, straight to the KServe model.

The model is still called through KServe's `Model.__call__` (preprocess -> predict ->
postprocess, KServe's request metrics, which the Grafana dashboard plots). What this skips
is the per-request work FastAPI and KServe's REST layer do around it: routing through every
route, dependency solving, the data plane's model lookups and decode/encode, Starlette's
request and response objects. A profile of a server at 500 req/s put ~45% of each
worker's CPU in that HTTP stack. At 500 req/s, 2 workers, 100k items, four alternated
pairs of runs: p99 51, 64, 53, 71 ms direct, 100, 102, 75, 85 ms through FastAPI; going
through KServe's own v1 handler without FastAPI's routing took 79 and 94 ms (README,
Serving, also for the bench runs, which showed it in throughput rather than p99).

Only a request this path answers exactly as KServe would is taken: a loaded, ready model of
ours, content type application/json or none, no CloudEvent. Anything else (other routes, v2, raw
bytes, CloudEvents, unknown or unready models) goes on to the app, a structured CloudEvent
body after it was read (replayed). Errors are answered by the app's own exception handlers
(KServe's InvalidInput -> 400 {"error": ...}), and a body that is not JSON gets KServe's
message, so a client sees the same status and body either way.
"""

from __future__ import annotations

import inspect

import orjson
from kserve.errors import InvalidInput
from kserve.utils.utils import is_structured_cloudevent
from starlette.requests import Request

PREFIX, SUFFIX = "/v1/models/", ":predict"
JSON = b"application/json"  # compared as KServe compares it (exactly); its other JSON types go on to it
# KServe's ORJSONResponse options: numpy scalars and arrays as JSON numbers and lists
DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class DirectV1Predict:
    """ASGI middleware, innermost of ours (inside the body limit and the worker header).
    `models`: name -> kserve.Model, the ones this path may answer for."""

    def __init__(self, app, models: dict, fastapi_app):
        self.app, self.models, self.fastapi_app = app, models, fastapi_app

    def _model(self, scope):
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope["path"]
        if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
            return None
        model = self.models.get(path[len(PREFIX):-len(SUFFIX)])
        if model is None or not model.ready:
            return None
        for name, value in scope["headers"]:
            if name.startswith(b"ce-") or (name == b"content-type" and value != JSON):
                return None  # a binary CloudEvent, or a body KServe decodes otherwise or hands over raw
        return model

    async def __call__(self, scope, receive, send):
        model = self._model(scope)
        if model is None:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        body = await request.body()  # an over-limit body raises here, to the body limit outside
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return await self._error(request, InvalidInput(f"Unrecognized request format: {exc}"), send)  # KServe's
        if isinstance(payload, dict) and is_structured_cloudevent(payload):
            return await self.app(scope, _replay(body), send)
        try:
            result, model_headers = await model(payload, headers=headers)
            content = orjson.dumps(result, option=DUMP_OPTIONS)
        except Exception as exc:  # noqa: BLE001 (answered by the app's handler for it, or raised on)
            return await self._error(request, exc, send)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", JSON), (b"content-length", str(len(content)).encode()),
                                *((k.encode("latin-1"), v.encode("latin-1")) for k, v in model_headers.items())]})
        await send({"type": "http.response.body", "body": content})

    async def _error(self, request: Request, exc: Exception, send) -> None:
        handlers = self.fastapi_app.exception_handlers
        handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
        if handler is None:
            raise exc
        response = handler(request, exc)  # Starlette takes plain and async handlers
        response = await response if inspect.isawaitable(response) else response
        await response(request.scope, request.receive, send)


def _replay(body: bytes):
    """A `receive` that hands the app a body already read."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive
