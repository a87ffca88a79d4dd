"""Feast operations the CLI, components and server share: write the offline tables, apply
the repo, materialize, build point-in-time training sets, read online user features."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.config import FEATURE_REPO, Settings, export_env
from hyperrec.data.world import World
from hyperrec.features.views import (
    FEATURE_VIEWS,
    MISSING,
    PANDAS_TYPES,
    REQUEST_CONTEXT,
    REQUEST_TS,
    USER_VIEWS,
    fill_missing,
    offline_tables,
    refs,
    request_context_features,
)

TS_SUFFIX = "__ts"  # Feast's suffix for a value's event timestamp in online responses


def _typed_lists(table: pd.DataFrame, features: dict[str, str]):
    """The table as Arrow with its list columns typed by the schema: a column whose lists
    are all empty (no served views in a history without requests) would otherwise be
    list<null>, which Feast cannot read back as strings."""
    import pyarrow as pa

    types = {"string_list": pa.list_(pa.string()), "int_list": pa.list_(pa.int64())}
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    for col, kind in features.items():
        if kind in types and col in arrow.column_names:
            arrow = arrow.set_column(arrow.column_names.index(col), col, arrow.column(col).cast(types[kind]))
    return arrow


def write_offline_tables(world: World, settings: Settings) -> dict[str, int]:
    """Write the tables behind each feature view (parquet files under home, or with a
    database_url PostgreSQL tables, hyperrec.features.postgres); return their row counts."""
    import pyarrow.parquet as pq

    schemas = {view.name: view.features for view in FEATURE_VIEWS}
    if settings.database_url:
        from hyperrec.features.postgres import write_tables

        return write_tables(settings.database_url, offline_tables(world), schemas)
    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, table in offline_tables(world).items():
        pq.write_table(_typed_lists(table, schemas[name]), settings.offline_dir / f"{name}.parquet")
        counts[name] = len(table)
    return counts


def apply_repo(settings: Settings) -> None:
    """`feast apply` on feature_repo/, in a child process (it chdirs and imports the repo)."""
    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast), "-c", str(FEATURE_REPO), "-f", str(settings.feature_store_yaml), "apply"]
    result = subprocess.run(cmd, env=feast_env(settings), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"feast apply failed:\n{result.stdout}\n{result.stderr}")


def feast_env(settings: Settings) -> dict[str, str]:
    """Environment for Feast's CLI: the settings' (export_env) plus the PostgreSQL fields the
    yaml of a database_url's mode expands (hyperrec.features.postgres.feast_env)."""
    from hyperrec.features.postgres import feast_env as postgres_env

    return export_env(settings) | postgres_env(settings.database_url)


def open_store(settings: Settings):
    """A FeatureStore for this workspace and its modes (Settings.feature_store_yaml). Feast
    expands ${HYPERREC_HOME}, ${HYPERREC_REDIS} and the PostgreSQL fields in the yaml from the
    process environment, so they are set here first."""
    from feast import FeatureStore

    from hyperrec._env import quiet_known_warnings
    from hyperrec.features.postgres import feast_env as postgres_env

    quiet_known_warnings()  # importing feast put its own filters in front
    os.environ["HYPERREC_HOME"] = str(settings.home)
    os.environ["HYPERREC_REDIS"] = settings.redis_url
    os.environ.update(postgres_env(settings.database_url))
    return FeatureStore(repo_path=str(FEATURE_REPO), fs_yaml_file=settings.feature_store_yaml)


def materialize(settings: Settings, start: datetime, end: datetime) -> None:
    """Backfill: load the latest feature values stamped in [start, end] into the online store."""
    open_store(settings).materialize(start_date=start, end_date=end)


def materialize_incremental(settings: Settings, end: datetime) -> None:
    """Load what arrived since each view's previous materialization, up to `end`
    (`feast materialize-incremental`)."""
    open_store(settings).materialize_incremental(end_date=end)


