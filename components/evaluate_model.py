from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_model(training_set: Input[Dataset], model: Input[Model], metrics: Output[Metrics],
                   k: int = 20) -> float:
    """Recall@k / NDCG@10, coverage and diversity on the temporal test split (full catalog,
    seen items excluded) for retrieval -> ranking, retrieval alone and popularity.
    Returns Recall@k."""
    from pathlib import Path

    from hyperrec.train import evaluate_model as evaluate

    results = evaluate(Path(model.path), Path(training_set.path), k=k)
    for name, value in results.items():
        metrics.log_metric(name, value)
    return results[f"recall_at_{k}"]
