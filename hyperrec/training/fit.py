"""The training job's steps as plain functions: each KFP component is a thin wrapper.

The training set comes from hyperrec.training.dataset (no TensorFlow there).
fit_retrieval: the towers, with the last part of each user's training history held out to
pick the epoch count and to produce the ranker's training examples from candidates
retrieval really retrieves; then refit on all training data (the unit that is evaluated).
refit_for_serving: the same again with the test rows added (the unit that is served).
fit_ranking: the ranker on those examples. build_serving_unit: towers, ranker, candidate embeddings and index
assembled into the one folder serving loads (fit_models runs the three in one call).
evaluate_model: the shared protocol (full catalog, train items excluded).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.data.interactions import items_by_user, temporal_split
from hyperrec.evaluation.metrics import coverage, intra_list_diversity, list_metrics, ndcg_at_k, popular_excluding
from hyperrec.models.coengagement import CoEngagement
from hyperrec.models.index import BruteForceIndex, load_index
from hyperrec.models.ranking import RANKER_INPUTS, RankerConfig, ranker_rows, train_ranker
from hyperrec.models.two_tower import (
    ITEM_INPUTS,
    USER_INPUTS,
    WARM_START_DIR,
    TwoTowerConfig,
    as_new_users,
    embed,
    export_towers,
    train_two_tower,
)

SHORT_HISTORY = 3


def _first_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("event_timestamp", kind="stable").groupby("user_id", as_index=False).head(1)


def _retrieve(model, queries: pd.DataFrame, items: pd.DataFrame, seen: list[set[str]], n: int):
    """[queries, n] catalog positions and scores from in-memory towers, exact search, each
    query's seen items skipped (-1 / -inf where the catalog runs out)."""
    position = {item: p for p, item in enumerate(items["item_id"].astype(str))}
    exclude = [np.array([position[i] for i in s if i in position], np.int64) for s in seen]
    index = BruteForceIndex(embed(model.item_tower, items, ITEM_INPUTS))
    return index.search(embed(model.user_tower, queries, USER_INPUTS), n, exclude)


class _EarlyStopping:
    """Keeps the weights of the epoch with the best validation NDCG@10; stops after
    `patience` epochs without improvement."""

    def __init__(self, queries: pd.DataFrame, seen: list[set[str]], relevant: list[set[str]],
                 items: pd.DataFrame, patience: int = 1):
        self.queries, self.seen, self.relevant, self.items = queries, seen, relevant, items
        self.patience, self.best, self.best_epoch, self.weights, self.history = patience, -1.0, 0, None, []

    def __call__(self, epoch: int, model) -> bool:
        top, _ = _retrieve(model, self.queries, self.items, self.seen, 10)
        ids = self.items["item_id"].astype(str).to_numpy()
        ndcg = ndcg_at_k([list(ids[row[row >= 0]]) for row in top], self.relevant, 10)
        self.history.append(round(ndcg, 4))
        if ndcg > self.best:
            self.best, self.best_epoch, self.weights = ndcg, epoch, model.get_weights()
        return epoch - self.best_epoch < self.patience + 1


# a training run's metric logger: (metrics, step) -> None, called after each epoch with step = the epoch
EpochMetrics = Callable[[dict[str, float], int], None]


def _reported(on_epoch, epoch_metrics: EpochMetrics | None, prefix: str):
    """`on_epoch` for train_two_tower that also reports each epoch's training loss (and the
    validation NDCG@10 when `on_epoch` is an _EarlyStopping) to `epoch_metrics` as
    `<prefix>_loss` / `<prefix>_validation_ndcg_at_10` at step = epoch."""
    if epoch_metrics is None:
        return on_epoch

    def report(epoch: int, model) -> bool:
        go_on = on_epoch(epoch, model) if on_epoch is not None else True
        history = getattr(getattr(model, "history", None), "history", None) or {}
        values = {f"{prefix}_loss": float(history["loss"][-1])} if history.get("loss") else {}
        if isinstance(on_epoch, _EarlyStopping):
            values[f"{prefix}_validation_ndcg_at_10"] = float(on_epoch.history[-1])
        epoch_metrics(values, epoch)
        return go_on
    return report


