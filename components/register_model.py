from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Model

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_model(home: str, world_dir: str, run_tag: str, model: Input[Model], evaluation: Input[Artifact],
                   decision: Input[Artifact], data_report: Input[Markdown], pipeline_run_id: str = ""
                   ) -> NamedTuple("Registered", [("version", int), ("blessed", bool)]):
    """Log the run to MLflow (params, metrics, gate decision, data profile, dataset
    fingerprint, git commit; into the training's run, which holds the per-epoch metrics,
    when the model's metadata names it) and register the model: blessed -> `champion`, rejected ->
    registered with its reasons, alias unchanged. Returns the registered version and
    whether it was blessed (what deploy acts on)."""
    import json
    from collections import namedtuple
    from pathlib import Path

    from hyperrec.config import load_settings
    from hyperrec.registry.model_registry import fingerprint
    from hyperrec.registry.model_registry import register_model as register

    gate = json.loads(Path(decision.path).read_text())
    result = json.loads(Path(evaluation.path).read_text())
    metrics = result.get("candidate_all_test", result["candidate"])  # the whole test split, not the comparison's
    run_id = model.metadata.get("mlflow_run_id") or None
    params = {k: v for k, v in model.metadata.items() if isinstance(v, (int, float, str)) and k != "mlflow_run_id"}
    world = Path(world_dir)
    tags = {"dataset_fingerprint": fingerprint([world / f"{t}.parquet" for t in ("events", "users", "items")]),
            "pipeline_run_tag": run_tag, "pipeline_run_id": pipeline_run_id,  # KFP's id of this run
            "gate_compared_on": result.get("compared_on", "")}
    artifacts = {"data_profile.json": data_report.metadata["profile"],
                 "data_gate.md": Path(data_report.path).read_text()}
    version = register(load_settings(home), Path(model.path), params, metrics, gate, artifacts, tags, run_id)
    return namedtuple("Registered", ["version", "blessed"])(version, bool(gate["blessed"]))
