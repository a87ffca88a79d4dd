"""Implicit feedback: which events count as positive and how strongly, and the per-user
temporal split."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from hyperrec.data.event_types import CANONICAL_WEIGHTS

POSITIVE_RATING = 4.0  # explicit ratings at or above this count as positive


def positives(events: pd.DataFrame, min_rating: float = POSITIVE_RATING,
              weights: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Positive (user, item, ts, weight) interactions, first occurrence per pair, weighted by
    the pair's strongest event. `weights`: event type -> weight (hyperrec.data.event_types;
    default: click, cart, purchase and rating 1, view 0); a type weighing 0 is not positive.
    Explicit ratings count from `min_rating` up (0.5 makes every rating an interaction, the
    usual implicit-feedback reading of MovieLens)."""
    weights = weights if weights is not None else CANONICAL_WEIGHTS
    kinds = events["event_type"].astype(object)
    weight = kinds.map(weights).fillna(0.0).astype(float)
    is_pos = (weight > 0) & ((kinds != "rating") | (events["rating"] >= min_rating))
    pos = events.loc[is_pos, ["user_id", "item_id", "ts"]].assign(weight=weight[is_pos])
    pos = pos.sort_values("ts", kind="stable")
    strongest = pos.groupby(["user_id", "item_id"], sort=False)["weight"].transform("max")
    pos = pos.assign(weight=strongest)
    return pos.drop_duplicates(["user_id", "item_id"], keep="first").reset_index(drop=True)


def temporal_split(pos: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the latest `test_share` of interactions (at least one, when the user has
    two or more) form the test set; items never seen in train are dropped from test."""
    pos = pos.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    n = pos.groupby("user_id")["item_id"].transform("size").to_numpy()
    rank = pos.groupby("user_id").cumcount().to_numpy()
    n_test = np.where(n >= 2, np.maximum(1, np.floor(n * test_share)), 0)
    is_test = rank >= n - n_test
    train, test = pos[~is_test], pos[is_test]
    test = test[test["item_id"].isin(set(train["item_id"]))]
    return train.reset_index(drop=True), test.reset_index(drop=True)


def items_by_user(frame: pd.DataFrame, users) -> list[set[str]]:
    """Each of `users`' items in `frame` as a set (empty for a user with none)."""
    by_user = frame.groupby("user_id")["item_id"].apply(set)
    return [by_user.get(u, set()) for u in users]