RANKING_EXAMPLES = "ranking_examples.npz"
UNIT_FROM_RETRIEVAL = ("user_tower", "item_tower", WARM_START_DIR, "config.json", "coengagement.npz")
UNIT_FROM_RANKING = ("ranker", "ranker_config.json")
# what shapes the ranker's training lists; the ranker must be trained and served with the same
_EXAMPLE_SHAPE = ("candidates", "short_history_share")


def fit_retrieval(data_dir: Path, out_dir: Path, cfg: TwoTowerConfig = TwoTowerConfig(), log=print,
                  warm_start: Path | None = None, ranker_cfg: RankerConfig = RankerConfig(),
                  examples_dir: Path | None = None, epoch_metrics: EpochMetrics | None = None) -> dict:
    """Retrieval and the ranker's training examples. (1) The towers are fit on each user's
    earlier 80% of training data, the epoch count picked by NDCG@10 on the later 20%; (2)
    that model's candidates for the held-out part (plus short-history copies of the users)
    become the ranker's examples, written to examples_dir (default out_dir) as
    ranking_examples.npz; (3) the towers are refit on all training data with that epoch
    count and exported to out_dir with the co-engagement table and retrieval.json.
    `warm_start`: an earlier export (the champion's) whose tower weights both fits start from.
    `epoch_metrics(metrics, epoch)`: called after every epoch of both fits, with
    retrieval_holdout_loss and retrieval_holdout_validation_ndcg_at_10 (1), then
    retrieval_loss (3); `training_run` gives one that logs them to MLflow."""
    from hyperrec.models.recommender import created_seconds

    t0 = time.perf_counter()
    train = pd.read_parquet(data_dir / "train.parquet")
    items = pd.read_parquet(data_dir / "items.parquet")
    # the same split as the test protocol, one level down: each user's latest 20% of training
    fit, holdout = (f.rename(columns={"ts": "event_timestamp"})
                    for f in temporal_split(train.rename(columns={"event_timestamp": "ts"})))
    queries = _first_rows(holdout).reset_index(drop=True)
    if queries.empty:
        raise ValueError(f"too little training data in {data_dir}: no user has enough interactions to hold "
                         "some out for picking epochs and training the ranker")
    seen, relevant = items_by_user(fit, queries["user_id"]), items_by_user(holdout, queries["user_id"])

    # 1) retrieval on the earlier part, epochs picked on the held-out later part
    stop = _EarlyStopping(queries, seen, relevant, items)
    model = train_two_tower(fit, items, cfg, on_epoch=_reported(stop, epoch_metrics, "retrieval_holdout"),
                            warm_start=warm_start)
    model.set_weights(stop.weights)
    log(f"retrieval validation NDCG@10 per epoch {stop.history}: best epoch {stop.best_epoch}")

    # 2) the ranker learns on what that retrieval model retrieves for the held-out part,
    # plus short-history copies of some users (unknown id, 3 recent items): it also learns
    # what to do when it knows little about someone, as with a new user's onboarding picks
    short = queries.sample(frac=ranker_cfg.short_history_share, random_state=cfg.seed)
    seen, relevant = seen + items_by_user(fit, short["user_id"]), relevant + items_by_user(holdout, short["user_id"])
    short = as_new_users(short, [list(r)[:SHORT_HISTORY] for r in short["recent_items"]])
    queries = pd.concat([queries, short], ignore_index=True)
    co = CoEngagement.fit(fit, items, half_life=cfg.recency_half_life)
    cand, scores = _retrieve(model, queries, items, seen, ranker_cfg.candidates)
    rows = ranker_rows(co, created_seconds(items), queries, cand, scores)
    labels = np.array([[c >= 0 and co.item_ids[c] in rel for c in row] for row, rel in zip(cand, relevant)])
    valid = rows.pop("valid")
    examples_dir = Path(examples_dir or out_dir)
    examples_dir.mkdir(parents=True, exist_ok=True)
    np.savez(examples_dir / RANKING_EXAMPLES, label=labels.reshape(-1)[valid],
             **{c: rows[c][valid] for c in RANKER_INPUTS},
             **{f"_{name}": np.asarray(getattr(ranker_cfg, name)) for name in _EXAMPLE_SHAPE})
    n_examples = int(valid.sum())
    log(f"ranker examples: {n_examples:,} candidates, {int(labels.reshape(-1)[valid].sum()):,} positives")

    # 3) retrieval and co-engagement refit on all training data, same epoch count
    final_cfg = replace(cfg, epochs=stop.best_epoch)
    model = train_two_tower(train, items, final_cfg, on_epoch=_reported(None, epoch_metrics, "retrieval"),
                            warm_start=warm_start)
    export_towers(model, items, final_cfg, out_dir)  # the item embeddings are computed again with the index
    CoEngagement.fit(train, items, half_life=cfg.recency_half_life).save(out_dir / "coengagement.npz")
    seconds = time.perf_counter() - t0
    report = {"epochs": stop.best_epoch, "warm_start": str(warm_start or ""), "validation_history": stop.history,
              "validation_ndcg_at_10": stop.best, "train_rows": len(train), "ranking_examples": n_examples,
              "data_end": str(train["event_timestamp"].max()), "seconds": round(seconds, 1),
              "examples_per_s": round((len(fit) * len(stop.history) + len(train) * stop.best_epoch) / seconds)}
    (out_dir / "retrieval.json").write_text(json.dumps(report))
    return report


