"""The privacy state in PostgreSQL (Settings.database_url), as on a cluster: processes on other
nodes share it (a withdrawal or an erasure in one is seen by the others at once), a server
restart is reconnected, an outage fails closed, and an erasure through the CLI leaves the id
only in the erasure list. The contract both backends share is in tests/test_privacy.py."""

import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from test_privacy import _use_keys, fresh_database, postgres_url  # noqa: F401  (a fixture)

from hyperrec.config import export_env
from hyperrec.data.eventlog import EventLog, LogBusy
from hyperrec.online.serving_path import Request
from hyperrec.privacy import ConsentLedger, ErasureWatch, PrivacyUnavailable, erasure_audit
from hyperrec.services import postgres_server

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _click(user: str, event_id: str) -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": "i1", "event_type": "view",
            "ts": datetime.now(UTC).isoformat()}


def _in_another_process(settings, code: str) -> None:
    """Run `code` in a fresh interpreter that knows the database only from the environment."""
    script = "from hyperrec.config import load_settings\nsettings = load_settings()\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], env=export_env(settings), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_withdrawal_and_an_erasure_in_one_process_count_in_another_at_once(settings, postgres_url):  # noqa: F811
    shared = settings.model_copy(update={"database_url": fresh_database(postgres_url)})
    ledger = ConsentLedger.open(shared)
    watch = ErasureWatch(shared)
    ledger.record_consent("u1", "personalization", True, T0)
    assert ledger.consented(["u1", "u2"], "personalization") == [True, False] and watch.poll() == frozenset()
    _in_another_process(shared, """
        from hyperrec.privacy import ConsentLedger
        from hyperrec.privacy.db import open_privacy_db, privacy_location
        ConsentLedger.open(settings).record_consent("u1", "personalization", False)
        open_privacy_db(privacy_location(settings)).list_erased("u3", 0.0)  # what erase_user lists
    """)
    assert ledger.consented(["u1", "u2"], "personalization") == [False, False]  # no cache to wait for
    assert "u3" in watch and watch.poll() == {"u3"} and watch.poll() == frozenset()
    assert not (settings.home / "privacy.db").exists()  # nothing went to the embedded file
    ledger.close()
    watch.close()


def test_a_watch_misses_no_erasure_of_writers_racing_each_other(settings, postgres_url):  # noqa: F811
    """Two processes list 60 users each at the same time while this one polls: the list's
    order (a sequence) must be its commit order, or a poll could skip a user for good."""
    shared = settings.model_copy(update={"database_url": fresh_database(postgres_url)})
    watch = ErasureWatch(shared)
    code = """
        import sys
        from hyperrec.privacy.db import open_privacy_db, privacy_location
        db = open_privacy_db(privacy_location(settings))
        for i in range(60):
            db.list_erased(f"{sys.argv[1]}-{i}", 0.0)
    """
    script = "from hyperrec.config import load_settings\nsettings = load_settings()\n" + textwrap.dedent(code)
    writers = [subprocess.Popen([sys.executable, "-c", script, name], env=export_env(shared)) for name in ("a", "b")]
    seen: set[str] = set()
    while any(w.poll() is None for w in writers):
        seen |= watch.poll()
    seen |= watch.poll()
    assert [w.returncode for w in writers] == [0, 0]
    assert seen == {f"{name}-{i}" for name in ("a", "b") for i in range(60)}
    watch.close()


def test_a_restarted_database_is_reconnected(settings, postgres_url):  # noqa: F811
    """Every connection of the pool dies (as in a server restart): the next lookups answer."""
    shared = settings.model_copy(update={"database_url": fresh_database(postgres_url)})
    ledger, watch = ConsentLedger.open(shared), ErasureWatch(shared)
    ledger.record_consent("u1", "personalization", True, T0)
    assert ledger.consented(["u1"], "personalization") == [True] and watch.poll() == frozenset()
    with psycopg.connect(shared.database_url, autocommit=True) as admin:
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
        assert killed >= 1
        admin.execute("INSERT INTO privacy.erased_users (user_id, first_erased_at) VALUES ('u2', 0)")
    assert ledger.consented(["u1"], "personalization") == [True]
    assert watch.poll() == {"u2"}
    ledger.close()
    watch.close()


