"""A world's tables in PostgreSQL (schema `world`): where a cluster keeps the data every
role reads (the features job, the pipeline's snapshot, a stream consumer rebuilding a
partition's users), instead of a folder on a shared volume. One copy, which an erasure
reaches with a DELETE (`erase_user`), where folder copies on each node would not be.

A world location is a folder or `WORLD_IN_DATABASE` ("db:world"): `read_world` takes
either, so commands and pipeline parameters name it the same way (`--world db:world`).
The simulator's truth stays in the folder it was generated in: it is not the platform's
data, only the demo's measuring stick.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hyperrec.config import Settings
from hyperrec.data.event_types import EventTypes
from hyperrec.data.schemas import Event, Item, User, validate_frame
from hyperrec.data.world import World, load_world

SCHEMA = "world"
WORLD_IN_DATABASE = "db:world"
TABLES = ("users", "items", "events")
_USER_KEYED = ("users", "events")


def is_database_world(location: str | Path | None) -> bool:
    return location is not None and str(location) == WORLD_IN_DATABASE


def read_world(settings: Settings, location: str | Path, validate: bool = True) -> World:
    """The world at `location`: a folder, or the database's (`WORLD_IN_DATABASE`)."""
    if not is_database_world(location):
        return load_world(Path(location), validate=validate)
    if not settings.database_url:
        raise ValueError(f"--world {WORLD_IN_DATABASE} needs HYPERREC_DATABASE_URL (the world's PostgreSQL)")
    return load_world_db(settings.database_url, validate=validate)


def _pg_type(dtype) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "double precision"
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamptz"
    return "text"


def publish_world(database_url: str, world: World) -> dict[str, int]:
    """Replace the database's world with `world` (one transaction: readers see the old world
    or the new one). Returns rows per table."""
    import psycopg
    from psycopg import sql

    rows = {}
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCHEMA)))
        dtypes = {}
        for name in TABLES:
            frame: pd.DataFrame = getattr(world, name)
            dtypes[name] = {column: str(dtype) for column, dtype in frame.dtypes.items()}
            table = sql.Identifier(SCHEMA, name)
            conn.execute(sql.SQL("CREATE TABLE {} ({})").format(table, sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(t))) for c, t in frame.dtypes.items())))
            values = frame.astype(object).where(frame.notna(), None)
            with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                    table, sql.SQL(", ").join(map(sql.Identifier, frame.columns)))) as copy:
                for row in values.itertuples(index=False, name=None):
                    copy.write_row(row)
            if name in _USER_KEYED:
                conn.execute(sql.SQL("CREATE INDEX ON {} (user_id)").format(table))
            rows[name] = len(frame)
        conn.execute(sql.SQL("CREATE TABLE {} (meta jsonb NOT NULL, dtypes jsonb NOT NULL)").format(
            sql.Identifier(SCHEMA, "meta")))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(SCHEMA, "meta")),
                     (json.dumps(world.meta, default=str), json.dumps(dtypes)))
    return rows


def _exists(conn) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.meta",)).fetchone()[0]


def _read_table(conn, name: str, dtypes: dict[str, str]) -> pd.DataFrame:
    from psycopg import sql

    wanted = list(dtypes)
    cur = conn.execute(sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(map(sql.Identifier, wanted)), sql.Identifier(SCHEMA, name)))
    frame = pd.DataFrame(cur.fetchall(), columns=wanted)
    for column in wanted:
        dtype = dtypes[column]
        if dtype.startswith("datetime64"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        elif dtype != "object":
            frame[column] = frame[column].astype(dtype)
    return frame


def load_world_db(database_url: str, validate: bool = True) -> World:
    """The published world, each column with the dtype it was published with."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        if (found := _meta(conn)) is None:
            raise FileNotFoundError(f"no world in the database (schema {SCHEMA}): run `hyperrec data publish`")
        meta, dtypes = found
        users, items, events = (_read_table(conn, name, dtypes[name]) for name in TABLES)
    if validate:
        users = validate_frame(users, User, "users")
        items = validate_frame(items, Item, "items")
        events = validate_frame(events, Event, "events", {"event_type": EventTypes.of_world(meta).known})
    return World(users, items, events, None, meta)


def recorded_events(settings: Settings) -> pd.DataFrame:
    """The world's recorded events, which a stream consumer folds before the topic's: the
    database's world when one is published there, else HOME/data/world's (empty if neither)."""
    import psycopg

    if settings.database_url:
        with psycopg.connect(settings.database_url) as conn:
            if (found := _meta(conn)) is not None:
                return _read_table(conn, "events", found[1]["events"])
    path = settings.data_dir / "world" / "events.parquet"
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def published_meta(database_url: str, connect_timeout_s: int = 10) -> dict | None:
    """The published world's meta (its `event_types` among it); None when no world is
    published. Raises psycopg.Error (OperationalError) when the database cannot be reached."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=connect_timeout_s) as conn:
        found = _meta(conn)
    return None if found is None else found[0]


def role_event_types(settings: Settings) -> EventTypes:
    """The event types a role takes (hyperrec.data.event_types): the published world's
    declaration when `settings.database_url` holds one, else the workspace's file. An
    unreachable database is an error, not the canonical set: a wrong set would dead-letter
    real events."""
    if settings.database_url:
        import psycopg

        try:
            meta = published_meta(settings.database_url)
        except psycopg.Error as e:
            raise RuntimeError("the event types: cannot read the published world from the database "
                               f"(HYPERREC_DATABASE_URL): {e}") from e
        if meta is not None:
            return EventTypes.of_world(meta)
    return EventTypes.for_workspace(settings.home)


def _meta(conn) -> tuple[dict, dict] | None:
    """The published world's meta and its columns' dtypes; None when no world is published."""
    return conn.execute(f"SELECT meta, dtypes FROM {SCHEMA}.meta").fetchone() if _exists(conn) else None


def erase_user(database_url: str, user_id: str) -> dict[str, int]:
    """Delete the user's profile and events from the published world; rows per `world.<table>`
    (nothing when no world is published)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url) as conn:
        if not _exists(conn):
            return {}
        return {f"{SCHEMA}.{name}": conn.execute(sql.SQL("DELETE FROM {} WHERE user_id = %s").format(
            sql.Identifier(SCHEMA, name)), (user_id,)).rowcount for name in _USER_KEYED}
