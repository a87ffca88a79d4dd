"""The training set, built without TensorFlow (the pipeline's build_training_set step runs
in its own process; importing TF there would cost ~10 s for nothing): the temporal split
of positives, Feast point-in-time features on every example, one query row per test user,
and the catalog as of the end of training."""

from __future__ import annotations

import json
import time
from pathlib import Path

from hyperrec.config import Settings
from hyperrec.data.event_types import EventTypes
from hyperrec.data.interactions import POSITIVE_RATING, positives, temporal_split
from hyperrec.data.world import load_world
from hyperrec.features.store import training_set
from hyperrec.features.views import ITEM_METADATA, USER_VIEWS

TRAINING_VIEWS = (*USER_VIEWS, ITEM_METADATA)


def build_training_set(settings: Settings, world_dir: Path, out_dir: Path,
                       min_rating: float = POSITIVE_RATING) -> dict:
    """Split positives per user in time, then join point-in-time features from Feast onto
    every example; writes train / test (and test_examples, test with features) /
    test_queries / items parquet, returns sizes."""
    world = load_world(world_dir)
    events = usable_events(settings, world.events)
    pos = positives(events, min_rating, EventTypes.of_world(world.meta).weights)
    train, test = temporal_split(pos)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    train_fs = training_set(settings, train.rename(columns={"ts": "event_timestamp"}),
                            views=TRAINING_VIEWS, context=True)
    join_s = time.perf_counter() - t
    train_fs.to_parquet(out_dir / "train.parquet", index=False)
    test.to_parquet(out_dir / "test.parquet", index=False)
    # the same rows with their features: what refit_for_serving adds to train for the served model
    training_set(settings, test.rename(columns={"ts": "event_timestamp"}), views=TRAINING_VIEWS,
                 context=True).to_parquet(out_dir / "test_examples.parquet", index=False)
    # each test user's request: features as of their first interaction after training
    # (strictly before it: the snapshot of that interaction is stamped 1 ms later)
    after = pos.merge(train[["user_id", "item_id"]], how="left", indicator=True)
    after = after[(after["_merge"] == "left_only") & after["user_id"].isin(set(test["user_id"]))]
    query_ts = after.groupby("user_id", as_index=False)["ts"].min().rename(columns={"ts": "event_timestamp"})
    training_set(settings, query_ts, views=USER_VIEWS, context=True).to_parquet(
        out_dir / "test_queries.parquet", index=False)
    # candidate features as of the end of training data (the catalog a model would index)
    cutoff = train["ts"].max()
    catalog = world.items[world.items["created_ts"] <= cutoff][["item_id"]].assign(event_timestamp=cutoff)
    items_fs = training_set(settings, catalog, views=(ITEM_METADATA,))
    items_fs = items_fs.merge(world.items[["item_id", "title", "created_ts"]].astype({"item_id": object}),
                              on="item_id")
    items_fs.to_parquet(out_dir / "items.parquet", index=False)
    sizes = {"train_rows": len(train_fs), "test_rows": len(test), "items": len(items_fs),
             "events_excluded_by_privacy": len(world.events) - len(events),
             "users": int(train["user_id"].nunique()), "feast_join_s": round(join_s, 1)}
    (out_dir / "sizes.json").write_text(json.dumps(sizes))
    return sizes


def usable_events(settings: Settings, events):
    """The events training may learn from: none of an erased user, and only those made while
    their user consented to personalization (consent ledger, as of each event's time)."""
    from hyperrec.privacy import ConsentLedger, drop_erased

    ledger = ConsentLedger.open(settings)
    try:
        return ledger.filter_events_by_consent(drop_erased(events, settings), "personalization")
    finally:
        ledger.close()
