"""The simulated users' satiation: what makes the real-time ablation mean something."""

import numpy as np
import pytest

from hyperrec.simulate import Boredom


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
