"""The simulated users' satiation: what makes the real-time ablation mean something."""

import numpy as np
import pytest

from hyperrec.demo.simulate import Boredom


def test_a_click_halves_the_next_click_and_wears_off_with_the_half_life():
    bored = Boredom(factor=0.5, half_life_days=3.0)
    items = np.array([7, 8])
    assert bored.multiplier(1, items, day=10.0).tolist() == [1.0, 1.0]
    bored.clicked(1, 7, day=10.0)
    assert bored.multiplier(1, items, day=10.0).tolist() == [0.5, 1.0]  # only that item, only that user
    assert bored.multiplier(2, items, day=10.0).tolist() == [1.0, 1.0]
    bored.clicked(1, 7, day=10.0)
    assert bored.multiplier(1, items, day=10.0)[0] == pytest.approx(0.25)
    # three days later the boredom of 2 clicks has halved to 1: the multiplier is back to 0.5
    assert bored.multiplier(1, items, day=13.0)[0] == pytest.approx(0.5)
    assert bored.multiplier(1, items, day=40.0)[0] == pytest.approx(1.0, abs=2e-3)


def test_seeding_from_history_counts_old_clicks_less_and_factor_one_switches_it_off():
    bored = Boredom(factor=0.5, half_life_days=1.0)
    bored.seed(np.array([0, 0]), np.array([3, 4]), np.array([9.0, 7.0]))
    got = bored.multiplier(0, np.array([3, 4]), day=10.0)
    assert got == pytest.approx([0.5 ** 0.5, 0.5 ** 0.125])
    off = Boredom(factor=1.0, half_life_days=1.0)
    off.clicked(0, 3, day=0.0)
    assert off.multiplier(0, np.array([3]), day=0.0).tolist() == [1.0]


def test_organic_visits_follow_the_users_current_taste_and_name_no_list():
    """Users find items on their own, by the taste they have now: after a drift, by the new
    one. Those events carry no request_id (no list led to them) and come in time order."""
    from datetime import timedelta

    import pandas as pd

    from hyperrec.data.generate import WorldConfig, generate_world
    from hyperrec.demo.simulate import SimConfig, Simulator

    world = generate_world(WorldConfig(users=150, items=200, days=10, events=8_000, drift_start_day=2.0,
                                       drift_spread_days=0.1, drift_max_days=1.0, seed=7))
    sim = Simulator(world, "http://unused", SimConfig(organic_per_list=1.0), seed=1)
    t0 = world.events["ts"].max().to_pydatetime()
    events = sim.organic(3_000, t0, t0 + timedelta(days=1))
    assert [e["_t"] for e in events] == sorted(e["_t"] for e in events)
    assert all("request_id" not in e for e in events)
    views = [e for e in events if e["event_type"] == "view"]
    assert len(views) == 3_000 and 0 < sum(e["event_type"] == "click" for e in events) < len(views)

    truth, users = world.truth, pd.Index(world.users["user_id"])
    items = pd.Index(world.items["item_id"])
    u = users.get_indexer([e["user_id"] for e in views])
    i = items.get_indexer([e["item_id"] for e in views])
    day = np.array([sim.day_of(pd.Timestamp(e["ts"])) for e in views])
    drifted = np.abs(truth.user_shift[u]).sum(axis=1) > 0
    assert drifted.any() and (~drifted).any()
    chosen = truth.affinity(u, i, day)
    random_items = sim.rng.integers(0, len(items), len(u))
    assert chosen.mean() > truth.affinity(u, random_items, day).mean() + 0.2
    # drifted users look for their new taste: closer to it than to the taste they had before the drift
    before = truth.affinity(u[drifted], i[drifted], np.zeros(drifted.sum()))
    assert chosen[drifted].mean() > before.mean() + 0.1
