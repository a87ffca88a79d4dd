"""LinUCB for the exploration slot: a contextual bandit that learns online which kind of
not-yet-top-ranked item is worth showing.

Shared parameters (one θ over item-context features), because the arms are catalog items,
far too many for a model per arm. A⁻¹ is kept up to date by Sherman–Morrison, so an
update costs O(d²) and no matrix is ever inverted on the request path.

Updates (the feedback endpoint) and choices (requests) run on different threads. An update
builds new arrays and swaps them in under a lock, so a choice reads one consistent
snapshot (A⁻¹, θ) without taking the lock. `sherman_morrison` is the update as a pure
function, for a state kept elsewhere (several server processes share one state through
`hyperrec.online.bandit_store` and `assign` the result).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from enum import Enum
from pathlib import Path

import numpy as np


class Credit(Enum):
    """What a shared bandit store (SQLite file or Redis) did with a feedback credit."""

    CREDITED = "credited"
    UNKNOWN = "unknown"  # no such request (yet: another process may not have flushed it), or trimmed
    REFUSED = "refused"  # not the explored item of that request, or already credited


class LinUCB:
    """ucb(x) = θᵀx + alpha·sqrt(xᵀA⁻¹x), θ = A⁻¹b, A = ridge·I + Σ xxᵀ, b = Σ reward·x."""

    def __init__(self, dim: int, alpha: float = 1.0, ridge: float = 1.0):
        if dim < 1 or ridge <= 0:
            raise ValueError(f"need dim >= 1 and ridge > 0, got dim={dim}, ridge={ridge}")
        self.dim, self.alpha, self.ridge = int(dim), float(alpha), float(ridge)
        self.updates = 0
        self._lock = threading.Lock()  # serialises updates; reads use the snapshot
        self._set(np.eye(self.dim) / self.ridge, np.zeros(self.dim))

    def _set(self, A_inv: np.ndarray, b: np.ndarray) -> None:
        """Swap in a new state as one tuple: readers see the old one or the new one.
        The third part, [A⁻¹ | θ], gives both terms of the bound from one product."""
        self._snapshot = (A_inv, b, np.hstack([A_inv, (A_inv @ b)[:, None]]))

    @property
    def A_inv(self) -> np.ndarray:
        return self._snapshot[0].copy()

    @property
    def b(self) -> np.ndarray:
        return self._snapshot[1].copy()

    @property
    def theta(self) -> np.ndarray:
        return self._snapshot[2][:, -1].copy()

    def choose(self, X: np.ndarray) -> tuple[int, np.ndarray]:
        """Index of the arm (row of X, [n, dim]) with the highest upper confidence bound,
        and the bounds of all arms."""
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim or len(X) == 0:
            raise ValueError(f"need a non-empty [n, {self.dim}] array of arm features, got shape {X.shape}")
        XM = X @ self._snapshot[2]  # [X A⁻¹ | X θ]
        ucb = XM[:, -1] + self.alpha * np.sqrt(np.maximum(np.einsum("ij,ij->i", XM[:, :-1], X), 0.0))
        return int(ucb.argmax()), ucb

    def update(self, x: np.ndarray, reward: float) -> None:
        """Credit `reward` to the context x that was shown (see `sherman_morrison`)."""
        with self._lock:
            A_inv, b, _ = self._snapshot
            self._set(*sherman_morrison(A_inv, b, x, reward))
            self.updates += 1

    def assign(self, A_inv: np.ndarray, b: np.ndarray, updates: int) -> None:
        """Replace the state with one computed elsewhere (e.g. by another process, from a
        shared store); choices see the old state or the new one, never a mix."""
        A_inv, b = np.asarray(A_inv, np.float64), np.asarray(b, np.float64)
        if A_inv.shape != (self.dim, self.dim) or b.shape != (self.dim,):
            raise ValueError(f"state shapes {A_inv.shape}, {b.shape} do not match dim {self.dim}")
        with self._lock:
            self._set(A_inv, b)
            self.updates = int(updates)

    # --- persistence across restarts ----------------------------------------------------
    def state(self) -> dict:
        """A JSON-able snapshot (plain lists and numbers)."""
        with self._lock:
            A_inv, b, _ = self._snapshot
            return {"kind": "linucb", "dim": self.dim, "alpha": self.alpha, "ridge": self.ridge,
                    "A_inv": A_inv.tolist(), "b": b.tolist(), "updates": self.updates}

    @classmethod
    def from_state(cls, state: dict) -> LinUCB:
        bandit = cls(state["dim"], state["alpha"], state.get("ridge", 1.0))
        A_inv, b = np.array(state["A_inv"], np.float64), np.array(state["b"], np.float64)
        if A_inv.shape != (bandit.dim, bandit.dim) or b.shape != (bandit.dim,):
            raise ValueError(f"state shapes {A_inv.shape}, {b.shape} do not match dim {bandit.dim}")
        bandit._set(A_inv, b)
        bandit.updates = int(state["updates"])
        return bandit

    def save(self, path: str | Path) -> None:
        """Write the state as JSON atomically: a reader or a crash never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.state(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> LinUCB:
        return cls.from_state(json.loads(Path(path).read_text()))


def sherman_morrison(A_inv: np.ndarray, b: np.ndarray, x: np.ndarray, reward: float) -> tuple[np.ndarray, np.ndarray]:
    """One LinUCB update as new arrays (the inputs are not modified): A += xxᵀ by
    Sherman–Morrison, (A + xxᵀ)⁻¹ = A⁻¹ − (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x), and b += reward·x."""
    x = np.asarray(x, np.float64).reshape(-1)
    reward = float(reward)
    if x.shape != (len(b),) or not np.isfinite(x).all() or not np.isfinite(reward):
        raise ValueError(f"need a finite context of dim {len(b)} and a finite reward")
    Ax = A_inv @ x
    A_inv = A_inv - np.outer(Ax, Ax) / (1.0 + x @ Ax)
    return (A_inv + A_inv.T) / 2, b + reward * x  # symmetrise: no drift over millions of updates
