"""Catalog items as bags of the words of their text (description and category), for the
feedback stage that learns a moved taste from a handful of reactions
(`hyperrec.online.feedback.content_rescored`).

Why words and not the model's item embeddings: the embeddings are learned from who
engaged with what, and an item with a few dozen clicks gets a noisy one. The text is
there from the item's first day. Measured on one demo world, a linear map recovers 54% of
the simulator's hidden item vectors from the words (56% with the category), and 29% from
the served model's item embeddings (held-out R², docs/experiments.md, *The words of what was taken and left*).

Each item is stored as the vocabulary ids of its distinct words (a padded int array, no
sparse-matrix dependency), built when the serving unit is exported (content.npz; loading
it is instant, tokenizing 100k descriptions in the server's load thread took 0.6 s of the
interpreter), and a 100k-item catalog costs items x words int32, not items x vocabulary
floats: `sums` adds up the unit rows of the items a user reacted to, `dot` scores many
candidates against such weights by gathering their words, and `vectors` spells the unit
rows out (for checks and probes).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ContentTokens:
    tokens: np.ndarray  # [items, T] int32 vocabulary ids of each item's distinct words, -1 padded
    vocabulary: tuple[str, ...]
    inverse_norms: np.ndarray = field(init=False, repr=False)  # [items] 1/sqrt(words), 0 for none

    def __post_init__(self):
        count = (self.tokens >= 0).sum(axis=1)
        norms = np.where(count > 0, 1.0 / np.sqrt(np.maximum(count, 1)), 0.0).astype(np.float32)
        object.__setattr__(self, "inverse_norms", norms)

    @classmethod
    def build(cls, texts: Sequence[str], max_vocabulary: int = 256, max_tokens: int = 32,
              min_items: int = 2, max_share: float = 0.5) -> ContentTokens:
        """The vocabulary: the `max_vocabulary` words found in the most items, among those
        in at least `min_items` items (a word of one item says nothing about another) and
        at most `max_share` of them (a word of every item says nothing at all)."""
        words = [list(dict.fromkeys(TOKEN.findall(str(t).lower()))) for t in texts]
        df = Counter(w for ws in words for w in ws)
        kept = [w for w, n in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))
                if min_items <= n <= max_share * len(words)][:max_vocabulary]
        index = {w: j for j, w in enumerate(kept)}
        ids = [[index[w] for w in ws if w in index][:max_tokens] for ws in words]
        tokens = np.full((len(words), max(map(len, ids), default=0)), -1, np.int32)
        for row, item_ids in enumerate(ids):
            tokens[row, :len(item_ids)] = item_ids
        return cls(tokens, tuple(kept))

    @classmethod
    def from_catalog(cls, items) -> ContentTokens:
        """Rows in `items` order (a frame with description and category)."""
        text = items[["description", "category"]].fillna("").astype(str)
        return cls.build((text["description"] + " " + text["category"]).tolist())

    def save(self, path: Path) -> None:
        np.savez(path, tokens=self.tokens, vocabulary=np.array(self.vocabulary, dtype=str))

    @classmethod
    def load(cls, path: Path) -> ContentTokens:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["tokens"].astype(np.int32), tuple(z["vocabulary"].tolist()))

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """float32 [*positions.shape, vocabulary]: each item's bag of words as a unit row;
        zeros for position -1 and for an item with no vocabulary word."""
        positions = np.asarray(positions)
        flat = positions.reshape(-1)
        size = len(self.vocabulary)
        out = np.zeros((len(flat), size + 1), np.float32)  # column `size` collects the padding
        ids = np.where(flat[:, None] >= 0, self.tokens[np.maximum(flat, 0)], -1)
        out[np.arange(len(flat))[:, None], np.where(ids >= 0, ids, size)] = 1.0
        out = out[:, :size] * np.where(flat >= 0, self.inverse_norms[np.maximum(flat, 0)], 0.0)[:, None]
        return out.reshape(*positions.shape, size)

    def sums(self, rows: np.ndarray, positions: np.ndarray, values: np.ndarray, n_rows: int) -> np.ndarray:
        """float64 [n_rows, vocabulary]: per row, the sum of values[j] x the unit word vector
        of item positions[j], over the j with rows[j] == row (one scatter-add for a batch)."""
        size = len(self.vocabulary) + 1  # the last column collects the padding
        ids = self.tokens[positions]  # [N, T]
        cells = (rows[:, None] * size + np.where(ids >= 0, ids, size - 1)).reshape(-1)
        scaled = np.asarray(values, np.float64) * self.inverse_norms[positions]
        out = np.bincount(cells, weights=np.repeat(scaled, ids.shape[1]), minlength=n_rows * size)
        return out.reshape(n_rows, size)[:, :-1]

    def dot(self, weights: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """[R, C]: each row's `weights` [R, vocabulary] dotted with the unit word vector of
        each of its `positions` [R, C] (0 for -1), summed over the candidates' own words."""
        safe = np.maximum(positions, 0)
        ids = self.tokens[safe]  # [R, C, T]
        rows = np.arange(len(weights))[:, None, None]
        picked = np.where(ids >= 0, weights[rows, np.maximum(ids, 0)], 0.0).sum(axis=2)
        return picked * np.where(positions >= 0, self.inverse_norms[safe], 0.0)
