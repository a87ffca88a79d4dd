from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_index(training_set: Input[Dataset], retrieval: Input[Model], serving_retrieval: Input[Model],
                ranker: Input[Model], model: Output[Model], serving_model: Output[Model], index_kind: str = "auto"):
    """Assemble the serving units: towers + ranker, the catalog embedded with those towers'
    item tower and its candidate index (exact below 50k items, IVF above). `model` (from
    `retrieval`) is what is evaluated and gated; `serving_model` (from
    `serving_retrieval`, its twin fit with the test rows too) is what is registered and
    served. Each folder is one unit, so query tower, index and ranker never mix runs."""
    from pathlib import Path

    from hyperrec.training.fit import build_serving_unit

    for towers, unit in ((retrieval, model), (serving_retrieval, serving_model)):
        report = build_serving_unit(Path(towers.path), Path(ranker.path), Path(training_set.path), Path(unit.path),
                                    index_kind=index_kind)
        unit.metadata.update({**towers.metadata, **ranker.metadata, "index_kind": report["index_kind"],
                              "index_items": report["index_items"],
                              "index_build_seconds": report["index_build_seconds"]})
