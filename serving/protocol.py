"""Request and response formats of the recommendation endpoint, both KServe protocols.

v1 (`POST /v1/models/recommender:predict`):
    {"instances": [{"user_id": "u1", "k": 10, "context": {"device": "mobile", "page": "home"}},
                   {"session": {"recent_items": ["i3", "i9"]}, "k": 5}]}
    -> {"predictions": [{"user_id", "model_version", "arm", "policy", "request_id",
                         "items": [{"item_id", "score", "title", "category", "reason"}]}]}

v2 / Open Inference Protocol (`POST /v2/models/recommender/infer`), one row per request:
    inputs  user_id BYTES [n] ("" = anonymous), optional k INT32 [n] or [1],
            recent_items BYTES [n] (comma-separated ids), device / page BYTES [n]
    outputs item_id BYTES [n, k], score FP32 [n, k], reason BYTES [n, k] ("" pads rows
            shorter than k), policy / arm / request_id BYTES [n]; model_version on the response
    A request may name the outputs it wants (only those are returned) and ask for them as
    binary data (the binary tensor extension); the model metadata lists both tables.

Every problem is an InvalidInput (HTTP 400, `{"error": ...}`) naming the field: KServe
hands a body sent without a JSON content type to predict() as raw bytes, so decode here.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hyperrec.data.schemas import Id
from hyperrec.online.serving_path import Recommended, Request

MAX_K = 100
MAX_BATCH = 256  # instances per HTTP request
MAX_SESSION_ITEMS = 50


class Context(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["mobile", "desktop", "tablet", "tv", "unknown"] = "unknown"
    page: str = Field("home", max_length=200, pattern=r"^(home|search|item:.+|category:.+)$")
    time: datetime | None = None


class Session(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recent_items: list[Id] = Field(default_factory=list, max_length=MAX_SESSION_ITEMS)


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id | None = None
    session: Session | None = None
    context: Context = Field(default_factory=Context)
    k: int = Field(10, ge=1, le=MAX_K)
    exclude: list[Id] = Field(default_factory=list, max_length=1000)

    @field_validator("k", mode="before")
    @classmethod
    def _not_a_flag(cls, value):
        """JSON true is a bool, and a bool is an int to Python: `"k": true` must not mean 1."""
        if isinstance(value, bool):
            raise ValueError("k must be a whole number, not true or false")
        return value

    @model_validator(mode="after")
    def _someone(self):
        if self.user_id is None and self.session is None:
            raise ValueError("give user_id, or session.recent_items for an anonymous visitor")
        return self

    def to_request(self) -> Request:
        return Request(user_id=self.user_id, k=self.k, device=self.context.device, page=self.context.page,
                       time=self.context.time, exclude=tuple(self.exclude),
                       recent_items=tuple(self.session.recent_items) if self.session else None)


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'instance'}: {e['msg']}" for e in exc.errors())


def _validated(instances: list, where: str) -> list[Request]:
    if not instances:
        raise InvalidInput(f"{where} is empty")
    if len(instances) > MAX_BATCH:
        raise InvalidInput(f"{where}: at most {MAX_BATCH} requests per call, got {len(instances)}")
    out = []
    for i, inst in enumerate(instances):
        try:
            out.append(RecommendRequest.model_validate(inst).to_request())
        except ValidationError as exc:
            raise InvalidInput(f"{where}[{i}]: {_problems(exc)}") from None
    return out


def parse_v1(payload) -> list[Request]:
    if isinstance(payload, (bytes, bytearray, str)):
        try:
            payload = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise InvalidInput("body is nested too deeply to be a request") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInput('body must be {"instances": [{"user_id": ..., "k": ...}, ...]}')
    return _validated(payload["instances"], "instances")


V2_INPUTS = {"user_id": "BYTES", "k": "INT32", "recent_items": "BYTES", "device": "BYTES", "page": "BYTES"}
V2_OUTPUTS = {"item_id": "BYTES", "score": "FP32", "reason": "BYTES", "policy": "BYTES", "arm": "BYTES",
              "request_id": "BYTES"}
PER_ITEM_OUTPUTS = ("item_id", "score", "reason")  # [n, k]; the others are [n]


def v2_input_types() -> list[dict]:
    """The model metadata's inputs: one value per request (k may be one for all), so [-1]."""
    return [{"name": name, "datatype": dtype, "shape": [-1]} for name, dtype in V2_INPUTS.items()]


def v2_output_types() -> list[dict]:
    """The model metadata's outputs: [-1, -1] (requests by k) per listed item, [-1] per request."""
    return [{"name": name, "datatype": dtype, "shape": [-1, -1] if name in PER_ITEM_OUTPUTS else [-1]}
            for name, dtype in V2_OUTPUTS.items()]


