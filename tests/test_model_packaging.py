"""A registered model version is usable outside this project: it ships its code, pinned
requirements, a signature and an input example; its training run holds per-epoch metrics;
it names the Feast FeatureService of the features it reads, and that service resolves."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hyperrec.config import PROJECT_ROOT
from hyperrec.models.two_tower import USER_INPUTS

pytestmark = pytest.mark.slow


def _frames(n_users=40, n_items=60, rows=2_000, seed=0):
    """A tiny training set (no feature store): each user likes one of three categories."""
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)],
                          "category": np.array(["red", "green", "blue"])[np.arange(n_items) % 3],
                          "brand": "acme", "price_bucket": 3, "title": [f"item {j}" for j in range(n_items)]})
    items["description"] = items["category"] + " thing number " + items["item_id"]
    items["created_ts"] = pd.Timestamp("2023-12-01", tz="UTC")
    taste = rng.integers(0, 3, n_users)
    users = rng.integers(0, n_users, rows)
    picks = np.array([rng.choice(np.flatnonzero(np.arange(n_items) % 3 == taste[u])) for u in users])
    train = pd.DataFrame({"user_id": [f"u{u}" for u in users], "item_id": items["item_id"].to_numpy()[picks]})
    train = train.merge(items.drop(columns=["title", "created_ts"]), on="item_id", how="left")
    train["recent_items"] = (train.groupby("user_id")["item_id"]
                             .transform(lambda s: pd.Series([list(s.iloc[max(0, i - 5):i][::-1])
                                                             for i in range(len(s))], index=s.index)))
    train["age_band"], train["region"] = "x", "y"
    for col, kind in USER_INPUTS.items():
        if kind in ("int", "float") and col not in train:
            train[col] = 0
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(train)), unit="min")
    train["event_timestamp"], train["request_ts"] = ts, ts.astype("int64") // 10**9
    return train, items


@pytest.fixture(scope="module")
def registered(make_workspace, tmp_path_factory):
    """A workspace with Feast applied; a small model trained inside a training run (per-epoch
    metrics) and registered into that run."""
    from hyperrec.models.ranking import RankerConfig
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.registry.model_registry import register_model, training_run
    from hyperrec.training.fit import fit_models

    with make_workspace("packaging", users=100, items=50, days=8, events=5_000, seed=3) as (settings, world):
        root = tmp_path_factory.mktemp("packaging-model")
        train, items = _frames()
        (root / "data").mkdir()
        train.to_parquet(root / "data" / "train.parquet", index=False)
        items.to_parquet(root / "data" / "items.parquet", index=False)
        with training_run(settings) as (run_id, epoch_metrics):
            report = fit_models(root / "data", root / "unit", TwoTowerConfig(epochs=3, batch_size=64, embedding_dim=16),
                                RankerConfig(candidates=20, epochs=1), log=lambda *_: None,
                                epoch_metrics=epoch_metrics)
        version = register_model(settings, root / "unit", {"epochs": report["epochs"]}, {"ndcg_at_10": 0.1},
                                 {"blessed": True, "reasons": []}, run_id=run_id)
        yield {"settings": settings, "world": world, "version": version, "run_id": run_id, "report": report,
               "uri": f"models:/{settings.model_name}/{version}"}


def test_the_version_has_a_signature_an_input_example_and_pinned_requirements(registered):
    import mlflow

    from hyperrec.registry.model_registry import configure

    configure(registered["settings"])
    info = mlflow.models.get_model_info(registered["uri"])
    assert info.signature is not None
    assert info.signature.inputs.input_names() == [*USER_INPUTS, "request_ts"]
    assert info.signature.outputs.input_names() == ["item_ids", "scores"]
    assert info.signature.params.to_dict()[0]["name"] == "k"
    assert info.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts(registered["uri"]))
    example = json.loads((local / "input_example.json").read_text())
    assert "example-user" in json.dumps(example) and not any(f'"u{n}"' in json.dumps(example) for n in range(40))
    # requirements resolve from PyPI: no `hyperrec`, every one pinned to the locked version
    requirements = (local / "requirements.txt").read_text().split()
    assert requirements and not [r for r in requirements if "hyperrec" in r or "==" not in r]
    lock = {line.split("==")[0].lower(): line.split("==")[1].split()[0].rstrip("\\").strip()
            for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines() if "==" in line
            and not line.startswith(" ")}
    names = {r.split("==")[0].lower(): r.split("==")[1] for r in requirements}
    assert {"numpy", "pandas", "tensorflow", "tf-keras", "tensorflow-recommenders", "mlflow"} <= set(names)
    assert {n: v for n, v in names.items() if lock.get(n) != v} == {}
    # the code it needs is in the version, hyperrec's own modules only
    code = local / "code" / "hyperrec"
    assert (code / "models" / "recommender.py").is_file() and (code / "registry" / "pyfunc.py").is_file()
    assert not (code / "demo").exists() and not (code / "bench").exists()


def test_the_version_loads_and_predicts_where_the_project_is_not_installed(registered, tmp_path):
    """A fresh interpreter with only site-packages on its path (python -S: no .pth files, so
    not the editable install of hyperrec either), run outside the project, with none of the
    project's environment: `hyperrec` is not importable before the model loads, and after it
    comes from the model's own code/ folder."""
    site_packages = sysconfig.get_paths()["purelib"]
    script = f"""
import json, sys
sys.path.append({site_packages!r})
try:
    import hyperrec
    raise SystemExit("hyperrec importable before the model loaded: " + hyperrec.__file__)
except ImportError:
    pass
import mlflow
model = mlflow.pyfunc.load_model({registered["uri"]!r}, dst_path={str(tmp_path / "download")!r})
out = model.predict(model.input_example, params={{"k": 5}})
import hyperrec
print(json.dumps({{"hyperrec": hyperrec.__file__, "columns": list(out.columns),
                  "ids": [list(map(str, r)) for r in out["item_ids"]],
                  "scores": [list(map(float, r)) for r in out["scores"]]}}))
"""
    (tmp_path / "download").mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HYPERREC_", "PYTHON", "TF_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = registered["settings"].tracking_uri
    out = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["hyperrec"]).is_relative_to(tmp_path / "download" / "code")
    assert result["columns"] == ["item_ids", "scores"]
    assert [len(r) for r in result["ids"]] == [5, 5] and all(i.startswith("i") for r in result["ids"] for i in r)
    assert all(np.isfinite(r).all() and len(r) == 5 for r in result["scores"])


