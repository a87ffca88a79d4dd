"""Privacy by design: keyed pseudonyms for PII, a per-purpose consent ledger, and erasure of
one user from every store the platform writes, with an append-only audit.

- `Pseudonymizer`: HMAC-SHA256 tokens "<key id>:<hex>" under a key read from the environment
  (`HYPERREC_PII_KEY` or a mounted file `HYPERREC_PII_KEY_FILE`), never from code or
  parameters; a previous key (`HYPERREC_PII_KEY_PREVIOUS[_FILE]`) still matches during rotation.
- `ConsentLedger`: per user and purpose, the latest grant or withdrawal at a given time.
- `erase_user`: event log, Feast offline parquet, Feast online store (SQLite or Redis), the
  recommendation cache, the consent rows; the user joins the erasure list training honours.

Everything lives in `<home>/privacy.db` (WAL, secure_delete). See docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd

from hyperrec.config import Settings

log = logging.getLogger(__name__)

KEY_ENV = "HYPERREC_PII_KEY"  # + "_FILE" (mounted secret), "_ID" (token prefix, default k1)
PREVIOUS_KEY_ENV = "HYPERREC_PII_KEY_PREVIOUS"  # same three forms; "_ID" required with it
MIN_KEY_BYTES = 32
PII_FIELDS = ("email", "name", "phone")
KEY_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,15}")
TOKEN = re.compile(r"([a-z0-9][a-z0-9_-]{0,15}):([0-9a-f]{64})")

Purpose = Literal["personalization", "analytics"]
PURPOSES: tuple[str, ...] = ("personalization", "analytics")
# No record means no consent: consent must be an affirmative, recorded act (GDPR Art. 4(11),
# 7(1)), so a user the ledger has never heard of is not personalized (nor tracked) by default.
DEFAULT_CONSENT: dict[str, bool] = {"personalization": False, "analytics": False}

PRIVACY_DB = "privacy.db"
RECS_CACHE_PREFIX = "hyperrec:recs:"  # cache keys: hyperrec:recs:<user_id> or hyperrec:recs:<user_id>:<suffix>
_US = pd.Timedelta(1, "us")
_EPOCH = pd.Timestamp(0, tz="UTC")

SCHEMA = """
CREATE TABLE IF NOT EXISTS consent (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    granted INTEGER NOT NULL CHECK (granted IN (0, 1)),
    at_us INTEGER NOT NULL,      -- when the user granted / withdrew (UTC microseconds)
    source TEXT NOT NULL,        -- where it was captured: crm, app, api, ...
    recorded_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_latest ON consent (user_id, purpose, at_us, id);
CREATE TABLE IF NOT EXISTS erased_users (user_id TEXT PRIMARY KEY, first_erased_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS erasure_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_token TEXT NOT NULL,    -- HMAC of the user id, never the id itself
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    removed TEXT NOT NULL,       -- JSON: store -> rows / keys removed
    status TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS erasure_audit_no_update BEFORE UPDATE ON erasure_audit
BEGIN SELECT RAISE(ABORT, 'erasure_audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS erasure_audit_no_delete BEFORE DELETE ON erasure_audit
BEGIN SELECT RAISE(ABORT, 'erasure_audit is append-only'); END;
"""


# ---------------------------------------------------------------- pseudonymization


class PIIKeyError(RuntimeError):
    """The pseudonymization key is missing or unusable (the message never contains it)."""


class _Secret:
    """Key bytes that never print or pickle."""

    __slots__ = ("value",)

    def __init__(self, value: bytes):
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    def __reduce_ex__(self, protocol):
        raise TypeError("PII keys cannot be pickled: each process reads its own from the environment")


def _read_key(var: str) -> _Secret | None:
    inline, path = os.environ.get(var), os.environ.get(var + "_FILE")
    if inline and path:
        raise PIIKeyError(f"set either {var} or {var}_FILE, not both")
    if path:
        return _key_from_file(Path(path), f"{var}_FILE")
    return _key_from_text(inline, var) if inline else None


def _key_from_file(path: Path, label: str) -> _Secret:
    try:
        return _key_from_text(path.read_text(), label)
    except OSError as exc:
        raise PIIKeyError(f"{label}: cannot read the key file ({exc.strerror})") from None


def _key_from_text(text: str, label: str) -> _Secret:
    key = text.strip().encode()
    if len(key) < MIN_KEY_BYTES:
        raise PIIKeyError(f"{label}: the key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed; generate one "
                          "with: python -c 'import secrets; print(secrets.token_hex(32))'")
    return _Secret(key)


def workspace_key_file(settings: Settings) -> Path:
    """Embedded mode's key when the environment has none: `<home>/secrets/pii.key`, created
    once with a random 256-bit key, readable by its owner only. Never in the repository,
    in code or in parameters; a cluster mounts its Secret instead (HYPERREC_PII_KEY_FILE)."""
    path = settings.home / "secrets" / "pii.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _key_id(var: str, default: str | None) -> str:
    kid = os.environ.get(var + "_ID") or default
    if kid is None:
        raise PIIKeyError(f"{var}_ID is required with {var}: the id its tokens carry (e.g. k1)")
    if not KEY_ID.fullmatch(kid):
        raise PIIKeyError(f"{var}_ID must match {KEY_ID.pattern} (it prefixes every token)")
    return kid


def normalize(field: str, value: str) -> str:
    """Canonical form before hashing, so "A@X.com " and "a@x.com" give one token."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected a string, got {type(value).__name__}")
    text = unicodedata.normalize("NFKC", value).strip()
    if field == "email":
        return text.casefold()
    if field == "name":
        return " ".join(text.split()).casefold()
    if field == "phone":
        return ("+" if text.startswith("+") else "") + re.sub(r"\D", "", text)
    return text


class Pseudonymizer:
    """Keyed HMAC-SHA256 pseudonyms: `token(value, field)` -> "<key id>:<64 hex>".

    Deterministic per key (joins and lookups work on tokens), unlinkable without the key,
    domain-separated by field. The key comes only from the environment (see module doc).
    """

    __slots__ = ("key_id", "previous_key_id", "_keys")

    def __init__(self, key_file: Path | None = None):
        """The key from the environment; else from `key_file` (see `for_workspace`)."""
        current = _read_key(KEY_ENV)
        if current is None and key_file is not None:
            current = _key_from_file(key_file, str(key_file))
        if current is None:
            raise PIIKeyError(f"no pseudonymization key: set {KEY_ENV} or mount a secret file and set "
                              f"{KEY_ENV}_FILE (keys never come from code or parameters)")
        self.key_id = _key_id(KEY_ENV, "k1")
        self._keys = {self.key_id: current}
        self.previous_key_id = None
        previous = _read_key(PREVIOUS_KEY_ENV)
        if previous is not None:
            self.previous_key_id = _key_id(PREVIOUS_KEY_ENV, None)
            if self.previous_key_id == self.key_id or hmac.compare_digest(previous.value, current.value):
                raise PIIKeyError(f"{PREVIOUS_KEY_ENV} must be a different key with a different id")
            self._keys[self.previous_key_id] = previous

    @classmethod
    def for_workspace(cls, settings: Settings) -> Pseudonymizer:
        """The environment's key when set (a cluster's mounted Secret), else the workspace's
        own key file (`workspace_key_file`): embedded mode needs no setup."""
        if os.environ.get(KEY_ENV) or os.environ.get(KEY_ENV + "_FILE"):
            return cls()
        return cls(key_file=workspace_key_file(settings))

    def _digest(self, key_id: str, value: str, field: str) -> str:
        message = f"{field}\x1f{normalize(field, value)}".encode()
        return hmac.new(self._keys[key_id].value, message, hashlib.sha256).hexdigest()

    def token(self, value: str, field: str = "id") -> str:
        """The token of `value` under the current key."""
        return f"{self.key_id}:{self._digest(self.key_id, value, field)}"

    def candidates(self, value: str, field: str = "id") -> list[str]:
        """Its tokens under every loaded key, current first: look stored tokens up with `IN`."""
        return [f"{kid}:{self._digest(kid, value, field)}" for kid in self._keys]

    def matches(self, token: str, value: str, field: str = "id") -> bool:
        """Whether `token` is `value`'s, under the current or the previous key."""
        m = TOKEN.fullmatch(token)
        return bool(m and m[1] in self._keys and hmac.compare_digest(m[2], self._digest(m[1], value, field)))

    def is_current(self, token: str) -> bool:
        """False for a token under the previous (or an unknown) key: re-derive it from the source."""
        return token.startswith(self.key_id + ":")

    def is_token(self, value) -> bool:
        m = isinstance(value, str) and TOKEN.fullmatch(value)
        return bool(m and m[1] in self._keys)

    def __repr__(self) -> str:
        return f"Pseudonymizer(key_id={self.key_id!r}, previous_key_id={self.previous_key_id!r})"

    def __reduce_ex__(self, protocol):
        raise TypeError("a Pseudonymizer cannot be pickled or passed as a parameter; build one per process")


def _blank(value) -> bool:
    return value == "" if isinstance(value, str) else value is None or bool(pd.isna(value))


def scrub_user_record(record: Mapping, pseudonymizer: Pseudonymizer | None = None,
                      fields: Sequence[str] = PII_FIELDS) -> dict:
    """A copy of a raw user/profile record with its PII fields (email, name, phone) replaced
    by tokens. Missing or empty values stay as they are; existing tokens are kept (idempotent)."""
    pz = pseudonymizer or Pseudonymizer()
    out = dict(record)
    for field in fields:
        value = out.get(field)
        if _blank(value) or pz.is_token(value):
            continue
        out[field] = pz.token(value, field)
    return out


def scrub_user_frame(users: pd.DataFrame, pseudonymizer: Pseudonymizer | None = None,
                     fields: Sequence[str] = PII_FIELDS) -> pd.DataFrame:
    """`scrub_user_record` for a whole table (e.g. a CRM export or a world's users)."""
    pz = pseudonymizer or Pseudonymizer()
    out = users.copy()
    for field in (f for f in fields if f in out):
        out[field] = [v if _blank(v) or pz.is_token(v) else pz.token(v, field) for v in out[field]]
    return out


# ---------------------------------------------------------------- consent ledger


def privacy_db(settings: Settings) -> Path:
    return settings.home / PRIVACY_DB


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left in free pages
    db.executescript(SCHEMA)
    return db


def _to_us(at: datetime | pd.Timestamp | None) -> int:
    if at is None:
        return int(time.time() * 1_000_000)
    if getattr(at, "tzinfo", None) is None:
        raise ValueError("consent time needs a timezone")
    return (pd.Timestamp(at) - _EPOCH) // _US


class ConsentLedger:
    """Per user and purpose: granted or not, when, and from which source. The state at a time
    is the latest record at or before it (ties: the later recorded wins); no record means
    `defaults[purpose]`."""

    def __init__(self, path: Path, defaults: Mapping[str, bool] | None = None):
        self.defaults = {**DEFAULT_CONSENT, **(defaults or {})}
        for purpose in self.defaults:
            self._purpose(purpose)
        self.db = _connect(path)
        self._lock = threading.Lock()  # the model server asks from several worker threads

    @classmethod
    def open(cls, settings: Settings, defaults: Mapping[str, bool] | None = None) -> ConsentLedger:
        return cls(privacy_db(settings), defaults)

    @staticmethod
    def _purpose(purpose: str) -> str:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown purpose {purpose!r}: one of {list(PURPOSES)}")
        return purpose

    def record_consent(self, user_id: str, purpose: Purpose, granted: bool, at: datetime | None = None,
                       source: str = "api") -> None:
        """Append one grant or withdrawal (`at`: when the user made it, tz-aware; default now)."""
        self.db.execute("INSERT INTO consent (user_id, purpose, granted, at_us, source, recorded_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (user_id, self._purpose(purpose), int(bool(granted)), _to_us(at), source, time.time()))

    def record_profile(self, user: Mapping, source: str = "crm") -> None:
        """Both purposes from a `schemas.User`-shaped record (consent_* flags at consent_ts)."""
        for purpose in PURPOSES:
            self.record_consent(user["user_id"], purpose, user[f"consent_{purpose}"], user["consent_ts"], source)

    def record_profiles(self, users: pd.DataFrame, source: str = "crm") -> int:
        """`record_profile` for a whole users table, in one transaction."""
        now = time.time()
        rows = [(str(u), purpose, int(bool(g)), _to_us(ts), source, now)
                for purpose in PURPOSES
                for u, g, ts in zip(users["user_id"], users[f"consent_{purpose}"], users["consent_ts"])]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT INTO consent (user_id, purpose, granted, at_us, source, recorded_at) "
                                "VALUES (?, ?, ?, ?, ?, ?)", rows)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(rows)

    def consented(self, user_ids: Sequence[str], purpose: Purpose, at: datetime | None = None) -> list[bool]:
        """`has_consent` for a batch of users in one indexed query (the model server asks
        this for every micro-batch: a withdrawal takes effect on the next request)."""
        ids = list(dict.fromkeys(user_ids))
        latest: dict[str, bool] = {}
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            with self._lock:
                rows = self.db.execute(
                    f"SELECT user_id, granted FROM consent WHERE purpose = ? AND at_us <= ? AND user_id IN "
                    f"({','.join('?' * len(chunk))}) ORDER BY user_id, at_us DESC, id DESC",
                    (self._purpose(purpose), _to_us(at), *chunk)).fetchall()
            for user, granted in rows:
                latest.setdefault(user, bool(granted))
        return [latest.get(u, self.defaults[purpose]) for u in user_ids]

    def has_consent(self, user_id: str, purpose: Purpose, at: datetime | None = None) -> bool:
        row = self.db.execute("SELECT granted FROM consent WHERE user_id = ? AND purpose = ? AND at_us <= ? "
                              "ORDER BY at_us DESC, id DESC LIMIT 1",
                              (user_id, self._purpose(purpose), _to_us(at))).fetchone()
        return self.defaults[purpose] if row is None else bool(row[0])

    def _latest(self, purpose: str, at: datetime | None) -> dict[str, bool]:
        rows = self.db.execute(
            "SELECT user_id, granted FROM (SELECT user_id, granted, ROW_NUMBER() OVER "
            "(PARTITION BY user_id ORDER BY at_us DESC, id DESC) AS n FROM consent WHERE purpose = ? AND at_us <= ?) "
            "WHERE n = 1", (self._purpose(purpose), _to_us(at)))
        return {user: bool(granted) for user, granted in rows}

    def users_without(self, purpose: Purpose, at: datetime | None = None,
                      among: Iterable[str] | None = None) -> set[str]:
        """Users whose latest record at `at` (default now) withholds `purpose`. The ledger
        cannot list users it never heard of: pass `among` (e.g. the training set's users) to
        include those too when the purpose's default is False."""
        latest = self._latest(purpose, at)
        if among is None:
            return {user for user, granted in latest.items() if not granted}
        return {user for user in set(among) if not latest.get(user, self.defaults[purpose])}

    def filter_events_by_consent(self, events: pd.DataFrame, purpose: Purpose, user_col: str = "user_id",
                                 ts_col: str = "ts") -> pd.DataFrame:
        """The events whose user had consented to `purpose` at the event's own time (an as-of
        join per user, vectorized); order and index kept."""
        self._purpose(purpose)
        if events.empty:
            return events.copy()
        ledger = pd.read_sql_query("SELECT user_id, granted, at_us FROM consent WHERE purpose = ? ORDER BY at_us, id",
                                   self.db, params=(purpose,))
        ledger = ledger.drop_duplicates(["user_id", "at_us"], keep="last")  # same instant: later recorded wins
        left = pd.DataFrame({"user_id": events[user_col].astype(str).to_numpy(),
                             "at_us": ((pd.to_datetime(events[ts_col], utc=True) - _EPOCH) // _US).to_numpy("int64"),
                             "pos": range(len(events))}).sort_values("at_us", kind="stable")
        ledger = ledger.astype({"user_id": object, "at_us": "int64", "granted": "float64"})
        joined = pd.merge_asof(left.astype({"user_id": object}), ledger, on="at_us", by="user_id",
                               direction="backward")
        allowed = joined["granted"].fillna(int(self.defaults[purpose])).astype(bool).to_numpy()
        keep = pd.Series(False, index=range(len(events)))
        keep.iloc[joined["pos"].to_numpy()] = allowed
        return events[keep.to_numpy()]

    def forget(self, user_id: str) -> int:
        """Delete the user's consent records (erasure); returns how many."""
        return self.db.execute("DELETE FROM consent WHERE user_id = ?", (user_id,)).rowcount

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------- erasure


@dataclass(frozen=True)
class ErasureReport:
    user_token: str
    removed: dict[str, int]  # store -> rows (SQLite, parquet) or keys (Redis) removed
    status: str


def erased_users(settings: Settings) -> set[str]:
    """Every user ever erased: the training-set builder and ingestion must drop them."""
    if not privacy_db(settings).exists():
        return set()
    db = _connect(privacy_db(settings))
    try:
        return {row[0] for row in db.execute("SELECT user_id FROM erased_users")}
    finally:
        db.close()


def drop_erased(frame: pd.DataFrame, settings: Settings, user_col: str = "user_id") -> pd.DataFrame:
    """`frame` without rows of erased users (for training sets and re-imports)."""
    return frame[~frame[user_col].astype(str).isin(erased_users(settings))]


def erasure_audit(settings: Settings, user_id: str | None = None) -> list[dict]:
    """The audit rows (all, or one user's under the current or previous key), oldest first."""
    db = _connect(privacy_db(settings))
    try:
        sql, params = "SELECT id, user_token, at, reason, removed, status FROM erasure_audit", []
        if user_id is not None:
            params = Pseudonymizer.for_workspace(settings).candidates(user_id, "user_id")
            sql += f" WHERE user_token IN ({','.join('?' * len(params))})"
        rows = db.execute(sql + " ORDER BY id", params).fetchall()
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
    try:
        data = json.loads(text)
    except ValueError:
        return False
    stack = [data]
    while stack:
        item = stack.pop()
        if item == user_id:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _erase_event_log(path: Path, user_id: str) -> tuple[int, int]:
    db = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA secure_delete=ON")
        db.execute("BEGIN IMMEDIATE")
        events = db.execute("DELETE FROM events WHERE json_extract(body, '$.user_id') = ?", (user_id,)).rowcount
        doomed = [(i,) for i, raw, error in db.execute("SELECT id, raw, error FROM dead_letters")
                  if _mentions(raw, error, user_id)]
        db.executemany("DELETE FROM dead_letters WHERE id = ?", doomed)
        db.execute("COMMIT")
        _compact(db)
    finally:
        db.close()
    return events, len(doomed)


def _erase_offline(settings: Settings, user_id: str) -> dict[str, int]:
    """Rewrite every parquet table under offline_dir that has the user's rows (atomic replace)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    removed = {}
    tables = sorted(settings.offline_dir.rglob("*.parquet")) if settings.offline_dir.exists() else []
    for path in tables:
        if "user_id" not in pq.read_schema(path).names:
            continue
        table = pq.read_table(path)
        hit = pc.fill_null(pc.equal(table["user_id"], user_id), False)
        removed[f"offline.{path.stem}"] = n = int(pc.sum(hit).as_py() or 0)
        if n:
            tmp = path.with_name(path.name + ".erasing")
            pq.write_table(table.filter(pc.invert(hit)), tmp)
            os.replace(tmp, path)
    return removed


def _entity_key(user_id: str, version: int) -> bytes:
    """Feast's online key bytes for a user entity."""
    from hyperrec.online_reader import entity_key

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
    from hyperrec.featurestore import open_store

    config = open_store(settings).config
    key = _entity_key(user_id, config.entity_key_serialization_version)
    if config.online_store.type == "sqlite":
        return _erase_online_sqlite(config, key)
    if config.online_store.type == "redis":
        return _erase_online_redis(config, key)
    raise NotImplementedError(f"erasure from a {config.online_store.type!r} online store")


def recs_cache_key(user_id: str, *parts: str) -> str:
    """The one place cache keys are built: hyperrec:recs:<user_id>[:<part>...]."""
    return ":".join([RECS_CACHE_PREFIX + user_id, *parts])


def _erase_recs_cache(connection_string: str, user_id: str) -> dict[str, int]:
    """Delete hyperrec:recs:<user_id> and hyperrec:recs:<user_id>:* -- not <user_id>* (that
    would take u10's cache along with u1's)."""
    import redis
    from feast.infra.online_stores.redis import RedisOnlineStore

    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)  # Feast's host:port[,db=N]
    client = redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)
    glob_safe = re.sub(r"([*?\[\]\\])", r"\\\1", recs_cache_key(user_id))
    try:
        keys = [recs_cache_key(user_id), *client.scan_iter(match=glob_safe + ":*", count=1000)]
        return {"recs_cache": int(client.delete(*keys))}
    finally:
        client.close()


def erase_user(settings: Settings, user_id: str, reason: str, *, event_logs: Sequence[Path] | None = None,
               recs_cache_url: str | None = None) -> ErasureReport:
    """Remove `user_id` from the event log(s), Feast offline tables and online store, the
    recommendation cache and the consent ledger; add it to the erasure list; audit it.

    Idempotent: a repeat finds nothing and is audited too. The key is checked before
    anything is touched; the user joins the erasure list before any store, so training
    honours it even when a store below fails (the audit row then says so; run it again).
    `event_logs`: default every EventLog under home (`event_log_paths`). The cache is
    cleaned in `recs_cache_url`, default settings.redis_url when the online store is Redis.
    """
    token = Pseudonymizer.for_workspace(settings).token(user_id, "user_id")
    _check_reason(user_id, reason)
    db = _connect(privacy_db(settings))
    db.execute("INSERT OR IGNORE INTO erased_users (user_id, first_erased_at) VALUES (?, ?)", (user_id, time.time()))
    removed: dict[str, int] = {"event_log.events": 0, "event_log.dead_letters": 0}
    status = "failed"
    try:
        for path in event_logs if event_logs is not None else event_log_paths(settings):
            events, dead = _erase_event_log(Path(path), user_id)
            removed["event_log.events"] += events
            removed["event_log.dead_letters"] += dead
        removed |= _erase_offline(settings, user_id)
        removed |= _erase_online(settings, user_id)
        cache = recs_cache_url or (settings.redis_url if settings.online_store == "redis" else None)
        if cache:
            removed |= _erase_recs_cache(cache, user_id)
        removed["consent"] = db.execute("DELETE FROM consent WHERE user_id = ?", (user_id,)).rowcount
        status = "done"
    except Exception as exc:
        status = f"failed: {type(exc).__name__}"  # not the message: it may quote the user
        raise
    finally:
        db.execute("INSERT INTO erasure_audit (user_token, at, reason, removed, status) VALUES (?, ?, ?, ?, ?)",
                   (token, datetime.now(UTC).isoformat(), reason, json.dumps(removed, sort_keys=True), status))
        db.close()
        log.info("erasure of %s %s: %s", token, status, removed)
    return ErasureReport(token, removed, status)