def refit_for_serving(data_dir: Path, retrieval_dir: Path, out_dir: Path, cfg: TwoTowerConfig = TwoTowerConfig(),
                      warm_start: Path | None = None, log=print, epoch_metrics: EpochMetrics | None = None) -> dict:
    """The towers and co-engagement table to serve: fit_retrieval's refit again, with the
    epoch count it picked, on the training rows *and* the test rows (test_examples.parquet).

    Evaluation needs a model that never saw the test rows, but they are each user's newest
    interactions: a served model without them misses what users did last, and after a
    taste drift that is most of the evidence of the new tastes (measured on a demo's
    retrain: 82% of the drifted users' post-drift positives were test rows). So the unit
    built from retrieval_dir is the one evaluated and gated, and this one, its twin with
    the newest 20% added, is registered and served; the online trial judges it live.
    Writes retrieval.json (fit_retrieval's report, with this fit's rows and data end).
    `epoch_metrics`: as fit_retrieval's, with serving_retrieval_loss per epoch."""
    t0 = time.perf_counter()
    train = pd.read_parquet(data_dir / "train.parquet")
    test = pd.read_parquet(data_dir / "test_examples.parquet")
    rows = pd.concat([train, test[train.columns]], ignore_index=True)
    items = pd.read_parquet(data_dir / "items.parquet")
    report = json.loads((retrieval_dir / "retrieval.json").read_text())
    final_cfg = replace(cfg, epochs=report["epochs"])
    model = train_two_tower(rows, items, final_cfg, on_epoch=_reported(None, epoch_metrics, "serving_retrieval"),
                            warm_start=warm_start)
    export_towers(model, items, final_cfg, out_dir)
    CoEngagement.fit(rows, items, half_life=cfg.recency_half_life).save(out_dir / "coengagement.npz")
    seconds = time.perf_counter() - t0
    log(f"served towers refit on {len(rows):,} rows ({len(test):,} test rows added) in {seconds:.1f}s")
    report |= {"refit_rows": len(rows), "data_end": str(rows["event_timestamp"].max()),
               "refit_seconds": round(seconds, 1), "seconds": round(report["seconds"] + seconds, 1)}
    (out_dir / "retrieval.json").write_text(json.dumps(report))
    return report