def test_training_logs_metrics_per_epoch_into_the_versions_run(registered):
    from hyperrec.registry.model_registry import configure

    settings = registered["settings"]
    client = configure(settings)
    mv = client.get_model_version(settings.model_name, str(registered["version"]))
    assert mv.tags["run_id"] == registered["run_id"]
    run_id = registered["run_id"]
    holdout = client.get_metric_history(run_id, "retrieval_holdout_loss")
    ndcg = client.get_metric_history(run_id, "retrieval_holdout_validation_ndcg_at_10")
    refit = client.get_metric_history(run_id, "retrieval_loss")
    assert [m.step for m in holdout] == [m.step for m in ndcg] == list(range(1, len(holdout) + 1))
    assert len(holdout) >= 2 and all(np.isfinite(m.value) for m in holdout)
    assert [m.step for m in ndcg] and [round(m.value, 4) for m in ndcg] == registered["report"]["validation_history"]
    assert [m.step for m in refit] == list(range(1, registered["report"]["epochs"] + 1))
    # the same run holds the evaluation and the model
    assert client.get_run(run_id).data.metrics["ndcg_at_10"] == 0.1


def test_the_version_names_a_feature_service_that_resolves_in_feast(registered):
    from hyperrec.features.store import open_store
    from hyperrec.models.two_tower import ACTIVITY
    from hyperrec.online.feedback import FEEDBACK_INPUTS
    from hyperrec.registry.model_registry import configure
    from hyperrec.training.feature_service import FEATURE_SERVICE_TAG, feature_service_name

    settings, world = registered["settings"], registered["world"]
    tags = configure(settings).get_model_version(settings.model_name, str(registered["version"])).tags
    name = tags[FEATURE_SERVICE_TAG]
    assert name == feature_service_name(settings.model_name)
    store = open_store(settings)
    service = store.get_feature_service(name)
    features = {f.name for p in service.feature_view_projections for f in p.features}
    assert features == {*USER_INPUTS, "purchased_items", *FEEDBACK_INPUTS} - {"user_id"}
    from hyperrec.training import feature_service

    assert feature_service.ACTIVITY == ACTIVITY and feature_service.user_inputs() == USER_INPUTS
    assert list(feature_service.user_inputs()) == list(USER_INPUTS)
    users = world.events["user_id"].astype(str).drop_duplicates().tail(20).tolist()
    now = int(world.events["ts"].max().timestamp())
    online = store.get_online_features(features=service,
                                       entity_rows=[{"user_id": u, "request_ts": now} for u in users]).to_dict()
    assert set(online) >= features and online["user_id"] == users
    assert any(online["recent_items"]), "users' recent items come back through the service"


def test_the_shipped_code_is_what_the_pyfunc_imports(tmp_path):
    """code_modules follows imports (function-level and relative ones too) from the pyfunc:
    the recommender and its parts, not the server, the demo or the benches."""
    from hyperrec.registry import pyfunc

    modules, external = pyfunc.code_modules()
    assert {"hyperrec", "hyperrec._env", "hyperrec.models.recommender", "hyperrec.models.numpy_forward",
            "hyperrec.models.ranking", "hyperrec.registry.pyfunc"} <= set(modules)
    assert not [m for m in modules if m.startswith(("hyperrec.online", "hyperrec.demo", "hyperrec.bench"))]
    assert {"numpy", "pandas", "tensorflow", "tensorflow_recommenders"} <= set(external)
    (tmp_path / "__init__.py").write_text("from . import a\nfrom .b import c\n")
    (tmp_path / "m.py").write_text("from . import a\nfrom ..x import y\nimport numpy\n")
    assert pyfunc._imports(tmp_path / "__init__.py", "hyperrec.p") >= {"hyperrec.p.a", "hyperrec.p.b"}
    assert pyfunc._imports(tmp_path / "m.py", "hyperrec.p.m") >= {"hyperrec.p.a", "hyperrec.x.y", "numpy"}
