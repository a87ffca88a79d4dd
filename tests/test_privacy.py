"""Privacy: keyed pseudonyms, the consent ledger (on SQLite and on PostgreSQL: one contract),
and erasure of one user from every real store (event log, Feast offline parquet, Feast online
SQLite and Redis, the recs cache)."""

import json
import logging
import pickle
import secrets
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from hyperrec.data.eventlog import EventLog
from hyperrec.data.impressions import ImpressionLog
from hyperrec.data.schemas import User
from hyperrec.features.store import materialize, online_user_features, open_store
from hyperrec.features.views import MISSING, USER_VIEWS
from hyperrec.online.recs_cache import recs_cache_key
from hyperrec.privacy import (
    ConsentLedger,
    ErasureWatch,
    PIIKeyError,
    Pseudonymizer,
    _entity_key,
    drop_erased,
    erase_user,
    erased_users,
    erasure_audit,
    scrub_user_frame,
    scrub_user_record,
)
from hyperrec.services import create_database, postgres_server, redis_server

KEY_A, KEY_B = secrets.token_hex(32), secrets.token_hex(32)
RAW = {"user_id": "u42", "email": "Ana.Tanaka1@Example.com", "name": "Ana  Tanaka", "phone": "+1 (555) 010-4477",
       "age_band": "25-34", "region": "north", "signup_ts": "2025-01-02T00:00:00Z",
       "consent_personalization": True, "consent_analytics": False, "consent_ts": "2025-01-02T00:05:00Z"}
PII = ("Ana.Tanaka1@Example.com", "ana.tanaka1@example.com", "Ana  Tanaka", "Tanaka", "tanaka", "(555) 010-4477",
       "15550104477")  # long enough never to occur in a hex token by chance
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _use_keys(mp, current=KEY_A, current_id=None, previous=None, previous_id=None):
    for suffix in ("", "_FILE", "_ID"):
        mp.delenv("HYPERREC_PII_KEY" + suffix, raising=False)
        mp.delenv("HYPERREC_PII_KEY_PREVIOUS" + suffix, raising=False)
    for var, value in (("HYPERREC_PII_KEY", current), ("HYPERREC_PII_KEY_ID", current_id),
                       ("HYPERREC_PII_KEY_PREVIOUS", previous), ("HYPERREC_PII_KEY_PREVIOUS_ID", previous_id)):
        if value is not None:
            mp.setenv(var, value)


@pytest.fixture
def pii_key(monkeypatch):
    _use_keys(monkeypatch)


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL for the module; tests take a fresh database each (`privacy_where`)."""
    with postgres_server() as url:
        yield url


def fresh_database(url: str) -> str:
    return create_database(url, f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def privacy_where(request, tmp_path):
    """Where a test's privacy tables live: a new privacy.db, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "privacy.db"
    return fresh_database(request.getfixturevalue("postgres_url"))


# ---------------------------------------------------------------- pseudonyms


def test_tokens_are_deterministic_per_key_and_differ_across_keys(monkeypatch):
    _use_keys(monkeypatch, KEY_A)
    a = Pseudonymizer()
    token = a.token("ana@example.com", "email")
    assert token == Pseudonymizer().token("ana@example.com", "email")  # same key: same token, any process
    assert token == a.token("  ANA@Example.COM ", "email")  # normalized before hashing
    assert token.startswith("k1:") and len(token) == 3 + 64
    assert a.token("ana@example.com", "name") != token  # fields are separate domains
    _use_keys(monkeypatch, KEY_B, current_id="k2")
    b = Pseudonymizer()
    assert b.token("ana@example.com", "email").split(":")[1] != token.split(":")[1]
    assert not b.matches(token, "ana@example.com", "email")  # k1 unknown to this one


def test_previous_key_still_matches_during_rotation(monkeypatch):
    _use_keys(monkeypatch, KEY_A)
    old = Pseudonymizer().token("+1 555 0100", "phone")
    _use_keys(monkeypatch, KEY_B, "k2", previous=KEY_A, previous_id="k1")
    pz = Pseudonymizer()
    assert pz.token("+1 555 0100", "phone").startswith("k2:")  # new tokens under the new key
    assert pz.matches(old, "+1-555-0100", "phone") and not pz.is_current(old)
    assert old in pz.candidates("+1 555 0100", "phone")
    assert not pz.matches(old, "+1 555 0101", "phone")
    _use_keys(monkeypatch, KEY_B, "k2")  # rotation finished: the old key is gone
    assert not Pseudonymizer().matches(old, "+1 555 0100", "phone")


