"""A TFRS two-tower retrieval model whose towers export as self-contained SavedModels.

Each tower is a functional tf-keras model over named inputs with its vocabularies
(StringLookup) inside, so serving feeds raw feature values and never re-implements
preprocessing. Numeric inputs are log-compressed in the graph for the same reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from hyperrec.features import ITEM_METADATA, REQUEST_CONTEXT, USER_ACTIVITY, USER_PROFILE


@dataclass(frozen=True)
class TwoTowerConfig:
    embedding_dim: int = 32
    hidden: int = 64
    epochs: int = 3
    batch_size: int = 512
    learning_rate: float = 0.05
    seed: int = 7


# the towers' inputs, by feature name (types from the feature schema)
USER_INPUTS = {"user_id": "string", **USER_PROFILE.features,
               **{f: USER_ACTIVITY.features[f] for f in ("views_30m", "clicks_30m", "views_1d", "clicks_1d",
                                                          "views_7d", "clicks_7d", "purchases_7d", "ctr_7d",
                                                          "mean_dwell_7d")},
               "hour_of_day": REQUEST_CONTEXT["hour_of_day"]}
ITEM_INPUTS = {"item_id": "string", **{f: ITEM_METADATA.features[f] for f in ("category", "brand", "price_bucket")}}


def _tower(inputs_spec: dict[str, str], frame: pd.DataFrame, cfg: TwoTowerConfig, name: str):
    inputs, parts = {}, []
    for col, kind in inputs_spec.items():
        if kind == "string":
            inputs[col] = tf.keras.Input(shape=(), dtype=tf.string, name=col)
            vocab = sorted(frame[col].astype(str).unique())
            ids = tf.keras.layers.StringLookup(vocabulary=vocab, name=f"{col}_lookup")(inputs[col])
            width = cfg.embedding_dim if col.endswith("_id") else 8
            parts.append(tf.keras.layers.Embedding(len(vocab) + 1, width, name=f"{col}_emb")(ids))
        else:
            inputs[col] = tf.keras.Input(shape=(), dtype=tf.float32, name=col)
            squashed = tf.math.log1p(tf.maximum(inputs[col], 0.0))
            parts.append(tf.expand_dims(squashed, -1))
    x = tf.keras.layers.Concatenate()(parts)
    x = tf.keras.layers.Dense(cfg.hidden, activation="relu")(x)
    out = tf.keras.layers.Dense(cfg.embedding_dim)(x)
    return tf.keras.Model(inputs=inputs, outputs=out, name=name)


class TwoTower(tfrs.Model):
    """Query tower × candidate tower trained with in-batch softmax (tfrs Retrieval task)."""

    def __init__(self, user_tower: tf.keras.Model, item_tower: tf.keras.Model):
        super().__init__()
        self.user_tower = user_tower  # towers must be attributes to be tracked and trained
        self.item_tower = item_tower
        self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True)

    def compute_loss(self, features, training=False):
        users = self.user_tower({k: features[k] for k in USER_INPUTS})
        items = self.item_tower({k: features[k] for k in ITEM_INPUTS})
        # logQ correction: in-batch negatives over-sample popular items; subtracting
        # log(sampling probability) keeps the softmax an estimate of p(item | user)
        return self.task(users, items, compute_metrics=False,
                         candidate_sampling_probability=features["sampling_probability"],
                         candidate_ids=features["item_id"])


def tensors(frame: pd.DataFrame, spec: dict[str, str]) -> dict[str, np.ndarray]:
    """Frame columns as the arrays a tower expects (strings as str, numbers as float32)."""
    return {c: frame[c].astype(str).to_numpy() if k == "string" else frame[c].to_numpy(np.float32)
            for c, k in spec.items()}


def train_two_tower(train: pd.DataFrame, items: pd.DataFrame, cfg: TwoTowerConfig) -> TwoTower:
    """Fit on positive (user, item) rows carrying their point-in-time features."""
    tf.keras.utils.set_random_seed(cfg.seed)
    model = TwoTower(_tower(USER_INPUTS, train, cfg, "user_tower"),
                     _tower(ITEM_INPUTS, items, cfg, "item_tower"))
    model.compile(optimizer=tf.keras.optimizers.Adagrad(cfg.learning_rate))
    freq = train["item_id"].map(train["item_id"].value_counts(normalize=True))
    data = {**tensors(train, USER_INPUTS), **tensors(train, ITEM_INPUTS),
            "sampling_probability": freq.to_numpy(np.float32)}
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(len(train), seed=cfg.seed)
    model.fit(ds.batch(cfg.batch_size).prefetch(2), epochs=cfg.epochs, verbose=0)
    return model


def embed(tower: tf.keras.Model, frame: pd.DataFrame, spec: dict[str, str]) -> np.ndarray:
    return tower.predict(tensors(frame, spec), batch_size=4096, verbose=0)


def export(model: TwoTower, items: pd.DataFrame, cfg: TwoTowerConfig, out: Path) -> Path:
    """Write user_tower/ and item_tower/ SavedModels, candidates.npz (ids, embeddings) and
    items.parquet (the catalog's display fields, versioned with the model)."""
    out.mkdir(parents=True, exist_ok=True)
    model.user_tower.save(out / "user_tower", save_format="tf")
    model.item_tower.save(out / "item_tower", save_format="tf")
    np.savez(out / "candidates.npz", item_ids=items["item_id"].to_numpy().astype(str),
             embeddings=embed(model.item_tower, items, ITEM_INPUTS))
    items[["title", *ITEM_INPUTS]].drop_duplicates("item_id").to_parquet(out / "items.parquet", index=False)
    pd.Series(asdict(cfg)).to_json(out / "config.json")
    return out