def requested_outputs(request: InferRequest) -> list[RequestedOutput] | None:
    """The outputs a v2 request names (None: all), checked before any work is done. Each
    says whether it goes as binary data: its own `binary_data`, else the request's
    `binary_data_output` (KServe's encoder reads only the output's own, missing = JSON)."""
    if not request.request_outputs:
        return None
    unknown = [o.name for o in request.request_outputs if o.name not in V2_OUTPUTS]
    if unknown:
        raise InvalidInput(f"unknown outputs {unknown}; this model has {list(V2_OUTPUTS)}")
    default = bool(request.use_binary_outputs)
    return [RequestedOutput(o.name, {**(o.parameters or {}),
                                     "binary_data": default if o.binary_data is None else bool(o.binary_data)})
            for o in request.request_outputs]


def _column(tensor, n: int | None) -> list:
    if tensor.datatype != V2_INPUTS[tensor.name] and not (tensor.name == "k" and tensor.datatype.startswith("INT")):
        raise InvalidInput(f"input {tensor.name}: datatype must be {V2_INPUTS[tensor.name]}, got {tensor.datatype}")
    values = list(np.asarray(tensor.data, dtype=object).reshape(-1)) if tensor.data is not None else []
    if int(np.prod(tensor.shape)) != len(values):
        raise InvalidInput(f"input {tensor.name}: shape {tensor.shape} does not match {len(values)} values")
    if n is not None and len(values) not in (1, n):
        raise InvalidInput(f"input {tensor.name}: {len(values)} values for {n} requests")
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def parse_v2(request: InferRequest) -> list[Request]:
    tensors = {t.name: t for t in request.inputs}
    unknown = set(tensors) - set(V2_INPUTS)
    if unknown:
        raise InvalidInput(f"unknown inputs {sorted(unknown)}; expected some of {list(V2_INPUTS)}")
    if "user_id" not in tensors:
        raise InvalidInput('input "user_id" (BYTES [n], "" for an anonymous session) is required')
    users = _column(tensors["user_id"], None)
    columns = {name: _column(t, len(users)) for name, t in tensors.items() if name != "user_id"}

    def value(name, i):
        col = columns.get(name)
        return None if col is None else col[i if len(col) > 1 else 0]

    instances = []
    for i, user in enumerate(users):
        inst: dict = {"user_id": user or None}
        recent = value("recent_items", i)
        if recent is not None:
            inst["session"] = {"recent_items": [x for x in str(recent).split(",") if x]}
        context = {c: value(c, i) for c in ("device", "page") if value(c, i) is not None}
        if context:
            inst["context"] = context
        if value("k", i) is not None:
            inst["k"] = value("k", i)
        instances.append(inst)
    return _validated(instances, "inputs")


def v1_response(requests: list[Request], results: list[Recommended], request_ids: list[str]) -> dict:
    return {"predictions": [
        {"user_id": r.user_id, "model_version": rec.model_version, "arm": rec.arm, "policy": rec.policy,
         "request_id": rid, "items": [{"item_id": i, "score": round(s, 6), "title": t, "category": c, "reason": why}
                                      for i, s, t, c, why in zip(rec.item_ids, rec.scores, rec.titles,
                                                                 rec.categories, rec.reasons)]}
        for r, rec, rid in zip(requests, results, request_ids)]}


def v2_response(model_name: str, response_id: str, results: list[Recommended], request_ids: list[str],
                outputs: list[RequestedOutput] | None = None, binary: bool = False) -> InferResponse:
    """Every output, of which KServe encodes the requested `outputs` (all if None), as
    binary data where asked (`binary`: all of them, when none are named)."""
    n, k = len(results), max(len(r.item_ids) for r in results)

    def grid(attr, pad):
        return [[*getattr(r, attr), *[pad] * (k - len(r.item_ids))] for r in results]

    def flat(rows):
        return [v for row in rows for v in row]

    tensors = [
        InferOutput("item_id", [n, k], "BYTES", flat(grid("item_ids", ""))),
        InferOutput("score", [n, k], "FP32", flat(grid("scores", 0.0))),
        InferOutput("reason", [n, k], "BYTES", flat(grid("reasons", ""))),
        InferOutput("policy", [n], "BYTES", [r.policy for r in results]),
        InferOutput("arm", [n], "BYTES", [r.arm for r in results]),
        InferOutput("request_id", [n], "BYTES", request_ids),
    ]
    versions = {r.model_version for r in results}
    return InferResponse(response_id, model_name, tensors, model_version=str(max(versions)),
                         use_binary_outputs=binary, requested_outputs=outputs)