def training_set(settings: Settings, labels: pd.DataFrame, views=FEATURE_VIEWS, context: bool = False) -> pd.DataFrame:
    """Point-in-time join of the views' features onto `labels` (entity keys + event_timestamp):
    each row sees only feature values stamped at or before its own timestamp, within TTL.
    With `context`, the request-context on-demand features are computed too, with the
    label time as the request time.

    Every label row comes back exactly once, in order. Feast 0.67's file offline store drops
    an entity row when that entity has feature rows but none inside the row's TTL window
    (measured: 1,005 of 15,866 demo rows), so rows are matched back by position and the
    dropped ones get missing (then default) features instead of vanishing."""
    store = open_store(settings)
    keys = [k for k in ("user_id", "item_id") if k in labels]
    labels = labels.astype({k: object for k in keys}).reset_index(drop=True)  # Feast merges on object
    labels["_row"] = np.arange(len(labels))
    if context:
        labels[REQUEST_TS] = labels["event_timestamp"].astype("int64") // 10**9
    if settings.database_url:  # Feast's own upload and plan are slow there (postgres.historical_features)
        from hyperrec.features.postgres import historical_features

        sent = labels[[*keys, "event_timestamp", "_row", *([REQUEST_TS] if context else [])]]
        joined = historical_features(store, settings.database_url, sent, refs(views, context))
    else:
        joined = store.get_historical_features(entity_df=labels, features=refs(views, context)).to_df()
    if joined["_row"].duplicated().any():
        raise RuntimeError("Feast returned a label row more than once")
    names = [f for v in views for f in v.features] + (list(REQUEST_CONTEXT) if context else [])
    out = labels.merge(joined[["_row", *names]], on="_row", how="left").drop(columns="_row")
    return fill_missing(out, views)


def online_features(store, views, key: str, ids: list[str], now: datetime | None = None,
                    context: bool = False) -> pd.DataFrame:
    """Online feature values for `ids`, with values older than their view's TTL as missing.

    Feast 0.67 serves online values past the TTL as if present (checked here: a two-day TTL
    value ten months old came back), so each value's event timestamp is checked against
    `now`, and stale or absent values become typed defaults. Built column by column from
    Feast's dict (not per-column pandas ops): this runs on every request."""
    now_s = (now or datetime.now(UTC)).timestamp()
    rows = [{key: i, REQUEST_TS: int(now_s)} if context else {key: i} for i in ids]
    data = store.get_online_features(features=refs(views, context), entity_rows=rows).to_dict(
        include_event_timestamps=True)
    columns: dict[str, object] = {key: list(ids)}
    specs = [(f, kind, v.ttl) for v in views for f, kind in v.features.items()]
    specs += [(f, kind, None) for f, kind in REQUEST_CONTEXT.items()] if context else []
    for name, kind, ttl in specs:
        values, stamps = data[name], data.get(name + TS_SUFFIX) or [0] * len(ids)
        oldest = now_s - ttl.total_seconds() if ttl else -np.inf
        fresh = [v if v is not None and t >= oldest else None for v, t in zip(values, stamps)]
        if kind.endswith("_list"):
            columns[name] = [list(v) if v is not None else [] for v in fresh]
        else:
            default = MISSING[kind]
            columns[name] = np.asarray([default if v is None else v for v in fresh], dtype=PANDAS_TYPES[kind])
    return pd.DataFrame(columns)


def online_user_features(store, user_ids: list[str], now: datetime | None = None) -> pd.DataFrame:
    """Fresh user features and request context for serving (missing or expired values get
    typed defaults; the request time is `now`).

    The context is computed here by the same function the `request_context` on-demand view
    runs (so training and serving agree): going through Feast's on-demand machinery costs
    ~5.5 ms per request, the function itself well under one."""
    now = now or datetime.now(UTC)
    users = online_features(store, USER_VIEWS, "user_id", user_ids, now)
    request = pd.DataFrame({REQUEST_TS: int(now.timestamp()), "last_event_ts": users["last_event_ts"]})
    return pd.concat([users, request_context_features(request), request[[REQUEST_TS]]], axis=1)
