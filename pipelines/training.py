"""The training pipeline: tasks and their connections only."""

from kfp import dsl

from components.build_training_set import build_training_set
from components.evaluate_model import evaluate_model
from components.register_model import register_model
from components.train_models import train_models


@dsl.pipeline(name="hyperrec-training",
              description="Feast point-in-time training set -> TFRS two-tower + ranker -> evaluate -> MLflow")
def training_pipeline(home: str, world_dir: str, epochs: int = 6, k: int = 20) -> int:
    data = build_training_set(home=home, world_dir=world_dir)
    trained = train_models(training_set=data.outputs["training_set"], max_epochs=epochs)
    evaluated = evaluate_model(training_set=data.outputs["training_set"], model=trained.outputs["model"], k=k)
    registered = register_model(home=home, model=trained.outputs["model"],
                                metrics=evaluated.outputs["metrics"])
    return registered.output
