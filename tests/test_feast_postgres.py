"""The cluster's Feast against a real PostgreSQL: the SQL registry and the `postgres` offline
store in the database of HYPERREC_DATABASE_URL. The same world built both ways gives the same
point-in-time training set and the same online features as the embedded DuckDB path."""

import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pandas as pd
import psycopg
import pytest
from rich.console import Console

from hyperrec.config import load_settings
from hyperrec.data.event_types import EventTypes
from hyperrec.data.interactions import positives, temporal_split
from hyperrec.features.postgres import feast_env, label_table
from hyperrec.features.store import online_user_features, open_store, training_set
from hyperrec.features.views import FEATURE_VIEWS, ITEM_METADATA, USER_VIEWS
from hyperrec.services import postgres_server
from hyperrec.steps import feature_step
from hyperrec.training.dataset import TRAINING_VIEWS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def both(make_workspace, tmp_path_factory):
    """One world in Feast twice: the embedded workspace (file registry, DuckDB over parquet)
    and a second workspace on PostgreSQL (its world copied, `hyperrec features build`'s step)."""
    with make_workspace("feast-duckdb", users=150, items=60, days=8, events=6_000, seed=4) as (duck, world), \
            postgres_server() as url:
        home = tmp_path_factory.mktemp("feast-postgres")
        shutil.copytree(duck.data_dir / "world", home / "data" / "world")
        env = pytest.MonkeyPatch()
        env.setenv("HYPERREC_HOME", str(home))
        env.setenv("HYPERREC_DATABASE_URL", url)
        try:
            pg = load_settings(home)
            feature_step(pg, pg.data_dir / "world", Console(quiet=True))  # tables, apply, materialize
            yield duck, pg, world, url
        finally:
            env.undo()


def _same(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> None:
    a, b = (f.sort_values(keys, kind="stable").reset_index(drop=True) for f in (a, b))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)


def test_the_postgres_mode_keeps_registry_and_offline_tables_in_the_database(both):
    _, pg, _, url = both
    assert pg.feature_store_yaml.name == "feature_store.postgres.yaml"
    config = open_store(pg).config
    assert config.registry.registry_type == "sql" and config.offline_store.type == "postgres"
    assert config.online_store.type == "sqlite"
    assert not (pg.feast_dir / "registry.db").exists() and not pg.offline_dir.exists()
    with psycopg.connect(url) as conn:
        views = {r[0] for r in conn.execute("SELECT feature_view_name FROM feature_views")}
        assert views == {v.name for v in FEATURE_VIEWS}
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'offline'")}
        assert tables == {v.name for v in FEATURE_VIEWS}


def test_the_point_in_time_training_set_is_the_same_as_duckdbs(both):
    duck, pg, world, url = both
    pos = positives(world.events, 0.5, EventTypes.of_world(world.meta).weights)
    train, test = temporal_split(pos)
    for labels in (train, test):
        labels = labels.rename(columns={"ts": "event_timestamp"})
        _same(training_set(duck, labels, views=TRAINING_VIEWS, context=True),
              training_set(pg, labels, views=TRAINING_VIEWS, context=True), ["user_id", "item_id", "event_timestamp"])
    # a request far past the history: every TTL'd view has expired, the TTL-less ones have not
    late = pd.DataFrame({"user_id": world.users["user_id"].astype(str),
                         "event_timestamp": world.events["ts"].max() + timedelta(days=40)})
    got = training_set(pg, late, views=USER_VIEWS, context=True)
    _same(training_set(duck, late, views=USER_VIEWS, context=True), got, ["user_id"])
    assert (got["views_7d"] == 0).all() and (got["region"] != "").all()
    catalog = world.items[["item_id"]].astype({"item_id": str}).assign(event_timestamp=world.events["ts"].max())
    _same(training_set(duck, catalog, views=(ITEM_METADATA,)), training_set(pg, catalog, views=(ITEM_METADATA,)),
          ["item_id"])
    assert _label_tables(url) == []


def _label_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = 'offline' AND table_name LIKE 'labels%'")]


def test_label_tables_are_unique_and_dropped_even_on_failure(both):
    url = both[3]
    labels = pd.DataFrame({"user_id": ["u1", "u2"], "_row": [0, 1],
                           "event_timestamp": pd.to_datetime(["2026-01-02 10:00", "2026-01-03 00:00"], utc=True)})
    with label_table(url, labels) as a, label_table(url, labels) as b, psycopg.connect(url) as conn:
        assert a != b and len(_label_tables(url)) == 2
        rows = [tuple(r) for r in labels.itertuples(index=False)]
        assert conn.execute(a).fetchall() == conn.execute(b).fetchall() == rows
    assert _label_tables(url) == []
    with pytest.raises(RuntimeError, match="mid-join"), label_table(url, labels):
        raise RuntimeError("mid-join")
    assert _label_tables(url) == []


def test_concurrent_training_sets_do_not_collide(both):
    duck, pg, world, url = both
    labels = pd.DataFrame({"user_id": world.users["user_id"].astype(str),
                           "event_timestamp": world.events["ts"].max() - timedelta(days=1)})
    want = training_set(duck, labels, views=USER_VIEWS, context=True)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: training_set(pg, labels, views=USER_VIEWS, context=True), range(2)))
    for got in runs:
        _same(want, got, ["user_id"])
    assert _label_tables(url) == []


def test_materialization_reads_the_postgres_tables(both):
    duck, pg, world, _ = both
    users = world.users["user_id"].astype(str).tolist()
    now = world.events["ts"].max() + timedelta(hours=1)
    _same(online_user_features(open_store(duck), users, now=now), online_user_features(open_store(pg), users, now=now),
          ["user_id"])


def test_feast_fields_come_from_the_url():
    env = feast_env('postgresql://feast:p%40ss"w@db.example:6543/features?sslmode=require')
    assert env == {"HYPERREC_FEAST_PG_REGISTRY": 'postgresql+psycopg://feast:p%40ss\\"w@db.example:6543/features'
                                                 "?sslmode=require",
                   "HYPERREC_FEAST_PG_HOST": "db.example", "HYPERREC_FEAST_PG_PORT": "6543",
                   "HYPERREC_FEAST_PG_DATABASE": "features", "HYPERREC_FEAST_PG_USER": "feast",
                   "HYPERREC_FEAST_PG_PASSWORD": 'p@ss\\"w', "HYPERREC_FEAST_PG_SSLMODE": "require"}
    assert feast_env(None) == {}


def test_the_database_url_and_the_online_store_pick_the_yaml():
    from pathlib import Path

    from hyperrec.config import Settings

    names = {(db, online): Settings(home=Path("/x"), tracking_uri="x", online_store=online,
                                    database_url=db).feature_store_yaml for db in (None, "postgresql://h/d")
             for online in ("sqlite", "redis")}
    assert {k: p.name for k, p in names.items()} == {
        (None, "sqlite"): "feature_store.yaml", (None, "redis"): "feature_store.redis.yaml",
        ("postgresql://h/d", "sqlite"): "feature_store.postgres.yaml",
        ("postgresql://h/d", "redis"): "feature_store.postgres.redis.yaml"}
    assert all(p.exists() for p in names.values())
