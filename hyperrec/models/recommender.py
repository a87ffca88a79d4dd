"""The prediction path shared by offline evaluation and the model server: user features in,
retrieval over the candidate embeddings, ranking of the retrieved candidates, top-k out.

Everything here is read from one exported folder, so the query tower, the candidate
embeddings, the co-engagement table and the ranker always come from the same training run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.models.coengagement import CoEngagement
from hyperrec.models.content import ContentTokens
from hyperrec.models.index import load_index
from hyperrec.models.two_tower import ITEM_INPUTS, USER_INPUTS

log = logging.getLogger(__name__)


def export_candidates(out: Path, items: pd.DataFrame, embeddings: np.ndarray, index_kind: str = "auto") -> None:
    """candidates.npz (ids, embeddings), the candidate index over them (index/: exact below
    50k items, IVF above) and items.parquet (the catalog's display fields)."""
    from hyperrec.models.index import build_index

    np.savez(out / "candidates.npz", item_ids=items["item_id"].to_numpy().astype(str),
             embeddings=embeddings.astype(np.float32))
    ContentTokens.from_catalog(items).save(out / "content.npz")  # rows in candidates.npz order
    build_index(embeddings.astype(np.float32), kind=index_kind).save(out / "index")
    items[["title", "created_ts", *ITEM_INPUTS]].drop_duplicates("item_id").to_parquet(out / "items.parquet",
                                                                                       index=False)


def created_seconds(items: pd.DataFrame) -> np.ndarray:
    """Each catalog item's creation time in unix seconds (row order kept)."""
    return pd.to_datetime(items["created_ts"], utc=True).astype("int64").to_numpy() / 1e9


class Recommender:
    """A trained two-stage model loaded from its exported folder. `users` arguments are a
    DataFrame or, on the serving path, a dict of column arrays, with every user tower input.

    `backend="numpy"` (the default) runs the query tower and the ranker as numpy forward
    passes extracted from the SavedModels (hyperrec.models.numpy_forward): no TensorFlow
    call per batch, which at the server's small batches was most of their time.
    `backend="tf"` runs the SavedModels' traced graphs (the reference the numpy passes are
    tested against). A model with a layer the numpy pass does not know is served through
    TF, with a warning; `backend` says which one runs."""

    BACKENDS = ("numpy", "tf")

    def __init__(self, model_dir: Path, backend: str = "numpy"):
        import tensorflow as tf

        if backend not in self.BACKENDS:
            raise ValueError(f"backend must be one of {self.BACKENDS}, not {backend!r}")
        self.model_dir = Path(model_dir)
        self.backend = backend
        user_tower = tf.keras.models.load_model(self.model_dir / "user_tower", compile=False)
        ranker = tf.keras.models.load_model(self.model_dir / "ranker", compile=False)
        if backend == "numpy":
            from hyperrec.models.numpy_forward import NumpyRanker, NumpyUserTower
            from hyperrec.models.ranking import RANKER_INPUTS

            try:
                self._embed = NumpyUserTower.from_keras(user_tower, USER_INPUTS)
                self._rank = NumpyRanker.from_keras(ranker, RANKER_INPUTS)
            except NotImplementedError as exc:  # a layer or op with no numpy twin yet: serve through TF
                log.warning("%s: no numpy forward pass (%s), serving it through TensorFlow", self.model_dir, exc)
                self.backend = backend = "tf"
        if backend == "tf":
            from hyperrec.models.ranking import compiled_ranker
            from hyperrec.models.two_tower import compiled

            self._embed = compiled(user_tower, USER_INPUTS)
            self._rank = compiled_ranker(ranker)
        # users the query tower has an id embedding for (the rest embed as unknown)
        self.known_users = frozenset(str(u) for u in user_tower.get_layer("user_id_lookup").get_vocabulary()[1:])
        with np.load(self.model_dir / "candidates.npz", allow_pickle=False) as z:
            self.item_ids = z["item_ids"].astype(str)
            self.item_embeddings = z["embeddings"].astype(np.float32)
        self.item_index = {item: i for i, item in enumerate(self.item_ids)}
        self.index = load_index(self.model_dir / "index")
        self.catalog = pd.read_parquet(self.model_dir / "items.parquet").set_index("item_id")
        self.created_s = created_seconds(self.catalog.reindex(self.item_ids))
        self.coengagement = CoEngagement.load(self.model_dir / "coengagement.npz")
        # the items' words for the feedback stages (units exported before commit 61e5642 have none)
        content = self.model_dir / "content.npz"
        self.content = (ContentTokens.load(content) if content.exists()
                        else ContentTokens.from_catalog(self.catalog.reindex(self.item_ids)))
        self.n_candidates = json.loads((self.model_dir / "ranker_config.json").read_text())["candidates"]

    def user_embeddings(self, users) -> np.ndarray:
        return self._embed(users)

    def candidate_indices(self, seen: list[set[str]]) -> list[set[int]]:
        """Item ids per user as positions in the candidate index (unknown ids dropped)."""
        return [{self.item_index[i] for i in s if i in self.item_index} for s in seen]

    def retrieve(self, users, n: int, seen: list[set[str]]) -> tuple[np.ndarray, np.ndarray]:
        """[users, n] candidate positions and their retrieval scores, seen items skipped."""
        return self.search(self.user_embeddings(users), n, seen)

    def search(self, queries: np.ndarray, n: int, seen: list[set[str]]) -> tuple[np.ndarray, np.ndarray]:
        """`retrieve` from query embeddings already computed."""
        exclude = [np.fromiter(s, np.int64, len(s)) for s in self.candidate_indices(seen)]
        return self.index.search(queries, n, exclude)

    def rank(self, users, candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Ranker logits [users, n] for the retrieved candidates."""
        from hyperrec.models.ranking import ranker_rows

        rows = ranker_rows(self.coengagement, self.created_s, users, candidates, scores)
        return self._rank(rows).reshape(candidates.shape)

    def recommend(self, users: pd.DataFrame, k: int, seen: list[set[str]] | None = None, rank: bool = True):
        """Top-k (item ids, scores) per row of `users` (a frame with every user tower input).
        `seen` defaults to each user's recent items; `rank=False` returns retrieval alone."""
        if seen is None:
            seen = [set(r) for r in users["recent_items"]]
        candidates, scores = self.retrieve(users, max(k, self.n_candidates if rank else k), seen)
        if rank:
            scores = np.where(candidates >= 0, self.rank(users, candidates, scores), -np.inf)
            order = np.argsort(-scores, axis=1, kind="stable")
            candidates, scores = (np.take_along_axis(a, order, axis=1) for a in (candidates, scores))
        found = [row[:k] >= 0 for row in candidates]  # -1: the catalog ran out of unseen items
        return ([list(self.item_ids[row[:k][ok]]) for row, ok in zip(candidates, found)],
                [row[:k][ok] for row, ok in zip(scores, found)])
