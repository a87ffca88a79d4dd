"""serving/direct.py: a plain JSON v1 predict reaches the KServe model without the app's
routing, everything else goes on to the app, and errors get the app's own handlers."""

import asyncio
import json

import kserve
import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput

from serving.direct import DirectV1Predict


class _Model(kserve.Model):
    def __init__(self):
        super().__init__("recommender")
        self.ready, self.calls = True, []

    async def predict(self, payload, headers=None):
        self.calls.append((payload, headers.get("x-probe")))
        if payload.get("bad"):
            raise InvalidInput("instances[0].k: must be >= 1")
        if payload.get("boom"):
            raise RuntimeError("broken")
        return {"predictions": [{"score": np.float32(0.5), "n": np.int64(3)}]}


def _direct(model):
    app = FastAPI()
    app.add_exception_handler(InvalidInput, lambda _, exc: JSONResponse(status_code=400, content={"error": str(exc)}))
    routed = []

    async def rest_of_app(scope, receive, send):  # the app behind: must see only what the direct path leaves
        message = await receive()
        routed.append((scope["method"], scope["path"], message.get("body")))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    return DirectV1Predict(rest_of_app, {"recommender": model}, app), routed


def _call(asgi, path, body: bytes, method="POST", headers=()):
    scope = {"type": "http", "method": method, "path": path, "query_string": b"",
             "headers": [(b"x-probe", b"1"), *headers]}
    chunks, sent = [{"type": "http.request", "body": body, "more_body": False}], []

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(asgi(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_plain_json_predict_goes_to_the_model_and_everything_else_to_the_app():
    model = _Model()
    direct, routed = _direct(model)
    status, body = _call(direct, "/v1/models/recommender:predict", b'{"instances": []}',
                         headers=[(b"content-type", b"application/json")])
    assert status == 200 and json.loads(body) == {"predictions": [{"score": 0.5, "n": 3}]}
    assert model.calls == [({"instances": []}, "1")] and routed == []

    others = [("POST", "/v2/models/recommender/infer", ()), ("POST", "/v1/models/recommender:feedback", ()),
              ("GET", "/v1/models/recommender:predict", ()), ("POST", "/v1/models/other:predict", ()),
              ("POST", "/v1/models/recommender:predict", [(b"content-type", b"text/plain")]),  # raw bytes
              ("POST", "/v1/models/recommender:predict", [(b"content-type", b"application/json; charset=utf-8")]),
              ("POST", "/v1/models/recommender:predict", [(b"ce-specversion", b"1.0")])]  # a binary CloudEvent
    for method, path, headers in others:
        assert _call(direct, path, b"{}", method, headers)[0] == 299
    cloudevent = json.dumps({"specversion": "1.0", "id": "1", "source": "t", "type": "t",
                             "time": "2026-01-01T00:00:00Z", "data": {}}).encode()
    assert _call(direct, "/v1/models/recommender:predict", cloudevent)[0] == 299  # read, then replayed
    assert [r[2] for r in routed] == [b"{}"] * len(others) + [cloudevent] and len(model.calls) == 1

    model.ready = False  # KServe answers for a model that is not ready (503)
    assert _call(direct, "/v1/models/recommender:predict", b"{}")[0] == 299


def test_errors_are_answered_by_the_apps_exception_handlers():
    direct, _ = _direct(_Model())
    status, body = _call(direct, "/v1/models/recommender:predict", b'{"bad": true}')
    assert status == 400 and json.loads(body) == {"error": "instances[0].k: must be >= 1"}
    status, body = _call(direct, "/v1/models/recommender:predict", b'{"instances": [')
    assert status == 400 and json.loads(body)["error"].startswith("Unrecognized request format: ")
    try:  # no handler for it in this app: raised on, to the server's error middleware (a 500)
        _call(direct, "/v1/models/recommender:predict", b'{"boom": true}')
    except RuntimeError as exc:
        assert str(exc) == "broken"
    else:
        raise AssertionError("an error without a handler must propagate")
