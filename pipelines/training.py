"""The training pipeline: tasks and their connections only.

snapshot_data -> validate_data -> build_training_set -> train_retrieval -> train_ranking -> build_index ->
evaluate_model -> gate_model -> register_model -> deploy.

validate_data gates everything: on "failed" nothing below it runs (its report is the
run's output). build_index assembles two serving units (towers, ranker, candidate
embeddings and index) before evaluation: `model`, whose towers never saw the test rows,
is evaluated, index included; `serving_model`, its twin whose towers were also fit on the
test rows (each user's newest interactions, hyperrec.training.fit.refit_for_serving), is
registered and served. The model gate decides what register_model does with the alias;
deploy then verifies the roll-out (servers follow the alias themselves) or reports that
there was nothing to roll out.

snapshot_data merges the events logged since the world was written (the event log's and
the offline sink's Kafka files) when the run asks for it (`merge_logged_events`: the
cluster's runs; `hyperrec retrain` snapshots before it starts kfp.local). Every task that
reads mutable state runs with KFP caching off (`_reads_mutable_state`), and register_model
tags the MLflow run with KFP's id of the run (`pipeline_run_id`) beside the caller's
`run_tag`: two runs with the same parameters are two runs.

Secrets reach tasks as Kubernetes Secrets mounted into the environment (kfp-kubernetes),
never as pipeline parameters; so do the cluster settings (a ConfigMap), the artifact store
volume (the snapshot the later tasks read, what an erasure must reach) and an emptyDir as
each task's HYPERREC_HOME (scratch: the tasks share no home). kfp.local ignores them all and
reads the local environment.
"""

from kfp import dsl, kubernetes

from components.build_index import build_index
from components.build_training_set import build_training_set
from components.deploy import deploy
from components.evaluate_model import evaluate_model
from components.gate_model import gate_model
from components.register_model import register_model
from components.snapshot_data import snapshot_data
from components.train_ranking import train_ranking
from components.train_retrieval import train_retrieval
from components.validate_data import validate_data

# Secret name -> {key in the Secret: environment variable}; `optional` so a cluster without
# tracking credentials (an open MLflow in the namespace) still runs
SECRETS = {
    "hyperrec-mlflow": {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"},
    "hyperrec-hmac": {"key": "HYPERREC_PII_KEY"},  # hyperrec.privacy.KEY_ENV
    "hyperrec-database": {"url": "HYPERREC_DATABASE_URL"},  # Settings.database_url: every task (_on_cluster)
}
# The PostgreSQL every role shares on a cluster (the consent ledger and erasure list). Not
# optional: a task without it would read an empty erasure list under HYPERREC_HOME and train
# on erased users.
DATABASE_SECRET = "hyperrec-database"
# What every task needs on a cluster: the settings ConfigMap (manifests/base/kustomization.yaml),
# the artifact store (manifests/base/storage.yaml), a ReadWriteMany volume at
# HYPERREC_ARTIFACT_ROOT: snapshot_data writes the run's snapshot there (Settings.snapshots_dir)
# and the later tasks, each its own pod, read it there; the erasure Job mounts it too. Each
# task's HYPERREC_HOME is an emptyDir of its own: the state the tasks share is in PostgreSQL
# (privacy, Feast registry and offline store, the world), Redis and MLflow.
CONFIG_MAP = "hyperrec-config"
CONFIG_KEYS = ("HYPERREC_HOME", "HYPERREC_ARTIFACT_ROOT", "HYPERREC_ONLINE_STORE", "HYPERREC_REDIS",
               "MLFLOW_TRACKING_URI")
ARTIFACTS_PVC, ARTIFACTS_PATH = "hyperrec-artifacts", "/var/lib/hyperrec-artifacts"
HOME_VOLUME, HOME_PATH = "home", "/var/lib/hyperrec"


def _reads_mutable_state(task):
    """No KFP caching: the task reads (or writes) state its inputs do not name: the world
    folder and the Feast offline store behind a path, the consent ledger, the current champion,
    the registry. KFP would otherwise hand a run with the same parameters (every nightly run,
    every drift-triggered one) the first run's cached outputs, down to register_model. The
    other tasks are functions of their input artifacts, which are new in every run once these are."""
    task.set_caching_options(False)
    return task


def _on_cluster(task, *secrets: str):
    """Settings, the artifact store, a scratch home, the database URL and `secrets` as
    environment (kfp-kubernetes; kfp.local ignores them all and reads the local environment)."""
    kubernetes.use_config_map_as_env(task, CONFIG_MAP, {k: k for k in CONFIG_KEYS})
    kubernetes.mount_pvc(task, ARTIFACTS_PVC, ARTIFACTS_PATH)
    kubernetes.empty_dir_mount(task, HOME_VOLUME, HOME_PATH)
    kubernetes.use_secret_as_env(task, secret_name=DATABASE_SECRET, secret_key_to_env=SECRETS[DATABASE_SECRET])
    for name in secrets:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=SECRETS[name], optional=True)
    return task


