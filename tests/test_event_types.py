"""Event types and weights are configuration: a declared type of one's own is accepted at
the door, counts as positive by its weight in the training set and as engagement in the
stream's windows (which the feedback stages read); an undeclared one is refused."""

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from test_windows import events  # the hand-made event frame the window tests use

from hyperrec.data.event_types import EventTypes
from hyperrec.data.eventlog import EventLog
from hyperrec.data.interactions import positives
from hyperrec.features.windows import StreamFolds, replay

FAVED = EventTypes({"faved": 0.5, "shared": 0.0, "purchase": 2.0})


def test_declared_types_and_their_roles():
    assert FAVED.known == ("view", "click", "add_to_cart", "purchase", "rating", "faved", "shared")
    assert FAVED.custom == ("faved", "shared")
    assert set(FAVED.positive) == {"click", "add_to_cart", "purchase", "faved"}  # shared weighs 0
    assert "rating" in FAVED.engaged and FAVED.weights["purchase"] == 2.0
    assert EventTypes().known == ("view", "click", "add_to_cart", "purchase", "rating")
    with pytest.raises(ValueError, match="lowercase"):
        EventTypes({"Fav Orite": 1.0})
    with pytest.raises(ValueError, match="view is an impression"):
        EventTypes({"view": 1.0})


EVENTS = events([
    ("u", "a", "faved", "2026-01-01 10:00:00", None, None),
    ("u", "b", "shared", "2026-01-01 10:01:00", None, None),
    ("u", "c", "faved", "2026-01-01 10:02:00", None, None),
    ("u", "c", "purchase", "2026-01-01 10:03:00", None, None),
    ("u", "d", "view", "2026-01-01 10:04:00", None, None),
    ("v", "a", "rating", "2026-01-01 10:05:00", None, 2.0),
])


def test_the_training_set_weighs_each_pair_by_its_strongest_event():
    pos = positives(EVENTS, weights=FAVED.weights).set_index(["user_id", "item_id"])
    assert set(pos.index) == {("u", "a"), ("u", "c")}  # shared (0), a view and a low rating are not positives
    assert pos.loc[("u", "a"), "weight"] == 0.5
    assert pos.loc[("u", "c"), "weight"] == 2.0  # faved, then bought: the purchase's weight
    assert pos.loc[("u", "c"), "ts"] == pd.Timestamp("2026-01-01 10:02:00", tz="UTC")  # first occurrence
    canonical = positives(EVENTS[EVENTS["event_type"].isin(["purchase", "rating", "view"])])
    assert list(canonical["weight"]) == [1.0]


@pytest.mark.parametrize("fold", [lambda e, t: StreamFolds.for_types(t).fold_frame(e), replay],
                         ids=["stream", "replay"])
def test_windows_keep_declared_positive_types_as_engagement(fold):
    recent = fold(EVENTS, FAVED.engaged)["user_recent_items"]
    last = recent[recent["user_id"] == "u"].iloc[-1]
    assert list(last["recent_items"]) == ["c", "c", "a"]  # purchase and faved of c, faved of a; not shared
    activity = fold(EVENTS, FAVED.engaged)["user_activity"]
    u = activity[activity["user_id"] == "u"].iloc[-1]
    assert u["clicks_1d"] == 0 and u["purchases_1d"] == 1 and u["views_1d"] == 1  # own types count in no counter


def test_the_door_takes_declared_types_and_dead_letters_the_rest(tmp_path):
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    body = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "faved",
            "ts": (now - timedelta(minutes=1)).isoformat()}
    canonical = EventLog(tmp_path / "a.db").append([body], now=now)
    assert canonical.stored == 0 and canonical.dead_lettered == 1 and "faved" in canonical.errors[0]
    declared = EventLog(tmp_path / "b.db", event_types=FAVED.known).append(
        [body, body | {"event_id": "e2", "event_type": "fav"}], now=now)
    assert declared.stored == 1 and declared.dead_lettered == 1 and "'fav' is not one of" in declared.errors[0]


def test_the_loss_honours_row_weights():
    """Weighted rows scale the retrieval loss: all-ones is the unweighted loss, zeros give none."""
    import tensorflow as tf
    from test_models import _frames

    from hyperrec.models.two_tower import TwoTower, TwoTowerConfig, build_towers, training_examples

    train, items = _frames(rows=256)
    cfg = TwoTowerConfig(epochs=1)
    model = TwoTower(*build_towers(train, items, cfg), cfg.temperature)
    batch = {k: tf.constant(v[:64]) for k, v in training_examples(train).items()}
    ones = float(model.compute_loss(batch))
    assert ones > 0
    zeros = float(model.compute_loss(batch | {"sample_weight": tf.zeros(64)}))
    halves = float(model.compute_loss(batch | {"sample_weight": tf.fill([64], 0.5)}))
    assert zeros == 0 and halves == pytest.approx(ones / 2, rel=1e-5)


def test_the_data_gate_takes_the_worlds_own_types():
    from hyperrec.data.gate import check_world
    from hyperrec.data.generate import WorldConfig, generate_world

    world = generate_world(WorldConfig(users=60, items=40, days=5, events=3_000, seed=3))
    clicks = world.events[world.events["event_type"] == "click"].head(30)
    events = pd.concat([world.events, clicks.assign(event_type="faved", dwell_s=None,
                                                    event_id=clicks["event_id"] + "-fav")], ignore_index=True)
    schema = {c.name: c for c in check_world(events, world.users, world.items, event_types=FAVED).checks}
    assert schema["events: schema"].value == 0
    undeclared = {c.name: c for c in check_world(events, world.users, world.items).checks}["events: schema"]
    assert undeclared.value == pytest.approx(30 / len(events)) and "faved" in undeclared.detail
