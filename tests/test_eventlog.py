"""The embedded event log: validation at the door, dead letters, idempotency, offsets."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from hyperrec.data.eventlog import EventLog

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(i, **over):
    body = {"event_id": f"e{i}", "user_id": "u1", "item_id": "i1", "event_type": "view",
            "ts": (NOW - timedelta(minutes=1)).isoformat()}
    return body | over


@pytest.fixture
def log(tmp_path):
    return EventLog(tmp_path / "events.db")


def test_counts_reconcile_and_bad_events_are_kept_with_their_error(log):
    batch = [event(1), event(2), b"{not json", event(3, event_type="hover"),
             event(4, ts=(NOW + timedelta(hours=2)).isoformat()), event(5, event_type="click"),
             event(1), json.dumps(event(6)).encode()]
    res = log.append(batch, now=NOW)
    assert (res.received, res.stored, res.duplicates, res.dead_lettered) == (8, 3, 1, 4)
    assert res.received == res.stored + res.duplicates + res.dead_lettered
    dead = log.dead_letters()
    assert dead[0][0] == b"{not json" and "not valid JSON" in dead[0][1]
    assert "event_type" in dead[1][1] and json.loads(dead[1][0])["event_type"] == "hover"
    assert "in the future" in dead[2][1]
    assert "dwell_s is required when event_type=click" in dead[3][1]
    assert log.counts() == {"events": 3, "dead_letters": 4}


def test_unknown_entities_are_rejected_by_the_callers_check(log):
    known_items = {"i1"}
    res = log.append([event(1), event(2, item_id="nope")], now=NOW,
                     check=lambda e: None if e.item_id in known_items else f"item_id: unknown item {e.item_id!r}")
    assert (res.stored, res.dead_lettered) == (1, 1)
    assert res.errors == ["item_id: unknown item 'nope'"]


def test_offsets_and_durability_across_reopen(tmp_path):
    path = tmp_path / "events.db"
    log = EventLog(path)
    log.append([event(i) for i in range(5)], now=NOW)
    last, frame = log.read(0, limit=3)
    assert last == 3 and frame["event_id"].tolist() == ["e0", "e1", "e2"]
    log.commit("c", last)
    reopened = EventLog(path)  # a new process sees what was acknowledged
    assert reopened.committed("c") == 3 and reopened.committed("other") == 0
    last, frame = reopened.read(reopened.committed("c"))
    assert last == 5 and frame["event_id"].tolist() == ["e3", "e4"]
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"


WRITER = """
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from hyperrec.data.eventlog import EventLog

log, at = EventLog(Path(sys.argv[1])), datetime.now(UTC) - timedelta(minutes=1)
for b in range(10_000):
    batch = [{"event_id": f"k{b}-{i}", "user_id": f"u{i % 7}", "item_id": "i1", "event_type": "view",
              "ts": at.isoformat()} for i in range(50)]
    log.append(batch)
    print(b, flush=True)  # acknowledged: append returned after the commit
"""


def test_no_acknowledged_event_is_lost_when_the_writer_is_killed(tmp_path):
    """SIGKILL a process appending to the log, mid-stream: every batch it acknowledged is
    there after reopening, and a batch in flight is there whole or not at all."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "events.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acked = -1
    for line in writer.stdout:
        acked = int(line)
        if acked >= 40:
            break
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    ids = {row[0] for row in EventLog(path).db.execute("SELECT event_id FROM events")}
    assert all(f"k{b}-{i}" in ids for b in range(acked + 1) for i in range(50))
    assert len(ids) % 50 == 0 and len(ids) >= 50 * (acked + 1)  # no half batch
