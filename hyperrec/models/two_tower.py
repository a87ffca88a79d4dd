"""TFRS two-tower retrieval whose towers export as self-contained SavedModels.

Query tower: user id, profile, activity counts, request context and the recent-items
sequence, pooled with recency weights, so a new click changes the embedding with no
retraining. Candidate tower: item id, category, brand, price bucket and the item text
(TextVectorization trained with the model). Both towers share one item-id embedding, so an
item in a user's history and the same item as a candidate live in one space.

Everything a tower needs to read raw feature values (vocabularies, text vectorizer, log
compression) is a layer inside its SavedModel: serving feeds the values and never
re-implements preprocessing. Id dropout (whole id embeddings zeroed in training) makes the
content and context paths carry signal on their own: that is what serves a new item or a
new user.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from hyperrec.features.views import ITEM_METADATA, REQUEST_CONTEXT, USER_ACTIVITY, USER_PROFILE
from hyperrec.features.windows import RECENT_N
from hyperrec.models.inputs import tensors


@dataclass(frozen=True)
class TwoTowerConfig:
    embedding_dim: int = 64
    epochs: int = 6  # an upper bound when a validation set picks the epoch count
    batch_size: int = 256  # small batches: more, harder updates per epoch (with logQ)
    learning_rate: float = 0.003
    temperature: float = 0.05  # normalised towers: cosine / temperature are the logits
    recency_half_life: float = 5.0  # positions in the recent-items list
    item_id_dropout: float = 0.1
    user_id_dropout: float = 0.2
    text_tokens: int = 20_000
    text_length: int = 24
    seed: int = 7


ACTIVITY = ("views_30m", "clicks_30m", "views_1d", "clicks_1d", "views_7d", "clicks_7d", "purchases_7d",
            "ctr_7d", "mean_dwell_7d")
# the towers' inputs, by feature name (types from the feature schema)
USER_INPUTS = {"user_id": "string", **USER_PROFILE.features, **{f: USER_ACTIVITY.features[f] for f in ACTIVITY},
               "hour_of_day": REQUEST_CONTEXT["hour_of_day"], "day_of_week": REQUEST_CONTEXT["day_of_week"],
               "recent_items": "string_list"}
ITEM_INPUTS = {"item_id": "string", **{f: ITEM_METADATA.features[f]
                                       for f in ("category", "brand", "price_bucket", "description")}}
# small integer features embedded as categories (value range), not as magnitudes
BOUNDED = {"hour_of_day": 24, "day_of_week": 7, "price_bucket": 32}


NEW_USER = "__new_user__"  # outside every vocabulary: embeds as zeros


# what a user the model has never seen has: no activity counts (request context is kept)
NEW_USER_ZEROED = tuple(col for col, kind in USER_INPUTS.items()
                        if kind in ("int", "float") and col not in REQUEST_CONTEXT)


def as_new_users(users: pd.DataFrame, recent: list[list[str]]) -> pd.DataFrame:
    """The same requests as if from users the model has never seen: unknown id, no
    activity yet, only `recent` (e.g. onboarding picks) as engagement; context kept."""
    return users.assign(user_id=NEW_USER, recent_items=list(recent), **dict.fromkeys(NEW_USER_ZEROED, 0))


def input_signature(spec: dict[str, str]) -> dict[str, tf.TensorSpec]:
    def shape(kind):
        return [None, RECENT_N] if kind == "string_list" else [None]
    return {c: tf.TensorSpec(shape(k), tf.float32 if k not in ("string", "string_list") else tf.string, name=c)
            for c, k in spec.items()}


def _inputs(spec: dict[str, str]) -> dict[str, tf.keras.Input]:
    return {c: tf.keras.Input(shape=s.shape[1:], dtype=s.dtype, name=c) for c, s in input_signature(spec).items()}


def _categorical(values: pd.Series, x, name: str, width: int = 8, zero_unknown: bool = False):
    """Embedding of a string feature; with `zero_unknown`, an id outside the vocabulary
    gets zeros (what id dropout trained the model to expect), not an untrained vector."""
    vocab = sorted(values.astype(str).unique())
    ids = tf.keras.layers.StringLookup(vocabulary=vocab, name=f"{name}_lookup")(x)
    emb = tf.keras.layers.Embedding(len(vocab) + 1, width, name=f"{name}_emb")(ids)
    return emb * tf.cast(ids > 0, tf.float32)[:, None] if zero_unknown else emb


def _bounded(x, name: str, size: int, width: int = 4):
    ids = tf.clip_by_value(tf.cast(x, tf.int32), 0, size - 1)
    return tf.keras.layers.Embedding(size, width, name=f"{name}_emb")(ids)


def _id_dropout(rate: float, name: str):
    """Zero whole id embeddings (one mask value per row) while training."""
    return tf.keras.layers.Dropout(rate, noise_shape=(None, 1), name=f"{name}_id_dropout")


class ItemIds(tf.keras.layers.Layer):
    """The shared item-id vocabulary and embedding (index 0 = unknown or padding)."""

    def __init__(self, item_ids: np.ndarray, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.lookup = tf.keras.layers.StringLookup(vocabulary=list(item_ids), name="item_id_lookup")
        self.embedding = tf.keras.layers.Embedding(len(item_ids) + 1, dim, name="item_id_emb")

    def call(self, ids):
        index = self.lookup(ids)
        return self.embedding(index), tf.cast(index > 0, tf.float32)


def _recency_pool(item_ids: ItemIds, recent, half_life: float):
    """Mean of the recent items' embeddings, weighted 0.5^(position / half_life), unknown
    items and padding masked out."""
    emb, known = item_ids(recent)
    weights = known * tf.constant(0.5 ** (np.arange(RECENT_N) / half_life), tf.float32)[None, :]
    total = tf.reduce_sum(weights, axis=1, keepdims=True)
    return tf.reduce_sum(emb * weights[..., None], axis=1) / tf.maximum(total, 1e-6)


def build_towers(train: pd.DataFrame, items: pd.DataFrame, cfg: TwoTowerConfig):
    """(user_tower, item_tower): functional tf-keras models over the named raw inputs."""
    dim = cfg.embedding_dim
    item_ids = ItemIds(items["item_id"].astype(str).unique(), dim, name="item_ids")

    u = _inputs(USER_INPUTS)
    user_id = _categorical(train["user_id"], u["user_id"], "user_id", dim, zero_unknown=True)
    parts = [_id_dropout(cfg.user_id_dropout, "user")(user_id),
             _recency_pool(item_ids, u["recent_items"], cfg.recency_half_life)]
    for col, kind in USER_INPUTS.items():
        if col in ("user_id", "recent_items"):
            continue
        if kind == "string":
            parts.append(_categorical(train[col], u[col], col))
        elif col in BOUNDED:
            parts.append(_bounded(u[col], col, BOUNDED[col]))
        else:
            parts.append(tf.expand_dims(tf.math.log1p(tf.maximum(u[col], 0.0)), -1))
    x = tf.keras.layers.Concatenate()(parts)
    x = tf.keras.layers.Dense(2 * dim, activation="gelu", name="user_hidden")(x)
    user = tf.keras.layers.UnitNormalization()(tf.keras.layers.Dense(dim, name="user_out")(x))
    user_tower = tf.keras.Model(u, user, name="user_tower")

    i = _inputs(ITEM_INPUTS)
    own, known = item_ids(i["item_id"])
    parts = [_id_dropout(cfg.item_id_dropout, "item")(own * known[:, None])]  # a new item: content only
    for col in ("category", "brand"):
        parts.append(_categorical(items[col], i[col], col))
    parts.append(_bounded(i["price_bucket"], "price_bucket", BOUNDED["price_bucket"]))
    text = tf.keras.layers.TextVectorization(cfg.text_tokens, output_sequence_length=cfg.text_length,
                                             name="text_vectorizer")
    text.adapt(items["description"].astype(str).to_numpy())
    tokens = text(i["description"])
    words = tf.keras.layers.Embedding(cfg.text_tokens, 32, name="text_emb")(tokens)
    present = tf.cast(tf.not_equal(tokens, 0), tf.float32)[..., None]  # an empty text pools to zeros, not NaN
    parts.append(tf.reduce_sum(words * present, axis=1) / tf.maximum(tf.reduce_sum(present, axis=1), 1.0))
    x = tf.keras.layers.Concatenate()(parts)
    item = tf.keras.layers.UnitNormalization()(tf.keras.layers.Dense(dim, name="item_out")(x))
    item_tower = tf.keras.Model(i, item, name="item_tower")
    return user_tower, item_tower


class TwoTower(tfrs.Model):
    """Query tower × candidate tower, in-batch softmax with logQ correction."""

    def __init__(self, user_tower: tf.keras.Model, item_tower: tf.keras.Model, temperature: float):
        super().__init__()
        self.user_tower = user_tower  # towers must be attributes to be tracked and trained
        self.item_tower = item_tower
        self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True, temperature=temperature)

    def compute_loss(self, features, training=False):
        users = self.user_tower({k: features[k] for k in USER_INPUTS}, training=training)
        items = self.item_tower({k: features[k] for k in ITEM_INPUTS}, training=training)
        # in-batch negatives over-sample popular items; subtracting log(sampling
        # probability) keeps the softmax an estimate of p(item | user); an item that is
        # the batch's positive for another row is not counted as a negative
        return self.task(users, items, compute_metrics=False, sample_weight=features["sample_weight"],
                         candidate_sampling_probability=features["sampling_probability"],
                         candidate_ids=features["item_id"])


def training_examples(train: pd.DataFrame) -> dict[str, np.ndarray]:
    """Positive rows (user features at the event + the item's features) as model tensors,
    with each item's in-batch sampling probability (its share of the positives) and each
    row's weight (its strongest event's, hyperrec.data.event_types; 1 when not given)."""
    freq = train["item_id"].map(train["item_id"].value_counts(normalize=True))
    weight = train["weight"].to_numpy(np.float32) if "weight" in train else np.ones(len(train), np.float32)
    return {**tensors(train, USER_INPUTS), **tensors(train, ITEM_INPUTS),
            "sampling_probability": freq.to_numpy(np.float32), "sample_weight": weight}


def train_two_tower(train: pd.DataFrame, items: pd.DataFrame, cfg: TwoTowerConfig,
                    on_epoch: Callable[[int, TwoTower], bool] | None = None,
                    warm_start: Path | None = None, strategy: tf.distribute.Strategy | None = None) -> TwoTower:
    """Fit on positive (user, item) rows carrying their point-in-time features.

    `on_epoch(epoch, model)` runs after every epoch; returning False stops training (the
    caller's early stopping on a validation set). `warm_start`: an exported model folder
    whose weights initialise the towers (fine-tuning instead of training from scratch).
    `strategy` (e.g. MultiWorkerMirroredStrategy): variables are created in its scope and
    `cfg.batch_size` is the global batch, split across replicas by data (every worker
    shuffles with the same seed and keeps its share of each batch); in-batch negatives are
    then each replica's share of the batch, not the whole global batch."""
    tf.keras.utils.set_random_seed(cfg.seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = TwoTower(*build_towers(train, items, cfg), cfg.temperature)
        if warm_start is not None:
            for tower in (model.user_tower, model.item_tower):
                load_tower_weights(tower, Path(warm_start) / WARM_START_DIR)
        model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate))
    data = training_examples(train)
    ds = tf.data.Dataset.from_tensor_slices(data).shuffle(len(train), seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size).prefetch(2)
    if strategy is not None:
        # the default (AUTO -> FILE) finds no files in an in-memory dataset and falls back to DATA with a warning
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    for epoch in range(1, cfg.epochs + 1):
        model.fit(ds, epochs=1, verbose=0)
        if on_epoch is not None and not on_epoch(epoch, model):
            break
    return model


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(model: tf.keras.Model, spec: dict[str, str]):
    """`run(columns) -> numpy`: one traced graph for any batch size, kept on the model.
    It runs on every request, so the Python around it matters: Keras `predict` costs
    ~75 ms per call here, a tf.function fed numpy 2.7 ms, its concrete function fed one
    tensor per input 2 ms for the query tower, most of it converting and checking 15
    tensors. Inputs are therefore packed by kind into at most three tensors (strings
    [n, S], id lists [n, L, RECENT_N], numbers [n, F]) and unpacked inside the graph."""
    groups = {kind: [c for c, k in spec.items() if _group(k) == kind] for kind in ("string", "string_list", "number")}
    groups = {kind: cols for kind, cols in groups.items() if cols}
    call = _COMPILED.get(model)
    if call is None:
        shapes = {"string": ([None, None], tf.string), "string_list": ([None, None, RECENT_N], tf.string),
                  "number": ([None, None], tf.float32)}
        signature = [tf.TensorSpec(*shapes[kind]) for kind in groups]

        def unpacked(*packed):
            inputs = {col: tensor[:, i] for tensor, cols in zip(packed, groups.values()) for i, col in enumerate(cols)}
            return model(inputs, training=False)
        call = _COMPILED[model] = tf.function(unpacked, input_signature=signature).get_concrete_function()

    def run(frame) -> np.ndarray:
        arrays = tensors(frame, spec)
        return call(*(tf.constant(np.stack([arrays[c] for c in cols], axis=1)) for cols in groups.values())).numpy()
    return run


