"""MLflow: log a training run, register the model, move aliases, load the champion.

The registered artifact is an MLflow pyfunc wrapping the exported two-tower folder, so any
MLflow tool can load it, and the model server loads it through the same API.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from hyperrec.config import Settings

CHAMPION = "champion"
EXPERIMENT = "hyperrec-training"


class RetrievalPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of a two-tower model: rows of user features in, top-k item ids out."""

    def load_context(self, context):
        from hyperrec.recommend import Recommender

        self.recommender = Recommender(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        k = int((params or {}).get("k", 10))
        ranked, _ = self.recommender.recommend(model_input, k=k)
        return pd.DataFrame({"items": ranked})


def configure(settings: Settings) -> MlflowClient:
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=(settings.mlflow_dir / "artifacts").as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return MlflowClient()


def register_model(settings: Settings, model_dir: Path, params: dict, metrics: dict,
                   tags: dict | None = None, alias: str = CHAMPION) -> int:
    """Log params/metrics and the model in one run, register a version, point `alias` at it."""
    client = configure(settings)
    with mlflow.start_run(run_name="train-retrieval") as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags or {})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"model_dir": str(model_dir)},
            pip_requirements=["hyperrec"],  # the project's own locked environment
            registered_model_name=settings.model_name,
        )
        mlflow.log_text(json.dumps(metrics, indent=2), "evaluation.json")
    version = int(info.registered_model_version)
    client.set_registered_model_alias(settings.model_name, alias, version)
    client.set_model_version_tag(settings.model_name, str(version), "run_id", run.info.run_id)
    return version


def load_champion(settings: Settings, alias: str = CHAMPION):
    """(Recommender, version) for the model version the alias points at."""
    client = configure(settings)
    version = client.get_model_version_by_alias(settings.model_name, alias)
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{alias}")
    return model.unwrap_python_model().recommender, int(version.version)
