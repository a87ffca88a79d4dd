from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate_model(home: str, training_set: Input[Dataset], model: Input[Model], metrics: Output[Metrics],
                   evaluation: Output[Artifact], k: int = 20, min_compared_users: int = 50):
    """Recall@k / NDCG@10, coverage, diversity and segments on the temporal test split
    (full catalog, seen items excluded) for the candidate, and for the current champion
    on the same data, so the gate compares like with like.

    A served champion was fit on its own test rows too (train.refit_for_serving); a user
    with nothing new since has the same test rows now, which the champion has seen. So the
    two are compared on the test interactions after the champion's data end, when at least
    `min_compared_users` users have some; the candidate's metrics on the whole test split
    are logged either way (`candidate_all_test` when they differ from the compared ones)."""
    import json
    from pathlib import Path

    import pandas as pd

    from hyperrec.config import load_settings
    from hyperrec.registry.model_registry import champion_model_dir
    from hyperrec.training.fit import data_end
    from hyperrec.training.fit import evaluate_model as evaluate

    data = Path(training_set.path)
    candidate = evaluate(Path(model.path), data, k=k)
    result = {"candidate": candidate, "champion": None, "compared_on": "all test interactions"}
    champion_dir = champion_model_dir(load_settings(home))
    if champion_dir:
        since = data_end(champion_dir)
        test = pd.read_parquet(data / "test.parquet", columns=["user_id", "ts"])
        fresh_users = test.loc[test["ts"] > since, "user_id"].nunique() if since is not None else 0
        if since is not None and fresh_users >= min_compared_users:
            result = {"candidate": evaluate(Path(model.path), data, k=k, after=since),
                      "champion": evaluate(champion_dir, data, k=k, after=since),
                      "compared_on": f"test interactions after {since} (the champion's data end): "
                                     f"{fresh_users} users",
                      "candidate_all_test": candidate}
        else:
            result |= {"champion": evaluate(champion_dir, data, k=k),
                       "compared_on": f"all test interactions (only {fresh_users} users have some after the "
                                      f"champion's data end {since})"}
    for name, value in candidate.items():
        metrics.log_metric(name, value)
    print(result["compared_on"])
    Path(evaluation.path).write_text(json.dumps(result))
