"""Ground-truth tastes of a synthetic world, kept so a simulator can ask later
"would this user click this item on this day?" with the same rule that made the data.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

CLICK_SLOPE = 8.0  # how sharply click probability rises with taste affinity
CLICK_BIAS = -4.5  # sets the base click-through rate (about 10% on the generated feed)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


@dataclass
class Truth:
    """Latent tastes: user taste drifts from `user_base` by `user_shift` over a window."""

    user_base: np.ndarray  # (users, dim), unit rows
    user_shift: np.ndarray  # (users, dim): where a drifting user's taste moves (zero if none)
    drift_start: np.ndarray  # (users,) day the drift begins
    drift_days: np.ndarray  # (users,) days the drift takes to complete
    item_vec: np.ndarray  # (items, dim), unit rows
    item_bias: np.ndarray  # (items,) intrinsic appeal
    item_created_day: np.ndarray  # (items,) simulated day the item appears (<0: before start)

    def taste(self, users: np.ndarray, day: np.ndarray | float) -> np.ndarray:
        """Unit taste vectors of `users` on fractional `day` (broadcast)."""
        progress = np.clip((np.asarray(day) - self.drift_start[users]) / self.drift_days[users], 0, 1)
        return normalize(self.user_base[users] + progress[..., None] * self.user_shift[users])

    def affinity(self, users: np.ndarray, items: np.ndarray, day: np.ndarray | float) -> np.ndarray:
        return np.einsum("nd,nd->n", self.taste(users, day), self.item_vec[items])

    def click_probability(self, users: np.ndarray, items: np.ndarray, day) -> np.ndarray:
        """P(click | shown) for aligned arrays of users and items on `day`."""
        a = self.affinity(users, items, day)
        return sigmoid(CLICK_SLOPE * a + CLICK_BIAS + self.item_bias[items])

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> Truth:
        with np.load(path) as z:
            return cls(**{f.name: z[f.name] for f in fields(cls)})
