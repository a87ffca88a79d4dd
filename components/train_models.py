from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_models(training_set: Input[Dataset], model: Output[Model], max_epochs: int = 6,
                 embedding_dim: int = 64, learning_rate: float = 0.003):
    """Train the TFRS two-tower retrieval model (epochs picked on a held-out part of the
    training data) and the DCN ranker; exports the serving unit."""
    from pathlib import Path

    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.train import fit_models

    cfg = TwoTowerConfig(epochs=max_epochs, embedding_dim=embedding_dim, learning_rate=learning_rate)
    report = fit_models(Path(training_set.path), Path(model.path), cfg)
    model.metadata.update({"framework": "tensorflow-recommenders", "epochs": report["epochs"],
                           "embedding_dim": embedding_dim, "learning_rate": learning_rate,
                           "examples_per_s": report["examples_per_s"]})
