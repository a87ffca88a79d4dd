"""Erasure of one user from every store the platform writes, with an append-only audit."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd

from hyperrec.config import Settings
from hyperrec.privacy.db import (
    PRIVACY_DB,
    ErasureBusy,  # noqa: F401  (raised by erase_user; importable from here)
    PrivacyUnavailable,
    is_postgres,
    open_privacy_db,
    privacy_location,
)
from hyperrec.privacy.pseudonyms import Pseudonymizer

log = logging.getLogger(__name__)
ERASURE_WAIT_S = 3600.0  # longest an erasure waits for another to finish (PrivacyDB.erasing)

@dataclass(frozen=True)
class ErasureReport:
    user_token: str
    removed: dict[str, int]  # store -> rows (SQLite, parquet, JSON lines), keys (Redis) or model versions
    status: str


def erased_users(settings: Settings) -> set[str]:
    """Every user ever erased: the training-set builder and ingestion must drop them."""
    where = privacy_location(settings)
    if not is_postgres(where) and not Path(where).exists():
        return set()
    db = open_privacy_db(where)
    try:
        return {row[0] for row in db.query("SELECT user_id FROM erased_users")}
    finally:
        db.close()


class _Everyone:
    def __contains__(self, user_id: object) -> bool:
        return True


_EVERYONE = _Everyone()  # what an unreadable list suppresses, for writers that drop rather than fail


class ErasureWatch:
    """The erasure list as a live set, for long-running processes (the server's event door,
    ingestion, the stream processor): each check reads only the rows past the last one seen
    (`erased_users` in list order, an indexed range that is empty while nobody is erased),
    so an erasure counts from the next check, in this process or on another node.

    When the list cannot be read (PostgreSQL down), `poll()` and `in` raise
    PrivacyUnavailable (the event door answers 503), or with `unavailable="suppress"`, `in`
    counts every user as erased (a writer of monitoring data then stores nothing)."""

    def __init__(self, settings: Settings, unavailable: Literal["raise", "suppress"] = "raise"):
        self.settings = settings
        self.unavailable = unavailable
        self.users: frozenset[str] = frozenset()
        self._unreported: frozenset[str] = frozenset()  # listed since the last poll()
        self._db = open_privacy_db(privacy_location(settings))
        seq = self._db.erased_seq
        self._sql = f"SELECT {seq}, user_id FROM erased_users WHERE {seq} > ? ORDER BY {seq}"
        self._seen = 0  # the last list position read
        self._lock = threading.Lock()
        self._warned = 0.0

    def _refresh(self) -> None:
        """Read the users listed since the last read; they wait for the next poll()."""
        with self._lock:
            rows = self._db.query(self._sql, (self._seen,))
            if not rows:
                return
            self._seen = rows[-1][0]
            new = frozenset(user for _, user in rows) - self.users
            self._unreported |= new
            self.users |= new

    def poll(self) -> frozenset[str]:
        """Users erased since the last poll (all of them at the first). Asking `user in watch`
        in between does not use them up: the Kafka consumer's event door and its stream
        processor share one watch, and the processor must still hear of every erasure."""
        self._refresh()
        with self._lock:
            new, self._unreported = self._unreported, frozenset()
        return new

    def snapshot(self) -> Container[str]:
        """The list as of now, read once: a batch checks each of its events against it (a set
        lookup each) instead of asking the database per event (a round trip each, 40 ms for
        500 events on PostgreSQL)."""
        try:
            self._refresh()
        except PrivacyUnavailable as exc:
            if self.unavailable == "raise":
                raise
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("erasure list unreadable, every user counts as erased: %s", exc)
            return _EVERYONE
        return self.users

    def __contains__(self, user_id: str) -> bool:
        return user_id in self.snapshot()

    def erase_online(self, user_id: str) -> dict[str, int]:
        """Delete the user's online rows again: a stream push racing the erasure may have
        written one back."""
        return _erase_online(self.settings, user_id)

    def close(self) -> None:
        self._db.close()


def drop_erased(frame: pd.DataFrame, settings: Settings, user_col: str = "user_id") -> pd.DataFrame:
    """`frame` without rows of erased users (for training sets and re-imports)."""
    return frame[~frame[user_col].astype(str).isin(erased_users(settings))]


def needles_in_file(path: Path, needles: dict[str, bytes]) -> set[str]:
    """Which needles (an id, its tokens) occur in the file, looking inside what a raw search
    would miss: parquet's compressed columns, zip members (npz), and npz string arrays
    (stored as UTF-32). The check after an erasure that nothing still names the user."""
    import zipfile

    data = path.read_bytes()
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        data += "\n".join(map(str, pq.read_table(path).to_pylist())).encode()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data += b"\n".join(archive.read(name) for name in archive.namelist())
        if path.suffix == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as arrays:
                data += "\n".join(str(v) for name in arrays.files if arrays[name].dtype.kind in "US"
                                   for v in arrays[name].ravel()).encode()
    return {name for name, needle in needles.items() if needle in data}


def world_without_erased(world, settings: Settings):
    """The world (`hyperrec.data.world.World`) without erased users' rows and events. A world
    folder written before an erasure still holds them: whatever is built from it (feature
    tables, consent records, a retrain's snapshot) must not bring them back. The simulator's
    truth is indexed by user position, so a world that loses users loses it too."""
    import dataclasses

    erased = erased_users(settings)
    users = world.users["user_id"].astype(str).isin(erased)
    if not users.any() and not world.events["user_id"].astype(str).isin(erased).any():
        return world
    return dataclasses.replace(world, users=world.users[~users].reset_index(drop=True),
                               events=world.events[~world.events["user_id"].astype(str).isin(erased)]
                               .reset_index(drop=True), truth=None)


def erasure_audit(settings: Settings, user_id: str | None = None) -> list[dict]:
    """The audit rows (all, or one user's under the current or previous key), oldest first."""
    db = open_privacy_db(privacy_location(settings))
    try:
        sql, params = "SELECT id, user_token, at, reason, removed, status FROM erasure_audit", []
        if user_id is not None:
            params = Pseudonymizer.for_workspace(settings).candidates(user_id, "user_id")
            sql += f" WHERE user_token IN ({','.join('?' * len(params))})"
        rows = db.query(sql + " ORDER BY id", params)
    finally:
        db.close()
    return [{"id": i, "user_token": t, "at": at, "reason": r, "removed": json.loads(rm), "status": s}
            for i, t, at, r, rm, s in rows]


def _check_reason(user_id: str, reason: str) -> None:
    if not reason or not reason.strip() or len(reason) > 500:
        raise ValueError("reason: 1-500 characters, e.g. a ticket reference")
    if user_id in reason or re.search(r"\S+@\S+", reason):
        raise ValueError("reason must not contain the user id or an email address: the audit keeps only tokens")


def event_log_paths(settings: Settings) -> list[Path]:
    """SQLite files directly under home that hold an EventLog (tables events + dead_letters);
    `events.db` by convention."""
    found = []
    for path in sorted(settings.home.glob("*.db")):
        if path.name == PRIVACY_DB:
            continue
        db = sqlite3.connect(path)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError:
            continue
        finally:
            db.close()
        if {"events", "dead_letters"} <= tables:
            found.append(path)
    return found


def _mentions(raw, error: str, user_id: str) -> bool:
    """Whether a dead letter names the user: as a whole token in its raw text or error, or as
    any string value of its JSON (escaped forms included)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    word = re.compile(rf"(?<![\w-]){re.escape(user_id)}(?![\w-])")
    if word.search(text) or word.search(error):
        return True
    for literal in _JSON_STRING.finditer(text):  # each string literal alone: no parse of a hostile depth
        try:
            if json.loads(literal.group()) == user_id:
                return True
        except ValueError:
            continue
    return False


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def _erase_event_log(path: Path, user_id: str) -> tuple[int, int]:
    """(events, dead letters) of the user deleted from one EventLog file, then compacted."""
    from hyperrec.data.eventlog import EventLog

    log = EventLog(path)
    try:
        log.db.execute("PRAGMA secure_delete=ON")
        with log.db:
            log.db.execute("BEGIN IMMEDIATE")
            events = log.db.execute("DELETE FROM events WHERE json_extract(body, '$.user_id') = ?",
                                    (user_id,)).rowcount
        dead = log.drop_dead_letters(lambda raw, error: _mentions(raw, error, user_id))
        _compact(log.db)
    finally:
        log.db.close()
    return events, dead


def _erase_impressions(path: Path, user_id: str) -> int:
    """The user's served lists in the impression log (monitoring data)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA secure_delete=ON")
        gone = db.execute("DELETE FROM impressions WHERE user_id = ?", (user_id,)).rowcount
        _compact(db)
    finally:
        db.close()
    return gone


def _erase_parquet(path: Path, user_id: str) -> int | None:
    """Drop the user's rows from one parquet file (atomic replace); None if it has no user_id column."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if "user_id" not in pq.read_schema(path).names:
        return None
    table = pq.read_table(path)
    hit = pc.fill_null(pc.equal(pc.cast(table["user_id"], pa.string()), user_id), False)
    n = int(pc.sum(hit).as_py() or 0)
    if n:
        tmp = path.with_name(path.name + ".erasing")
        pq.write_table(table.filter(pc.invert(hit)), tmp)
        os.replace(tmp, path)
    return n


def _erase_offline(settings: Settings, user_id: str) -> dict[str, int]:
    """Rewrite every parquet table under offline_dir that has the user's rows; with a
    database_url, delete them from the offline tables, the sunk events and the published
    world in PostgreSQL too."""
    removed = {}
    for path in sorted(settings.offline_dir.rglob("*.parquet")) if settings.offline_dir.exists() else []:
        if (n := _erase_parquet(path, user_id)) is not None:
            removed[f"offline.{path.stem}"] = n
    if settings.database_url:
        from hyperrec.data import world_db
        from hyperrec.features.postgres import erase_user

        removed |= erase_user(settings.database_url, user_id)
        removed |= world_db.erase_user(settings.database_url, user_id)
    return removed


def _erase_jsonl(path: Path, user_id: str) -> int:
    """Drop the lines that name the user from a JSON Lines file (atomic replace)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not _mentions(line, "", user_id)]
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".erasing")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return len(lines) - len(kept)


