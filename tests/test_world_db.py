"""The world in PostgreSQL (hyperrec.data.world_db), as a cluster keeps it: a published world
reads back as it was written, every reader takes `db:world` like a folder, an erasure
leaves the user nowhere in it, and snapshots live in the artifact store an erasure walks."""

import dataclasses
import json

import pandas as pd
import psycopg
import pytest
from test_privacy import fresh_database, postgres_url  # noqa: F401  (a fixture)

from hyperrec.config import load_settings
from hyperrec.data import world_db
from hyperrec.data.generate import WorldConfig, generate_world
from hyperrec.data.world import save_world
from hyperrec.privacy.erasure import _erase_data_files

SMALL = dict(users=80, items=40, days=6, events=3_000, seed=5)


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(**SMALL))


@pytest.fixture
def cluster_settings(tmp_path, monkeypatch, postgres_url):  # noqa: F811
    """A role's workspace: its own home, the shared database, the artifact store elsewhere."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HYPERREC_DATABASE_URL", fresh_database(postgres_url))
    monkeypatch.setenv("HYPERREC_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    return load_settings(tmp_path / "home")


def _rows_naming(url: str, user_id: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(f"SELECT count(*) FROM world.{name} t WHERE t::text LIKE %s",
                                   (f"%{user_id}%",)).fetchone()[0] for name in ("users", "items", "events", "meta")}


def test_a_published_world_reads_back_as_it_was_written(world, cluster_settings):
    url = cluster_settings.database_url
    rows = world_db.publish_world(url, world)
    assert rows == {"users": len(world.users), "items": len(world.items), "events": len(world.events)}
    back = world_db.read_world(cluster_settings, world_db.WORLD_IN_DATABASE)  # validated against the schemas
    for name in world_db.TABLES:
        pd.testing.assert_frame_equal(getattr(back, name), getattr(world, name), check_exact=True)
    assert json.loads(json.dumps(world.meta, default=str)) == back.meta
    assert back.truth is None  # the simulator's truth is not the platform's data

    world_db.publish_world(url, dataclasses.replace(world, events=world.events.head(10)))
    assert len(world_db.load_world_db(url).events) == 10  # publishing again replaces


def test_recorded_events_prefer_the_database_world(world, cluster_settings, tmp_path):
    assert world_db.recorded_events(cluster_settings).empty  # neither a folder nor a published world
    save_world(world, cluster_settings.data_dir / "world")
    assert len(world_db.recorded_events(cluster_settings)) == len(world.events)
    world_db.publish_world(cluster_settings.database_url, dataclasses.replace(world, events=world.events.head(7)))
    assert len(world_db.recorded_events(cluster_settings)) == 7


def test_an_erasure_leaves_the_user_nowhere_in_the_database_world(world, cluster_settings):
    url = cluster_settings.database_url
    world_db.publish_world(url, world)
    user = str(world.events["user_id"].iloc[0])
    n_events = int((world.events["user_id"] == user).sum())
    assert world_db.erase_user(url, user) == {"world.users": 1, "world.events": n_events}
    assert _rows_naming(url, user) == {"users": 0, "items": 0, "events": 0, "meta": 0}
    assert world_db.erase_user(url, user) == {"world.users": 0, "world.events": 0}  # idempotent


def test_a_snapshot_of_the_database_world_lands_in_the_artifact_store_and_an_erasure_reaches_it(
        world, cluster_settings):
    from hyperrec.training.retrain import snapshot_world

    world_db.publish_world(cluster_settings.database_url, world)
    snapshot = snapshot_world(cluster_settings, cluster_settings.snapshots_dir / "run-1",
                              world_dir=world_db.WORLD_IN_DATABASE, merge_logged=False)
    assert snapshot.is_relative_to(cluster_settings.artifact_root)
    assert not snapshot.is_relative_to(cluster_settings.home)
    assert cluster_settings.data_roots == [cluster_settings.home, cluster_settings.artifact_root]
    assert len(pd.read_parquet(snapshot / "events.parquet")) == len(world.events)

    user = str(world.events["user_id"].iloc[0])
    removed = _erase_data_files(cluster_settings, user)
    assert removed == {"artifacts.snapshots/run-1/events.parquet": int((world.events["user_id"] == user).sum()),
                       "artifacts.snapshots/run-1/users.parquet": 1}
    assert user not in set(pd.read_parquet(snapshot / "events.parquet")["user_id"])


def test_the_database_world_needs_a_database(world, settings):
    with pytest.raises(ValueError, match="HYPERREC_DATABASE_URL"):
        world_db.read_world(settings, "db:world")
    assert settings.data_roots == [settings.home]  # the artifact store inside home by default


def test_a_role_takes_the_event_types_of_the_published_world(world, cluster_settings):
    """`role_event_types`: with a database_url, the published world's declaration; with
    none published there, the workspace's file (a role's home on a cluster is empty)."""
    from hyperrec.data.event_types import EventTypes

    assert not (cluster_settings.home / "event_types.json").exists()
    assert world_db.role_event_types(cluster_settings) == EventTypes()  # neither a world nor a file
    EventTypes({"shared": 0.5}).save(cluster_settings.home / "event_types.json")
    assert world_db.role_event_types(cluster_settings).declared == {"shared": 0.5}  # no world published: the file

    declared = dataclasses.replace(world, meta={**world.meta, "event_types": {"favourite": 2.0}})
    world_db.publish_world(cluster_settings.database_url, declared)
    (cluster_settings.home / "event_types.json").unlink()  # a role's emptyDir home
    types = world_db.role_event_types(cluster_settings)
    assert types.declared == {"favourite": 2.0}
    assert "favourite" in types.known and "favourite" in types.engaged
    assert world_db.published_meta(cluster_settings.database_url)["event_types"] == {"favourite": 2.0}


def test_an_unreachable_database_is_an_error_not_the_canonical_types(tmp_path, monkeypatch):
    from hyperrec.services import free_port

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HYPERREC_DATABASE_URL", f"postgresql://hyperrec@127.0.0.1:{free_port()}/nowhere")
    settings = load_settings(tmp_path / "home")
    with pytest.raises(RuntimeError, match="cannot read the published world"):
        world_db.role_event_types(settings)
