"""Erasure reaches what the first version missed: impressions written after it, dead letters
of the importer, a live ErasureWatch shared by the door and the stream, an audit that counts
what was really removed, and the model artifacts (registered versions, their copies and the
server's downloads). The last test looks at every file of a served workspace for the id."""

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
from test_privacy import _use_keys

from hyperrec.data.eventlog import EventLog
from hyperrec.data.impressions import ImpressionLog, ImpressionRecorder
from hyperrec.online.serving_path import Recommended
from hyperrec.privacy import (
    TOKEN,
    ErasureWatch,
    Pseudonymizer,
    _entity_key,
    erase_user,
    erased_users,
    erasure_audit,
    needles_in_file,
)

IMPORT_MAPPING = {"events": {"path": "e.csv", "columns": {"user_id": "u", "item_id": "i", "ts": "t",
                                                          "event_type": "k"}}}


# ---------------------------------------------------------------- a workspace without a model


@pytest.fixture(scope="module")
def workspace(make_workspace, tmp_path_factory):
    """A small world in Feast (offline parquet, SQLite online store), its events in the event
    log, dead letters and served lists of its users, and an import under home whose dead
    letters name some of them. Yields settings, world and the users by activity (each test
    erases its own)."""
    mp = pytest.MonkeyPatch()
    mp.delenv("HYPERREC_ONLINE_STORE", raising=False)
    _use_keys(mp)
    try:
        with make_workspace("erasure-gaps", users=40, items=30, days=6, events=2_000, seed=5) as (settings, world):
            end = pd.Timestamp(world.events["ts"].max()).to_pydatetime()
            users = world.events["user_id"].value_counts().index.astype(str).tolist()
            log = EventLog(settings.home / "events.db")
            assert log.append(json.loads(world.events.to_json(orient="records", date_format="iso")), now=end).stored
            log.append([{"event_id": f"bad-{u}", "user_id": u, "item_id": "", "event_type": "view", "ts": "x"}
                        for u in users[:6]], now=end)
            log.db.close()
            served = ImpressionLog(settings.impression_log)
            served.write([(f"r-{u}-{i}", end.timestamp() + i, u, "control", "personalized", 1, "{}",
                           '[["i1", "c", 0.5]]', None) for u in users[:6] for i in range(2)])
            served.close()
            _import_with_dead_letters(settings.data_dir / "imported", tmp_path_factory.mktemp("export"), users[:6])
            yield settings, world, users
    finally:
        mp.undo()


def _import_with_dead_letters(out: Path, source: Path, users: list[str]) -> None:
    """An import under home (the importer's dead_letters.jsonl beside the world it wrote):
    one good and one unparseable event per user."""
    import yaml

    from hyperrec.data.importer import import_world
    from hyperrec.data.mapping import load_mapping

    rows = [f"{u},i000001,2026-01-01T00:00:0{n}Z,click\n{u},i000002,not-a-time,view\n" for n, u in enumerate(users)]
    (source / "e.csv").write_text("u,i,t,k\n" + "".join(rows))
    (source / "mapping.yaml").write_text(yaml.safe_dump(IMPORT_MAPPING))
    import_world(load_mapping(source / "mapping.yaml"), source, out)
    assert all(u in (out / "dead_letters.jsonl").read_text() for u in users)


def _served(user: str | None, version: int = 1) -> Recommended:
    return Recommended(item_ids=["i1", "i2"], titles=["a", "b"], categories=["c", "c"], scores=[0.5, 0.4],
                       reasons=["", ""], policy="personalized", arm="control", model_version=version,
                       query=np.ones(4, np.float32), monitored={"hour_of_day": 3})


def test_the_impression_log_stores_no_list_of_a_user_after_their_erasure(workspace):
    settings, _, users = workspace
    gone, kept = users[6], users[7]
    log = ImpressionLog(settings.impression_log, suppress=ErasureWatch(settings))
    recorder = ImpressionRecorder(log, flush_s=3600, query_every=1)  # flushed by hand below
    now = time.time()
    recorder.add(["g-0", "k-0"], [gone, kept], [_served(gone), _served(kept)], [{}, {}], [now, now])
    assert recorder.flush() == 2  # a list served before the erasure: the erasure removes it
    recorder.add(["g-1"], [gone], [_served(gone)], [{}], [now + 1])  # buffered before, written after
    report = erase_user(settings, gone, "ticket GAP-1")
    assert report.removed["impressions"] == 1
    recorder.add(["g-2", "k-2", "anon"], [gone, kept, None], [_served(gone), _served(kept), _served(None)],
                 [{}, {}, {}], [now + 2] * 3)
    recorder.close()
    rows = ImpressionLog(settings.impression_log).read()
    assert gone not in set(rows["user_id"]) and {"k-0", "k-2", "anon"} <= set(rows["request_id"])
    assert log.suppressed == 2  # counted, like the event log's suppressed events
    for path in settings.home.glob("impressions.db*"):
        assert gone.encode() not in path.read_bytes(), path.name


