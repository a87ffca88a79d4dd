"""Open Inference Protocol conformance over KServe's REST app, for the clients people point
at it (tritonclient.http, KServe's InferenceRESTClient, curl):

- every routing error is `{"error": ...}`: FastAPI answers an unknown route (404), a wrong
  method (405, its Allow header kept) and any HTTPException with `{"detail": ...}`;
- a verb that takes only POST answers other methods with 405: a GET on
  `/v1/models/m:predict` would otherwise reach KServe's `GET /v1/models/{name}` as a model
  named "m:predict" (404);
- a v2 infer body is JSON whatever its Content-Type says, or none (FastAPI parses only
  JSON types, and KServe refuses the raw bytes it gets otherwise);
- a binary-extension body (`Inference-Header-Content-Length`) is checked before KServe
  decodes it (a malformed one raised inside KServe's decoder: 500) and is handed over as
  bytes whatever Content-Type came with it.
"""

from __future__ import annotations

import math
import re

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from kserve.utils.numpy_codec import to_np_dtype
from pydantic import BaseModel, StrictInt, ValidationError
from starlette.exceptions import HTTPException

from serving.direct import _replay as replay
from serving.errors import send_error

POST_ONLY = re.compile(r"^/v1/models/[^/]+:(predict|explain|feedback)$|^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
WHOLE_NUMBER = re.compile(r"[0-9]+")
HEADER_LENGTH = b"inference-header-content-length"
JSON, BINARY = b"application/json", b"application/octet-stream"


def install(app: FastAPI) -> None:
    """Add the middleware (call it where it should sit: inside the body limit, which then
    bounds the binary bodies it reads) and the `{"error"}` handler for HTTPExceptions."""
    app.add_middleware(OpenInferenceProtocol)
    app.add_exception_handler(HTTPException, http_error)


async def http_error(_, exc: HTTPException) -> JSONResponse:
    """FastAPI's HTTPException (404 route, 405 method, ...) as `{"error"}`, headers kept."""
    return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers)


class OpenInferenceProtocol:
    """ASGI middleware: POST-only verbs, and v2 infer bodies' framing (see the module)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not POST_ONLY.match(scope["path"]):
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await send_error(send, 405, f"{scope['method']} {scope['path']}: only POST is allowed",
                                [(b"allow", b"POST")])
        if not scope["path"].startswith("/v2/"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(HEADER_LENGTH)
        if length is None:
            json_body = is_json(headers.get(b"content-type", b""))
            return await self.app(scope if json_body else retyped(scope, JSON), receive, send)
        body = await read_body(receive)
        problem = binary_problem(body, length.decode("latin-1"))
        if problem:
            return await send_error(send, 400, problem)
        await self.app(retyped(scope, BINARY), replay(body), send)


def is_json(content_type: bytes) -> bool:
    """A type FastAPI parses as JSON: application/json or application/*+json."""
    mime = content_type.split(b";")[0].strip().lower()
    return mime == JSON or (mime.startswith(b"application/") and mime.endswith(b"+json"))


def retyped(scope: dict, content_type: bytes) -> dict:
    """The scope with its Content-Type replaced (or added)."""
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", content_type)]}


class _Input(BaseModel):
    name: str
    shape: list[StrictInt]  # KServe reshapes with the JSON values as they are
    datatype: str
    parameters: dict | None = None
    data: list | None = None


class _Output(BaseModel):
    name: str
    parameters: dict | None = None


class _Header(BaseModel):
    """The JSON that starts a binary-extension body: what KServe's decoder reads from it."""
    inputs: list[_Input]
    outputs: list[_Output] | None = None


def binary_problem(body: bytes, length: str) -> str | None:
    """What is wrong with a binary-extension body's framing, or None: the header's length,
    the JSON header, each binary input's size against its datatype and shape, and the sizes
    against the bytes that follow the header."""
    if not WHOLE_NUMBER.fullmatch(length.strip()):
        return f"Inference-Header-Content-Length must be a whole number of bytes, got {length!r}"
    n = int(length)
    if n > len(body):
        return f"Inference-Header-Content-Length {n} is past the end of the {len(body)}-byte body"
    try:
        header = _Header.model_validate(orjson.loads(body[:n]))
    except orjson.JSONDecodeError as exc:
        return f"the body's first {n} bytes (Inference-Header-Content-Length) are not JSON: {exc}"
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'header'}: {e['msg']}" for e in exc.errors())
        return f'the inference header must be {{"inputs": [{{"name", "shape", "datatype", ...}}]}}: {where}'[:2000]
    return tensors_problem(header.inputs, body[n:])


def tensors_problem(inputs: list[_Input], raw: bytes) -> str | None:
    """Each binary input's bytes (in order, after the header) against its datatype and shape."""
    offset = 0
    for tensor in inputs:
        size = (tensor.parameters or {}).get("binary_data_size")
        if tensor.data is not None or size is None:
            continue  # inline JSON data, or neither (KServe names the missing data)
        if type(size) is not int or size < 0:
            return f"input {tensor.name}: binary_data_size must be a whole number of bytes, got {size!r}"
        if offset + size > len(raw):
            return (f"the inputs' binary_data_size need more than the {len(raw)} bytes that follow "
                    f"the inference header (input {tensor.name} ends at byte {offset + size})")
        problem = tensor_problem(tensor, raw[offset:offset + size])
        if problem:
            return f"input {tensor.name}: {problem}"
        offset += size
    if offset != len(raw):
        return f"the inputs' binary_data_size add up to {offset} bytes, but {len(raw)} follow the inference header"
    return None


def tensor_problem(tensor: _Input, raw: bytes) -> str | None:
    """Whether `raw` holds exactly the tensor's values: fixed-size types by size, BYTES by
    walking its length-prefixed elements."""
    dtype = to_np_dtype(tensor.datatype)
    if dtype is None:
        return f"unknown datatype {tensor.datatype}"
    if any(d < 0 for d in tensor.shape):
        return f"shape {tensor.shape} has a negative dimension"
    count = math.prod(tensor.shape)
    if tensor.datatype != "BYTES":
        itemsize = 1 if dtype is bool else dtype().itemsize
        if len(raw) != count * itemsize:
            return f"{len(raw)} bytes of {tensor.datatype} for shape {tensor.shape} ({count * itemsize} expected)"
        return None
    found = byte_strings(raw)
    if found != count:
        what = "are not length-prefixed strings" if found is None else f"hold {found} strings"
        return f"the {len(raw)} bytes of BYTES data {what}; shape {tensor.shape} needs {count}"
    return None


def byte_strings(raw: bytes) -> int | None:
    """How many elements a BYTES tensor's binary form holds (each a 4-byte little-endian
    length and that many bytes), or None if the lengths do not end exactly at its end."""
    offset = count = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            return None
        offset += 4 + int.from_bytes(raw[offset:offset + 4], "little")
        count += 1
    return count if offset == len(raw) else None


async def read_body(receive) -> bytes:
    """The whole request body (a body limit outside bounds it)."""
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)
