from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train_ranking(ranking_examples: Input[Dataset], ranker: Output[Model]):
    """Train the DCN-v2 ranker (tfrs.tasks.Ranking) on the examples train_retrieval wrote:
    retrieved candidates labelled by whether the user went on to engage with them."""
    from pathlib import Path

    from hyperrec.training.fit import fit_ranking

    report = fit_ranking(Path(ranking_examples.path), Path(ranker.path))
    ranker.metadata.update(report)
