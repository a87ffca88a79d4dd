"""The registry against the cluster's MLflow: a real `mlflow server` on a real PostgreSQL,
artifacts proxied by the server (`--serve-artifacts`). Clients never see the artifact
folder: the experiment's location is the server's (`mlflow-artifacts:/`), a version loads in
a process that cannot read that folder, promote and rollback check versions downloaded
through the server, and erasure rewrites a version's files through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hyperrec.config import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """PostgreSQL, an MLflow server on it, and a workspace whose tracking URI is that server,
    with a small model (test_model_packaging's frames) trained and registered twice: v2 is
    the champion and v1 the one before it."""
    from test_model_packaging import _frames

    from hyperrec.models.ranking import RankerConfig
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.registry.model_registry import register_model
    from hyperrec.services import create_database, mlflow_server, postgres_server
    from hyperrec.training.fit import fit_models

    root = tmp_path_factory.mktemp("mlflow-served")
    artifacts = root / "server-artifacts"
    with postgres_server() as pg, mlflow_server(create_database(pg, "mlflow"), artifacts) as url:
        mp = pytest.MonkeyPatch()
        mp.setenv("MLFLOW_TRACKING_URI", url)
        mp.setenv("HYPERREC_HOME", str(root / "home"))
        try:
            settings = load_settings(root / "home")
            train, items = _frames()
            train["user_id"] = "user-" + train["user_id"].str[1:]  # ids long enough to search bytes for
            (root / "data").mkdir()
            train.to_parquet(root / "data" / "train.parquet", index=False)
            items.to_parquet(root / "data" / "items.parquet", index=False)
            fit_models(root / "data", root / "unit", TwoTowerConfig(epochs=1, batch_size=64, embedding_dim=16),
                       RankerConfig(candidates=20, epochs=1), log=lambda *_: None)
            versions = [register_model(settings, root / "unit", {"epochs": 1}, {"ndcg_at_10": 0.1},
                                       {"blessed": True, "reasons": []}) for _ in range(2)]
            yield {"settings": settings, "url": url, "artifacts": artifacts, "versions": versions,
                   "model_dir": root / "unit", "users": sorted(set(train["user_id"]))}
        finally:
            mp.undo()


def test_artifacts_live_behind_the_server_and_nowhere_under_home(served):
    import mlflow

    from hyperrec.registry.model_registry import EXPERIMENT, champion_version, configure

    settings = served["settings"]
    assert settings.tracking_uri == served["url"]
    configure(settings)
    assert mlflow.get_experiment_by_name(EXPERIMENT).artifact_location.startswith("mlflow-artifacts:/")
    assert not settings.mlflow_dir.exists()  # no SQLite, no file:// artifact root under home
    assert champion_version(settings) == served["versions"][-1]
    stored = [p.name for p in served["artifacts"].rglob("MLmodel")]
    assert len(stored) == 2  # both versions' files went to the server's folder


def _hiding(folder: Path) -> list[str]:
    """A command prefix that runs its command with `folder` hidden (an empty tmpfs mounted
    over it in a mount namespace of its own), or [] where that cannot be done (not root, or
    no unshare)."""
    import shutil

    prefix = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(folder)]
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    return prefix if probe.returncode == 0 else []


def test_a_version_loads_through_the_server_where_its_folder_cannot_be_read(served, tmp_path):
    """`models:/name@champion` in a fresh interpreter outside the project (python -S: only
    site-packages, not the editable hyperrec), in another cwd and HOME, with only the tracking
    URI, and (as root) with the server's artifact folder hidden from it."""
    folder = served["artifacts"]
    hide = _hiding(folder)
    site_packages = sysconfig.get_paths()["purelib"]
    script = f"""
import json, os, sys
sys.path.append({site_packages!r})
if {bool(hide)!r} and os.listdir({str(folder)!r}):
    raise SystemExit("the loader sees the server's artifact folder")
import mlflow
model = mlflow.pyfunc.load_model("models:/{served["settings"].model_name}@champion", dst_path={str(tmp_path)!r})
out = model.predict(model.input_example, params={{"k": 3}})
import hyperrec
print(json.dumps({{"hyperrec": hyperrec.__file__, "ids": [list(map(str, r)) for r in out["item_ids"]]}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERREC_", "PYTHON", "TF_", "MLFLOW_"))}
    env |= {"MLFLOW_TRACKING_URI": served["url"], "HOME": str(tmp_path), "DO_NOT_TRACK": "true"}
    out = subprocess.run([*hide, sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(result["hyperrec"]).is_relative_to(tmp_path)  # the version's own code
    assert [len(r) for r in result["ids"]] == [3, 3]
    assert list(folder.rglob("MLmodel"))  # hidden from the loader only


def test_promote_rollback_and_a_load_error_go_through_the_server(served):
    from hyperrec.registry.model_registry import (
        RefusedVersion,
        alias_history,
        champion_artifact,
        champion_version,
        load_champion,
        promote,
        record_load_error,
        rollback,
    )

    settings, (v1, v2) = served["settings"], served["versions"]
    rollback(settings, "test: back to v1")  # checks v1 by downloading it through the server
    assert champion_version(settings) == v1 and alias_history(settings)[-1]["previous"] == v2
    recommender, version = load_champion(settings)
    assert version == v1 and recommender.known_users
    assert json.loads(champion_artifact(settings, "evaluation.json")) == {"ndcg_at_10": 0.1}
    record_load_error(settings, v2, "test: broken on purpose")
    with pytest.raises(RefusedVersion, match="broken on purpose"):
        promote(settings, v2, "test")
    assert champion_version(settings) == v1


def test_erasure_rewrites_every_version_through_the_server(served, tmp_path):
    from mlflow import MlflowClient

    from hyperrec.models.recommender import Recommender
    from hyperrec.privacy.models import REDACTIONS_TAG, erase_from_models
    from hyperrec.registry.model_registry import model_version_dir

    settings, versions = served["settings"], served["versions"]
    gone = served["users"][0]
    before = Recommender(model_version_dir(settings, versions[0], tmp_path / "before"))
    assert gone in before.known_users
    removed = erase_from_models(settings, gone, lambda: {gone})
    assert removed["models.versions"] == len(versions)
    client = MlflowClient(settings.tracking_uri)
    for version in versions:
        model_dir = model_version_dir(settings, version, tmp_path / f"v{version}")
        vocab = json.loads((model_dir / "warm_start" / "user_tower.vocab.json").read_text())
        assert gone not in vocab["user_id_lookup"]
        assert client.get_model_version(settings.model_name, str(version)).tags[REDACTIONS_TAG] == "1"
        assert Recommender(model_dir).known_users == before.known_users - {gone}
    # the server's own files changed: no user tower or vocabulary in its folder names the user
    for path in served["artifacts"].rglob("*"):
        if path.is_file() and ("user_tower" in path.parts or path.name == "user_tower.vocab.json"):
            assert gone.encode() not in path.read_bytes(), path
    again = erase_from_models(settings, gone, lambda: {gone})
    assert again["models.versions"] == 0
