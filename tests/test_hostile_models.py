"""Hostile model versions: one whose item embeddings hold NaN, registered as champion, never
serves (the old version keeps answering with finite scores); rollback and promote refuse a
version known not to load, or that fails the load check, and @champion stays where it was."""

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from hyperrec.bench.faults import nan_embeddings
from hyperrec.cli import app
from hyperrec.registry.model_registry import champion_version, configure, move_alias, register_model

pytestmark = pytest.mark.slow
BLESSED = {"blessed": True, "reasons": []}
REJECTED = {"blessed": False, "reasons": ["test: registered without an alias"]}
LOAD_FAILURES = "hyperrec_model_load_failures_total"


@pytest.fixture(scope="module")
def server(champion_server):
    """A small world, one quickly trained champion and a server polling the alias every half second."""
    with champion_server("hostile", ("--poll_s", "0.5")) as built:
        yield built


def nan_user_row(model_dir: Path, out: Path) -> Path:
    """A copy of `model_dir` whose query tower has a NaN row in its user id table: only that
    user's queries go wrong, so no probe request shows it, only the tables do."""
    import tensorflow as tf

    shutil.copytree(model_dir, out)
    tower = tf.keras.models.load_model(out / "user_tower", compile=False)
    layer = tower.get_layer("user_id_emb")
    table = layer.get_weights()[0]
    table[1] = np.nan
    layer.set_weights([table])
    shutil.rmtree(out / "user_tower")
    tower.save(out / "user_tower", save_format="tf")
    return out


def truncated_ranker(model_dir: Path, out: Path) -> Path:
    """A copy of `model_dir` whose ranker SavedModel is garbage."""
    shutil.copytree(model_dir, out)
    (out / "ranker" / "saved_model.pb").write_bytes(b"\x00 not a saved model")
    return out


def predict(server, users, k=10):
    resp = requests.post(f"{server['url']}/v1/models/recommender:predict",
                         json={"instances": [{"user_id": u, "k": k} for u in users]}, timeout=30)
    resp.raise_for_status()
    return resp.json()["predictions"]


def metric(server, name) -> float:
    for line in requests.get(server["url"] + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_for(condition, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def load_error(settings, version) -> str | None:
    return configure(settings).get_model_version(settings.model_name, str(version)).tags.get("hyperrec.load_error")


def model_command(settings, *args):
    return CliRunner().invoke(app, ["model", *args, "--home", str(settings.home)])


def test_a_champion_with_nan_embeddings_is_refused_and_the_old_one_keeps_serving(server, tmp_path):
    settings, serving = server["settings"], server["version"]
    users = server["world"].users["user_id"].iloc[:20].tolist()
    failures = metric(server, LOAD_FAILURES)
    bad = register_model(settings, nan_embeddings(server["model_dir"], tmp_path / "nan"), {}, {}, BLESSED)
    assert champion_version(settings) == bad
    wait_for(lambda: metric(server, LOAD_FAILURES) > failures or predict(server, users[:1])[0]["model_version"] == bad)
    time.sleep(1.0)  # a few more polls: the refused version is not retried
    for pred in predict(server, users):
        assert pred["model_version"] == serving
        assert pred["items"] and all(math.isfinite(item["score"]) for item in pred["items"])
    assert metric(server, LOAD_FAILURES) == failures + 1
    assert "not finite" in (load_error(settings, bad) or "")  # the registry remembers why
    move_alias(settings, serving, "test: back to the version that serves")


def test_rollback_refuses_a_version_the_server_failed_to_load(server, tmp_path):
    settings = server["settings"]
    failures = metric(server, LOAD_FAILURES)
    bad = register_model(settings, nan_embeddings(server["model_dir"], tmp_path / "nan"), {}, {}, BLESSED)
    wait_for(lambda: metric(server, LOAD_FAILURES) > failures or predict(server, ["u"])[0]["model_version"] == bad)
    good = register_model(settings, server["model_dir"], {}, {}, BLESSED)  # champion: good, previous: bad
    wait_for(lambda: predict(server, ["u"])[0]["model_version"] == good)
    server["version"] = good
    result = model_command(settings, "rollback", "--reason", "test: the new one looks worse")
    assert result.exit_code != 0, result.output
    assert f"v{bad}" in result.output and "not finite" in result.output
    assert champion_version(settings) == good


def test_rollback_and_promote_load_the_target_and_refuse_one_that_fails(server, settings, tmp_path):
    """A registry no server has loaded from: the commands load the target version and run the
    same check the server runs before moving @champion; what fails is recorded on the version."""
    first = register_model(settings, server["model_dir"], {}, {}, BLESSED)
    nan = register_model(settings, nan_embeddings(server["model_dir"], tmp_path / "nan"), {}, {}, BLESSED)
    latest = register_model(settings, server["model_dir"], {}, {}, BLESSED)  # previous: the NaN one
    corrupt = register_model(settings, truncated_ranker(server["model_dir"], tmp_path / "bad"), {}, {}, REJECTED)
    user_nan = register_model(settings, nan_user_row(server["model_dir"], tmp_path / "user"), {}, {}, REJECTED)

    result = model_command(settings, "rollback", "--reason", "test")
    assert result.exit_code != 0 and f"v{nan}" in result.output and "not finite" in result.output, result.output
    assert champion_version(settings) == latest and "not finite" in (load_error(settings, nan) or "")
    result = model_command(settings, "promote", str(corrupt), "--reason", "test")
    assert result.exit_code != 0 and f"v{corrupt}" in result.output, result.output
    assert champion_version(settings) == latest and load_error(settings, corrupt)
    result = model_command(settings, "promote", str(user_nan), "--reason", "test")
    assert result.exit_code != 0 and "query tower weights" in result.output, result.output
    assert champion_version(settings) == latest

    result = model_command(settings, "promote", str(first), "--reason", "test: a good one")
    assert result.exit_code == 0, result.output
    assert champion_version(settings) == first and load_error(settings, first) is None