@dsl.pipeline(name="hyperrec-training",
              description="data gate -> Feast point-in-time training set -> TFRS two-tower retrieval -> DCN ranker "
                          "-> serving unit with index -> evaluate vs champion -> model gate -> MLflow -> deploy")
def training_pipeline(home: str, world_dir: str, run_tag: str = "", epochs: int = 6, learning_rate: float = 0.003,
                      warm_start: bool = False, k: int = 20, endpoint: str = "", merge_logged_events: bool = False):
    snapshot = _reads_mutable_state(_on_cluster(
        snapshot_data(home=home, world_dir=world_dir, merge_logged_events=merge_logged_events,
                      run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER), "hyperrec-hmac"))
    world_dir = snapshot.output  # the world, or with merge_logged_events the world plus the logged events
    validated = _reads_mutable_state(_on_cluster(validate_data(home=home, world_dir=world_dir), "hyperrec-mlflow"))
    with dsl.If(validated.outputs["Output"] == "passed", name="data-gate-passed"):
        data = _reads_mutable_state(_on_cluster(build_training_set(home=home, world_dir=world_dir), "hyperrec-hmac"))
        retrieval = _reads_mutable_state(_on_cluster(  # warm start reads the champion
            train_retrieval(home=home, training_set=data.outputs["training_set"], max_epochs=epochs,
                            learning_rate=learning_rate, warm_start=warm_start), "hyperrec-mlflow"))
        ranking = _on_cluster(train_ranking(home=home, ranking_examples=retrieval.outputs["ranking_examples"]),
                              "hyperrec-mlflow")  # logs its epochs into the towers' MLflow run
        unit = _on_cluster(build_index(training_set=data.outputs["training_set"],
                                       retrieval=retrieval.outputs["retrieval"],
                                       serving_retrieval=retrieval.outputs["serving_retrieval"],
                                       ranker=ranking.outputs["ranker"]))
        evaluated = _reads_mutable_state(_on_cluster(  # compares with the current champion
            evaluate_model(home=home, training_set=data.outputs["training_set"], model=unit.outputs["model"], k=k),
            "hyperrec-mlflow"))
        gated = _on_cluster(gate_model(evaluation=evaluated.outputs["evaluation"]))
        registered = _reads_mutable_state(_on_cluster(
            register_model(home=home, world_dir=world_dir, run_tag=run_tag, model=unit.outputs["serving_model"],
                           evaluation=evaluated.outputs["evaluation"], decision=gated.outputs["decision"],
                           data_report=validated.outputs["report"], pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
            "hyperrec-mlflow"))
        _reads_mutable_state(_on_cluster(deploy(home=home, version=registered.outputs["version"],
                                                blessed=registered.outputs["blessed"], endpoint=endpoint),
                                         "hyperrec-mlflow"))
