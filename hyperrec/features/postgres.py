"""Feast's registry and offline store in PostgreSQL: the cluster's Feast (`Settings.database_url`).

`feature_repo/feature_store.postgres[.redis].yaml` name Feast's SQL registry and `postgres`
offline store. Feast wants the database as separate fields (host, port, user, ...), while every
role gets one URL (HYPERREC_DATABASE_URL); `feast_env` derives the fields, which Feast expands
in the yaml. The offline tables live in the schema `offline` (`table`), one per feature view,
rewritten whole by `write_tables` with COPY. `historical_features` is Feast's point-in-time join
on them, with the labels loaded by COPY and the join planned without nested loops.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd

SCHEMA = "offline"
PG_TYPES = {"string": "text", "float": "real", "int": "bigint", "string_list": "text[]", "int_list": "bigint[]"}
LABEL_TYPES = {"O": "text", "i": "bigint", "u": "bigint", "M": "timestamptz"}  # by numpy dtype kind


def table(name: str) -> str:
    """The schema-qualified table behind view `name` (a PostgreSQLSource's `table`)."""
    return f"{SCHEMA}.{name}"


def sqlalchemy_url(url: str) -> str:
    """The URL with psycopg 3 as SQLAlchemy's driver (a bare postgresql:// means psycopg2)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme in ("postgresql", "postgres") else url


def feast_env(database_url: str | None) -> dict[str, str]:
    """The HYPERREC_FEAST_PG_* variables feature_store.postgres*.yaml expands, from the URL ({}
    without one). String values are escaped for the yaml's double quotes."""
    if not database_url:
        return {}
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(database_url)

    def quoted(value) -> str:
        return json.dumps(str(value))[1:-1]

    return {"HYPERREC_FEAST_PG_REGISTRY": quoted(sqlalchemy_url(database_url)),
            "HYPERREC_FEAST_PG_HOST": quoted(info.get("host") or "localhost"),
            "HYPERREC_FEAST_PG_PORT": str(int(info.get("port") or 5432)),
            "HYPERREC_FEAST_PG_DATABASE": quoted(info.get("dbname") or info.get("user") or ""),
            "HYPERREC_FEAST_PG_USER": quoted(info.get("user") or ""),
            "HYPERREC_FEAST_PG_PASSWORD": quoted(info.get("password") or ""),
            "HYPERREC_FEAST_PG_SSLMODE": quoted(info.get("sslmode") or "prefer")}


def _column(values: pd.Series, kind: str) -> list:
    """A column as Python values for COPY: lists as lists, missing as None."""
    if kind.endswith("_list"):
        return [list(v) if isinstance(v, (list, tuple)) or hasattr(v, "__array__") else None for v in values]
    return [None if pd.isna(v) else v for v in values.tolist()]


def _copy(conn, target, columns: list[str], types: list[str], data: list[list]) -> None:
    """Write the columns `data` into `target` by binary COPY."""
    from psycopg import sql

    with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            target, sql.SQL(", ").join(map(sql.Identifier, columns)))) as copy:
        copy.set_types(types)
        for row in zip(*data):
            copy.write_row(row)


def _timestamps(values: pd.Series) -> list:
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True)).to_pydatetime().tolist()


def write_tables(database_url: str, tables: dict[str, pd.DataFrame], schemas: dict[str, dict[str, str]],
                 timestamp: str = "event_timestamp") -> dict[str, int]:
    """Replace each view's offline table with `tables[name]` (its features typed by `schemas[name]`,
    its entity key text, `timestamp` timestamptz): one transaction per table (readers see the old
    rows or the new), rows by binary COPY, an index on (key, timestamp) for the point-in-time join."""
    import psycopg
    from psycopg import sql

    counts = {}
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
        conn.commit()
        for name, frame in tables.items():
            features = schemas[name]
            keys = [c for c in frame.columns if c not in features and c != timestamp]
            columns = [*keys, *features, timestamp]
            types = [*(["text"] * len(keys)), *(PG_TYPES[features[f]] for f in features), "timestamptz"]
            target = sql.Identifier(SCHEMA, name)
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
                conn.execute(sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(
                    sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in zip(columns, types))))
                data = [_column(frame[k].astype(str), "string") for k in keys]
                data += [_column(frame[f], features[f]) for f in features]
                _copy(conn, target, columns, types, [*data, _timestamps(frame[timestamp])])
                conn.execute(sql.SQL("CREATE INDEX ON {} ({}, {})").format(
                    target, sql.SQL(", ").join(map(sql.Identifier, keys)), sql.Identifier(timestamp)))
                conn.execute(sql.SQL("ANALYZE {}").format(target))
            counts[name] = len(frame)
    return counts


