"""Run the training pipeline locally (kfp.local, in this venv) or compile it to KFP IR."""

from __future__ import annotations

from pathlib import Path

from hyperrec.config import Settings


def run_local(settings: Settings, world_dir: Path, epochs: int = 6, k: int = 20) -> int:
    """Execute every task as a subprocess of this venv; returns the registered version."""
    from kfp import local

    from pipelines.training import training_pipeline

    settings.pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(settings.pipeline_root), raise_on_error=True)
    task = training_pipeline(home=str(settings.home), world_dir=str(world_dir), epochs=epochs, k=k)
    return int(task.output)


def compile_pipeline(out: Path) -> Path:
    """Write the pipeline as KFP IR YAML, the package a Kubeflow cluster runs unchanged."""
    from kfp import compiler

    from pipelines.training import training_pipeline

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(out))
    return out
