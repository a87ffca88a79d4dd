"""The walking skeleton on tiny data through the kfp.local pipeline: every stage real (the
server over real HTTP is tested in test_serving.py)."""

import json

import numpy as np
import pandas as pd
import pytest

from hyperrec.data.interactions import positives, temporal_split
from hyperrec.features.views import USER_ACTIVITY
from hyperrec.features.windows import replay
from hyperrec.models.ranking import RankerConfig
from hyperrec.registry.model_registry import configure
from hyperrec.training.dataset import usable_events
from pipelines.run import compile_pipeline, run_local

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(make_workspace):
    """World -> Feast -> kfp.local pipeline, once for the module's tests. The smallest world
    where personalisation beats popularity by the gate's margin (at 150 users x 80 items
    popularity wins: measured NDCG@10 0.19 vs 0.13)."""
    with make_workspace("skeleton", users=400, items=200, days=10, events=40_000, seed=5) as (settings, world):
        result = run_local(settings, settings.data_dir / "world", epochs=6, k=20)
        assert result.blessed, "the first model only has to beat popularity"
        assert result.deploy_status == "alias-moved"  # no endpoint: servers follow the alias on their own
        yield settings, world, result.version


def test_pipeline_registers_a_champion_with_its_evaluation(trained):
    settings, _, version = trained
    assert version == 1
    client = configure(settings)
    mv = client.get_model_version_by_alias(settings.model_name, "champion")
    assert int(mv.version) == version
    metrics = client.get_run(mv.tags["run_id"]).data.metrics
    assert 0.0 <= metrics["recall_at_20"] <= 1.0 and metrics["eval_users"] > 50
    assert {"ndcg_at_10", "popularity_recall_at_20", "retrieval_ndcg_at_10", "coverage_at_10"} <= set(metrics)
    run = client.get_run(mv.tags["run_id"])
    assert run.data.tags["gate"] == "blessed" and len(run.data.tags["dataset_fingerprint"]) == 16
    assert run.data.tags["git_commit"]
    # the registered folder is the served unit build_index assembled (index included), with
    # every step's report: its towers were fit on the test rows too, the evaluated twin's not
    params = run.data.params
    assert params["index_kind"] == "brute" and float(params["index_items"]) > 0
    assert {"epochs", "ranker_examples", "train_seconds"} <= set(params)
    run_dir = sorted(settings.pipeline_root.glob("hyperrec-training-*/build-index"))[0]
    evaluated = json.loads((run_dir / "model" / "training.json").read_text())
    served = json.loads((run_dir / "serving_model" / "training.json").read_text())
    test_rows = len(pd.read_parquet(run_dir.parent / "build-training-set" / "training_set" / "test.parquet"))
    assert served["refit_rows"] == evaluated["train_rows"] + test_rows and test_rows > 0
    assert served["data_end"] > evaluated["data_end"] and float(params["refit_rows"]) == served["refit_rows"]
    assert run.data.tags["gate_compared_on"] == "all test interactions"  # the first model: no champion
    assert mv.tags["deploy_status"] == "alias-moved"
    # train-retrieval logged each epoch, as it trained, into the run register-model logged the version in
    holdout = [m.step for m in client.get_metric_history(mv.tags["run_id"], "retrieval_holdout_loss")]
    assert holdout and holdout == list(range(1, len(holdout) + 1))
    refit = [m.step for m in client.get_metric_history(mv.tags["run_id"], "serving_retrieval_loss")]
    assert refit == list(range(1, int(float(params["epochs"])) + 1)) and "mlflow_run_id" not in params
    ranker = client.get_metric_history(mv.tags["run_id"], "ranker_loss")  # train-ranking's, into the same run
    assert [m.step for m in ranker] == list(range(1, RankerConfig().epochs + 1))
    assert all(np.isfinite(m.value) and m.value > 0 for m in ranker)
    assert mv.tags["feast_feature_service"] == settings.model_name.replace("-", "_")


