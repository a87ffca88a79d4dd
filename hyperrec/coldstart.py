"""Cold-start slices: how the retrieval model serves items and users it never trained on.

One extra training run on the same training set with a random share of test items and of
test users removed entirely (cold items also stripped from every recent-items list, so no
interaction signal about them leaks in through histories):

- cold items: for test interactions with a cold item, rank the cold items alone by the
  model (content: category, brand, price, text) and compare recall@20 with chance;
- cold users: each cold user arrives with only their first few interactions (onboarding
  picks) and no known id; rank the full catalog and compare with popularity.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from hyperrec.metrics import ndcg_at_k, recall_at_k, top_k_excluding
from hyperrec.models.two_tower import ITEM_INPUTS, USER_INPUTS, TwoTowerConfig, embed, train_two_tower


def _strip(lists, cold: set[str]):
    return [[i for i in items if i not in cold] for items in lists]


def evaluate_cold_start(data_dir, cfg: TwoTowerConfig, share: float = 0.1, onboarding: int = 3,
                        seed: int = 0, k: int = 20) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    train = pd.read_parquet(data_dir / "train.parquet")
    test = pd.read_parquet(data_dir / "test.parquet")
    queries = pd.read_parquet(data_dir / "test_queries.parquet")
    items = pd.read_parquet(data_dir / "items.parquet")
    test_items = np.array(sorted(set(test["item_id"])))
    cold_items = set(rng.choice(test_items, size=max(1, int(share * len(test_items))), replace=False))
    test_users = np.array(sorted(set(test["user_id"])))
    cold_users = set(rng.choice(test_users, size=max(1, int(share * len(test_users))), replace=False))

    warm = train[~train["item_id"].isin(cold_items) & ~train["user_id"].isin(cold_users)].copy()
    warm["recent_items"] = _strip(warm["recent_items"], cold_items)
    model = train_two_tower(warm, items, replace(cfg, seed=cfg.seed + 1))
    item_emb = embed(model.item_tower, items, ITEM_INPUTS)
    item_ids = items["item_id"].astype(str).to_numpy()
    out: dict[str, float] = {}

    # cold items, ranked among themselves, for warm users who engaged with one in test
    pairs = test[test["item_id"].isin(cold_items) & ~test["user_id"].isin(cold_users)]
    users = queries[queries["user_id"].isin(set(pairs["user_id"]))].reset_index(drop=True)
    users["recent_items"] = _strip(users["recent_items"], cold_items)
    cold_pos = np.flatnonzero(np.isin(item_ids, list(cold_items)))
    scores = embed(model.user_tower, users, USER_INPUTS) @ item_emb[cold_pos].T
    relevant = pairs.groupby("user_id")["item_id"].apply(set).reindex(users["user_id"]).tolist()
    ranked = top_k_excluding(scores, item_ids[cold_pos], [set()] * len(users), k)
    out |= {"cold_items": float(len(cold_pos)), "cold_item_users": float(len(users)),
            f"cold_item_recall_at_{k}": recall_at_k(ranked, relevant, k),
            f"cold_item_chance_recall_at_{k}": min(1.0, k / len(cold_pos))}

    # cold users: unknown id, their first `onboarding` interactions as the recent items
    first = train[train["user_id"].isin(cold_users)].sort_values("event_timestamp", kind="stable")
    picks = first.groupby("user_id")["item_id"].apply(lambda s: list(s.head(onboarding))[::-1])
    users = queries[queries["user_id"].isin(cold_users)].reset_index(drop=True)
    users["recent_items"] = _strip(picks.reindex(users["user_id"]).tolist(), cold_items)
    users["user_id"] = "__new_user__"
    for col, kind in USER_INPUTS.items():  # a new user has no activity history yet
        if kind == "float" or (kind == "int" and col not in ("hour_of_day", "day_of_week")):
            users[col] = 0
    seen = [set(p) for p in users["recent_items"]]
    index = {i: n for n, i in enumerate(item_ids)}
    exclude = [{index[i] for i in s if i in index} for s in seen]
    relevant = test.groupby("user_id")["item_id"].apply(set).reindex(
        queries[queries["user_id"].isin(cold_users)]["user_id"]).tolist()
    ranked = top_k_excluding(embed(model.user_tower, users, USER_INPUTS) @ item_emb.T, item_ids, exclude, 10 + k)
    pop = warm["item_id"].value_counts().reindex(item_ids).fillna(0).to_numpy(np.float32)
    pop_ranked = top_k_excluding(np.broadcast_to(pop, (len(users), len(pop))), item_ids, exclude, 10 + k)
    out |= {"cold_users": float(len(users)), "onboarding_items": float(onboarding),
            f"cold_user_recall_at_{k}": recall_at_k(ranked, relevant, k),
            "cold_user_ndcg_at_10": ndcg_at_k(ranked, relevant, 10),
            f"cold_user_popularity_recall_at_{k}": recall_at_k(pop_ranked, relevant, k),
            "cold_user_popularity_ndcg_at_10": ndcg_at_k(pop_ranked, relevant, 10)}
    return out