def _group(kind: str) -> str:
    return kind if kind in ("string", "string_list") else "number"


def embed(tower: tf.keras.Model, frame: pd.DataFrame, spec: dict[str, str], batch: int = 8192) -> np.ndarray:
    run = compiled(tower, spec)
    parts = [run(frame.iloc[s:s + batch]) for s in range(0, len(frame), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, tower.output_shape[-1]), np.float32)


WARM_START_DIR = "warm_start"


def _vocabularies(tower: tf.keras.Model) -> dict[str, list[str]]:
    return {m.name: [str(t) for t in m.get_vocabulary()] for m in tower.submodules
            if isinstance(m, tf.keras.layers.Layer) and hasattr(m, "get_vocabulary")}


def _lookup_for(embedding: str) -> str:
    """The lookup layer whose ids index an embedding layer (naming convention above)."""
    return "text_vectorizer" if embedding == "text_emb" else embedding.removesuffix("_emb") + "_lookup"


def save_tower_weights(tower: tf.keras.Model, directory: Path) -> None:
    """Trainable weights by variable name plus every vocabulary: what a later run needs to
    start from these weights even when its vocabularies differ (new users, new items)."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / f"{tower.name}.npz", **{w.name: w.numpy() for w in tower.trainable_weights})
    (directory / f"{tower.name}.vocab.json").write_text(json.dumps(_vocabularies(tower)))


def load_tower_weights(tower: tf.keras.Model, directory: Path) -> dict[str, int]:
    """Initialise `tower` from save_tower_weights output: weights whose shapes match are
    copied; embedding rows are matched by vocabulary entry (an id both runs know keeps its
    vector, a new id keeps its fresh initialisation). Returns counts of what was copied."""
    old_vocab = json.loads((directory / f"{tower.name}.vocab.json").read_text())
    new_vocab = _vocabularies(tower)
    copied = {"tensors": 0, "rows": 0, "skipped": 0}
    with np.load(directory / f"{tower.name}.npz") as old:
        for var in tower.trainable_weights:
            if var.name not in old:
                copied["skipped"] += 1
                continue
            value = old[var.name]
            layer = var.name.split("/")[-2]
            lookup = _lookup_for(layer)
            if layer.endswith("_emb") and lookup in new_vocab and lookup in old_vocab:
                position = {tok: i for i, tok in enumerate(old_vocab[lookup])}
                rows = [(i, position[t]) for i, t in enumerate(new_vocab[lookup]) if t in position]
                new, src = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
                merged = var.numpy()
                merged[new] = value[src]
                var.assign(merged)
                copied["rows"] += len(rows)
            elif tuple(value.shape) == tuple(var.shape):
                var.assign(value)
            else:
                copied["skipped"] += 1
                continue
            copied["tensors"] += 1
    return copied


def export_towers(model: TwoTower, items: pd.DataFrame, cfg: TwoTowerConfig, out: Path) -> np.ndarray:
    """Write user_tower/ and item_tower/ SavedModels, their weights and vocabularies for a
    later warm start, and config.json; returns the catalog's item embeddings (the caller
    writes them with the index)."""
    out.mkdir(parents=True, exist_ok=True)
    model.user_tower.save(out / "user_tower", save_format="tf")
    model.item_tower.save(out / "item_tower", save_format="tf")
    for tower in (model.user_tower, model.item_tower):
        save_tower_weights(tower, out / WARM_START_DIR)
    (out / "config.json").write_text(pd.Series(asdict(cfg)).to_json())
    return embed(model.item_tower, items, ITEM_INPUTS)