def test_training_rows_carry_point_in_time_features(trained):
    settings, world, _ = trained
    run_dirs = sorted(settings.pipeline_root.glob("hyperrec-training-*/build-training-set/training_set"))
    train = pd.read_parquet(run_dirs[-1] / "train.parquet")
    usable = usable_events(settings, world.events)  # consented, not erased
    # users without consent (~8%) and events before a user's consent are left out
    assert 0 < len(world.events) - len(usable) < 0.2 * len(world.events)
    split_train, _ = temporal_split(positives(usable))
    assert len(train) == len(split_train)  # no label row lost in the join
    snaps = replay(world.events)["user_activity"].sort_values("event_timestamp")
    expected = pd.merge_asof(
        train.sort_values("event_timestamp")[["user_id", "event_timestamp"]].astype({"user_id": str}),
        snaps, on="event_timestamp", by="user_id", direction="backward",
        tolerance=USER_ACTIVITY.ttl)
    got = train.sort_values("event_timestamp")["clicks_7d"].to_numpy()
    assert (got == expected["clicks_7d"].fillna(0).astype(int).to_numpy()).all()


def test_pipeline_compiles_to_kfp_ir(tmp_path):
    import yaml

    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text())
    assert spec["pipelineInfo"]["name"] == "hyperrec-training"
    steps = ("snapshot-data", "validate-data", "build-training-set", "train-retrieval", "train-ranking", "build-index",
             "evaluate-model", "gate-model", "register-model", "deploy")
    assert set(spec["components"]) == {f"comp-{t}" for t in steps} | {"comp-condition-1"}
    assert json.dumps(spec).count("hyperrec/platform:0.1.0") == len(steps)
    # evaluation reads the unit whose towers never saw the test rows, registration its twin
    # fit with them too, both assembled by build_index; deploy acts on register's outputs
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    for task, unit in (("evaluate-model", "model"), ("register-model", "serving_model")):
        model = inner[task]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
        assert model == {"producerTask": "build-index", "outputArtifactKey": unit}
    deploy_inputs = inner["deploy"]["inputs"]["parameters"]
    assert {deploy_inputs[p]["taskOutputParameter"]["producerTask"] for p in ("version", "blessed")} == {
        "register-model"}
    # everything after the data gate sits under its condition; the snapshot comes before it
    assert set(spec["root"]["dag"]["tasks"]) == {"snapshot-data", "validate-data", "condition-1"}
    # secrets come from Kubernetes Secrets, never from pipeline parameters
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = {s["secretName"] for e in executors.values() for s in e.get("secretAsEnv", [])}
    assert secrets == {"hyperrec-mlflow", "hyperrec-hmac", "hyperrec-database"}
    # every task reaches the database that holds the privacy state (and Feast's, on a cluster)
    assert all("hyperrec-database" in {s["secretName"] for s in e.get("secretAsEnv", [])}
               for e in executors.values())
    assert not any("password" in p.lower() or "hmac" in p.lower()
                   for p in spec["root"]["inputDefinitions"]["parameters"])


def test_bad_data_stops_at_the_data_gate_with_nothing_registered(trained, tmp_path):
    settings, world, _ = trained
    client = configure(settings)
    before = len(client.search_model_versions(f"name = '{settings.model_name}'"))
    bad = tmp_path / "bad-world"
    bad.mkdir()
    events = pd.concat([world.events, world.events.iloc[:2_000]])  # a replayed batch: duplicates
    events.to_parquet(bad / "events.parquet", index=False)
    world.users.to_parquet(bad / "users.parquet", index=False)
    world.items.to_parquet(bad / "items.parquet", index=False)
    result = run_local(settings, bad, epochs=1, k=20)
    assert result.stopped_at_data_gate
    assert len(client.search_model_versions(f"name = '{settings.model_name}'")) == before
    report = result.data_report.read_text()
    assert "# Data gate: FAILED" in report and "| events: duplicates | **FAIL**" in report