def test_an_unreachable_database_fails_closed(settings, tmp_path):
    """PostgreSQL stops: a consent lookup raises (the server then personalizes nobody), the
    event door refuses with 503 (nothing stored), a monitoring writer's watch counts everyone
    as erased; none of them answers from what it read before."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving.app import _install_ingestion
    from serving.recommender import RecommenderModel

    with postgres_server() as url:
        down = settings.model_copy(update={"database_url": url})
        ledger = ConsentLedger.open(down)
        ledger.record_consent("u1", "personalization", True, T0)
        door_watch, monitoring_watch = ErasureWatch(down), ErasureWatch(down, unavailable="suppress")
        door = EventLog(tmp_path / "events.db", suppress=door_watch)
        assert door.append([_click("u1", "before")]).stored == 1
        assert ledger.consented(["u1"], "personalization") == [True] and "u1" not in monitoring_watch
    started = time.monotonic()
    with pytest.raises(PrivacyUnavailable):
        ledger.consented(["u1"], "personalization")
    assert time.monotonic() - started < 10
    started = time.monotonic()
    with pytest.raises(PrivacyUnavailable):  # at once while it is known to be down
        ledger.has_consent("u1", "personalization")
    assert time.monotonic() - started < 0.5
    model = SimpleNamespace(consent=ledger, as_of=None)
    served = RecommenderModel._with_consent(model, [Request(user_id="u1"), Request(recent_items=("i1",))])
    assert [r.personalization for r in served] == [False, True]  # the anonymous request needs no consent
    with pytest.raises(PrivacyUnavailable):
        door_watch.poll()
    with pytest.raises(LogBusy):
        door.append([_click("u1", "during")])
    assert "u1" in monitoring_watch and "anyone" in monitoring_watch
    app = FastAPI()
    _install_ingestion(app, door)
    answer = TestClient(app).post("/v1/events", json=[_click("u1", "during-http")])
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", answer.text
    assert set(door.read(0, 10)[1]["event_id"]) == {"before"}
    for closable in (ledger, door_watch, monitoring_watch):
        closable.close()
    door.db.close()


# ---------------------------------------------------------------- erasure through the CLI


@pytest.fixture(scope="module")
def workspace(make_workspace, postgres_url):  # noqa: F811
    """A small world built as on a cluster: HYPERREC_DATABASE_URL set, so the consent ledger
    and Feast's registry and offline tables are in PostgreSQL; its events in the event log."""
    mp = pytest.MonkeyPatch()
    mp.delenv("HYPERREC_ONLINE_STORE", raising=False)
    mp.setenv("HYPERREC_DATABASE_URL", fresh_database(postgres_url))
    _use_keys(mp)
    try:
        with make_workspace("privacy-pg", users=30, items=20, days=4, events=800, seed=3) as (settings, world):
            assert settings.database_url and not list(settings.home.glob("privacy.db*"))
            log = EventLog(settings.event_log, suppress=ErasureWatch(settings))
            assert log.append(json.loads(world.events.to_json(orient="records", date_format="iso")),
                              now=world.events["ts"].max().to_pydatetime() + timedelta(minutes=1)).stored
            yield settings, world, log
            log.db.close()
    finally:
        mp.undo()


@pytest.mark.slow
def test_an_erasure_by_the_cli_reaches_a_running_process_and_leaves_the_id_only_in_the_list(workspace):
    shared, world, log = workspace
    consenting = set(world.users.loc[world.users["consent_personalization"], "user_id"])
    gone = next(u for u in world.events["user_id"].value_counts().index if u in consenting)
    watch, ledger = ErasureWatch(shared), ConsentLedger.open(shared)
    watch.poll()
    assert ledger.has_consent(gone, "personalization") and gone not in watch
    erased = subprocess.run([sys.executable, "-m", "hyperrec.cli", "privacy", "erase", gone, "--reason", "ticket PG-1",
                             "--home", str(shared.home)], env=export_env(shared), capture_output=True, text=True,
                            timeout=600)
    assert erased.returncode == 0, erased.stderr[-3000:]
    report = json.loads(erased.stdout)
    assert report["status"] == "done" and report["removed"]["consent"] == 2  # the CRM's two purposes
    assert report["removed"]["event_log.events"] > 0
    # the running processes: the watch and the door heard of it, the ledger forgot the consent
    assert watch.poll() == {gone} and not ledger.has_consent(gone, "personalization")
    assert log.append([_click(gone, "after")]).suppressed == 1
    assert erasure_audit(shared, gone)[-1]["removed"] == report["removed"]
    # no file under home names the user (nor does any privacy.db exist: the state is in PostgreSQL)
    assert not list(shared.home.glob("privacy.db*"))
    holding = [str(p.relative_to(shared.home)) for p in shared.home.rglob("*")
               if p.is_file() and gone.encode() in p.read_bytes()]
    assert holding == []
    with psycopg.connect(shared.database_url, autocommit=True) as db:
        tables = db.execute("SELECT schemaname, tablename FROM pg_tables "
                            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')").fetchall()
        rows = {f"{schema}.{t}": db.execute(f'SELECT count(*) FROM "{schema}"."{t}" AS r WHERE r::text LIKE %s',
                                            (f"%{gone}%",)).fetchone()[0] for schema, t in tables}
        assert {"privacy.consent", "privacy.erasure_audit"} <= set(rows) and any(t.startswith("offline.") for t in rows)
        assert {t: n for t, n in rows.items() if n} == {"privacy.erased_users": 1}, rows
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            db.execute("DELETE FROM privacy.erasure_audit")
        # the erasure's VACUUM dropped the deleted rows from the table and index files too
        # (PostgreSQL's WAL keeps them until its segments are recycled: docs/privacy.md)
        db.execute("CHECKPOINT")
        data = Path(db.execute("SHOW data_directory").fetchone()[0])
        files = [db.execute("SELECT pg_relation_filepath(%s)", (name,)).fetchone()[0]
                 for name in ("privacy.consent", "privacy.consent_latest", "privacy.consent_pkey")]
        assert [f for f in files if gone.encode() in (data / f).read_bytes()] == []
    ledger.close()
    watch.close()


def test_concurrent_lookups_from_threads_share_the_pool(settings, postgres_url):  # noqa: F811
    """The server asks from several threads at once: each gets its own answer."""
    shared = settings.model_copy(update={"database_url": fresh_database(postgres_url)})
    ledger = ConsentLedger.open(shared)
    for i in range(40):
        ledger.record_consent(f"u{i}", "personalization", i % 2 == 0, T0)
    failures: list = []

    def ask(offset: int) -> None:
        for _ in range(30):
            users = [f"u{(offset + j) % 40}" for j in range(16)]
            if ledger.consented(users, "personalization") != [int(u[1:]) % 2 == 0 for u in users]:
                failures.append(users)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    ledger.close()