def test_missing_or_bad_key_fails_clearly(monkeypatch, tmp_path):
    _use_keys(monkeypatch, None)
    with pytest.raises(PIIKeyError, match="HYPERREC_PII_KEY.*HYPERREC_PII_KEY_FILE"):
        Pseudonymizer()
    with pytest.raises(PIIKeyError):
        scrub_user_record(RAW)
    _use_keys(monkeypatch, "short")
    with pytest.raises(PIIKeyError, match="at least 32") as err:
        Pseudonymizer()
    assert "short" not in str(err.value)
    _use_keys(monkeypatch, KEY_A, previous=KEY_B)
    with pytest.raises(PIIKeyError, match="HYPERREC_PII_KEY_PREVIOUS_ID is required"):
        Pseudonymizer()
    _use_keys(monkeypatch, None)
    secret_file = tmp_path / "pii-key"
    secret_file.write_text(KEY_A + "\n")  # a mounted secret, trailing newline and all
    monkeypatch.setenv("HYPERREC_PII_KEY_FILE", str(secret_file))
    from_file = Pseudonymizer().token("x")
    _use_keys(monkeypatch, KEY_A)
    assert Pseudonymizer().token("x") == from_file
    monkeypatch.setenv("HYPERREC_PII_KEY_FILE", str(secret_file))
    with pytest.raises(PIIKeyError, match="not both"):
        Pseudonymizer()


def test_scrubbed_record_repr_and_logs_hold_no_raw_pii(pii_key, caplog):
    caplog.set_level(logging.DEBUG)
    pz = Pseudonymizer()
    scrubbed = scrub_user_record(RAW, pz)
    logging.getLogger("hyperrec.privacy").info("scrubbed %s with %r", scrubbed, pz)
    assert RAW["email"] == "Ana.Tanaka1@Example.com"  # the input is not modified
    for field in ("email", "name", "phone"):
        assert pz.matches(scrubbed[field], RAW[field], field)
    assert {k: v for k, v in scrubbed.items() if k not in ("email", "name", "phone")} == \
        {k: v for k, v in RAW.items() if k not in ("email", "name", "phone")}
    assert scrub_user_record(scrubbed, pz) == scrubbed  # idempotent: tokens stay tokens
    seen = " ".join([json.dumps(scrubbed), str(scrubbed), repr(pz), str(vars(pz) if hasattr(pz, "__dict__") else ""),
                     caplog.text])
    for raw in PII:
        assert raw not in seen
    assert KEY_A not in repr(pz) + caplog.text
    with pytest.raises(TypeError):
        pickle.dumps(pz)  # cannot travel as a pipeline parameter
    User.model_validate({k: v for k, v in scrubbed.items() if k != "phone"})  # still a valid profile
    frame = scrub_user_frame(pd.DataFrame([RAW, {**RAW, "user_id": "u43", "email": None, "phone": pd.NA}]), pz)
    assert frame.loc[0, ["email", "name", "phone"]].tolist() == [scrubbed["email"], scrubbed["name"], scrubbed["phone"]]
    assert frame.loc[1, "email"] is None and frame.loc[1, "name"] == scrubbed["name"]


# ---------------------------------------------------------------- consent


def test_consent_latest_by_time_wins(privacy_where):
    ledger = ConsentLedger(privacy_where)
    # recorded out of order: the later *consent time* wins, not the later insert
    ledger.record_consent("u1", "personalization", False, T0 + timedelta(days=2), source="app")
    ledger.record_consent("u1", "personalization", True, T0, source="crm")
    assert ledger.has_consent("u1", "personalization", T0 + timedelta(days=1))
    assert not ledger.has_consent("u1", "personalization", T0 + timedelta(days=2))  # at: inclusive
    assert not ledger.has_consent("u1", "personalization")  # now
    assert not ledger.has_consent("u1", "personalization", T0 - timedelta(seconds=1))  # before any record
    ledger.record_consent("u1", "personalization", True, T0 + timedelta(days=2))  # same instant: last recorded
    assert ledger.has_consent("u1", "personalization")
    assert not ledger.has_consent("u1", "analytics")  # purposes are separate
    assert not ledger.has_consent("stranger", "personalization")  # no record, no consent
    assert ConsentLedger(privacy_where, {"analytics": True}).has_consent("stranger", "analytics")
    with pytest.raises(ValueError, match="unknown purpose"):
        ledger.has_consent("u1", "marketing")
    with pytest.raises(ValueError, match="timezone"):
        ledger.record_consent("u1", "analytics", True, datetime(2026, 1, 1))


