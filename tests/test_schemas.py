import datetime as dt

import pandas as pd
import pytest
from pydantic import ValidationError

from hyperrec.data.schemas import Event, Item, SchemaError, User, check_frame, validate_frame

TS = "2026-01-01T00:00:00Z"


def good_events(n=3) -> pd.DataFrame:
    return pd.DataFrame({
        "event_id": [f"e{i}" for i in range(n)], "user_id": "u1", "item_id": "i1",
        "event_type": "view", "ts": TS,
    })


def test_single_record_checks_type_range_and_conditional_fields():
    ok = Event(event_id="e", user_id="u", item_id="i", event_type="click", ts=TS, dwell_s=3.5)
    assert ok.dwell_s == 3.5 and ok.ts.tzinfo is not None
    with pytest.raises(ValidationError, match="dwell_s is required when event_type=click"):
        Event(event_id="e", user_id="u", item_id="i", event_type="click", ts=TS)
    with pytest.raises(ValidationError, match="event_type"):
        Event(event_id="e", user_id="u", item_id="i", event_type="hover", ts=TS)
    with pytest.raises(ValidationError, match="rating"):
        Event(event_id="e", user_id="u", item_id="i", event_type="rating", ts=TS, rating=9)
    with pytest.raises(ValidationError, match="Extra inputs"):
        Event(event_id="e", user_id="u", item_id="i", event_type="view", ts=TS, color="red")


def test_valid_frame_is_coerced_to_schema_types_with_optional_columns_added():
    typed = validate_frame(good_events(), Event)
    assert str(typed["ts"].dtype) == "datetime64[ns, UTC]"
    assert {"dwell_s", "rating", "session_id", "device"} <= set(typed.columns)
    assert typed["dwell_s"].isna().all() and len(typed) == 3


def test_every_bad_row_and_field_is_named_and_none_dropped():
    df = good_events(6)
    df.loc[1, "event_type"] = "hover"
    df.loc[2, "ts"] = "not a time"
    df.loc[3, "user_id"] = None
    df.loc[4, "event_type"] = "click"  # click without dwell
    df["rating"] = [None, None, None, None, None, 11.0]
    typed, errors = check_frame(df, Event)
    assert len(typed) == 6  # the typed frame keeps every row; callers decide what to do
    found = {(e.row, e.field) for e in errors}
    assert found == {(1, "event_type"), (2, "ts"), (3, "user_id"), (4, "dwell_s"), (5, "rating")}
    with pytest.raises(SchemaError) as info:
        validate_frame(df, Event, "events")
    msg = str(info.value)
    assert "events: 5 error(s) in 5 of 6 rows" in msg
    assert "row 1, field 'event_type': 'hover' not one of" in msg
    assert "row 2, field 'ts': not a valid datetime: 'not a time'" in msg


def test_missing_and_unknown_columns_are_reported_as_column_errors():
    df = good_events().drop(columns=["item_id"]).assign(colour="red")
    _, errors = check_frame(df, Event)
    assert {(e.row, e.field, e.message) for e in errors} == {
        (None, "item_id", "missing column"), (None, "colour", "unknown column")}


def test_user_and_item_defaults_and_bounds():
    users = pd.DataFrame({"user_id": ["u1"], "signup_ts": [TS], "consent_personalization": [True],
                          "consent_analytics": [False], "consent_ts": [TS]})
    typed = validate_frame(users, User)
    assert typed.loc[0, "age_band"] == "unknown" and typed.loc[0, "region"] == "unknown"
    items = pd.DataFrame({"item_id": ["i1"], "title": ["t"], "category": ["c"], "price": [-1.0],
                          "created_ts": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]})
    _, errors = check_frame(items, Item)
    assert [(e.row, e.field) for e in errors] == [(0, "price")]
