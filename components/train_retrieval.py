from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_retrieval(training_set: Input[Dataset], model: Output[Model], epochs: int = 5,
                    embedding_dim: int = 32, learning_rate: float = 0.05):
    """Train the TFRS two-tower retrieval model; exports both towers as SavedModels."""
    from pathlib import Path

    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.train import train_retrieval as train

    cfg = TwoTowerConfig(epochs=epochs, embedding_dim=embedding_dim, learning_rate=learning_rate)
    train(Path(training_set.path), Path(model.path), cfg)
    model.metadata.update({"framework": "tensorflow-recommenders", "epochs": epochs,
                           "embedding_dim": embedding_dim, "learning_rate": learning_rate})