def _erase_data_files(settings: Settings, user_id: str) -> dict[str, int]:
    """The user's rows in every other data file under home and the artifact store
    (Settings.data_roots), keyed `files.<path>` (`artifacts.<path>` in the artifact store
    outside home): parquet with a user_id column (worlds, snapshots, training sets, kfp.local
    outputs, any logged with a model) and the importer's dead_letters.jsonl. Only files that
    held them are listed."""
    removed = {}
    for root, key in zip(settings.data_roots, ("files", "artifacts"), strict=False):
        for path in sorted(root.rglob("*.parquet")):
            if not path.is_relative_to(settings.offline_dir) and (n := _erase_parquet(path, user_id)):
                removed[f"{key}.{path.relative_to(root).as_posix()}"] = n
        for path in sorted(root.rglob("dead_letters.jsonl")):
            if n := _erase_jsonl(path, user_id):
                removed[f"{key}.{path.relative_to(root).as_posix()}"] = n
    return removed


def _entity_key(user_id: str, version: int) -> bytes:
    """Feast's online key bytes for a user entity."""
    from hyperrec.features.online_reader import entity_key

    return entity_key("user_id", user_id, version)


def _compact(db: sqlite3.Connection) -> None:
    """Leave no copy of deleted rows anywhere in the files. secure_delete zeroes the deleted
    cells, but a page rebuilt by a B-tree rebalance can keep old bytes in its unused area
    (seen here: an erased id still in events.db after a delete); VACUUM rewrites the
    database from the live rows only, and the checkpoint moves that out of the WAL."""
    db.execute("VACUUM")
    busy, *_ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise RuntimeError("a reader kept the WAL from being checkpointed; erase again")


