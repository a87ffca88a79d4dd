"""The training pipeline: tasks and their connections only.

validate_data gates everything: on "failed" nothing below it runs (its report is the
run's output). The model gate decides what register_model does with the alias.

Secrets reach tasks as Kubernetes Secrets mounted into the environment (kfp-kubernetes),
never as pipeline parameters; kfp.local ignores them and reads the local environment.
"""

from kfp import dsl, kubernetes

from components.build_training_set import build_training_set
from components.evaluate_model import evaluate_model
from components.gate_model import gate_model
from components.register_model import register_model
from components.train_models import train_models
from components.validate_data import validate_data

# Secret name -> {key in the Secret: environment variable}; `optional` so a cluster without
# tracking credentials (an open MLflow in the namespace) still runs
SECRETS = {
    "hyperrec-mlflow": {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
    "hyperrec-hmac": {"key": "HYPERREC_HMAC_KEY"},
}


def _with_secrets(task, *names: str):
    for name in names:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=SECRETS[name], optional=True)
    return task


@dsl.pipeline(name="hyperrec-training",
              description="data gate -> Feast point-in-time training set -> TFRS two-tower + ranker -> "
                          "evaluate vs champion -> model gate -> MLflow")
def training_pipeline(home: str, world_dir: str, run_tag: str = "", epochs: int = 6, learning_rate: float = 0.003,
                      warm_start: bool = False, k: int = 20):
    validated = _with_secrets(validate_data(home=home, world_dir=world_dir), "hyperrec-mlflow")
    with dsl.If(validated.outputs["Output"] == "passed", name="data-gate-passed"):
        data = _with_secrets(build_training_set(home=home, world_dir=world_dir), "hyperrec-hmac")
        trained = train_models(home=home, training_set=data.outputs["training_set"], max_epochs=epochs,
                               learning_rate=learning_rate, warm_start=warm_start)
        evaluated = _with_secrets(evaluate_model(home=home, training_set=data.outputs["training_set"],
                                                 model=trained.outputs["model"], k=k), "hyperrec-mlflow")
        gated = gate_model(evaluation=evaluated.outputs["evaluation"])
        _with_secrets(register_model(home=home, world_dir=world_dir, run_tag=run_tag, model=trained.outputs["model"],
                                     evaluation=evaluated.outputs["evaluation"], decision=gated.outputs["decision"],
                                     data_report=validated.outputs["report"]), "hyperrec-mlflow")