@contextmanager
def label_table(database_url: str, labels: pd.DataFrame) -> Iterator[str]:
    """An entity query for Feast over `labels` (text, integer and timestamp columns): the rows are
    COPYed into a new table `offline.labels_<random>` (concurrent builds do not collide), which is
    dropped on exit. In the offline schema, one a crash left behind is still reached by erase_user."""
    import psycopg
    from psycopg import sql

    target = sql.Identifier(SCHEMA, f"labels_{uuid.uuid4().hex}")
    columns = list(labels.columns)
    types = [LABEL_TYPES[labels[c].dtype.kind] for c in columns]
    data = [_timestamps(labels[c]) if t == "timestamptz" else labels[c].astype(str if t == "text" else "int64").tolist()
            for c, t in zip(columns, types)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(target, sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in zip(columns, types))))
            _copy(conn, target, columns, types, data)
            conn.execute(sql.SQL("ANALYZE {}").format(target))
            yield sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)),
                                                      target).as_string(conn)
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))


def historical_features(store, database_url: str, labels: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """`store.get_historical_features(labels, features).to_df()` on the postgres offline store, fast.
    The labels go in by COPY (`label_table`; `store` is set to embed that query, so Feast copies
    nothing), and Feast's point-in-time SQL runs with nested-loop joins off: PostgreSQL estimates
    its CTEs at a row or two and joined two of them by nested loop (4,928 x 26,388 rows for
    user_recent_items on a 3,000-user world: 15.4 of 16.2 s; Feast's upload took 0.3 s)."""
    import psycopg
    import pyarrow as pa
    from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import (
        EntitySelectMode,
        PostgreSQLRetrievalJob,
    )
    from feast.type_map import pg_type_code_to_arrow

    class Job(PostgreSQLRetrievalJob):
        """Feast's retrieval job, its query run on a connection with nested-loop joins off."""

        def _to_arrow_internal(self, timeout=None) -> pa.Table:
            with psycopg.connect(database_url) as conn:
                conn.execute("SET enable_nestloop = off")
                cur = conn.execute(self.to_sql())
                schema = pa.schema([(c.name, pg_type_code_to_arrow(c.type_code)) for c in cur.description])
                columns = list(zip(*cur.fetchall())) or [()] * len(schema)
            return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)

    store.config.offline_store.entity_select_mode = EntitySelectMode.embed_query  # Feast copies no labels
    with label_table(database_url, labels) as query, warnings.catch_warnings():
        # Feast reads the entity query's columns with pandas over psycopg, which pandas warns of
        warnings.filterwarnings("ignore", "pandas only supports SQLAlchemy", UserWarning)
        job = store.get_historical_features(entity_df=query, features=features)
        return Job(job.to_sql(), job.config, job.full_feature_names, job.on_demand_feature_views,
                   job.metadata).to_df()


def erase_user(database_url: str, user_id: str) -> dict[str, int]:
    """Delete the user's rows from every table of the offline schema with a user_id column
    (the views' tables and the sink's events); returns rows removed per `offline.<table>`."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database_url) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = 'user_id' "
            "ORDER BY table_name", (SCHEMA,))]
        return {f"{SCHEMA}.{name}": conn.execute(sql.SQL("DELETE FROM {} WHERE user_id = %s").format(
            sql.Identifier(SCHEMA, name)), (user_id,)).rowcount for name in names}
