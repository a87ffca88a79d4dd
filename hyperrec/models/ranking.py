"""The second stage: a DCN-v2 ranker that re-scores the retrieved candidates.

It sees what retrieval cannot mix in one dot product: the retrieval score next to the
candidate's co-engagement with the user's recent items, how much of the recent history
shares its category, its popularity and its retrieval rank, plus the request hour. It is
trained with `tfrs.tasks.Ranking` on implicit labels: a retrieved candidate the user went
on to engage with is a positive, the other retrieved candidates are the negatives (the
ones that matter: those retrieval already put in front of the user).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from hyperrec.features.views import REQUEST_TS

NUMERIC = ("retrieval_score", "coengagement", "category_share", "item_log_count", "log_rank",
           "retrieval_score_z", "coengagement_z", "item_log_age_days", "log_history_length")
# a pointwise ranker compares across users; these compare within one user's candidate list
CONTEXT = {"hour_of_day": 24, "day_of_week": 7}
RANKER_INPUTS = {**dict.fromkeys(NUMERIC, "float"), **dict.fromkeys(CONTEXT, "float")}


@dataclass(frozen=True)
class RankerConfig:
    candidates: int = 100  # retrieved per user, re-scored by the ranker
    short_history_share: float = 1.0  # extra training lists as if from new users (see fit_models)
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.2
    l2: float = 1e-5
    epochs: int = 8
    batch_size: int = 1024
    learning_rate: float = 0.003
    seed: int = 7


def item_log_age_days(created_s: np.ndarray, candidates: np.ndarray, request_ts: np.ndarray) -> np.ndarray:
    """log(1 + days since each candidate entered the catalog) at the request time: what is
    new is what people engage with next, which no co-engagement count shows yet."""
    age_s = np.maximum(request_ts.astype(np.float64)[:, None] - created_s[candidates], 0.0)
    return np.log1p(age_s / 86_400).astype(np.float32)


def candidate_frame(features: dict[str, np.ndarray], scores: np.ndarray, context) -> dict[str, np.ndarray]:
    """Flatten [n users, C candidates] feature arrays into one row per pair. Empty slots
    (score -inf: the catalog ran out of unseen items) get the row's lowest real score so
    no feature is infinite; callers drop or mask them by `valid`."""
    n, c = scores.shape
    valid = np.isfinite(scores)
    floor = np.where(valid, scores, np.inf).min(axis=1, keepdims=True)
    features = {**features, "retrieval_score": np.where(valid, scores, np.where(np.isfinite(floor), floor, 0.0))}
    for name in ("retrieval_score", "coengagement"):
        v = features[name]
        features[f"{name}_z"] = (v - v.mean(1, keepdims=True)) / (v.std(1, keepdims=True) + 1e-6)
    out = {k: v.reshape(-1).astype(np.float32) for k, v in features.items()}
    out["log_rank"] = np.tile(np.log1p(np.arange(c, dtype=np.float32)), n)
    for col in CONTEXT:
        out[col] = np.repeat(np.asarray(context[col], np.float32), c)
    out["valid"] = valid.reshape(-1)
    return out


def ranker_rows(coengagement, created_s: np.ndarray, users, candidates: np.ndarray,
                scores: np.ndarray) -> dict[str, np.ndarray]:
    """Every ranker input for [users, C] retrieved candidates, one row per pair: the one
    feature path training and serving share (`coengagement` is a CoEngagement,
    `created_s` each catalog item's creation time, `users` a frame or dict of columns)."""
    features = coengagement.features(list(users["recent_items"]), candidates)
    features["item_log_age_days"] = item_log_age_days(created_s, candidates, np.asarray(users[REQUEST_TS]))
    return candidate_frame(features, scores, users)


def build_ranker(examples: dict[str, np.ndarray], cfg: RankerConfig) -> tf.keras.Model:
    inputs = {c: tf.keras.Input(shape=(), dtype=tf.float32, name=c) for c in RANKER_INPUTS}
    norm = tf.keras.layers.Normalization(axis=-1, name="numeric_norm")
    norm.adapt(np.stack([examples[c] for c in NUMERIC], axis=1))
    parts = [norm(tf.stack([inputs[c] for c in NUMERIC], axis=1))]
    for col, size in CONTEXT.items():
        ids = tf.clip_by_value(tf.cast(inputs[col], tf.int32), 0, size - 1)
        parts.append(tf.keras.layers.Embedding(size, 4, name=f"{col}_emb")(ids))
    x0 = tf.keras.layers.Concatenate()(parts)
    x = tfrs.layers.dcn.Cross(projection_dim=8, kernel_regularizer=tf.keras.regularizers.l2(cfg.l2))(x0)
    for width in cfg.hidden:
        x = tf.keras.layers.Dense(width, activation="relu", kernel_regularizer=tf.keras.regularizers.l2(cfg.l2))(x)
        x = tf.keras.layers.Dropout(cfg.dropout)(x)
    logit = tf.keras.layers.Dense(1)(x)
    return tf.keras.Model(inputs, tf.squeeze(logit, -1), name="ranker")


class RankingModel(tfrs.Model):
    def __init__(self, ranker: tf.keras.Model):
        super().__init__()
        self.ranker = ranker
        self.task = tfrs.tasks.Ranking(loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
                                       metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])

    def compute_loss(self, features, training=False):
        logits = self.ranker({c: features[c] for c in RANKER_INPUTS}, training=training)
        return self.task(labels=features["label"], predictions=logits, compute_metrics=not training)


def shuffled_batches(columns: dict[str, np.ndarray], size: int, seed: int) -> tf.data.Dataset:
    """Every row once per epoch in batches of `size`: rows shuffled once in numpy, whole
    batches reshuffled every epoch, each a uniform sample of the rows. tf.data's row-by-row
    shuffle of the demo's 256k rows x 13 columns cost half of each epoch (20.5 s vs 10.3 s
    per epoch), and slicing rows only to re-batch them (`from_tensor_slices(...).batch`) 38%
    more (8 epochs of 200k rows: 33.7 s, against 24.4 s sliced by batch; the same batches)."""
    order = np.random.default_rng(seed).permutation(len(next(iter(columns.values()))))
    data = {name: tf.constant(column[order]) for name, column in columns.items()}
    batches = -(-len(order) // size)
    return tf.data.Dataset.range(batches).shuffle(batches, seed=seed).map(
        lambda i: {name: column[i * size:(i + 1) * size] for name, column in data.items()})


def train_ranker(examples: dict[str, np.ndarray], labels: np.ndarray, cfg: RankerConfig,
                 on_epoch=None) -> tf.keras.Model:
    """`on_epoch(metrics, epoch)`: called after each epoch (1-based) with ranker_loss, the
    epoch's mean training loss."""
    tf.keras.utils.set_random_seed(cfg.seed)
    model = RankingModel(build_ranker(examples, cfg))
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))
    data = {**{c: examples[c] for c in RANKER_INPUTS}, "label": labels.astype(np.float32)}
    ds = shuffled_batches(data, cfg.batch_size, cfg.seed)
    callbacks = [] if on_epoch is None else [tf.keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: on_epoch({"ranker_loss": float(logs["loss"])}, epoch + 1))]
    model.fit(ds.prefetch(2), epochs=cfg.epochs, verbose=0, callbacks=callbacks)
    return model.ranker


def compiled_ranker(ranker: tf.keras.Model):
    """`run(rows) -> logits`, through the same packed graph call as the towers."""
    from hyperrec.models.two_tower import compiled

    return compiled(ranker, RANKER_INPUTS)
