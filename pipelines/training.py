"""The training pipeline: tasks and their connections only.

validate_data -> build_training_set -> train_retrieval -> train_ranking -> build_index ->
evaluate_model -> gate_model -> register_model -> deploy.

validate_data gates everything: on "failed" nothing below it runs (its report is the
run's output). build_index assembles the serving unit (towers, ranker, candidate
embeddings and index) before evaluation so that evaluation measures the exact unit that
will serve, index included; the same folder is registered. The model gate decides what
register_model does with the alias; deploy then verifies the roll-out (servers follow
the alias themselves) or reports that there was nothing to roll out.

Secrets reach tasks as Kubernetes Secrets mounted into the environment (kfp-kubernetes),
never as pipeline parameters; kfp.local ignores them and reads the local environment.
"""

from kfp import dsl, kubernetes

from components.build_index import build_index
from components.build_training_set import build_training_set
from components.deploy import deploy
from components.evaluate_model import evaluate_model
from components.gate_model import gate_model
from components.register_model import register_model
from components.train_ranking import train_ranking
from components.train_retrieval import train_retrieval
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
              description="data gate -> Feast point-in-time training set -> TFRS two-tower retrieval -> DCN ranker "
                          "-> serving unit with index -> evaluate vs champion -> model gate -> MLflow -> deploy")
def training_pipeline(home: str, world_dir: str, run_tag: str = "", epochs: int = 6, learning_rate: float = 0.003,
                      warm_start: bool = False, k: int = 20, endpoint: str = ""):
    validated = _with_secrets(validate_data(home=home, world_dir=world_dir), "hyperrec-mlflow")
    with dsl.If(validated.outputs["Output"] == "passed", name="data-gate-passed"):
        data = _with_secrets(build_training_set(home=home, world_dir=world_dir), "hyperrec-hmac")
        retrieval = _with_secrets(train_retrieval(home=home, training_set=data.outputs["training_set"],
                                                  max_epochs=epochs, learning_rate=learning_rate,
                                                  warm_start=warm_start), "hyperrec-mlflow")
        ranking = train_ranking(ranking_examples=retrieval.outputs["ranking_examples"])
        unit = build_index(training_set=data.outputs["training_set"], retrieval=retrieval.outputs["retrieval"],
                           ranker=ranking.outputs["ranker"])
        evaluated = _with_secrets(evaluate_model(home=home, training_set=data.outputs["training_set"],
                                                 model=unit.outputs["model"], k=k), "hyperrec-mlflow")
        gated = gate_model(evaluation=evaluated.outputs["evaluation"])
        registered = _with_secrets(register_model(home=home, world_dir=world_dir, run_tag=run_tag,
                                                  model=unit.outputs["model"],
                                                  evaluation=evaluated.outputs["evaluation"],
                                                  decision=gated.outputs["decision"],
                                                  data_report=validated.outputs["report"]), "hyperrec-mlflow")
        _with_secrets(deploy(home=home, version=registered.outputs["version"], blessed=registered.outputs["blessed"],
                             endpoint=endpoint), "hyperrec-mlflow")
