from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_training_set(home: str, world_dir: str, training_set: Output[Dataset]) -> int:
    """Split positives per user in time and join point-in-time features from Feast.

    Returns the number of training rows; the dataset folder holds train/test/items parquet.
    """
    from pathlib import Path

    from hyperrec.config import load_settings
    from hyperrec.training.dataset import build_training_set as build

    sizes = build(load_settings(home), Path(world_dir), Path(training_set.path))
    training_set.metadata.update(sizes)
    return sizes["train_rows"]
