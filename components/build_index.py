from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_index(training_set: Input[Dataset], retrieval: Input[Model], ranker: Input[Model], model: Output[Model],
                index_kind: str = "auto"):
    """Assemble the serving unit: towers + ranker, the catalog embedded with this run's item
    tower and its candidate index (exact below 50k items, IVF above). This folder is what
    is evaluated, registered and served, so query tower, index and ranker never mix runs."""
    from pathlib import Path

    from hyperrec.train import build_serving_unit

    report = build_serving_unit(Path(retrieval.path), Path(ranker.path), Path(training_set.path), Path(model.path),
                                index_kind=index_kind)
    model.metadata.update({**retrieval.metadata, **ranker.metadata, "index_kind": report["index_kind"],
                           "index_items": report["index_items"],
                           "index_build_seconds": report["index_build_seconds"]})
