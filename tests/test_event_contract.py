"""The published event contract: docs/schemas/event.schema.json is what the code says, and
the JSON Schema accepts and refuses what the pydantic model does (examples/event.json included).

After changing hyperrec.data.schemas.Event, regenerate the committed file with

    python -m hyperrec.data.contract docs/schemas/event.schema.json
"""

import copy
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from hyperrec.data.contract import event_json_schema, render, write_event_schema
from hyperrec.data.schemas import Event

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "schemas" / "event.schema.json"
EXAMPLE = ROOT / "examples" / "event.json"
REGENERATE = "python -m hyperrec.data.contract docs/schemas/event.schema.json"


def test_the_committed_schema_is_the_codes():
    assert COMMITTED.exists(), f"docs/schemas/event.schema.json is missing: run `{REGENERATE}`"
    assert COMMITTED.read_text(encoding="utf-8") == render(event_json_schema()), (
        f"docs/schemas/event.schema.json is out of date with hyperrec.data.schemas.Event: run `{REGENERATE}`")


def test_the_module_writes_it_as_documented(tmp_path):
    out = tmp_path / "nested" / "event.schema.json"
    subprocess.run([sys.executable, "-m", "hyperrec.data.contract", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    text = out.read_text(encoding="utf-8")
    assert text == COMMITTED.read_text(encoding="utf-8")
    assert text.endswith("}\n") and json.loads(text)["title"] == "Event"
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys
    assert write_event_schema(tmp_path / "again.json").read_text(encoding="utf-8") == text


FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _rfc3339(value) -> bool:
    """RFC 3339 date-time: an offset is required (jsonschema checks this format only with the
    optional rfc3339-validator package, not installed here)."""
    return not isinstance(value, str) or dt.datetime.fromisoformat(value).tzinfo is not None


def _validator():
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=FORMATS)


def test_the_example_event_is_valid():
    event = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    parsed = Event.model_validate(event)
    assert parsed.ts.tzinfo is not None  # the ingestion door refuses naive timestamps
    assert list(_validator().iter_errors(event)) == []
    # a naive ts passes the model but not the ingestion door (hyperrec.data.eventlog): the
    # published contract refuses it too (RFC 3339 date-time)
    assert list(_validator().iter_errors({**event, "ts": "2025-01-15T09:30:12"}))


def _example():
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


def _without(event, field):
    event = copy.deepcopy(event)
    del event[field]
    return event


# (what, event, valid): the schema and the model must agree on each
CASES = [
    ("the example", _example(), True),
    ("a view needs no dwell", {**_without(_example(), "dwell_s"), "event_type": "view"}, True),
    ("a rating with its value", {**_without(_example(), "dwell_s"), "event_type": "rating", "rating": 4.5}, True),
    ("a click without dwell", _without(_example(), "dwell_s"), False),
    ("a click with a null dwell", {**_example(), "dwell_s": None}, False),
    ("a rating without its value", {**_example(), "event_type": "rating"}, False),
    ("a rating out of range", {**_example(), "event_type": "rating", "rating": 7}, False),
    ("a negative dwell", {**_example(), "dwell_s": -1}, False),
    ("an unknown event type", {**_example(), "event_type": "like"}, False),
    ("an unknown field", {**_example(), "price": 3}, False),
    ("no event id", _without(_example(), "event_id"), False),
    ("an empty user id", {**_example(), "user_id": ""}, False),
    ("a ts that is no time", {**_example(), "ts": "yesterday"}, False),
]


@pytest.mark.parametrize("what, event, valid", CASES, ids=[c[0] for c in CASES])
def test_the_schema_and_the_model_agree(what, event, valid):
    try:
        Event.model_validate(event)
        model_valid = True
    except ValidationError:
        model_valid = False
    schema_errors = [e.message for e in _validator().iter_errors(event)]
    assert model_valid is valid, what
    assert (not schema_errors) is valid, (what, schema_errors)
