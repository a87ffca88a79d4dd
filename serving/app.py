"""What the recommendation server adds to KServe's FastAPI app: a request-size limit (413),
400 instead of FastAPI's 422 for a v2 body that fails its schema (every client mistake is
a 400 with {"error": ...}), and the bandit feedback endpoint."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=128)
    reward: float = Field(ge=0.0, le=1.0)


def install(app: FastAPI, models: dict) -> None:
    """Add the middleware, the 400 handler and `POST /v1/models/{name}:feedback`."""
    app.add_middleware(BodyLimit)

    async def schema_error(_, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors())
        return JSONResponse(status_code=400, content={"error": problems[:2000]})

    app.add_exception_handler(RequestValidationError, schema_error)

    @app.post("/v1/models/{model_name}:feedback")
    async def feedback(model_name: str, request: Request):
        model = models.get(model_name)
        if model is None:
            return JSONResponse(status_code=404, content={"error": f"Model with name {model_name} does not exist."})
        try:
            body = Feedback.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse(status_code=400, content={"error": str(exc.errors(include_url=False))[:2000]})
        if not model.feedback(body.request_id, body.item_id, body.reward):
            return JSONResponse(status_code=404, content={
                "error": f"no exploration slot for request {body.request_id} and item {body.item_id} "
                         "(not an explored item, already credited, or expired)"})
        return {"updated": True}