def test_a_watch_shared_by_the_event_door_and_the_stream_still_tells_the_stream(workspace):
    """The Kafka consumer hands one ErasureWatch to its EventLog (the door asks `user in
    watch` per event) and to its StreamProcessor (which forgets the users `poll()` reports):
    the door's question must not use up the stream's news."""
    from hyperrec.features.store import open_store
    from hyperrec.features.stream import StreamProcessor, history

    settings, world, users = workspace
    gone, other = users[8], users[9]
    watch = ErasureWatch(settings)
    log = EventLog(settings.event_log, suppress=watch)
    processor = StreamProcessor(open_store(settings), log, erasures=watch)
    processor.warm_start(history(log, settings.data_dir / "world"))
    assert gone in processor.folds.users.state
    erase_user(settings, gone, "ticket GAP-2")
    end = pd.Timestamp(world.events["ts"].max()).to_pydatetime()
    event = {"event_id": "after-gap-2", "user_id": other, "item_id": world.items["item_id"].iloc[0],
             "event_type": "view", "ts": end.isoformat()}
    assert log.append([event], now=end).stored == 1  # the door consulted the watch
    processor.run_once()
    assert gone not in processor.folds.users.state and gone not in processor.folds.recent.state
    log.db.close()
    watch.close()


def _online_rows(settings, user: str) -> dict[str, int]:
    from hyperrec.features.store import open_store

    config = open_store(settings).config
    key = _entity_key(user, config.entity_key_serialization_version)
    db = sqlite3.connect(config.online_store.path)
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {f"online.sqlite.{t.removeprefix('hyperrec_')}": db.execute(
            f'SELECT COUNT(*) FROM "{t}" WHERE entity_key = ?', (key,)).fetchone()[0]
            for t in tables if t.startswith("hyperrec_")}
    finally:
        db.close()


def _count(path: Path, sql: str, *params) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchone()[0]
    finally:
        db.close()


def _store_counts(settings, user: str) -> dict[str, int]:
    """Rows per store, measured without the erasure code: events and consent rows of the
    user, every dead letter and impression, the rows of every parquet table and the lines of
    every importer's dead letter file under home, the user's online rows."""
    counts = {"event_log.events": _count(settings.event_log, "SELECT COUNT(*) FROM events WHERE "
                                         "json_extract(body, '$.user_id') = ?", user),
              "event_log.dead_letters": _count(settings.event_log, "SELECT COUNT(*) FROM dead_letters"),
              "impressions": _count(settings.impression_log, "SELECT COUNT(*) FROM impressions"),
              "consent": _count(settings.home / "privacy.db", "SELECT COUNT(*) FROM consent WHERE user_id = ?", user)}
    for path in sorted(settings.home.rglob("*.parquet")):
        name = (f"offline.{path.stem}" if path.parent == settings.offline_dir
                else f"files.{path.relative_to(settings.home)}")
        counts[name] = pq.read_metadata(path).num_rows
    for path in sorted(settings.home.rglob("dead_letters.jsonl")):
        counts[f"files.{path.relative_to(settings.home)}"] = len(path.read_text().splitlines())
    return counts | _online_rows(settings, user)


