from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_ranking(home: str, ranking_examples: Input[Dataset], ranker: Output[Model]):
    """Train the DCN-v2 ranker (tfrs.tasks.Ranking) on the examples train_retrieval wrote:
    retrieved candidates labelled by whether the user went on to engage with them. Each
    epoch's loss goes into the towers' MLflow run (the examples' `mlflow_run_id`), so the
    registered version's run holds the ranker's curve too."""
    from pathlib import Path

    from hyperrec.config import load_settings
    from hyperrec.registry.model_registry import metrics_logger
    from hyperrec.training.fit import fit_ranking

    run_id = ranking_examples.metadata.get("mlflow_run_id")
    epoch_metrics = metrics_logger(load_settings(home), run_id) if run_id else None
    report = fit_ranking(Path(ranking_examples.path), Path(ranker.path), epoch_metrics=epoch_metrics)
    ranker.metadata.update(report)