def test_worse_model_is_rejected_and_the_alias_stays(trained):
    """The gate -> register -> deploy tail of the pipeline, in-process on the functions its
    components call (a second kfp.local training run cost minutes of suite time): a candidate
    far below the champion on the same metrics is registered as rejected, nothing moves."""
    from hyperrec.evaluation.gate import ModelGateConfig, decide
    from hyperrec.registry.deploy import deploy
    from hyperrec.registry.model_registry import champion_model_dir, register_model

    settings, _, first = trained
    client = configure(settings)
    champion = client.get_run(client.get_model_version_by_alias(settings.model_name, "champion").tags["run_id"])
    champion_metrics = champion.data.metrics
    metric = ModelGateConfig().metric
    worse = {**champion_metrics, metric: champion_metrics[metric] * 0.4}  # beyond the online-trial margin
    verdict = decide(worse, champion_metrics)
    assert not verdict.blessed
    version = register_model(settings, champion_model_dir(settings), {"epochs": 1}, worse, verdict.to_dict())
    assert version == first + 1
    assert deploy(settings, settings.model_name, version, verdict.blessed, None)["status"] == "skipped"
    assert int(client.get_model_version_by_alias(settings.model_name, "champion").version) == first
    mv = client.get_model_version(settings.model_name, str(version))
    assert mv.tags["gate"] == "rejected" and "vs champion" in mv.tags["rejected_because"]
    assert mv.tags["deploy_status"] == "skipped"


def test_promote_and_rollback_move_the_alias_and_record_why(trained):
    from hyperrec.registry.model_registry import alias_history, champion_version, move_alias, rollback

    settings, _, first = trained
    move_alias(settings, first + 1, "promote: testing by hand")
    assert champion_version(settings) == first + 1
    entry = rollback(settings, "it was worse")
    assert champion_version(settings) == first and entry["previous"] == first + 1
    reasons = [h["reason"] for h in alias_history(settings)]
    assert reasons == ["passed the model gate", "promote: testing by hand", "rollback: it was worse"]


def test_a_blessed_retrain_holds_back_the_champion_it_replaces(trained):
    """register_model with the gate's holdback: the new version is champion and the one it
    replaced is the challenger, so the monitoring job's trial compares them online."""
    from hyperrec.evaluation.gate import decide
    from hyperrec.registry.model_registry import (
        challenger_version,
        champion_model_dir,
        champion_version,
        end_challenger,
        move_alias,
        register_model,
    )

    settings, _, first = trained
    client = configure(settings)
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    metrics = client.get_run(champion.tags["run_id"]).data.metrics
    verdict = decide({**metrics, "ndcg_at_10": metrics["ndcg_at_10"] * 1.2}, metrics)
    assert verdict.blessed and verdict.holdback
    try:
        version = register_model(settings, champion_model_dir(settings), {}, {}, verdict.to_dict())
        assert champion_version(settings) == version and challenger_version(settings) == first
        assert client.get_model_version(settings.model_name, str(first)).tags["canary_reason"].startswith("holdback")
    finally:
        end_challenger(settings, "retired", "test over")
        move_alias(settings, first, "test over: back to the first")
    assert champion_version(settings) == first and challenger_version(settings) is None


def test_the_champion_comparison_can_be_limited_to_interactions_after_its_data_end(trained):
    """What evaluate_model does when the champion was fit on test rows it is now judged on:
    only later interactions, and only their users, count."""
    from hyperrec.training.fit import data_end, evaluate_model

    settings, _, _ = trained
    run = sorted(settings.pipeline_root.glob("hyperrec-training-*/build-index"))[0].parent
    data, unit = run / "build-training-set" / "training_set", run / "build-index" / "model"
    test = pd.read_parquet(data / "test.parquet")
    cut = test["ts"].quantile(0.5)
    everyone, later = evaluate_model(unit, data), evaluate_model(unit, data, after=cut)
    assert later["eval_users"] == test.loc[test["ts"] > cut, "user_id"].nunique() < everyone["eval_users"]
    assert data_end(unit) == pd.read_parquet(data / "train.parquet")["event_timestamp"].max()
