from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_model(home: str, training_set: Input[Dataset], model: Input[Model], metrics: Output[Metrics],
                   evaluation: Output[Artifact], k: int = 20):
    """Recall@k / NDCG@10, coverage, diversity and segments on the temporal test split
    (full catalog, seen items excluded) for the candidate, and for the current champion
    on the same data, so the gate compares like with like."""
    import json
    from pathlib import Path

    from hyperrec.config import load_settings
    from hyperrec.registry import champion_model_dir
    from hyperrec.train import evaluate_model as evaluate

    candidate = evaluate(Path(model.path), Path(training_set.path), k=k)
    champion_dir = champion_model_dir(load_settings(home))
    champion = evaluate(champion_dir, Path(training_set.path), k=k) if champion_dir else None
    for name, value in candidate.items():
        metrics.log_metric(name, value)
    Path(evaluation.path).write_text(json.dumps({"candidate": candidate, "champion": champion}))
