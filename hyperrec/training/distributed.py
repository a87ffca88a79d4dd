"""Multi-worker training of the two-tower retrieval model: `python -m hyperrec.training.distributed`.

Every worker runs this same program. MultiWorkerMirroredStrategy reads TF_CONFIG (the
cluster's worker addresses and this worker's index), each worker takes its share of
every global batch, and gradients are all-reduced after each step, so every replica holds
the same weights. On the cluster the training-operator sets TF_CONFIG
(manifests/base/training/tfjob.yaml); with no TF_CONFIG the program trains as one worker.

Only the chief (worker 0) exports: the weights are the same everywhere, and several
writers on one shared volume would overwrite each other. The other workers leave their
weights checksum in out/_worker_{i}.json, which shows whether the replicas stayed in sync.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import typer

import hyperrec  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow is imported)

LOSS_ROWS = 8192  # training rows the per-epoch loss is measured on (bounded cost per epoch)


def local_cluster_tf_config(ports: list[int]) -> list[str]:
    """One TF_CONFIG per worker of a cluster on this machine's loopback (tests, local runs)."""
    workers = [f"127.0.0.1:{port}" for port in ports]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(len(ports))]


def make_strategy():
    """The strategy must exist before TensorFlow runs any op: it configures the collective
    runtime. AUTO picks ring all-reduce on CPU (the platform image), NCCL on GPUs."""
    import tensorflow as tf

    comm = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=comm)


def role(strategy) -> tuple[int, int, bool]:
    """(this worker's index, number of workers, is chief) from the strategy's TF_CONFIG;
    the chief is the `chief` task if the cluster has one, else worker 0."""
    resolver = strategy.cluster_resolver
    jobs = resolver.cluster_spec().as_dict()
    if not jobs:  # no TF_CONFIG: a cluster of one
        return 0, 1, True
    task_type, index = resolver.task_type, int(resolver.task_id or 0)
    chief = task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in jobs)
    return index, sum(len(jobs.get(j, [])) for j in ("chief", "worker")), chief


def weights_checksum(model) -> str:
    """sha256 of every weight, vocabularies included: equal on two workers only if the
    replicas are bit-for-bit the same and map every id and word to the same row."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        if w.dtype == object:  # a vocabulary: an object array's own bytes are pointers
            digest.update(b"\0".join(t if isinstance(t, bytes) else str(t).encode() for t in w.ravel()))
        else:
            digest.update(w.tobytes())
    return digest.hexdigest()


def mean_loss(model, examples: dict, batch_size: int) -> float:
    """Mean per-example retrieval loss (the training objective, ids not dropped) on fixed
    batches in a fixed order, so epochs and runs compare. Runs on this worker alone: reading
    mirrored weights needs no other worker."""
    import tensorflow as tf

    n = len(examples["item_id"])
    total = 0.0
    for start in range(0, n, batch_size):
        batch = {k: tf.constant(v[start:start + batch_size]) for k, v in examples.items()}
        total += float(model.compute_loss(batch, training=False))  # the task sums over the batch
    return total / n


def train(data: Path, out: Path, epochs: int | None = None, batch_size: int | None = None) -> dict:
    """Train on data/train.parquet + data/items.parquet under the cluster in TF_CONFIG; the
    chief exports the towers and distributed.json to `out`. Returns this worker's report."""
    strategy = make_strategy()  # first: before any TensorFlow op
    import numpy as np
    import pandas as pd

    from hyperrec.models.two_tower import TwoTowerConfig, export_towers, train_two_tower, training_examples

    index, workers, chief = role(strategy)
    cfg = TwoTowerConfig()
    cfg = replace(cfg, epochs=epochs or cfg.epochs, batch_size=batch_size or cfg.batch_size)
    train_rows = pd.read_parquet(data / "train.parquet")
    items = pd.read_parquet(data / "items.parquet")
    rows = np.random.default_rng(cfg.seed).permutation(len(train_rows))[:LOSS_ROWS]
    examples = {k: v[rows] for k, v in training_examples(train_rows).items()}

    losses, epoch_seconds = [], []
    clock = [time.perf_counter()]

    def on_epoch(epoch: int, model) -> bool:
        epoch_seconds.append(time.perf_counter() - clock[0])  # fit time only, loss measurement excluded
        losses.append(round(mean_loss(model, examples, cfg.batch_size), 5))
        clock[0] = time.perf_counter()
        return True

    model = train_two_tower(train_rows, items, cfg, on_epoch=on_epoch, strategy=strategy)
    seconds = sum(epoch_seconds)  # the first epoch includes building the model and tracing
    report = {"worker": index, "num_workers": workers, "replicas": strategy.num_replicas_in_sync,
              "epochs": cfg.epochs, "global_batch_size": cfg.batch_size, "train_rows": len(train_rows),
              "seconds": round(seconds, 2), "epoch_seconds": [round(s, 2) for s in epoch_seconds],
              "examples_per_s": round(len(train_rows) * cfg.epochs / seconds), "loss_per_epoch": losses,
              "weights_checksum": weights_checksum(model)}
    out.mkdir(parents=True, exist_ok=True)
    if chief:
        export_towers(model, items, cfg, out)
        (out / "distributed.json").write_text(json.dumps(report, indent=2))
    else:
        (out / f"_worker_{index}.json").write_text(json.dumps(report))
    return report


def main(data: Path = typer.Option(..., help="folder with train.parquet and items.parquet"),
         out: Path = typer.Option(..., help="export folder (the chief writes it)"),
         epochs: int | None = typer.Option(None, help="epochs (default: TwoTowerConfig.epochs)"),
         batch_size: int | None = typer.Option(None, help="global batch size, split across workers")) -> None:
    report = train(data, out, epochs, batch_size)
    print(json.dumps({k: report[k] for k in ("worker", "num_workers", "seconds", "examples_per_s",
                                             "loss_per_epoch", "weights_checksum")}), flush=True)


if __name__ == "__main__":
    typer.run(main)
