"""Feast on the embedded stores: point-in-time joins without leakage, TTL on both paths."""

from datetime import timedelta

import pandas as pd
import pytest

from hyperrec.features.store import online_user_features, open_store, training_set
from hyperrec.features.views import USER_ACTIVITY
from hyperrec.features.windows import replay

pytestmark = pytest.mark.slow
TTL = USER_ACTIVITY.ttl


@pytest.fixture(scope="module")
def store_world(make_workspace):
    with make_workspace("fs", users=100, items=50, days=8, events=5_000, seed=9) as built:
        yield built


def _consecutive_snapshots(world):
    """A user with two activity snapshots less than the TTL apart, and different values."""
    snaps = replay(world.events)["user_activity"].sort_values(["user_id", "event_timestamp"])
    nxt = snaps.groupby("user_id").shift(-1)
    ok = (nxt["event_timestamp"] - snaps["event_timestamp"] < TTL) & (nxt["views_7d"] != snaps["views_7d"])
    row = snaps[ok].iloc[0]
    return row["user_id"], row, nxt[ok].iloc[0]


def test_point_in_time_join_never_sees_the_future(store_world):
    settings, world = store_world
    user, first, second = _consecutive_snapshots(world)
    t2 = second["event_timestamp"]
    labels = pd.DataFrame({"user_id": [user] * 2, "event_timestamp": [t2 - timedelta(seconds=1), t2]})
    got = training_set(settings, labels, views=(USER_ACTIVITY,))
    # one second before the newer snapshot, only the older one is visible
    assert got["views_7d"].tolist() == [first["views_7d"], second["views_7d"]]


def test_offline_values_older_than_the_ttl_come_back_missing(store_world):
    settings, world = store_world
    snaps = replay(world.events)["user_activity"].sort_values("event_timestamp")
    last = snaps.groupby("user_id").tail(1).query("views_7d > 0").iloc[0]
    labels = pd.DataFrame({"user_id": [last["user_id"]] * 2,
                           "event_timestamp": [last["event_timestamp"] + TTL - timedelta(seconds=1),
                                               last["event_timestamp"] + TTL + timedelta(hours=1)]})
    got = training_set(settings, labels, views=(USER_ACTIVITY,))
    assert got["views_7d"].tolist() == [last["views_7d"], 0]


def test_online_reads_treat_values_past_ttl_as_missing(store_world):
    settings, world = store_world
    snaps = replay(world.events)["user_activity"].sort_values("event_timestamp")
    last = snaps.groupby("user_id").tail(1).query("views_7d > 0").iloc[0]
    store = open_store(settings)
    fresh = online_user_features(store, [last["user_id"]], now=last["event_timestamp"] + timedelta(hours=1))
    assert fresh.loc[0, "views_7d"] == last["views_7d"]
    stale = online_user_features(store, [last["user_id"]], now=last["event_timestamp"] + TTL + timedelta(hours=1))
    assert stale.loc[0, "views_7d"] == 0 and stale.loc[0, "clicks_7d"] == 0
    profile = world.users.set_index("user_id").loc[last["user_id"]]
    assert stale.loc[0, "age_band"] == profile["age_band"]  # no TTL on the profile view


def test_incremental_materialization_loads_only_what_is_new(store_world):
    from hyperrec.features.store import materialize_incremental

    settings, world = store_world
    path = settings.offline_dir / "user_activity.parquet"
    table = pd.read_parquet(path)
    late = table.iloc[[-1]].copy()
    later = world.events["ts"].max() + timedelta(hours=1)
    late["user_id"], late["event_timestamp"], late["views_7d"] = "u-late", later, 41
    pd.concat([table, late]).to_parquet(path, index=False)
    store = open_store(settings)
    assert online_user_features(store, ["u-late"], now=later).loc[0, "views_7d"] == 0
    materialize_incremental(settings, (later + timedelta(minutes=1)).to_pydatetime())
    assert online_user_features(store, ["u-late"], now=later).loc[0, "views_7d"] == 41


def test_a_workspace_without_a_newer_view_fails_at_startup_naming_the_fix(settings):
    """A workspace built before `user_purchases` existed: the server's reader refuses at
    load time instead of failing every request."""
    import sqlite3

    from hyperrec.features.online_reader import PROJECT, OnlineUserReader
    from hyperrec.features.views import SERVING_USER_VIEWS, USER_VIEWS

    settings.feast_dir.mkdir(parents=True)
    db = sqlite3.connect(settings.feast_dir / "online_store.db")
    for view in USER_VIEWS:  # everything but the purchases
        db.execute(f'CREATE TABLE "{PROJECT}_{view.name}" (entity_key BLOB, feature_name TEXT, value BLOB, '
                   "event_ts TIMESTAMP, created_ts TIMESTAMP)")
    db.commit()
    db.close()
    OnlineUserReader(settings, USER_VIEWS).check()
    with pytest.raises(RuntimeError,
                       match=r"no table for \['user_purchases', 'user_recent_views'\].*hyperrec features build"):
        OnlineUserReader(settings, SERVING_USER_VIEWS).check()


def test_feast_cli_plans_a_built_workspace_as_feature_repo_readme_says(store_world):
    """`export HYPERREC_HOME=...; feast -c feature_repo plan` (feature_repo/README.md): the
    repository the platform applied has nothing to create or delete (Feast lists views as
    "Updated" when only their metadata timestamps differ)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hyperrec.config import FEATURE_REPO, PROJECT_ROOT

    settings, _ = store_world
    feast = Path(sys.executable).with_name("feast")
    env = os.environ | {"HYPERREC_HOME": str(settings.home)}
    out = subprocess.run([str(feast), "-c", str(FEATURE_REPO.relative_to(PROJECT_ROOT)), "plan"], cwd=PROJECT_ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    changes = [line for line in out.stdout.splitlines() if line.startswith(("Created", "Deleted"))]
    assert "Updated feature view user_activity" in out.stdout and changes == [], out.stdout[-2000:]