def fit_ranking(examples: Path, out_dir: Path, ranker_cfg: RankerConfig = RankerConfig(), log=print,
                epoch_metrics: EpochMetrics | None = None) -> dict:
    """Train the DCN ranker on fit_retrieval's examples (`examples`: the .npz or its folder);
    writes ranker/, ranker_config.json and ranking.json to out_dir. `epoch_metrics(metrics,
    epoch)`: called after every epoch with ranker_loss."""
    t0 = time.perf_counter()
    examples = Path(examples)
    if examples.is_dir():
        examples = examples / RANKING_EXAMPLES
    with np.load(examples, allow_pickle=False) as z:
        for name in _EXAMPLE_SHAPE:
            built = z[f"_{name}"].item()
            if built != getattr(ranker_cfg, name):
                raise ValueError(f"{examples} was built with {name}={built}, the ranker config says "
                                 f"{getattr(ranker_cfg, name)}: give fit_retrieval the same RankerConfig")
        rows, labels = {c: z[c] for c in RANKER_INPUTS}, z["label"]
    ranker = train_ranker(rows, labels, ranker_cfg, on_epoch=epoch_metrics)
    log(f"ranker: {len(labels):,} candidates, {int(labels.sum()):,} positives")
    out_dir.mkdir(parents=True, exist_ok=True)
    ranker.save(out_dir / "ranker", save_format="tf")
    (out_dir / "ranker_config.json").write_text(json.dumps(asdict(ranker_cfg)))
    report = {"ranker_examples": len(labels), "ranker_positives": int(labels.sum()),
              "ranker_seconds": round(time.perf_counter() - t0, 1)}
    (out_dir / "ranking.json").write_text(json.dumps(report))
    return report


def build_serving_unit(retrieval_dir: Path, ranker_dir: Path, data_dir: Path, out_dir: Path,
                       index_kind: str = "auto") -> dict:
    """Assemble the versioned serving unit `Recommender` loads: the towers, co-engagement
    table and ranker copied from their steps' folders, the catalog (data_dir/items.parquet)
    embedded with this unit's item tower and indexed, and training.json (both reports plus
    the index's). Query tower, index and ranker thereby always come from one unit."""
    import tensorflow as tf

    from hyperrec.models.recommender import export_candidates

    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [(retrieval_dir, n) for n in UNIT_FROM_RETRIEVAL] + [(ranker_dir, n) for n in UNIT_FROM_RANKING]
    for src, name in parts:
        if (src / name).is_dir():
            shutil.copytree(src / name, out_dir / name, dirs_exist_ok=True)
        else:
            shutil.copy2(src / name, out_dir / name)
    t0 = time.perf_counter()
    items = pd.read_parquet(data_dir / "items.parquet")
    item_tower = tf.keras.models.load_model(out_dir / "item_tower", compile=False)
    export_candidates(out_dir, items, embed(item_tower, items, ITEM_INPUTS), index_kind)
    index = load_index(out_dir / "index")
    index_report = {"index_kind": index.kind, "index_items": len(index),
                    "index_build_seconds": round(time.perf_counter() - t0, 1)}
    retrieval = json.loads((retrieval_dir / "retrieval.json").read_text())
    ranking = json.loads((ranker_dir / "ranking.json").read_text())
    seconds = retrieval["seconds"] + ranking["ranker_seconds"] + index_report["index_build_seconds"]
    report = {**retrieval, **ranking, **index_report, "retrieval_seconds": retrieval["seconds"],
              "seconds": round(seconds, 1)}
    (out_dir / "training.json").write_text(json.dumps(report))
    return report


def fit_models(data_dir: Path, out_dir: Path, cfg: TwoTowerConfig = TwoTowerConfig(),
               ranker_cfg: RankerConfig = RankerConfig(), log=print, warm_start: Path | None = None,
               epoch_metrics: EpochMetrics | None = None) -> dict:
    """fit_retrieval -> fit_ranking -> build_serving_unit in one call (what the pipeline runs
    as three steps): the serving unit in out_dir, its training report returned."""
    with tempfile.TemporaryDirectory(prefix="hyperrec-fit-") as tmp:
        retrieval_dir, ranker_dir = Path(tmp) / "retrieval", Path(tmp) / "ranker"
        fit_retrieval(data_dir, retrieval_dir, cfg, log, warm_start, ranker_cfg=ranker_cfg, epoch_metrics=epoch_metrics)
        fit_ranking(retrieval_dir, ranker_dir, ranker_cfg, log)
        return build_serving_unit(retrieval_dir, ranker_dir, data_dir, out_dir)


