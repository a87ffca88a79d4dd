"""The prediction path shared by offline evaluation and the model server: user features in,
top-k items out, the user's already-seen items excluded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.metrics import top_k_excluding
from hyperrec.models.two_tower import USER_INPUTS, tensors


class Recommender:
    """A trained two-tower model loaded from its exported folder."""

    def __init__(self, model_dir: Path):
        import tensorflow as tf

        self.model_dir = Path(model_dir)
        self.user_tower = tf.keras.models.load_model(self.model_dir / "user_tower", compile=False)
        # one traced graph for any batch size: Keras `predict` costs ~75 ms per call here,
        # the compiled call a few ms (this runs on every request)
        signature = [{name: tf.TensorSpec([None], tf.string if kind == "string" else tf.float32, name=name)
                      for name, kind in USER_INPUTS.items()}]
        self._embed = tf.function(lambda inputs: self.user_tower(inputs, training=False), input_signature=signature)
        with np.load(self.model_dir / "candidates.npz", allow_pickle=False) as z:
            self.item_ids = z["item_ids"].astype(str)
            self.item_embeddings = z["embeddings"].astype(np.float32)
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.catalog = pd.read_parquet(self.model_dir / "items.parquet").set_index("item_id")

    def user_embeddings(self, users: pd.DataFrame) -> np.ndarray:
        return self._embed(tensors(users, USER_INPUTS)).numpy()

    def candidate_indices(self, seen: list[set[str]]) -> list[set[int]]:
        """Item ids per user as positions in the candidate index (unknown ids dropped)."""
        return [{self.item_index[i] for i in s if i in self.item_index} for s in seen]

    def recommend(self, users: pd.DataFrame, k: int, seen: list[set[str]] | None = None):
        """Top-k (item ids, scores) per row of `users` (a frame with every user tower input)."""
        scores = self.user_embeddings(users) @ self.item_embeddings.T
        exclude = self.candidate_indices(seen or [set()] * len(users))
        ranked = top_k_excluding(scores, self.item_ids, exclude, k)
        lookup = [scores[row, [self.item_index[i] for i in items]] for row, items in enumerate(ranked)]
        return ranked, lookup
