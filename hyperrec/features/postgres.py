"""Feast's registry and offline store in PostgreSQL: the cluster's Feast (`Settings.database_url`).

`feature_repo/feature_store.postgres[.redis].yaml` name Feast's SQL registry and `postgres`
offline store. Feast wants the database as separate fields (host, port, user, ...), while every
role gets one URL (HYPERREC_DATABASE_URL); `feast_env` derives the fields, which Feast expands
in the yaml. The offline tables live in the schema `offline` (`table`), one per feature view,
rewritten whole by `write_tables` with COPY.
"""

from __future__ import annotations

import json

import pandas as pd

SCHEMA = "offline"
PG_TYPES = {"string": "text", "float": "real", "int": "bigint", "string_list": "text[]", "int_list": "bigint[]"}


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
                data.append(pd.DatetimeIndex(pd.to_datetime(frame[timestamp], utc=True)).to_pydatetime().tolist())
                with conn.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
                        target, sql.SQL(", ").join(map(sql.Identifier, columns)))) as copy:
                    copy.set_types(types)
                    for row in zip(*data):
                        copy.write_row(row)
                conn.execute(sql.SQL("CREATE INDEX ON {} ({}, {})").format(
                    target, sql.SQL(", ").join(map(sql.Identifier, keys)), sql.Identifier(timestamp)))
                conn.execute(sql.SQL("ANALYZE {}").format(target))
            counts[name] = len(frame)
    return counts


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