def test_users_without_and_profiles(privacy_where):
    ledger = ConsentLedger(privacy_where)
    ledger.record_profile({**RAW, "consent_ts": T0})
    ledger.record_consent("u7", "personalization", True, T0)
    ledger.record_consent("u7", "personalization", False, T0 + timedelta(hours=1))
    ledger.record_consent("u8", "personalization", True, T0)
    assert ledger.users_without("personalization") == {"u7"}
    assert ledger.users_without("personalization", at=T0 + timedelta(minutes=1)) == set()
    assert ledger.users_without("analytics") == {"u42"}
    assert ledger.users_without("personalization", among=["u7", "u8", "u42", "new"]) == {"u7", "new"}
    crm = pd.DataFrame({"user_id": ["c1", "c2", "u7"], "consent_personalization": [True, False, True],
                        "consent_analytics": [False, True, True], "consent_ts": [T0 + timedelta(hours=2)] * 3})
    assert ledger.record_profiles(crm) == 6
    assert ledger.consented(["c2", "c1", "u7", "u8", "c1", "new"], "personalization") == [
        False, True, True, True, True, False]  # in the order asked, repeats included
    assert ledger.consented([f"x{i}" for i in range(1200)] + ["c2"], "analytics")[-1]  # past one chunk
    assert ledger.forget("u7") == 4 and ledger.users_without("personalization") == {"c2"}
    ledger.close()


def test_events_filtered_by_consent_at_event_time(privacy_where):
    ledger = ConsentLedger(privacy_where)
    ledger.record_consent("a", "personalization", True, T0)
    ledger.record_consent("a", "personalization", False, T0 + timedelta(hours=2))
    ledger.record_consent("b", "personalization", False, T0)
    ledger.record_consent("b", "personalization", True, T0 + timedelta(hours=1))
    ledger.record_consent("b", "analytics", True, T0)
    hours = [0.5, 1.5, 2.0, 2.5, 0.5, 1.0, 3.0, -1.0, 1.0]
    users = ["a", "a", "a", "a", "b", "b", "b", "a", "nobody"]
    events = pd.DataFrame({"user_id": users, "ts": [T0 + timedelta(hours=h) for h in hours],
                           "item_id": [f"i{i}" for i in range(len(users))]}, index=range(100, 100 + len(users)))
    events = events.sample(frac=1, random_state=0)  # any order in, same order out
    kept = ledger.filter_events_by_consent(events, "personalization")
    want = {"i0", "i1", "i5", "i6"}  # a before withdrawal; b from its grant on (inclusive); none before/unknown
    assert set(kept["item_id"]) == want
    assert list(kept.index) == [i for i in events.index if events.loc[i, "item_id"] in want]
    assert set(ledger.filter_events_by_consent(events, "analytics")["item_id"]) == {"i4", "i5", "i6"}
    assert ledger.filter_events_by_consent(events.iloc[:0], "personalization").empty


# ---------------------------------------------------------------- erasure against the real stores


@pytest.fixture(scope="module")
def workspace(make_workspace):
    """A small generated world in Feast (offline parquet, SQLite online) plus the same views
    materialized into our own redis-server, an event log with the world's events and some
    dead letters, and recommendation-cache keys."""
    mp = pytest.MonkeyPatch()
    mp.delenv("HYPERREC_ONLINE_STORE", raising=False)
    _use_keys(mp)
    try:
        with make_workspace("privacy", users=40, items=30, days=6, events=2_000, seed=5) as (settings, world), \
                redis_server() as url:
            on_redis = settings.model_copy(update={"online_store": "redis", "redis_url": url})
            end = pd.Timestamp(world.events["ts"].max()).to_pydatetime()
            start = pd.Timestamp(min(world.users["signup_ts"].min(), world.items["created_ts"].min())).to_pydatetime()
            materialize(on_redis, start, end)
            log = EventLog(settings.home / "events.db")
            records = json.loads(world.events.to_json(orient="records", date_format="iso"))
            assert log.append(records, now=end).stored == len(records)
            active = world.events["user_id"].value_counts().index.astype(str)
            gone, kept = active[0], active[1]
            log.append([{"event_id": "bad-1", "user_id": gone, "item_id": "", "event_type": "view", "ts": "x"},
                        f'{{"user_id": "{gone}", broken'.encode(),
                        {"event_id": "bad-2", "user_id": kept, "item_id": "i1", "event_type": "click", "ts": "x"},
                        {"event_id": "bad-3", "user_id": gone + "0", "item_id": "i1", "event_type": "nope"}], now=end)
            served = ImpressionLog(settings.impression_log)  # what the server showed them (monitoring)
            served.write([(f"r-{u}-{i}", end.timestamp() + i, u, "control", "personalized", 1, "{}",
                           '[["i1", "c", 0.5]]', None) for u in (gone, kept, gone + "0") for i in range(3)])
            served.close()
            yield settings, on_redis, world, url, gone, kept, end
    finally:
        mp.undo()


