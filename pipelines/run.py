"""Run the training pipeline locally (kfp.local, in this venv) or compile it to KFP IR."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from hyperrec.config import Settings


@dataclass
class RunResult:
    """What a pipeline run ended in: a registered version (blessed or rejected) and what the
    deploy step made of it, or a stop at the data gate with its report."""

    run_tag: str
    version: int | None
    blessed: bool
    data_report: Path | None
    deploy_status: str | None = None  # skipped / alias-moved / serving / failed (the version's MLflow tag)
    metrics: dict[str, float] = field(default_factory=dict)  # the registered run's evaluation

    def summary(self, k: int) -> dict:
        """The run in five keys, for scripts and CI (`hyperrec pipeline run --summary`)."""
        return {"version": self.version, "blessed": self.blessed, "ndcg@10": self.metrics.get("ndcg_at_10"),
                "popularity_ndcg@10": self.metrics.get("popularity_ndcg_at_10"),
                f"recall@{k}": self.metrics.get(f"recall_at_{k}")}

    @property
    def stopped_at_data_gate(self) -> bool:
        return self.version is None


def run_local(settings: Settings, world_dir: Path, epochs: int = 6, k: int = 20,
              learning_rate: float = 0.003, warm_start: bool = False, endpoint: str = "",
              merge_logged_events: bool = False) -> RunResult:
    """Execute every task as a subprocess of this venv. `endpoint`: a model server whose
    answers the deploy step waits on to carry the new version (empty: nothing to verify).
    `merge_logged_events`: learn from the world plus the events logged since (the cluster's
    runs: snapshot_data)."""
    from kfp import local

    from pipelines.training import training_pipeline

    settings.pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(settings.pipeline_root), raise_on_error=True)
    run_tag = uuid.uuid4().hex[:12]
    training_pipeline(home=str(settings.home), world_dir=str(world_dir), run_tag=run_tag, epochs=epochs,
                      learning_rate=learning_rate, warm_start=warm_start, k=k, endpoint=endpoint,
                      merge_logged_events=merge_logged_events)
    return _result(settings, run_tag)


def _result(settings: Settings, run_tag: str) -> RunResult:
    from hyperrec.registry.model_registry import configure

    client = configure(settings)
    found = client.search_model_versions(f"name = '{settings.model_name}'")
    runs = {mv.run_id: mv for mv in found}
    for run in client.search_runs([client.get_experiment_by_name("hyperrec-training").experiment_id],
                                  f"tags.pipeline_run_tag = '{run_tag}'"):
        mv = runs.get(run.info.run_id)
        if mv is not None:
            return RunResult(run_tag, int(mv.version), mv.tags.get("gate") == "blessed", None,
                             mv.tags.get("deploy_status"), dict(run.data.metrics))
    reports = sorted(settings.pipeline_root.glob("hyperrec-training-*/validate-data/report"),
                     key=lambda p: p.stat().st_mtime)
    return RunResult(run_tag, None, False, reports[-1] if reports else None)


def compile_pipeline(out: Path) -> Path:
    """Write the pipeline as KFP IR YAML, the package a Kubeflow cluster runs unchanged."""
    from kfp import compiler

    from pipelines.training import training_pipeline

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(out))
    return out


def submit(host: str, package: Path, home: str, world_dir: str, experiment: str = "hyperrec",
           cron: str | None = None, namespace: str | None = None) -> dict:
    """Submit the compiled package to a Kubeflow Pipelines API (kfp.Client): one run now,
    and with `cron` (six fields, e.g. "0 0 3 * * *") a recurring run as well."""
    import kfp

    # inside a pod, authenticate as its service account (the projected token KFP's multi-user
    # mode expects); from a laptop, kfp.Client's own defaults
    token = Path("/var/run/secrets/kubeflow/pipelines/token")
    credentials = kfp.client.ServiceAccountTokenVolumeCredentials(str(token)) if token.exists() else None
    client = kfp.Client(host=host, namespace=namespace, credentials=credentials)
    exp = client.create_experiment(experiment, namespace=namespace)
    # a run tag of its own for the run made now (MLflow's pipeline_run_tag); the recurring run's
    # parameters are the same every night, and its runs are told apart by KFP's run id (pipeline_run_id).
    # merge_logged_events: a cluster's run learns from the events logged since the world was written
    # (the offline sink's Kafka files), as `hyperrec retrain` does in embedded mode
    args = {"home": home, "world_dir": world_dir, "merge_logged_events": True}
    run = client.create_run_from_pipeline_package(str(package), arguments={**args, "run_tag": uuid.uuid4().hex[:12]},
                                                  experiment_id=exp.experiment_id,
                                                  run_name=f"hyperrec-training-{uuid.uuid4().hex[:8]}")
    out = {"experiment_id": exp.experiment_id, "run_id": run.run_id}
    if cron:
        pipeline = client.upload_pipeline(str(package), pipeline_name=f"hyperrec-training-{uuid.uuid4().hex[:8]}")
        recurring = client.create_recurring_run(exp.experiment_id, job_name="hyperrec-training-nightly",
                                                cron_expression=cron, pipeline_id=pipeline.pipeline_id,
                                                params=args, max_concurrency=1)
        out["recurring_run_id"] = recurring.recurring_run_id
    return out
