"""The walking skeleton on tiny data: every stage real, one real HTTP server at the end."""

import json

import pandas as pd
import pytest
import requests

from hyperrec.features import USER_ACTIVITY
from hyperrec.interactions import positives, temporal_split
from hyperrec.registry import configure
from hyperrec.windows import replay
from pipelines.run import compile_pipeline, run_local
from serving.launch import recommend, start_server, stop_server, wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(make_workspace):
    """World -> Feast -> kfp.local pipeline, once for the module's tests."""
    with make_workspace("skeleton", users=150, items=80, days=10, events=15_000, seed=5) as (settings, world):
        version = run_local(settings, settings.data_dir / "world", epochs=2, k=20)
        yield settings, world, version


def test_pipeline_registers_a_champion_with_its_evaluation(trained):
    settings, _, version = trained
    assert version == 1
    client = configure(settings)
    mv = client.get_model_version_by_alias(settings.model_name, "champion")
    assert int(mv.version) == version
    metrics = client.get_run(mv.tags["run_id"]).data.metrics
    assert 0.0 <= metrics["recall_at_20"] <= 1.0 and metrics["eval_users"] > 50
    assert {"ndcg_at_10", "popularity_recall_at_20"} <= set(metrics)


def test_training_rows_carry_point_in_time_features(trained):
    settings, world, _ = trained
    run_dirs = sorted(settings.pipeline_root.glob("hyperrec-training-*/build-training-set/training_set"))
    train = pd.read_parquet(run_dirs[-1] / "train.parquet")
    split_train, _ = temporal_split(positives(world.events))
    assert len(train) == len(split_train)  # no label row lost in the join
    snaps = replay(world.events)["user_activity"].sort_values("event_timestamp")
    expected = pd.merge_asof(
        train.sort_values("event_timestamp")[["user_id", "event_timestamp"]].astype({"user_id": str}),
        snaps, on="event_timestamp", by="user_id", direction="backward",
        tolerance=USER_ACTIVITY.ttl)
    got = train.sort_values("event_timestamp")["clicks_7d"].to_numpy()
    assert (got == expected["clicks_7d"].fillna(0).astype(int).to_numpy()).all()


def test_server_answers_over_real_http(trained, free_port):
    settings, world, version = trained
    proc = start_server(settings, free_port, settings.home / "server.log")
    try:
        wait_ready(proc, free_port)
        users = world.users["user_id"].iloc[:2].tolist()
        recs = recommend(free_port, users + ["someone-new"], k=5)
        assert [r["user_id"] for r in recs] == users + ["someone-new"]
        titles = world.items.set_index("item_id")["title"]
        for rec in recs:
            assert rec["model_version"] == version and len(rec["items"]) == 5
            assert len({i["item_id"] for i in rec["items"]}) == 5
            assert all(titles[i["item_id"]] == i["title"] for i in rec["items"])
            scores = [i["score"] for i in rec["items"]]
            assert scores == sorted(scores, reverse=True)
        url = f"http://127.0.0.1:{free_port}/v1/models/recommender:predict"
        for headers in ({}, {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}):
            bad = requests.post(url, data=b"{bad", headers=headers, timeout=10)
            assert bad.status_code == 400 and bad.json()["error"], headers
        bad = requests.post(url, json={"instances": [{"user_id": "u", "k": 0}]}, timeout=10)
        assert bad.status_code == 400 and "k" in bad.json()["error"]
        missing = requests.post(f"http://127.0.0.1:{free_port}/v1/models/nope:predict", json={}, timeout=10)
        assert missing.status_code == 404
        assert proc.poll() is None  # bad input never takes the process down
    finally:
        stop_server(proc)


def test_pipeline_compiles_to_kfp_ir(tmp_path):
    import yaml

    spec = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "hyperrec-training"
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"build-training-set", "train-models", "evaluate-model", "register-model"}
    assert json.dumps(spec).count("hyperrec/platform:0.1.0") == 4
