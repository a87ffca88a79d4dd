from kfp import dsl
from kfp.dsl import Input, Metrics, Model

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def register_model(home: str, model: Input[Model], metrics: Input[Metrics]) -> int:
    """Log the run to MLflow, register the model and point the `champion` alias at it.
    Returns the registered version."""
    from pathlib import Path

    from hyperrec.config import load_settings
    from hyperrec.registry import register_model as register

    params = {k: v for k, v in model.metadata.items() if isinstance(v, (int, float, str))}
    return register(load_settings(home), Path(model.path), params, dict(metrics.metadata))