def test_the_audit_counts_what_was_removed_while_a_stream_watch_races_the_erasure(workspace):
    """The stream processor's ErasureWatch deletes an erased user's online rows as soon as the
    user is on the erasure list; the erasure's own count of them must still be true. The race
    is made certain by holding the event log's write lock, so the erasure waits there while
    the watch acts."""
    settings, _, users = workspace
    gone = users[0]
    before = _store_counts(settings, gone)
    assert all(before[k] for k in ("event_log.events", "consent", "online.sqlite.user_activity"))
    watch = ErasureWatch(settings)
    watch.poll()
    blocker = sqlite3.connect(settings.event_log, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    done: dict = {}
    worker = threading.Thread(target=lambda: done.update(report=erase_user(settings, gone, "ticket GAP-3")))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while gone not in erased_users(settings):
            assert time.monotonic() < deadline, "the erasure never listed the user"
            time.sleep(0.01)
        assert gone in watch.poll()
        watch.erase_online(gone)  # what StreamProcessor._forget_erased does next
    finally:
        blocker.execute("COMMIT")
        blocker.close()
        worker.join(120)
    after = _store_counts(settings, gone)
    removed = {k: before[k] - after.get(k, 0) for k in before if before[k] - after.get(k, 0)}
    report = done["report"]
    assert report.status == "done"
    assert {k: v for k, v in report.removed.items() if v} == removed
    assert any(k.startswith("files.data/world/") for k in removed)  # the world the features came from
    assert any(k.endswith("dead_letters.jsonl") for k in removed)  # the importer's dead letters
    assert erasure_audit(settings, gone)[-1]["removed"] == report.removed
    watch.close()


def test_dead_letters_naming_the_user_go_and_others_stay(workspace):
    settings, _, users = workspace
    gone, kept = users[1], users[2]
    log = EventLog(settings.event_log)
    assert any(gone.encode() in raw for raw, _ in log.dead_letters())
    log.db.close()
    report = erase_user(settings, gone, "ticket GAP-4")
    assert report.removed["event_log.dead_letters"] == 1
    assert report.removed["files.data/imported/dead_letters.jsonl"] == 1
    text = (settings.data_dir / "imported" / "dead_letters.jsonl").read_text()
    assert gone not in text and kept in text
    log = EventLog(settings.event_log)
    dead = b" ".join(raw + error.encode() for raw, error in log.dead_letters())
    assert gone.encode() not in dead and kept.encode() in dead


def test_a_world_copied_before_the_erasure_brings_nothing_of_the_user_back(workspace, tmp_path):
    """A world folder out of the erasure's reach (a bucket, another pod's copy) still holds the
    user: features built from it must not record their consent or feature rows again, and a
    retrain's snapshot of it must leave them out."""
    import shutil

    from rich.console import Console

    from hyperrec.privacy import ConsentLedger
    from hyperrec.steps import feature_step
    from hyperrec.training.retrain import snapshot_world

    settings, _, users = workspace
    copy = shutil.copytree(settings.data_dir / "world", tmp_path / "bucket" / "world")
    present = set(pd.read_parquet(copy / "users.parquet")["user_id"].astype(str))
    gone = next(u for u in reversed(users) if u in present)  # one the module's other tests did not erase
    erase_user(settings, gone, "ticket GAP-8")
    assert gone in set(pd.read_parquet(copy / "users.parquet")["user_id"])  # the copy was out of reach

    feature_step(settings, copy, Console(quiet=True))
    ledger = ConsentLedger.open(settings)
    try:
        assert ledger.db.query("SELECT count(*) FROM consent WHERE user_id = ?", (gone,))[0][0] == 0
    finally:
        ledger.close()
    for table in settings.offline_dir.glob("*.parquet"):
        frame = pd.read_parquet(table)
        assert "user_id" not in frame or gone not in set(frame["user_id"].astype(str)), table.name
    snapshot = snapshot_world(settings, tmp_path / "snapshot", world_dir=copy)
    for name in ("users.parquet", "events.parquet"):
        assert gone not in set(pd.read_parquet(snapshot / name)["user_id"].astype(str)), name


def test_an_invalid_event_of_an_erased_user_is_not_dead_lettered(workspace):
    settings, world, users = workspace
    gone = users[3]
    erase_user(settings, gone, "ticket GAP-5")
    log = EventLog(settings.event_log, suppress=ErasureWatch(settings))
    result = log.append([{"event_id": "late-bad", "user_id": gone, "item_id": "", "event_type": "view", "ts": "x"}])
    assert result.suppressed == 1 and not any(gone.encode() in raw for raw, _ in log.dead_letters())


# ---------------------------------------------------------------- a trained and registered model


@pytest.fixture(scope="module")
def trained(make_workspace):
    """A small world, one quickly trained model registered twice (two versions, the champion
    the later), under the workspace's own PII key file."""
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.registry.model_registry import register_model
    from hyperrec.training.dataset import build_training_set
    from hyperrec.training.fit import fit_models

    mp = pytest.MonkeyPatch()
    mp.delenv("HYPERREC_ONLINE_STORE", raising=False)
    _use_keys(mp, None)  # embedded: the workspace's key file, which the server and CLI read too
    try:
        with make_workspace("erasure-models", users=80, items=40, days=6, events=4_000, seed=11) as (settings, world):
            data_dir, model_dir = settings.data_dir / "training_set", settings.data_dir / "model"
            build_training_set(settings, settings.data_dir / "world", data_dir)
            fit_models(data_dir, model_dir, TwoTowerConfig(epochs=1), log=lambda *_: None)
            versions = [register_model(settings, model_dir, {}, {}, {"blessed": True, "reasons": []})
                        for _ in range(2)]
            known = json.loads((model_dir / "warm_start" / "user_tower.vocab.json").read_text())["user_id_lookup"][1:]
            yield settings, world, versions, known
    finally:
        mp.undo()


def _probe(known: list[str], world) -> pd.DataFrame:
    """Every user tower input for some users: each user's profile, no activity, two recent items."""
    from hyperrec.models.two_tower import USER_INPUTS

    profiles = world.users.set_index("user_id")
    frame = pd.DataFrame({"user_id": known})
    for col, kind in USER_INPUTS.items():
        if col == "user_id":
            continue
        if kind == "string":
            frame[col] = profiles.loc[known, col].astype(str).to_numpy()
        elif kind == "string_list":
            frame[col] = [list(world.items["item_id"].iloc[:2])] * len(frame)
        else:
            frame[col] = 1.0
    return frame


@pytest.mark.slow
def test_registered_versions_their_copies_and_the_servers_downloads_forget_the_user(trained, tmp_path, monkeypatch):
    import hyperrec.privacy.models as models
    from hyperrec.models.recommender import Recommender
    from hyperrec.models.two_tower import NEW_USER
    from hyperrec.online.hotswap import load_shared
    from hyperrec.registry.model_registry import configure, model_version_dir

    settings, world, versions, known = trained
    gone, others = known[0], known[1:21]
    cache = settings.home / "serving" / "versions"
    old = Recommender(load_shared(cache, versions[-1], lambda d: model_version_dir(settings, versions[-1], d), Path))
    assert gone in old.known_users
    probe = _probe([gone, *others], world)
    before = old.user_embeddings(probe)
    as_stranger = old.user_embeddings(probe.assign(user_id=[NEW_USER] * len(probe)))

    redacting, tag = {}, models._tag  # what a download would see while the files are rewritten

    def tag_and_look(settings, version):
        redacting[version] = configure(settings).get_model_version(settings.model_name, str(version)).tags.get(
            models.REDACTING_TAG)
        tag(settings, version)

    monkeypatch.setattr(models, "_tag", tag_and_look)
    report = erase_user(settings, gone, "ticket GAP-6")
    assert report.status == "done"
    assert sorted(redacting) == sorted(versions) and all(redacting.values())  # downloads waited then
    for version in versions:
        model_dir = model_version_dir(settings, version, tmp_path / str(version))
        vocab = json.loads((model_dir / "warm_start" / "user_tower.vocab.json").read_text())
        assert gone not in vocab["user_id_lookup"] and set(others) <= set(vocab["user_id_lookup"])
        for path in (model_dir / "user_tower").rglob("*"):
            assert not path.is_file() or gone.encode() not in path.read_bytes(), path
        tags = configure(settings).get_model_version(settings.model_name, str(version)).tags
        assert tags["erasure_redactions"] == "1" and models.REDACTING_TAG not in tags
    assert (report.removed["models.versions"], report.removed["models.copies"],
            report.removed["models.serving_cache"]) == (2, 1, 1)
    # the server's next load downloads the redacted version: the same model for everyone else
    new = Recommender(load_shared(cache, versions[-1], lambda d: model_version_dir(settings, versions[-1], d), Path))
    assert new.known_users == old.known_users - {gone}
    after = new.user_embeddings(probe)
    np.testing.assert_allclose(after[1:], before[1:], atol=1e-5)
    np.testing.assert_allclose(after[0], as_stranger[0], atol=1e-5)  # the erased user is now a stranger
    # an erasure stopped after writing every file of versions[0] left its tag: the next one
    # counts that redaction (servers fetch the version again) and clears the tag
    configure(settings).set_model_version_tag(settings.model_name, str(versions[0]), models.REDACTING_TAG,
                                              "2026-12-07T10:00:00+00:00")
    again = erase_user(settings, gone, "ticket GAP-6 (repeat)")
    assert not any(v for k, v in again.removed.items() if k.startswith("models."))
    tags = configure(settings).get_model_version(settings.model_name, str(versions[0])).tags
    assert models.REDACTING_TAG not in tags and tags["erasure_redactions"] == "2"


@pytest.mark.slow
def test_after_an_erasure_no_file_of_a_served_workspace_names_the_user(trained, free_port, tmp_path):
    """A real server serves the user and keeps their events and a dead letter, and an import
    under home dead-letters one of their rows; the CLI erases the user while the server runs
    and the server goes on serving them; after a restart (the champion's next load) every file
    under home is searched for the raw id and the user's tokens."""
    from hyperrec.config import export_env
    from serving.launch import start_server, stop_server, wait_ready

    settings, world, versions, known = trained
    gone, kept = known[30], known[31]
    _import_with_dead_letters(settings.data_dir / "imported", tmp_path, [gone, kept])
    url = f"http://127.0.0.1:{free_port}"
    as_of = world.events["ts"].max().to_pydatetime()
    profile = pd.read_parquet(settings.data_dir / "world" / "users.parquet").set_index("user_id").loc[gone]
    assert TOKEN.fullmatch(profile["email"]) and TOKEN.fullmatch(profile["name"])  # the world stores pseudonyms
    needles = {"raw id": gone.encode(), "email token": profile["email"].encode(),
               "name token": profile["name"].encode(),
               "user_id token": Pseudonymizer.for_workspace(settings).token(gone, "user_id").encode()}

    def serve(users):
        body = {"instances": [{"user_id": u, "k": 3} for u in users]}
        answer = requests.post(f"{url}/v1/models/recommender:predict", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return [p["request_id"] for p in answer.json()["predictions"]]

    def post(events):
        return requests.post(f"{url}/v1/events", json=events, timeout=30).json()

    item = world.items["item_id"].iloc[0]
    click = {"user_id": gone, "item_id": item, "event_type": "click", "ts": as_of.isoformat(), "dwell_s": 30.0}
    log_path = settings.home / "server.log"
    proc = start_server(settings, free_port, log_path, as_of=as_of, extra_args=("--poll_s", "0.5"))
    try:
        wait_ready(proc, free_port, log_path=log_path)
        serve([gone, kept])
        assert post([click | {"event_id": "e2e-1"}, click | {"event_id": "e2e-bad", "ts": "x"}])["dead_lettered"] == 1
        erased = subprocess.run([sys.executable, "-m", "hyperrec.cli", "privacy", "erase", gone, "--reason",
                                 "ticket GAP-7", "--home", str(settings.home)], env=export_env(settings),
                                capture_output=True, text=True, timeout=600)
        assert erased.returncode == 0, erased.stderr
        assert json.loads(erased.stdout)["status"] == "done"
        after = serve([gone, kept])  # the server goes on: the erased user's lists are not logged
        assert post([click | {"event_id": "e2e-2"}])["suppressed"] == 1
        deadline = time.monotonic() + 10
        while after[1] not in set(ImpressionLog(settings.impression_log).read()["request_id"]):
            assert time.monotonic() < deadline, "the kept user's list was never logged"
            time.sleep(0.1)
    finally:
        stop_server(proc)
    proc = start_server(settings, free_port, log_path, as_of=as_of)  # the champion's next load
    try:
        wait_ready(proc, free_port, log_path=log_path)
        serve([gone, kept])
    finally:
        stop_server(proc)

    found = {str(p.relative_to(settings.home)): hits for p in sorted(settings.home.rglob("*"))
             if p.is_file() and (hits := needles_in_file(p, needles))}
    privacy = {name: hits for name, hits in found.items() if name.startswith("privacy.db")}
    assert found == privacy, f"outside the erasure list: { {k: v for k, v in found.items() if k not in privacy} }"
    # the erasure list keeps the raw id (to filter backups and re-imports) and the audit its token
    db = sqlite3.connect(settings.home / "privacy.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM erased_users WHERE user_id = ?", (gone,)).fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM consent WHERE user_id = ?", (gone,)).fetchone()[0] == 0
        tokens = {t for (t,) in db.execute("SELECT user_token FROM erasure_audit")}
    finally:
        db.close()
    assert needles["user_id token"].decode() in tokens
    assert set().union(*privacy.values()) == {"raw id", "user_id token"}  # (the search does see them)
    assert erasure_audit(settings, gone)[-1]["removed"]["models.versions"] == len(versions)


def test_a_dead_letter_nested_past_the_recursion_limit_is_found_and_erased(tmp_path):
    """A hostile event (5,000 nested lists, the user id in escaped form) once made erase crash
    while it searched the dead letters."""
    from hyperrec.privacy.erasure import _mentions

    log = EventLog(tmp_path / "events.db")
    deep = '{"event_id": "e1", "user_id": "\\u0075\\u0031", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    log.append([deep, '{"event_id": "e2", "user_id": "u12", "ts": "x"}'])
    assert log.counts()["dead_letters"] == 2
    assert log.drop_dead_letters(lambda raw, error: _mentions(raw, error, "u1")) == 1
    assert [raw for raw, _ in log.dead_letters()] == [b'{"event_id": "e2", "user_id": "u12", "ts": "x"}']