def _erase_online_sqlite(config, key: bytes) -> dict[str, int]:
    """Delete the key from every project table (`<project>_<view>[_v<N>]`, columns entity_key,
    feature_name, value, ...). The key encodes the join key name, so only user-keyed views match."""
    path = Path(config.online_store.path)
    if config.repo_path and not path.is_absolute():
        path = Path(config.repo_path) / path
    if not path.exists():
        return {}
    prefix, removed = f"{config.project}_", {}
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA secure_delete=ON")
        db.execute("BEGIN IMMEDIATE")
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            quoted = '"' + table.replace('"', '""') + '"'  # as Feast's _quote_id
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({quoted})")}
            if table.startswith(prefix) and "entity_key" in columns:
                n = db.execute(f"DELETE FROM {quoted} WHERE entity_key = ?", (key,)).rowcount
                removed[f"online.sqlite.{table[len(prefix):]}"] = n
        db.execute("COMMIT")
        _compact(db)
    finally:
        db.close()
    return removed


def _erase_online_redis(config, key: bytes) -> dict[str, int]:
    """One hash per entity holds all its views: key = entity key bytes + project name."""
    from feast.infra.online_stores.redis import RedisOnlineStore

    client = RedisOnlineStore()._get_client(config.online_store)  # Feast's own client (redis / cluster / sentinel)
    try:
        return {"online.redis": int(client.delete(key + config.project.encode("utf8")))}
    finally:
        client.close()


