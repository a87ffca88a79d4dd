"""Where the privacy state lives: the consent ledger, the erasure list and the erasure audit,
in one SQLite file `<home>/privacy.db` (WAL, secure_delete; embedded mode), or in
PostgreSQL (`Settings.database_url`, schema `privacy`) when the roles run on several nodes.

`PrivacyDB` is the one interface both implement; the ledger and erasure code write their SQL
once, with `?` placeholders, and only what differs is here: the schemas, the placeholder
style, the column that orders the erasure list (SQLite's rowid, a PostgreSQL identity), how
a write transaction keeps that order, and what makes deleted rows unreadable.

PostgreSQL connections come from one pool per process and URL (`psycopg_pool`, safe from
the server's request threads). A connection broken by a server restart is dropped and the
statement retried once on a fresh one; a statement that still cannot be answered raises
`PrivacyUnavailable`, so callers fail closed (no personalization, the event refused).

`erasing()` lets one erasure run at a time among every process that shares the database:
two erasures redacting the same model version at once would each upload the version
with only their own user taken out, and the last upload would put the other user back
(and count one redaction where there were two). SQLite: an flock beside privacy.db (one
host); PostgreSQL: a session advisory lock on a connection of its own, released by the
server if the erasing process dies.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Protocol

from hyperrec.data.eventlog import LogBusy
from hyperrec.sqlite_wal import connect_wal

PRIVACY_DB = "privacy.db"
SCHEMA_NAME = "privacy"  # the PostgreSQL schema: the database may be shared with other state

SQLITE_SCHEMA = """
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