def _event_users(settings) -> pd.Series:
    db = sqlite3.connect(settings.home / "events.db")
    try:
        return pd.Series([json.loads(b)["user_id"] for (b,) in db.execute("SELECT body FROM events")])
    finally:
        db.close()


def _dead_letter_text(settings) -> str:
    db = sqlite3.connect(settings.home / "events.db")
    try:
        rows = db.execute("SELECT raw, error FROM dead_letters")
        return " | ".join(bytes(raw).decode() + " " + err for raw, err in rows)
    finally:
        db.close()


def _offline_rows(settings) -> dict[str, pd.Series]:
    return {p.stem: pq.read_table(p).to_pandas()["user_id"].astype(str)
            for p in sorted(settings.offline_dir.glob("*.parquet")) if "user_id" in pq.read_schema(p).names}


def _sqlite_rows(settings, user: str) -> dict[str, int]:
    store = open_store(settings)
    key = _entity_key(user, store.config.entity_key_serialization_version)
    db = sqlite3.connect(store.config.online_store.path)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: db.execute(f'SELECT COUNT(*) FROM "{t}" WHERE entity_key = ?', (key,)).fetchone()[0]
                for t in tables if t.startswith("hyperrec_")}
    finally:
        db.close()


def _online_is_default(settings, users, now) -> list[bool]:
    df = online_user_features(open_store(settings), list(users), now=now)
    return [all((list(df.loc[i, f]) == MISSING[k]) if k.endswith("_list") else df.loc[i, f] == MISSING[k]
                for v in USER_VIEWS for f, k in v.features.items()) for i in range(len(df))]


