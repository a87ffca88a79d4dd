from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_retrieval(home: str, training_set: Input[Dataset], retrieval: Output[Model],
                    serving_retrieval: Output[Model], ranking_examples: Output[Dataset], max_epochs: int = 6,
                    embedding_dim: int = 64, learning_rate: float = 0.003, warm_start: bool = False):
    """Train the TFRS two-tower retrieval model (epochs picked on a held-out part of the
    training data, then refit on all of it: `retrieval`, the one evaluated) and write the
    ranker's training examples: the candidates the held-out-stage model retrieves,
    labelled. `serving_retrieval`: the same refit with the test rows added, the one served
    (hyperrec.training.fit.refit_for_serving). With `warm_start`, the towers start from the
    current champion's weights (from scratch when there is none). Both fits log each epoch's
    loss (and the held-out NDCG@10) to an MLflow run as they train; its id goes on in the
    models' metadata (`mlflow_run_id`) for register_model to log the version into."""
    from pathlib import Path

    from hyperrec.config import load_settings
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.registry.model_registry import champion_model_dir, training_run
    from hyperrec.training.fit import fit_retrieval, refit_for_serving

    settings = load_settings(home)
    start = champion_model_dir(settings) if warm_start else None
    cfg = TwoTowerConfig(epochs=max_epochs, embedding_dim=embedding_dim, learning_rate=learning_rate)
    with training_run(settings) as (run_id, epoch_metrics):
        report = fit_retrieval(Path(training_set.path), Path(retrieval.path), cfg, warm_start=start,
                               examples_dir=Path(ranking_examples.path), epoch_metrics=epoch_metrics)
        served = refit_for_serving(Path(training_set.path), Path(retrieval.path), Path(serving_retrieval.path), cfg,
                                   warm_start=start, epoch_metrics=epoch_metrics)
    retrieval.metadata.update({"framework": "tensorflow-recommenders", "epochs": report["epochs"],
                               "embedding_dim": embedding_dim, "learning_rate": learning_rate,
                               "examples_per_s": report["examples_per_s"], "train_seconds": report["seconds"],
                               "warm_start": report["warm_start"], "mlflow_run_id": run_id})
    serving_retrieval.metadata.update({**retrieval.metadata, "refit_rows": served["refit_rows"],
                                       "refit_seconds": served["refit_seconds"], "data_end": served["data_end"]})
    ranking_examples.metadata.update({"rows": report["ranking_examples"], "mlflow_run_id": run_id})
