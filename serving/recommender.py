"""The recommendation Model: Feast online user features -> query tower -> top-k."""

from __future__ import annotations

from datetime import datetime

import kserve

from hyperrec.config import Settings
from hyperrec.featurestore import online_user_features, open_store
from hyperrec.registry import load_champion
from serving.protocol import Recommendation, ScoredItem, parse_instances


class RecommenderModel(kserve.Model):
    def __init__(self, name: str, settings: Settings, as_of: datetime | None = None):
        """`as_of` fixes the clock feature TTLs are judged by (a simulated world's "now");
        None means the wall clock."""
        super().__init__(name)
        self.settings = settings
        self.as_of = as_of
        self.recommender = None
        self.version = None
        self.store = None

    def load(self) -> bool:
        """Load the MLflow champion and open the online store; ready only after warm-up."""
        self.recommender, self.version = load_champion(self.settings)
        self.store = open_store(self.settings)
        self._recommend(["warmup-user"], [1])  # trace the TF graph before taking traffic
        self.ready = True
        return self.ready

    def _recommend(self, user_ids: list[str], ks: list[int]) -> list[Recommendation]:
        features = online_user_features(self.store, user_ids, now=self.as_of)
        ranked, scores = self.recommender.recommend(features, k=max(ks))
        catalog = self.recommender.catalog
        out = []
        for user, k, items, item_scores in zip(user_ids, ks, ranked, scores):
            rows = catalog.loc[items[:k]]
            out.append(Recommendation(user_id=user, model_version=self.version, items=[
                ScoredItem(item_id=i, score=float(s), title=t, category=c)
                for i, s, t, c in zip(items[:k], item_scores[:k], rows["title"], rows["category"])]))
        return out

    async def predict(self, payload, headers=None, response_headers=None) -> dict:
        requests = parse_instances(payload)
        recs = self._recommend([r.user_id for r in requests], [r.k for r in requests])
        return {"predictions": [r.model_dump() for r in recs]}