@pytest.mark.slow
def test_erased_user_is_gone_from_every_store_and_others_are_intact(workspace, caplog):
    settings, on_redis, world, url, gone, kept, end = workspace
    caplog.set_level(logging.DEBUG)
    host, port = url.split(":")
    cache = redis.Redis(host=host, port=int(port))
    cache_keys = [recs_cache_key(gone), recs_cache_key(gone, "home"), recs_cache_key(kept), recs_cache_key(gone + "0")]
    for k in cache_keys:
        cache.set(k, "[]")
    now = end + timedelta(minutes=5)
    ledger = ConsentLedger.open(settings)
    for user in (gone, kept):
        ledger.record_consent(user, "personalization", True, world.events["ts"].min())
    before = {"events": _event_users(settings).value_counts(), "offline": _offline_rows(settings),
              "sqlite": _sqlite_rows(settings, kept)}
    assert before["events"][gone] > 0 and all((rows == gone).any() for rows in before["offline"].values())
    assert sum(_sqlite_rows(settings, gone).values()) > 0 and not any(_online_is_default(settings, [gone, kept], now))
    assert gone in _dead_letter_text(settings)
    redis_key = _entity_key(gone, 3) + b"hyperrec"  # Feast's _redis_key: entity key bytes + project
    assert cache.exists(redis_key)

    first = erase_user(settings, gone, "ticket DSR-1")  # SQLite online store
    assert first.status == "done"
    assert first.removed["event_log.events"] == before["events"][gone]
    # the CRM's two purposes (recorded by the feature step) and the grant above
    assert first.removed["event_log.dead_letters"] == 2 and first.removed["consent"] == 3
    assert first.removed["offline.user_profile"] == 1 and sum(_sqlite_rows(settings, gone).values()) == 0
    # event log: rows and dead letters gone, the file itself no longer holds the id; others intact
    assert gone not in set(_event_users(settings))
    assert _event_users(settings).value_counts()[kept] == before["events"][kept]
    assert gone not in _dead_letter_text(settings).replace(gone + "0", "") and kept in _dead_letter_text(settings)
    for path in settings.home.glob("events.db*"):
        assert gone.encode() not in path.read_bytes().replace((gone + "0").encode(), b""), path.name
    # impression log: the user's served lists gone, the others kept, no bytes left behind
    assert first.removed["impressions"] == 3
    assert ImpressionLog(settings.impression_log).read()["user_id"].value_counts().to_dict() == {kept: 3, gone + "0": 3}
    for path in settings.home.glob("impressions.db*"):
        assert gone.encode() not in path.read_bytes().replace((gone + "0").encode(), b""), path.name
    # offline parquet: no row of the user, every other row kept
    for view, rows in _offline_rows(settings).items():
        assert not (rows == gone).any() and (rows == kept).sum() == (before["offline"][view] == kept).sum()
        assert len(rows) == len(before["offline"][view]) - (before["offline"][view] == gone).sum()
    # online SQLite: Feast reads defaults for the user, the same values for the other one
    assert _sqlite_rows(settings, kept) == before["sqlite"]
    assert _online_is_default(settings, [gone, kept], now) == [True, False]
    with open(open_store(settings).config.online_store.path, "rb") as db_file:
        assert gone.encode() not in db_file.read()  # secure_delete: not even in free pages

    second = erase_user(on_redis, gone, "ticket DSR-1")  # Redis online store + recs cache
    assert second.removed["online.redis"] == 1 and second.removed["recs_cache"] == 2
    assert second.removed["event_log.events"] == 0 and second.removed["offline.user_profile"] == 0
    assert not cache.exists(redis_key) and not cache.exists(cache_keys[1])
    # the user's cache hash holds no list, only the fence that stops a list computed before the
    # erasure from being stored after it (hyperrec.online.recs_cache), and it expires within a minute
    assert cache.hkeys(cache_keys[0]) == [b"_v"] and 0 < cache.ttl(cache_keys[0]) <= 60
    assert cache.exists(cache_keys[2]) and cache.exists(cache_keys[3])  # u..0 shares the prefix, not the user
    assert _online_is_default(on_redis, [gone, kept], now) == [True, False]

    third = erase_user(settings, gone, "ticket DSR-1 (repeat)")  # idempotent and audited
    assert third.status == "done" and not any(third.removed.values())
    audit = erasure_audit(settings)
    assert [a["reason"] for a in audit] == ["ticket DSR-1", "ticket DSR-1", "ticket DSR-1 (repeat)"]
    assert {a["user_token"] for a in audit} == {first.user_token} and erasure_audit(settings, gone) == audit
    assert all(a["status"] == "done" for a in audit) and audit[0]["removed"] == first.removed
    assert gone not in json.dumps(audit) and gone not in caplog.text  # tokens only
    with sqlite3.connect(settings.home / "privacy.db") as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM erasure_audit")
    # the next training set: erased users are dropped, consent forgotten
    assert erased_users(settings) == {gone}
    assert set(drop_erased(world.events, settings)["user_id"]) == set(world.events["user_id"]) - {gone}
    assert not ConsentLedger.open(settings).has_consent(gone, "personalization")
    assert ConsentLedger.open(settings).has_consent(kept, "personalization")
    with pytest.raises(ValueError, match="must not contain the user id"):
        erase_user(settings, kept, f"user {kept} asked")
    cache.close()


def test_one_erasure_at_a_time_among_the_processes_sharing_the_database(privacy_where):
    """Two erasures redacting one model version at once would each upload it with only
    their own user taken out: the last upload puts the other user back."""
    import threading
    import time

    from hyperrec.privacy.db import ErasureBusy, open_privacy_db

    running, waiting = open_privacy_db(privacy_where), open_privacy_db(privacy_where)
    entered = threading.Event()

    def second():
        with waiting.erasing(wait_s=10):
            entered.set()

    try:
        with running.erasing(wait_s=5):
            with pytest.raises(ErasureBusy, match="another erasure"), waiting.erasing(wait_s=0.3):
                pass
            thread = threading.Thread(target=second)
            thread.start()
            time.sleep(0.6)
            assert not entered.is_set()  # still waiting for the first
        thread.join(5)
        assert entered.is_set()  # and in once the first is done
    finally:
        running.close()
        waiting.close()


