"""Is a loaded model version fit to serve? Checked before it serves and before @champion moves to it.

A version can load and still be broken: a diverged training run exports NaN embeddings, and
NaN flows through retrieval and ranking without raising (a NaN score sorts anywhere, and
re-ranking drops it), so lists come out short, empty or in no order. Two checks, neither
calling a framework:

- the tables: one distinct id and one embedding row per catalog item, as many in the index,
  and every learned table finite (item embeddings, the exact index's vectors, co-engagement,
  and the weights of the numpy query tower and ranker);
- the probe: a personalized and a popular request through the unit give non-empty lists of
  distinct catalog items with finite scores, from a finite query embedding.

The model server runs `probe` on every version before it swaps it in (its own request path
feeding the requests), and `hyperrec model rollback` / `promote` run `check_model_dir` on the
target version before moving the alias (`hyperrec.registry.model_registry.check_version`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from hyperrec.features.online_reader import Columns, object_column
from hyperrec.features.views import MISSING, PANDAS_TYPES, REQUEST_TS, SERVING_USER_VIEWS, request_context
from hyperrec.online.serving_path import Experiment, Recommended, Request, ServingUnit, apply_request, recommend_batch

PROBE_K = 5


class UnfitModel(ValueError):
    """A model version that loaded but must not serve; the message says why."""


def probe(unit: ServingUnit, recommend: Callable[[ServingUnit, list[Request]], list[Recommended]]) -> None:
    """Raise UnfitModel unless `unit`'s tables are sound and the probe requests, run through
    `recommend`, come back as sound lists."""
    check_tables(unit)
    requests = probe_requests(unit)
    check_lists(unit, requests, recommend(unit, requests))


def check_model_dir(model_dir: Path, version: int, backend: str = "numpy") -> None:
    """Load an exported model folder as the server would and `probe` it without an online
    store (every user as one with no stored features). Load errors propagate as they are."""
    probe(ServingUnit(model_dir, version, backend), recommend_offline)


def probe_requests(unit: ServingUnit) -> list[Request]:
    """An anonymous session holding the first catalog item (personalized) and a visitor with
    nothing to go on (popular)."""
    first_item = str(unit.rec.item_ids[0])
    return [Request(user_id=None, recent_items=(first_item,), k=PROBE_K),
            Request(user_id=None, recent_items=(), k=PROBE_K)]


def recommend_offline(unit: ServingUnit, requests: list[Request]) -> list[Recommended]:
    """Lists for `requests` from `unit` alone: no online store, no bandit, no feedback stages."""
    from hyperrec.models.two_tower import NEW_USER

    features = unknown_user_columns([r.user_id or NEW_USER for r in requests], time.time())
    return recommend_batch(unit, apply_request(features, requests), requests, Experiment())


def unknown_user_columns(user_ids: list[str], now_s: float) -> Columns:
    """What `OnlineUserReader.read` gives users the online store holds nothing for: every
    serving feature at its default, and the request context at `now_s`."""
    n = len(user_ids)
    columns: Columns = {"user_id": np.asarray(user_ids, dtype=object)}
    for view in SERVING_USER_VIEWS:
        for name, kind in view.features.items():
            columns[name] = (object_column([[] for _ in range(n)]) if kind.endswith("_list")
                             else np.asarray([MISSING[kind]] * n, dtype=PANDAS_TYPES[kind]))
    columns[REQUEST_TS] = np.full(n, int(now_s), np.int64)
    return columns | request_context(columns[REQUEST_TS], columns["last_event_ts"])


def check_tables(unit: ServingUnit) -> None:
    """Raise UnfitModel unless every item has one id and one embedding row, the index holds
    them all, and every learned table is finite."""
    rec = unit.rec
    n = len(rec.item_ids)
    if n == 0:
        raise UnfitModel("the catalog is empty")
    if len(rec.item_index) != n:
        raise UnfitModel(f"the catalog repeats item ids: {len(rec.item_index)} distinct of {n}")
    if rec.item_embeddings.ndim != 2 or len(rec.item_embeddings) != n:
        raise UnfitModel(f"item embeddings of shape {rec.item_embeddings.shape} for {n} items")
    if len(rec.index) != n:
        raise UnfitModel(f"the index holds {len(rec.index)} items, the catalog {n}")
    for name, values in learned_tables(unit):
        _check_finite(name, values)


def learned_tables(unit: ServingUnit) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of every table a request computes with."""
    rec = unit.rec
    yield "item embeddings", rec.item_embeddings
    if getattr(rec.index, "embeddings", None) is not None:  # the exact index (an IVF index's live in faiss)
        yield "index vectors", rec.index.embeddings
    yield "co-engagement counts", rec.coengagement.counts
    yield "co-engagement neighbours", rec.coengagement.neighbours.data
    for name, model in (("query tower", rec._embed), ("ranker", rec._rank)):
        for weights in forward_weights(model):
            yield f"{name} weights {weights.shape}", weights


def forward_weights(model) -> list[np.ndarray]:
    """The float arrays a numpy forward pass (hyperrec.models.numpy_forward) computes with:
    its layers' weights, bound into each step's closure when it was extracted. Empty for the
    TensorFlow backend (its outputs are judged by the probe)."""
    from hyperrec.models.numpy_forward import NumpyModel

    if not isinstance(model, NumpyModel):
        return []
    found: dict[int, np.ndarray] = {}
    _collect(model.program.steps, found, set())
    return list(found.values())


def _collect(obj, found: dict[int, np.ndarray], seen: set[int]) -> None:
    """Float arrays reachable from `obj` through function closures, partials and sequences."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "f":
            found[id(obj)] = obj
    elif isinstance(obj, functools.partial):
        _collect([obj.func, *obj.args, *obj.keywords.values()], found, seen)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _collect(item, found, seen)
    elif callable(obj) and getattr(obj, "__closure__", None):
        for cell in obj.__closure__:
            try:
                _collect(cell.cell_contents, found, seen)
            except ValueError:  # an empty cell
                continue


def _check_finite(name: str, values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        raise UnfitModel(f"{name}: {values.size - int(np.count_nonzero(finite))} of {values.size} values "
                         "are not finite")


def check_lists(unit: ServingUnit, requests: list[Request], results: list[Recommended]) -> None:
    """Raise UnfitModel unless each list is non-empty, at most k long, of distinct catalog
    items with finite scores (and a finite query embedding where there is one)."""
    for request, result in zip(requests, results, strict=True):
        what = f"the probe's {result.policy} list"
        items = result.item_ids
        if not items or len(items) > request.k:
            raise UnfitModel(f"{what} has {len(items)} items for k={request.k}")
        if len(set(items)) != len(items):
            raise UnfitModel(f"{what} repeats items: {items}")
        if unknown := [i for i in items if i not in unit.rec.item_index]:
            raise UnfitModel(f"{what} holds items outside the catalog: {unknown[:3]}")
        if not np.isfinite(np.asarray(result.scores, np.float64)).all():
            raise UnfitModel(f"{what} has scores that are not finite: {result.scores}")
        if result.query is not None and not np.isfinite(result.query).all():
            raise UnfitModel(f"{what} comes from a query embedding that is not finite")
