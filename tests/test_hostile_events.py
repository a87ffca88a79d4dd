"""Hostile and broken events: none may stop the stream. An event dated before 1970 is refused
at the door; a row the log holds but the stream cannot read or fold (stored by an older
version, or broken some way no check foresaw) is moved to the dead letters, and the
processor goes on, on this run and on every restart."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from hyperrec.data.eventlog import EventLog
from hyperrec.features.stream import StreamProcessor, history
from hyperrec.features.windows import StreamFolds

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def event(i: str, ts: str, user: str = "u1", item: str = "i1", kind: str = "view") -> dict:
    return {"event_id": i, "user_id": user, "item_id": item, "event_type": kind, "ts": ts}


class _Store:
    """Records pushes; the online store is not what these tests are about."""

    def __init__(self):
        self.pushed: list[tuple[str, pd.DataFrame]] = []

    def push(self, name, frame, to=None):
        self.pushed.append((name, frame))


def test_an_event_dated_year_one_is_refused_at_the_door(tmp_path):
    log = EventLog(tmp_path / "events.db")
    result = log.append([event("old", "0001-01-01T00:00:00+00:00"), event("ok", "2026-03-01T11:00:00+00:00")],
                        now=NOW)
    assert result.stored == 1 and result.dead_lettered == 1 and "before 1970-01-01" in result.errors[0]


def _log_with_a_year_one_row(tmp_path) -> EventLog:
    """A log holding what the door once let through: a year-1 row between two good ones."""
    log = EventLog(tmp_path / "events.db")
    log.append([event("a", "2026-03-01T11:00:00+00:00")], now=NOW)
    db = sqlite3.connect(tmp_path / "events.db")
    with db:
        db.execute("INSERT INTO events (event_id, body, received_at) VALUES (?, ?, ?)",
                   ("old", '{"event_id": "old", "user_id": "u1", "item_id": "i1", "event_type": "view", '
                           '"ts": "0001-01-01T00:00:00Z"}', 0.0))
    db.close()
    log.append([event("b", "2026-03-01T11:01:00+00:00", kind="click") | {"dwell_s": 3.0}], now=NOW)
    return log


def test_a_stored_unreadable_row_is_moved_to_the_dead_letters_and_the_stream_goes_on(tmp_path):
    log = _log_with_a_year_one_row(tmp_path)
    store = _Store()
    processor = StreamProcessor(store, log)
    assert processor.run_once() == 2  # both good events folded and pushed
    assert log.committed("online-features") == 3
    dead = log.dead_letters()
    assert len(dead) == 1 and b'"old"' in dead[0][0] and "ts" in dead[0][1]
    assert log.counts()["events"] == 2  # moved, not copied: no reader meets it again
    # a restart folds the history without the row, and the log reads clean
    restarted = StreamProcessor(_Store(), log)
    restarted.warm_start(history(log, None))
    assert restarted.run_once() == 0 and len(log.dead_letters()) == 1


def test_a_row_no_check_foresaw_is_dead_lettered_and_the_rest_folded(tmp_path, monkeypatch):
    log = EventLog(tmp_path / "events.db")
    log.append([event("a", "2026-03-01T11:00:00+00:00", item="good"),
                event("b", "2026-03-01T11:00:01+00:00", item="poison"),
                event("c", "2026-03-01T11:00:02+00:00", item="good")], now=NOW)
    real = StreamFolds.fold_event

    def fold_event(self, rows, user, item, kind, t, d, from_list):
        if item == "poison":
            raise RuntimeError("cannot fold this one")
        return real(self, rows, user, item, kind, t, d, from_list)

    monkeypatch.setattr(StreamFolds, "fold_event", fold_event)
    store = _Store()
    processor = StreamProcessor(store, log)
    assert processor.run_once() == 3
    assert processor.dead_lettered == 1 and log.committed("online-features") == 3
    assert "stream: cannot fold" in log.dead_letters()[0][1] and b"poison" in log.dead_letters()[0][0]
    items = pd.concat([f for name, f in store.pushed if name == "item_popularity_push"])
    assert set(items["item_id"]) == {"good"}


def test_an_online_store_outage_is_retried_not_dead_lettered(tmp_path):
    """Only rows the fold refuses are dead letters: a failing push leaves the offset where it
    was, so the same events are pushed once the store is back."""
    log = EventLog(tmp_path / "events.db")
    log.append([event("a", (NOW - timedelta(minutes=1)).isoformat())], now=NOW)

    class Down(_Store):
        def push(self, name, frame, to=None):
            raise ConnectionError("online store down")

    processor = StreamProcessor(Down(), log)
    with pytest.raises(ConnectionError):
        processor.run_once()
    assert log.committed("online-features") == 0 and log.dead_letters() == []
    processor.store = _Store()
    assert processor.run_once() == 1 and log.committed("online-features") == 1


def _nested(levels: int):
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def test_an_event_nested_past_the_recursion_limit_is_dead_lettered_alone(tmp_path):
    log = EventLog(tmp_path / "events.db")
    deep = {**event("deep", "2026-03-01T11:00:00+00:00"), "item_id": _nested(5000)}
    text = json.dumps(event("deep2", "2026-03-01T11:00:00+00:00"))[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
    result = log.append([deep, text, event("ok", "2026-03-01T11:00:00+00:00")], now=NOW)
    assert (result.stored, result.dead_lettered) == (1, 2)
    assert all(raw for raw, _ in log.dead_letters())


def test_a_deleted_log_is_noticed_not_written_into(tmp_path):
    from hyperrec.data.eventlog import LogUnavailable

    path = tmp_path / "events.db"
    log = EventLog(path)
    assert log.problem() is None
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    assert "deleted or replaced" in log.problem()
    with pytest.raises(LogUnavailable):
        log.append([event("e1", "2026-03-01T11:00:00+00:00")], now=NOW)
    EventLog(path)  # recreated by someone else: still not the file this log opened
    assert "deleted or replaced" in log.problem()


def test_the_processor_stops_on_a_deleted_log_and_refuses_a_new_one(tmp_path, settings):
    import threading

    from hyperrec.data.eventlog import LogUnavailable
    from hyperrec.features.stream import follow, tail

    path = tmp_path / "events.db"
    log = EventLog(path)
    follow(settings, log)
    follow(settings, EventLog(path))  # the same file again: fine
    processor = StreamProcessor(_Store(), log)
    path.unlink()
    with pytest.raises(LogUnavailable):
        tail(processor, threading.Event(), check_s=0.0)
    fresh = EventLog(path)
    with pytest.raises(LogUnavailable, match="--new-log"):
        follow(settings, fresh)
    follow(settings, fresh, new_log=True)  # accepted knowingly
    follow(settings, fresh)


def test_a_dead_letter_keeps_an_event_of_any_depth_whole():
    from hyperrec.data.eventlog import _dumps_without_recursion, _raw_bytes

    value = {"a": _nested(50), "b": [1, "x", None, {"c": 2.5, "d": False}]}
    assert _dumps_without_recursion(value) == json.dumps(value, separators=(",", ":"))
    deep = _raw_bytes({"a": _nested(3000)})
    assert deep == b'{"a":' + b"[" * 3001 + b"]" * 3001 + b"}"


def test_starting_the_log_over_on_purpose_is_accepted(settings):
    from hyperrec.features.stream import follow, start_log_over

    follow(settings, EventLog(settings.event_log))
    start_log_over(settings)
    assert not settings.event_log.exists()
    follow(settings, EventLog(settings.event_log))  # a demo or bench starting from an empty log