def test_an_erasure_that_cannot_get_the_lock_touches_nothing(settings, monkeypatch):
    from hyperrec.privacy.db import ErasureBusy, open_privacy_db, privacy_location

    _use_keys(monkeypatch)
    running = open_privacy_db(privacy_location(settings))
    try:
        with running.erasing(wait_s=5), pytest.raises(ErasureBusy):
            erase_user(settings, "t-z", "ticket T-9", wait_s=0.3)
    finally:
        running.close()
    assert erasure_audit(settings) == [] and "t-z" not in erased_users(settings)


@pytest.mark.slow
def test_training_learns_only_from_consented_events_of_users_not_erased(workspace):
    """What build_training_set feeds on: a withdrawal drops the events after it, a refusal
    drops them all, an erasure drops the user entirely."""
    from hyperrec.training.dataset import usable_events

    settings = workspace[0]
    ledger = ConsentLedger.open(settings)
    for user in ("t-a", "t-c"):
        ledger.record_consent(user, "personalization", True, T0)
    ledger.record_consent("t-a", "personalization", False, T0 + timedelta(days=1))
    ledger.record_consent("t-b", "personalization", False, T0)
    ledger.close()
    erase_user(settings, "t-c", "ticket T-1")
    hour, days = T0 + timedelta(hours=1), T0 + timedelta(days=2)
    events = pd.DataFrame({"user_id": ["t-a", "t-a", "t-b", "t-c"], "item_id": "i1",
                           "ts": pd.to_datetime([hour, days, hour, hour], utc=True)})
    kept = usable_events(settings, events)
    assert kept["user_id"].tolist() == ["t-a"] and kept["ts"].tolist() == [pd.Timestamp(hour)]


def test_generated_crm_profiles_are_stored_pseudonymized_with_the_workspace_key(settings, monkeypatch):
    """Embedded mode with no key in the environment: the workspace's own key file (owner-only)
    is created once and used; the stored profiles carry tokens, never the raw values."""
    from rich.console import Console

    from hyperrec.data.generate import WorldConfig, generate_world
    from hyperrec.privacy import TOKEN
    from hyperrec.steps import generate_step

    for suffix in ("", "_FILE", "_ID"):
        monkeypatch.delenv("HYPERREC_PII_KEY" + suffix, raising=False)
    sizes = {"users": 40, "items": 30, "days": 6, "events": 2_000, "seed": 5}
    world_dir = settings.data_dir / "world"
    generate_step(settings, world_dir, Console(quiet=True), **sizes)
    raw = generate_world(WorldConfig(**sizes)).users
    stored = pd.read_parquet(world_dir / "users.parquet")
    assert all(TOKEN.fullmatch(v) for col in ("email", "name") for v in stored[col])
    data = (world_dir / "users.parquet").read_bytes()
    assert not any(email.encode() in data for email in raw["email"])
    key = settings.home / "secrets" / "pii.key"
    assert key.stat().st_mode & 0o777 == 0o600
    generate_step(settings, world_dir, Console(quiet=True), **sizes)  # the same key: the same tokens
    assert pd.read_parquet(world_dir / "users.parquet")["email"].tolist() == stored["email"].tolist()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_batch_at_the_event_door_reads_the_erasure_list_once(backend, settings, request):
    """Each event of a batch is checked against the list as the batch began (one read), not
    one database round trip per event; an erasure still counts from the next batch."""
    if backend == "postgresql":
        settings = settings.model_copy(update={"database_url": fresh_database(request.getfixturevalue("postgres_url"))})
    watch = ErasureWatch(settings)
    reads = []
    query = watch._db.query
    watch._db.query = lambda *a, **k: reads.append(1) or query(*a, **k)
    log = EventLog(settings.home / "events.db", suppress=watch)
    events = [{"event_id": f"e{i}", "user_id": f"u{i % 5}", "item_id": "i1", "event_type": "view",
               "ts": T0.isoformat()} for i in range(50)]
    assert log.append(events, now=T0).stored == 50 and len(reads) == 1
    from hyperrec.privacy.db import open_privacy_db, privacy_location

    db = open_privacy_db(privacy_location(settings))
    db.list_erased("u3", 0.0)
    db.close()
    later = [{**e, "event_id": f"later-{e['event_id']}"} for e in events]
    result = log.append(later, now=T0)
    assert (result.stored, result.suppressed, len(reads)) == (40, 10, 2)
