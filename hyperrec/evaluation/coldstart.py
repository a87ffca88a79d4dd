"""Cold-start slices: how the model serves items and users it never trained on.

One extra training run (the full two-stage model) on the same training set with a random
share of test items and of test users removed entirely (cold items also stripped from
every recent-items list, so no interaction signal about them leaks in through histories):

- cold items: for test interactions with a cold item, rank the cold items alone by the
  model (content: category, brand, price, text) and compare recall@20 with chance;
- cold users: each cold user arrives with only their first few interactions (onboarding
  picks) and no known id; rank the full catalog (two-stage and retrieval alone) and
  compare with popularity.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.data.interactions import items_by_user
from hyperrec.evaluation.metrics import list_metrics, popular_excluding, recall_at_k, top_k_excluding
from hyperrec.models.two_tower import TwoTowerConfig, as_new_users


def _strip(lists, cold: set[str]):
    return [[i for i in items if i not in cold] for items in lists]


def evaluate_cold_start(data_dir: Path, work_dir: Path, cfg: TwoTowerConfig, share: float = 0.1,
                        onboarding: int = 3, seed: int = 0, k: int = 20) -> dict[str, float]:
    """Train the full two-stage model without the cold users and items (in work_dir),
    then score both slices; cold users through retrieval -> ranking and retrieval alone."""
    from hyperrec.models.recommender import Recommender
    from hyperrec.training.fit import fit_models

    rng = np.random.default_rng(seed)
    train = pd.read_parquet(data_dir / "train.parquet")
    test = pd.read_parquet(data_dir / "test.parquet")
    queries = pd.read_parquet(data_dir / "test_queries.parquet")
    test_items = np.array(sorted(set(test["item_id"])))
    cold_items = set(rng.choice(test_items, size=max(1, int(share * len(test_items))), replace=False))
    test_users = np.array(sorted(set(test["user_id"])))
    cold_users = set(rng.choice(test_users, size=max(1, int(share * len(test_users))), replace=False))

    warm = train[~train["item_id"].isin(cold_items) & ~train["user_id"].isin(cold_users)].copy()
    warm["recent_items"] = _strip(warm["recent_items"], cold_items)
    reduced = Path(work_dir) / "data"
    reduced.mkdir(parents=True, exist_ok=True)
    warm.to_parquet(reduced / "train.parquet", index=False)
    shutil.copy(data_dir / "items.parquet", reduced / "items.parquet")
    fit_models(reduced, Path(work_dir) / "model", cfg, log=lambda *_: None)
    rec = Recommender(Path(work_dir) / "model")
    item_ids = rec.item_ids
    out: dict[str, float] = {}

    # cold items, ranked among themselves, for warm users who engaged with one in test
    pairs = test[test["item_id"].isin(cold_items) & ~test["user_id"].isin(cold_users)]
    users = queries[queries["user_id"].isin(set(pairs["user_id"]))].reset_index(drop=True)
    users["recent_items"] = _strip(users["recent_items"], cold_items)
    cold_pos = np.flatnonzero(np.isin(item_ids, list(cold_items)))
    scores = rec.user_embeddings(users) @ rec.item_embeddings[cold_pos].T
    relevant = items_by_user(pairs, users["user_id"])
    ranked = top_k_excluding(scores, item_ids[cold_pos], [set()] * len(users), k)
    out |= {"cold_items": float(len(cold_pos)), "cold_item_users": float(len(users)),
            f"cold_item_recall_at_{k}": recall_at_k(ranked, relevant, k),
            f"cold_item_chance_recall_at_{k}": min(1.0, k / len(cold_pos))}

    # cold users: unknown id, their first `onboarding` interactions as the recent items
    first = train[train["user_id"].isin(cold_users)].sort_values("event_timestamp", kind="stable")
    picks = first.groupby("user_id")["item_id"].apply(lambda s: list(s.head(onboarding))[::-1])
    users = queries[queries["user_id"].isin(cold_users)].reset_index(drop=True)
    relevant = items_by_user(test, users["user_id"])
    users = as_new_users(users, _strip(picks.reindex(users["user_id"]).tolist(), cold_items))
    seen = [set(p) for p in users["recent_items"]]
    full, _ = rec.recommend(users, 10 + k, seen=seen)
    retrieval, _ = rec.recommend(users, 10 + k, seen=seen, rank=False)
    popular = popular_excluding(warm, item_ids, rec.candidate_indices(seen), 10 + k)
    out |= {"cold_users": float(len(users)), "onboarding_items": float(onboarding)}
    for name, ranked in (("", full), ("retrieval_", retrieval), ("popularity_", popular)):
        out |= list_metrics(ranked, relevant, k, f"cold_user_{name}")
    return out
