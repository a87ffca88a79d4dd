"""Distributed two-tower training: two worker processes on loopback under
MultiWorkerMirroredStrategy stay in sync, learn, and only the chief exports."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_models import _frames  # the generated frames the single-process model tests train on

ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    """Ports free right now (all bound at once, so they differ); the workers bind them next."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_two_workers_train_in_sync_and_the_chief_exports(tmp_path):
    from hyperrec.training.distributed import local_cluster_tf_config

    train, items = _frames()
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    train.to_parquet(data / "train.parquet", index=False)
    items.to_parquet(data / "items.parquet", index=False)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "hyperrec.training.distributed", "--data", str(data), "--out", str(out),
           "--epochs", "3", "--batch-size", "64"]
    procs, logs = [], [tmp_path / f"worker_{i}.log" for i in range(2)]
    try:
        for log, tf_config in zip(logs, local_cluster_tf_config(_free_ports(2))):
            with log.open("w") as f:
                procs.append(subprocess.Popen(cmd, env={**env, "TF_CONFIG": tf_config}, cwd=ROOT,
                                              stdout=f, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:  # a worker whose peer died can wait on a collective for minutes
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    chief = json.loads((out / "distributed.json").read_text())
    worker = json.loads((out / "_worker_1.json").read_text())
    assert chief["num_workers"] == chief["replicas"] == worker["replicas"] == 2
    # each worker trained on its half of every batch: equal weights mean the all-reduce kept them in sync
    assert chief["weights_checksum"] == worker["weights_checksum"]
    assert chief["loss_per_epoch"] == worker["loss_per_epoch"]
    losses = chief["loss_per_epoch"]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert [p.name for p in out.glob("_worker_*.json")] == ["_worker_1.json"]  # the chief writes distributed.json

    # the export loads on its own and has learned each user's colour: an untrained model's
    # top 10 holds the row's colour about a third of the time (three colours)
    import tensorflow as tf

    from hyperrec.models.two_tower import ITEM_INPUTS, USER_INPUTS, compiled

    user_tower = tf.keras.models.load_model(out / "user_tower", compile=False)
    item_tower = tf.keras.models.load_model(out / "item_tower", compile=False)
    scores = compiled(user_tower, USER_INPUTS)(train) @ compiled(item_tower, ITEM_INPUTS)(items).T
    top = np.argsort(-scores, axis=1)[:, :10]
    assert (items["category"].to_numpy()[top] == train["category"].to_numpy()[:, None]).mean() > 0.8