# The same tables. at_us needs BIGINT (INTEGER is 32-bit here) and times DOUBLE PRECISION
# (REAL is 32-bit); erased_users.seq orders the list for ErasureWatch's incremental reads.
POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS consent (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL,
    purpose TEXT NOT NULL,
    granted SMALLINT NOT NULL CHECK (granted IN (0, 1)),
    at_us BIGINT NOT NULL,
    source TEXT NOT NULL,
    recorded_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS consent_latest ON consent (user_id, purpose, at_us, id);
CREATE TABLE IF NOT EXISTS erased_users (
    user_id TEXT PRIMARY KEY,
    first_erased_at DOUBLE PRECISION NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE TABLE IF NOT EXISTS erasure_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_token TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT NOT NULL,
    removed TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE OR REPLACE FUNCTION erasure_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'erasure_audit is append-only'; END $$;
CREATE OR REPLACE TRIGGER erasure_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON erasure_audit
FOR EACH STATEMENT EXECUTE FUNCTION erasure_audit_append_only();
"""
_SCHEMA_LOCK = 0x68797065727265  # pg_advisory_xact_lock key: one process creates the schema at a time
_ERASURE_LOCK = 0x68797065726173  # pg_advisory_lock key: one erasure at a time (`erasing`)


class ErasureBusy(RuntimeError):
    """Another erasure held the erasure lock for longer than this one would wait."""


def _wait_for(try_lock: Callable[[], bool], wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not try_lock():
        if time.monotonic() >= deadline:
            raise ErasureBusy(f"another erasure has been running for over {wait_s:.0f}s; nothing was erased, "
                              "run it again when that one is done")
        time.sleep(0.2)


class PrivacyUnavailable(LogBusy):
    """The privacy database could not answer (PostgreSQL down or unreachable). A LogBusy, so
    the event door answers 503 with Retry-After: it cannot tell whether the user was erased."""

    kind = "privacy_unavailable"


class PrivacyDB(Protocol):
    backend: str       # "sqlite" | "postgresql"
    erased_seq: str    # the erased_users column in the order users joined the list

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Rows of a read (retried once on a fresh PostgreSQL connection)."""

    def execute(self, sql: str, params: Sequence = (), retry: bool = False) -> int:
        """One statement on its own (autocommit); the rows it changed. `retry`: the statement
        is idempotent, so a broken connection may be replaced and the statement run again."""

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        """One statement over many rows, in one transaction."""

    def list_erased(self, user_id: str, at: float) -> None:
        """Add a user to the erasure list (once), committed in `erased_seq` order."""

    def users_in(self, ids: Sequence[str]) -> tuple[str, list]:
        """A `user_id IN ...` condition for a batch, and its parameters."""

    def scrub(self) -> None:
        """After deletes: leave the deleted rows in no file the database controls."""

    def erasing(self, wait_s: float) -> AbstractContextManager[None]:
        """Hold the erasure lock (see the module doc) for the block; ErasureBusy after `wait_s`."""

    def close(self) -> None: ...


def privacy_location(settings) -> Path | str:
    """The PostgreSQL URL when `settings.database_url` is set, else `<home>/privacy.db`."""
    return settings.database_url or settings.home / PRIVACY_DB


def is_postgres(where: Path | str) -> bool:
    return isinstance(where, str) and where.startswith(("postgresql://", "postgres://"))


def open_privacy_db(where: Path | str) -> PrivacyDB:
    """The privacy tables at `where` (a PostgreSQL URL or a SQLite path), created if absent."""
    return PostgresPrivacyDB(where) if is_postgres(where) else SqlitePrivacyDB(Path(where))


class SqlitePrivacyDB:
    """`privacy.db`: one autocommit WAL connection, serialized by a lock across threads."""

    backend, erased_seq = "sqlite", "rowid"  # rows never leave erased_users, so rowid only grows

    def __init__(self, path: Path):
        self.path = path
        self.db = connect_wal(path)
        self.db.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not left in free pages
        self.db.executescript(SQLITE_SCHEMA)
        self._lock = threading.RLock()

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence = (), retry: bool = False) -> int:
        with self._lock:
            return self.db.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany(sql, rows)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def list_erased(self, user_id: str, at: float) -> None:
        # one writer at a time already: rowid order is commit order
        self.execute("INSERT OR IGNORE INTO erased_users (user_id, first_erased_at) VALUES (?, ?)", (user_id, at))

    def users_in(self, ids: Sequence[str]) -> tuple[str, list]:
        return f"user_id IN ({','.join('?' * len(ids))})", list(ids)

    def scrub(self) -> None:
        with self._lock:  # old pages of the deleted rows leave the WAL, if nobody is reading them
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    @contextmanager
    def erasing(self, wait_s: float) -> Iterator[None]:
        def try_lock() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        with open(self.path.with_name(self.path.name + ".erasing"), "a+") as lock:
            _wait_for(try_lock, wait_s)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        self.db.close()


class PostgresPrivacyDB:
    """The privacy tables in PostgreSQL, schema `privacy`, through this process's pool for the URL."""

    backend, erased_seq = "postgresql", "seq"
    timeout_s = 2.0  # longest wait for a connection (or to connect) before PrivacyUnavailable
    # after a failure, fail at once for this long: an outage must not cost every lookup
    # (every micro-batch of the server) the whole wait
    recheck_s = 1.0

    def __init__(self, url: str):
        self.url = url
        self.pool = _pools.acquire(url, self.timeout_s)
        self._closed = False
        self._failed: tuple[float, str] | None = None  # (when, why) of the last failure

    def _run(self, work, retry: bool):
        """`work(connection)` on a pooled connection; after a broken one (a restarted server),
        once more on a fresh one if `retry`; else PrivacyUnavailable."""
        import psycopg
        from psycopg_pool import PoolTimeout

        failed = self._failed
        if failed is not None and time.monotonic() - failed[0] < self.recheck_s:
            raise PrivacyUnavailable(f"the privacy database is unavailable: {failed[1]}")
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                with self.pool.connection(timeout=self.timeout_s) as conn:
                    result = work(conn)
                self._failed = None
                return result
            except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
                if attempt + 1 == attempts:
                    self._failed = (time.monotonic(), str(exc).strip())
                    raise PrivacyUnavailable(f"the privacy database is unavailable: {exc}") from exc
                # a restart breaks every idle connection, not only this one (which the pool
                # dropped as it came back): test them all, so the retry gets a working one
                self.pool.check()

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")  # our statements hold no literal '?'

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._run(lambda conn: conn.execute(self._sql(sql), params).fetchall(), retry=True)

    def execute(self, sql: str, params: Sequence = (), retry: bool = False) -> int:
        return self._run(lambda conn: conn.execute(self._sql(sql), params).rowcount, retry=retry)

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        def work(conn):
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)

        self._run(work, retry=False)

    def list_erased(self, user_id: str, at: float) -> None:
        """seq comes from a sequence, which hands out numbers in call order, not commit order:
        two erasures committing the other way round would let a watch that already read the
        higher seq skip the lower one for good. The table lock (which plain reads do not
        wait for) makes the erasures take their numbers and commit one after the other."""
        def work(conn):
            with conn.transaction():
                conn.execute("LOCK TABLE erased_users IN SHARE ROW EXCLUSIVE MODE")
                conn.execute("INSERT INTO erased_users (user_id, first_erased_at) VALUES (%s, %s) "
                             "ON CONFLICT DO NOTHING", (user_id, at))

        self._run(work, retry=True)

    def users_in(self, ids: Sequence[str]) -> tuple[str, list]:
        return "user_id = ANY(?)", [list(ids)]  # one parameter: one prepared plan for any batch size

    def scrub(self) -> None:
        """VACUUM drops the deleted consent rows and their index entries from the table files
        (a DELETE only marks them dead). PostgreSQL's WAL and any base backup keep them until
        those are recycled or expire (docs/privacy.md)."""
        self.execute("VACUUM consent", retry=True)

    @contextmanager
    def erasing(self, wait_s: float) -> Iterator[None]:
        import psycopg

        try:  # not from the pool: held for the whole erasure, and a session lock must not outlive it there
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=max(int(self.timeout_s), 1))
        except psycopg.OperationalError as exc:
            raise PrivacyUnavailable(f"the privacy database is unavailable: {exc}") from exc
        with conn:
            _wait_for(lambda: conn.execute("SELECT pg_try_advisory_lock(%s)", (_ERASURE_LOCK,)).fetchone()[0],
                      wait_s)
            try:
                yield
            finally:
                with suppress(psycopg.Error):  # a lost connection: the server released its locks with it
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_ERASURE_LOCK,))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _pools.release(self.url)