def evaluate_model(model_dir: Path, data_dir: Path, k: int = 20, after: pd.Timestamp | None = None
                   ) -> dict[str, float]:
    """Recall@k, NDCG@10, coverage and diversity on the temporal test split for the full
    model (retrieval -> ranking) and retrieval alone; popularity by the same code.
    `after`: only test interactions after this time count (and only their users are asked)."""
    from hyperrec.models.recommender import Recommender

    train = pd.read_parquet(data_dir / "train.parquet", columns=["user_id", "item_id"])
    test = pd.read_parquet(data_dir / "test.parquet")
    queries = pd.read_parquet(data_dir / "test_queries.parquet")
    if after is not None:
        test = test[test["ts"] > after]
        queries = queries[queries["user_id"].isin(set(test["user_id"]))].reset_index(drop=True)
    relevant = items_by_user(test, queries["user_id"])
    seen = items_by_user(train, queries["user_id"])
    rec = Recommender(model_dir)
    n = max(k, 10)
    full, _ = rec.recommend(queries, k=n, seen=seen)
    retrieval, _ = rec.recommend(queries, k=n, seen=seen, rank=False)
    popular = popular_excluding(train, rec.item_ids, rec.candidate_indices(seen), n)
    out = {"eval_users": float(len(queries))}
    for name, ranked in (("", full), ("retrieval_", retrieval), ("popularity_", popular)):
        out |= list_metrics(ranked, relevant, k, name)
    out["coverage_at_10"] = coverage([r[:10] for r in full], len(rec.item_ids))
    out["diversity_at_10"] = intra_list_diversity([r[:10] for r in full], rec.catalog["category"])
    for segment, rel in segments(relevant, queries["user_id"], train, rec.catalog["category"]).items():
        out[f"segment.{segment}.users"] = float(sum(1 for r in rel if r))
        out |= list_metrics(full, rel, k, f"segment.{segment}.")
    return out


def data_end(model_dir: Path) -> pd.Timestamp | None:
    """The newest interaction a serving unit was fit on (None for units built before this
    was recorded): a served unit has seen test rows up to it, so a comparison against it is
    fair only on later ones."""
    end = json.loads((Path(model_dir) / "training.json").read_text()).get("data_end")
    return pd.Timestamp(end) if end else None


LIGHT = 5  # a user or item with fewer training interactions counts as cold


def segments(relevant: list[set[str]], users: pd.Series, train: pd.DataFrame, category: pd.Series,
             top_categories: int = 3) -> dict[str, list[set[str]]]:
    """Each user's relevant items restricted to a segment the model gate compares: cold
    users (fewer than LIGHT training interactions), cold items (relevant items with fewer
    than LIGHT), and the largest categories among the relevant items. Segments with no
    relevant items are left out."""
    user_n = train["user_id"].value_counts()
    item_n = train["item_id"].value_counts()
    cold_user = (user_n.reindex(users).fillna(0) < LIGHT).to_numpy()
    out = {"cold_users": [rel if cold else set() for rel, cold in zip(relevant, cold_user)],
           "cold_items": [{i for i in rel if item_n.get(i, 0) < LIGHT} for rel in relevant]}
    volume = category.reindex([i for rel in relevant for i in rel]).value_counts()
    for cat in volume.index[:top_categories]:
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(cat))  # MLflow metric-name characters
        out[f"category.{name}"] = [{i for i in rel if category.get(i) == cat} for rel in relevant]
    return {name: rel for name, rel in out.items() if any(rel)}
