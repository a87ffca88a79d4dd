import numpy as np
import pandas as pd
import pytest

from hyperrec.data.generate import WorldConfig, generate_world
from hyperrec.data.schemas import Event, check_frame
from hyperrec.data.world import load_world, save_world

SMALL = dict(users=120, items=60, days=10, events=6_000)


@pytest.fixture(scope="module")
def world():
    return generate_world(WorldConfig(**SMALL, seed=3))


def test_same_seed_same_world_other_seed_other_world(world):
    again = generate_world(WorldConfig(**SMALL, seed=3))
    pd.testing.assert_frame_equal(world.events, again.events)
    pd.testing.assert_frame_equal(world.users, again.users)
    pd.testing.assert_frame_equal(world.items, again.items)
    other = generate_world(WorldConfig(**SMALL, seed=4))
    assert not world.events["item_id"].equals(other.events["item_id"])


def test_sizes_follow_flags(world):
    assert len(world.users) == 120 and len(world.items) == 60
    assert 0.85 * 6_000 < len(world.events) < 1.15 * 6_000
    bigger = generate_world(WorldConfig(users=300, items=100, days=5, events=30_000, chunk=7_000))
    assert 0.85 * 30_000 < len(bigger.events) < 1.15 * 30_000


def test_events_are_schema_valid_and_the_funnel_is_consistent(world):
    _, errors = check_frame(world.events, Event)
    assert errors == []
    ev = world.events
    counts = ev["event_type"].value_counts()
    assert counts["view"] > counts["click"] > counts["add_to_cart"] >= counts["purchase"] >= counts["rating"] > 0
    assert ev.loc[ev["event_type"] == "click", "dwell_s"].notna().all()
    assert ev["event_id"].is_unique
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert ev["ts"].min() >= start and ev["ts"].max() < start + pd.Timedelta(days=10)
    # every click follows a view of the same item by the same user
    views = set(zip(ev.loc[ev.event_type == "view", "user_id"], ev.loc[ev.event_type == "view", "item_id"]))
    clicks = zip(ev.loc[ev.event_type == "click", "user_id"], ev.loc[ev.event_type == "click", "item_id"])
    assert all(pair in views for pair in clicks)


def test_new_items_appear_and_are_never_shown_before_they_exist(world):
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert (world.items["created_ts"] > start).sum() > 0
    created = world.items.set_index("item_id")["created_ts"]
    assert (world.events["ts"].to_numpy() >= created.loc[world.events["item_id"]].to_numpy()).all()


def test_truth_drifts_and_answers_click_questions(world):
    truth = world.truth
    users = np.arange(len(world.users))
    moved = np.einsum("nd,nd->n", truth.taste(users, 0.0), truth.taste(users, 10.0))
    drifting = np.linalg.norm(truth.user_shift, axis=1) > 0
    assert drifting.any() and (~drifting).any()
    assert np.all(moved[~drifting] > 0.999) and np.median(moved[drifting]) < 0.9
    p = truth.click_probability(users, np.zeros_like(users), 5.0)
    assert p.shape == users.shape and np.all((p > 0) & (p < 1))


def test_clicks_follow_the_hidden_tastes(world):
    ev = world.events
    uidx = ev["user_id"].str[1:].astype(int).to_numpy()
    iidx = ev["item_id"].str[1:].astype(int).to_numpy()
    day = ((ev["ts"] - pd.Timestamp("2026-01-01", tz="UTC")) / pd.Timedelta(days=1)).to_numpy()
    aff = world.truth.affinity(uidx, iidx, day)
    assert aff[ev["event_type"] == "click"].mean() > aff[ev["event_type"] == "view"].mean() + 0.05


def test_world_round_trips_through_disk(world, tmp_path):
    save_world(world, tmp_path / "w")
    back = load_world(tmp_path / "w")
    pd.testing.assert_frame_equal(back.events, world.events)
    np.testing.assert_array_equal(back.truth.item_vec, world.truth.item_vec)
    assert back.meta["config"]["seed"] == 3


def test_a_taste_shift_can_be_made_abrupt():
    """The demo's drift: users start within 6 h of the start day and move within a day."""
    world = generate_world(WorldConfig(users=300, items=50, days=10, events=2_000, seed=4, drift_start_day=11.0,
                                       drift_spread_days=0.25, drift_max_days=1.0))
    truth = world.truth
    assert truth.drift_start.min() >= 11.0 and truth.drift_start.max() <= 11.25
    assert truth.drift_days.min() >= 0.5 and truth.drift_days.max() <= 1.0
    drifting = np.abs(truth.user_shift).sum(axis=1) > 0
    users = np.flatnonzero(drifting)[:20]
    assert np.allclose(truth.taste(users, 10.9), truth.taste(users, 11.0))  # not started
    assert not np.allclose(truth.taste(users, 11.0), truth.taste(users, 12.3))  # done by then


@pytest.mark.parametrize("categories", [None, 2])
def test_a_drift_can_be_a_trend_toward_the_same_few_categories(categories):
    """drift_categories=2: every drifting user's taste moves toward one of the same two
    categories (plus a personal part as large as it: the nearest category centre is one of
    the two for most, not all); without it, toward categories spread over the catalog."""
    world = generate_world(WorldConfig(users=300, items=200, days=10, events=2_000, seed=4, drift_start_day=11.0,
                                       drift_categories=categories))
    truth = world.truth
    drifting = np.flatnonzero(np.abs(truth.user_shift).sum(axis=1) > 0)
    target = truth.user_base[drifting] + truth.user_shift[drifting] / 1.5  # shift = 1.5 (target - base)
    category = world.items["category"].to_numpy()
    names = np.unique(category)
    centres = np.stack([truth.item_vec[category == c].mean(axis=0) for c in names])
    toward = pd.Series(names[np.argmax(target @ centres.T, axis=1)]).value_counts(normalize=True)
    if categories is None:
        assert toward.iloc[0] < 0.3 and len(toward) > 5
    else:
        assert toward.iloc[:2].sum() > 0.5