class _Pools:
    """One connection pool per process and URL, shared by the ledger and the watches of a
    process, closed when the last of them is. Created lazily, so a forked child builds its
    own instead of sharing its parent's sockets."""

    MAX_SIZE = 8

    def __init__(self):
        self._lock = threading.Lock()
        self._pools: dict[tuple[int, str], list] = {}  # (pid, url) -> [pool, users]

    def acquire(self, url: str, timeout_s: float):
        from psycopg_pool import ConnectionPool

        key = (os.getpid(), url)
        with self._lock:
            if key not in self._pools:
                _create_schema(url, timeout_s)
                pool = ConnectionPool(url, min_size=1, max_size=self.MAX_SIZE, open=False, name="hyperrec-privacy",
                                      timeout=timeout_s,
                                      kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout_s)),
                                              "options": f"-c search_path={SCHEMA_NAME}"})
                pool.open(wait=False)
                self._pools[key] = [pool, 0]
            self._pools[key][1] += 1
            return self._pools[key][0]

    def release(self, url: str) -> None:
        key = (os.getpid(), url)
        with self._lock:
            entry = self._pools.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del self._pools[key]
        entry[0].close(timeout=1.0)

    def close_all(self) -> None:
        with self._lock:
            pools = [pool for (pid, _), (pool, _) in self._pools.items() if pid == os.getpid()]
            self._pools.clear()
        for pool in pools:
            pool.close(timeout=1.0)


def _create_schema(url: str, timeout_s: float) -> None:
    """The schema and tables, once per database (concurrent CREATE ... IF NOT EXISTS can still
    collide in PostgreSQL's catalogs, hence the advisory lock)."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout_s))) as conn, \
                conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA_NAME}")
            conn.execute(f"SET LOCAL search_path = {SCHEMA_NAME}")
            conn.execute(POSTGRES_SCHEMA)
    except psycopg.OperationalError as exc:
        raise PrivacyUnavailable(f"the privacy database is unavailable: {exc}") from exc


_pools = _Pools()
atexit.register(_pools.close_all)
