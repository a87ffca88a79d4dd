"""The event contract, published: the JSON Schema of `hyperrec.data.schemas.Event`.

Producers (Kafka topic `hyperrec.events`, `POST /v1/events`) validate against it; the server
answers it at `GET /v1/schema/event`; `docs/schemas/event.schema.json` is the committed copy
(tests/test_event_contract.py keeps it equal to the code). Regenerate it after changing Event:

    python -m hyperrec.data.contract docs/schemas/event.schema.json

It is `Event.model_json_schema()` plus what pydantic cannot express in its schema but the
model enforces: the fields an event type requires (`Event.required_when`, e.g. a click needs
`dwell_s`), as JSON Schema if/then rules. Two checks stay with the ingestion door
(hyperrec.data.eventlog): `ts` must not be more than 5 minutes in the future, and `event_id`
is the dedupe key (a replayed id is stored once).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hyperrec.data.schemas import EVENT_TYPES, Event

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_json_schema(event_types: Sequence[str] = EVENT_TYPES) -> dict:
    """The Event contract as a JSON Schema (draft 2020-12) dict; `event_types`: the types the
    workspace accepts (the canonical five unless it declares more, hyperrec.data.event_types)."""
    schema = Event.model_json_schema()
    schema["properties"]["event_type"] = {"title": "Event Type", "type": "string", "enum": list(event_types),
                                          "description": "the canonical types, or one the workspace declares"}
    kind = Event.kind_field
    rules = []
    for value, needed in sorted(Event.required_when.items()):
        rules.append({
            "if": {"properties": {kind: {"const": value}}, "required": [kind]},
            "then": {"required": [needed], "properties": {needed: {"not": {"type": "null"}}}},
        })
    if rules:
        schema["allOf"] = rules
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


def render(schema: dict) -> str:
    """The committed file's exact text: pretty, sorted keys, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_event_schema(path: str | Path) -> Path:
    """Write the Event contract to `path` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(event_json_schema()), encoding="utf-8")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m hyperrec.data.contract PATH  (e.g. docs/schemas/event.schema.json)")
    print(f"wrote {write_event_schema(sys.argv[1])}")