def _erase_online(settings: Settings, user_id: str) -> dict[str, int]:
    from hyperrec.features.store import open_store

    config = open_store(settings).config
    key = _entity_key(user_id, config.entity_key_serialization_version)
    if config.online_store.type == "sqlite":
        return _erase_online_sqlite(config, key)
    if config.online_store.type == "redis":
        return _erase_online_redis(config, key)
    raise NotImplementedError(f"erasure from a {config.online_store.type!r} online store")


def _erase_recs_cache(connection_string: str, user_id: str) -> dict[str, int]:
    """The recommendation cache owns its key layout; erasure only asks it to forget the user."""
    from hyperrec.online.recs_cache import erase_user_lists
    from hyperrec.services import redis_client

    client = redis_client(connection_string)
    try:
        return {"recs_cache": erase_user_lists(client, user_id)}
    finally:
        client.close()


def erase_user(settings: Settings, user_id: str, reason: str, *, event_logs: Sequence[Path] | None = None,
               recs_cache_url: str | None = None, wait_s: float = ERASURE_WAIT_S) -> ErasureReport:
    """Remove `user_id` from the Feast online store, the event log(s), the impression log,
    Feast offline tables and every other data file under home, the recommendation cache,
    the consent ledger and the trained models (hyperrec.privacy.models); add it to the
    erasure list; audit what each store really lost.

    Idempotent: a repeat finds nothing and is audited too. The key is checked before
    anything is touched. The user joins the erasure list right after the online store (a
    live ErasureWatch deletes a listed user's online rows itself, and the audit would count
    none of them) and before every other store, and joins it even if the online step
    fails, so training honours it when a store fails (the audit row then says so; run it
    again). `event_logs`: default every EventLog under home (`event_log_paths`). The cache
    is cleaned in `recs_cache_url`, default settings.recs_cache, else settings.redis_url
    when the online store is Redis.

    One erasure runs at a time among the processes sharing the privacy database
    (`PrivacyDB.erasing`); this one waits up to `wait_s` for the lock, then raises
    ErasureBusy having touched nothing.
    """
    token = Pseudonymizer.for_workspace(settings).token(user_id, "user_id")
    _check_reason(user_id, reason)
    db = open_privacy_db(privacy_location(settings))
    try:
        with db.erasing(wait_s):
            return _erase(settings, db, user_id, reason, token, event_logs, recs_cache_url)
    finally:
        db.close()


def _erase(settings: Settings, db, user_id: str, reason: str, token: str, event_logs, recs_cache_url) -> ErasureReport:
    from hyperrec.privacy.models import erase_from_models

    removed: dict[str, int] = {"event_log.events": 0, "event_log.dead_letters": 0}
    status = "failed"
    try:
        try:
            removed |= _erase_online(settings, user_id)
        finally:
            db.list_erased(user_id, time.time())
        for path in event_logs if event_logs is not None else event_log_paths(settings):
            events, dead = _erase_event_log(Path(path), user_id)
            removed["event_log.events"] += events
            removed["event_log.dead_letters"] += dead
        removed["impressions"] = _erase_impressions(settings.impression_log, user_id)
        removed |= _erase_offline(settings, user_id)
        removed |= _erase_data_files(settings, user_id)
        cache = recs_cache_url or settings.recs_cache or (settings.redis_url if settings.online_store == "redis"
                                                          else None)
        if cache:
            removed |= _erase_recs_cache(cache, user_id)
        removed["consent"] = db.execute("DELETE FROM consent WHERE user_id = ?", (user_id,), retry=True)
        removed |= erase_from_models(settings, user_id, lambda: erased_users(settings))
        status = "done"
    except Exception as exc:
        status = f"failed: {type(exc).__name__}"  # not the message: it may quote the user
        raise
    finally:
        db.execute("INSERT INTO erasure_audit (user_token, at, reason, removed, status) VALUES (?, ?, ?, ?, ?)",
                   (token, datetime.now(UTC).isoformat(), reason, json.dumps(removed, sort_keys=True), status))
        db.scrub()  # the deleted consent rows leave the database's files (SQLite: the WAL, if unread)
        log.info("erasure of %s %s: %s", token, status, removed)
    return ErasureReport(token, removed, status)
