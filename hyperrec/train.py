"""The training job's steps as plain functions: each KFP component is a thin wrapper."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from hyperrec.config import Settings
from hyperrec.data.world import load_world
from hyperrec.features import ITEM_METADATA, USER_ACTIVITY, USER_PROFILE
from hyperrec.featurestore import training_set
from hyperrec.interactions import POSITIVE_RATING, positives, temporal_split
from hyperrec.metrics import ndcg_at_k, recall_at_k, top_k_excluding
from hyperrec.models.two_tower import TwoTowerConfig, export, train_two_tower

TRAINING_VIEWS = (USER_PROFILE, USER_ACTIVITY, ITEM_METADATA)


def build_training_set(settings: Settings, world_dir: Path, out_dir: Path,
                       min_rating: float = POSITIVE_RATING) -> dict:
    """Split positives per user in time, then join point-in-time features from Feast onto
    every example; writes train/test/items parquet and returns their sizes."""
    world = load_world(world_dir)
    train, test = temporal_split(positives(world.events, min_rating))
    out_dir.mkdir(parents=True, exist_ok=True)
    # only the views the towers read: each extra view is another point-in-time join
    train_fs = training_set(settings, train.rename(columns={"ts": "event_timestamp"}),
                            views=TRAINING_VIEWS, context=True)
    train_fs.to_parquet(out_dir / "train.parquet", index=False)
    test.to_parquet(out_dir / "test.parquet", index=False)
    # candidate features as of the end of training data (the catalog a model would index)
    cutoff = train["ts"].max()
    catalog = world.items[world.items["created_ts"] <= cutoff][["item_id"]].assign(event_timestamp=cutoff)
    items_fs = training_set(settings, catalog, views=(ITEM_METADATA,))
    items_fs = items_fs.merge(world.items[["item_id", "title"]].astype({"item_id": object}), on="item_id")
    items_fs.to_parquet(out_dir / "items.parquet", index=False)
    sizes = {"train_rows": len(train_fs), "test_rows": len(test), "items": len(items_fs),
             "users": int(train["user_id"].nunique())}
    (out_dir / "sizes.json").write_text(json.dumps(sizes))
    return sizes


def train_retrieval(data_dir: Path, out_dir: Path, cfg: TwoTowerConfig) -> Path:
    train = pd.read_parquet(data_dir / "train.parquet")
    items = pd.read_parquet(data_dir / "items.parquet")
    model = train_two_tower(train, items, cfg)
    return export(model, items, cfg, out_dir)


def last_features(train: pd.DataFrame) -> pd.DataFrame:
    """Each user's features as of their latest training example (no look-ahead)."""
    return train.sort_values("event_timestamp").groupby("user_id", as_index=False).tail(1)


def evaluate_retrieval(model_dir: Path, data_dir: Path, k: int = 20) -> dict[str, float]:
    """Recall@k and NDCG@10 on the temporal test split, full catalog, train items excluded;
    the popularity baseline is scored by the same code for context."""
    from hyperrec.recommend import Recommender

    train = pd.read_parquet(data_dir / "train.parquet")
    test = pd.read_parquet(data_dir / "test.parquet")
    users = last_features(train[train["user_id"].isin(set(test["user_id"]))]).reset_index(drop=True)
    relevant = test.groupby("user_id")["item_id"].apply(set).reindex(users["user_id"]).tolist()
    seen_by_user = train.groupby("user_id")["item_id"].apply(set)
    seen = seen_by_user.reindex(users["user_id"]).tolist()
    rec = Recommender(model_dir)
    ranked, _ = rec.recommend(users, k=max(k, 10), seen=seen)
    pop = train["item_id"].value_counts().reindex(rec.item_ids).fillna(0).to_numpy()
    exclude = rec.candidate_indices(seen)
    pop_ranked = top_k_excluding(pop[None, :].repeat(len(users), 0), rec.item_ids, exclude, max(k, 10))
    return {
        f"recall_at_{k}": recall_at_k(ranked, relevant, k),
        "ndcg_at_10": ndcg_at_k(ranked, relevant, 10),
        f"popularity_recall_at_{k}": recall_at_k(pop_ranked, relevant, k),
        "popularity_ndcg_at_10": ndcg_at_k(pop_ranked, relevant, 10),
        "eval_users": float(len(users)),
    }
