"""Request and response schemas of the recommendation endpoint (v1 `instances`)."""

from __future__ import annotations

import json

from kserve.errors import InvalidInput
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hyperrec.schemas import Id

MAX_K = 100


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    k: int = Field(10, ge=1, le=MAX_K)


class ScoredItem(BaseModel):
    item_id: str
    score: float
    title: str
    category: str


class Recommendation(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: int


def parse_instances(payload) -> list[RecommendRequest]:
    """Check a v1 body; any problem is an InvalidInput (HTTP 400) naming the input.

    KServe hands over raw bytes when the client sent no JSON content type, so decode here."""
    if isinstance(payload, (bytes, bytearray, str)):
        try:
            payload = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidInput(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise InvalidInput('body must be {"instances": [{"user_id": ..., "k": ...}, ...]}')
    if not payload["instances"]:
        raise InvalidInput("instances is empty")
    requests = []
    for i, inst in enumerate(payload["instances"]):
        try:
            requests.append(RecommendRequest.model_validate(inst))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'instance'}: {e['msg']}"
                                 for e in exc.errors())
            raise InvalidInput(f"instances[{i}]: {problems}") from None
    return requests
