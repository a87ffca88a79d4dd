"""Numpy forward passes of the exported query tower and ranker: serving without a
TensorFlow call per batch.

At small batches (the model server's 1-2 requests) a TensorFlow function call is mostly
fixed cost: converting and checking the inputs, dispatching the graph. The two serving
models are small Keras functional graphs, so `from_keras` walks the loaded model's graph
once (the nodes in the order Keras itself runs them) and turns every layer and TF op into
a numpy step with the layer's weights and config read from the model. Any layer, op or
option it has no exact numpy twin for raises NotImplementedError at load time instead of
computing something else.

Only the `from_keras` extraction touches TensorFlow; the forward pass (`__call__`) is numpy
(and scipy's erfc for the exact gelu).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from scipy.special import erfc

from hyperrec.models.inputs import tensors

_GELU_SCALE = np.float32(0.7071067811865476)  # tf.nn.gelu(approximate=False): 0.5 x erfc(-x / sqrt 2)
_L2_EPSILON = 1e-12  # tf.linalg.l2_normalize's default, which UnitNormalization uses (not in its config)


class NumpyModel:
    """`model(columns) -> numpy`: a Keras functional model's inference as numpy steps.
    `columns` is what the compiled TF callables take (a DataFrame or a dict of column
    arrays); `spec` maps each model input to its kind ("string", "string_list", numbers)."""

    def __init__(self, spec: dict[str, str], list_width: int, program: _Program):
        self.spec, self.list_width, self.program = dict(spec), int(list_width), program

    @classmethod
    def from_keras(cls, model, spec: dict[str, str] | None = None):
        """Extract the graph and weights of a loaded (or freshly built) tf-keras functional
        model. `spec` defaults to the kinds the model's inputs declare."""
        program = _Program.from_keras(model)
        inferred, width = _input_kinds(model)
        spec = inferred if spec is None else dict(spec)
        if set(spec) != set(program.inputs):
            raise ValueError(f"spec {sorted(spec)} != the model's inputs {sorted(program.inputs)}")
        return cls(spec, width, program)

    def arrays(self, frame) -> dict[str, np.ndarray]:
        """Columns as the model's input arrays: the towers' own `inputs.tensors`."""
        return tensors(frame, self.spec, self.list_width)

    def __call__(self, frame) -> np.ndarray:
        return np.asarray(self.program.run(self.arrays(frame)), np.float32)


class NumpyUserTower(NumpyModel):
    """The query tower (two_tower.build_towers' user_tower)."""


class NumpyRanker(NumpyModel):
    """The DCN ranker (ranking.build_ranker): `ranker(rows) -> logits [rows]`."""


def _input_kinds(model) -> tuple[dict[str, str], int]:
    spec, width = {}, 0
    for tensor in model.inputs:
        name = tensor._keras_history.layer.name
        if tensor.dtype.name == "string":
            spec[name] = "string_list" if len(tensor.shape) == 2 else "string"
            if len(tensor.shape) == 2:
                width = int(tensor.shape[1])
        else:
            spec[name] = "float"
    return spec, width


# ----------------------------------------------------------------------------------------
# the program: one numpy step per node of the functional graph


class _Ref:
    """A graph tensor's slot in the program's value list."""

    __slots__ = ("slot",)

    def __init__(self, slot: int):
        self.slot = slot


def _step(fn: Callable, args: dict[str, Any], outs: list[int]) -> Callable[[list], None]:
    """`step(values)`: one node as a closure over its value slots. Constant arguments are
    bound once; the graph tensors are passed positionally when they are the function's
    leading parameters (every node here), so a call is a closure, a partial and the op."""
    dynamic = [k for k, v in args.items() if _has_ref(v)]
    consts = {k: v for k, v in args.items() if k not in dynamic}
    f = partial(fn, **consts) if consts else fn
    if list(args)[:len(dynamic)] != dynamic:
        bound, names = f, tuple(dynamic)

        def f(*values):
            return bound(**dict(zip(names, values)))
    getters = [args[k] for k in dynamic]
    if len(outs) == 1 and all(isinstance(g, _Ref) for g in getters) and len(getters) <= 2:
        out, slots = outs[0], [g.slot for g in getters]
        if len(slots) == 1:
            a = slots[0]

            def step(env: list) -> None:
                env[out] = f(env[a])
        else:
            a, b = slots

            def step(env: list) -> None:
                env[out] = f(env[a], env[b])
        return step

    def step(env: list) -> None:
        result = f(*(env[g.slot] if isinstance(g, _Ref) else [env[r.slot] if isinstance(r, _Ref) else r for r in g]
                     for g in getters))
        if len(outs) == 1:
            env[outs[0]] = result
        else:
            for slot, value in zip(outs, result, strict=True):
                env[slot] = value
    return step


def _has_ref(value) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, _Ref) or (isinstance(value, (list, tuple)) and any(_has_ref(v) for v in value))


class _Program:
    def __init__(self, inputs: dict[str, int], steps: list[Callable[[list], None]], outputs: list[int], size: int):
        self.inputs, self.steps, self.outputs, self.size = inputs, steps, outputs, size

    @classmethod
    def from_keras(cls, model) -> _Program:
        import tensorflow as tf

        slots: dict[tuple[str, int, int], int] = {}

        def key(tensor) -> tuple[str, int, int]:
            history = tensor._keras_history
            return history.layer.name, history.node_index, history.tensor_index

        def template(value):
            """A call argument with graph tensors as _Refs and constants as numpy/python."""
            if hasattr(value, "_keras_history"):
                return _Ref(slots[key(value)])
            if isinstance(value, (list, tuple)):
                items = [template(v) for v in value]
                if any(isinstance(v, (list, dict)) and _has_ref(v) for v in items):
                    raise NotImplementedError(f"nested graph tensors in an argument of {value!r}")
                return items if any(isinstance(v, _Ref) for v in items) else type(value)(items)
            if isinstance(value, dict):
                items = {k: template(v) for k, v in value.items()}
                if _has_ref(items):
                    raise NotImplementedError(f"graph tensors in a dict argument {value!r}")
                return items
            if isinstance(value, (tf.Tensor, tf.Variable, np.ndarray)):
                return np.asarray(value)
            return value

        inputs = {}
        for tensor in model.inputs:
            inputs[tensor._keras_history.layer.name] = slots[key(tensor)] = len(slots)
        steps = []
        for depth in sorted(model._nodes_by_depth, reverse=True):  # the order Keras runs them in
            for node in model._nodes_by_depth[depth]:
                layer = node.layer
                if type(layer).__name__ == "InputLayer":
                    continue
                args = [template(a) for a in node.call_args]
                kwargs = {k: template(v) for k, v in node.call_kwargs.items()}
                fn, bound = _step_for(layer, args, kwargs)
                outs = []
                for tensor in tf.nest.flatten(node.outputs):
                    outs.append(slots.setdefault(key(tensor), len(slots)))
                steps.append(_step(fn, bound, outs))
        outputs = [slots[key(t)] for t in model.outputs]
        return cls(inputs, steps, outputs, len(slots))

    def run(self, feeds: dict[str, np.ndarray]):
        env: list = [None] * self.size
        for name, slot in self.inputs.items():
            env[slot] = feeds[name]
        for step in self.steps:
            step(env)
        out = [env[s] for s in self.outputs]
        return out[0] if len(out) == 1 else out


# ----------------------------------------------------------------------------------------
# layers and ops


def _step_for(layer, args: list, kwargs: dict) -> tuple[Callable, dict[str, Any]]:
    """(numpy function, its keyword arguments as templates) for one graph node."""
    kind = type(layer).__name__
    if kind in ("TFOpLambda", "SlicingOpLambda"):
        return _op_step(layer.symbol, args, kwargs)
    # a Keras layer: its input first, then nothing that changes inference
    extra = {k: v for k, v in kwargs.items() if k not in ("training", "mask") and v is not None}
    if kind.endswith("Cross"):  # tfrs.layers.dcn.Cross, or the class Keras revives from a SavedModel
        x0 = args[0]
        x = args[1] if len(args) > 1 else extra.pop("x", None)
        if extra:
            raise NotImplementedError(f"{layer.name}: call arguments {sorted(extra)}")
        return _cross(layer), {"x0": x0, "x": x}
    if len(args) != 1 or extra:
        raise NotImplementedError(f"{layer.name} ({kind}): call arguments {len(args)} + {sorted(extra)}")
    builders = {"StringLookup": _string_lookup, "Embedding": _embedding, "Dense": _dense,
                "Concatenate": _concatenate, "Dropout": _identity, "UnitNormalization": _unit_normalization,
                "Normalization": _normalization}
    if kind.endswith("ItemIds"):  # two_tower.ItemIds (revived: no class, but its lookup and embedding)
        return _item_ids(layer), {"ids": args[0]}
    if kind not in builders:
        raise NotImplementedError(f"no numpy forward for layer {layer.name!r} ({kind})")
    return builders[kind](layer), {"x": args[0]}


def _array(variable) -> np.ndarray:
    return np.array(variable.numpy())  # a copy: nothing shared with the TF model


def _identity(layer):
    return lambda x: x


def _lookup_table(layer) -> tuple[dict[str, int], int]:
    """StringLookup as (token -> index, index of an unknown token). With the defaults the
    towers use (num_oov_indices=1, no mask token) index 0 is the OOV bucket."""
    cfg = layer.get_config()
    if cfg.get("invert") or cfg.get("output_mode", "int") != "int" or cfg.get("num_oov_indices") != 1:
        raise NotImplementedError(f"{layer.name}: StringLookup options {cfg}")
    mask = cfg.get("mask_token")
    vocab = [t.decode() if isinstance(t, bytes) else str(t) for t in layer.get_vocabulary(include_special_tokens=True)]
    special = 2 if mask is not None else 1  # [mask], [UNK] come first
    table = {token: i for i, token in enumerate(vocab) if i >= special}
    if mask is not None:
        table[mask] = 0
    return table, special - 1


def _string_lookup(layer):
    table, oov = _lookup_table(layer)
    get = table.get

    def lookup(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        return np.array([get(t, oov) for t in x.ravel().tolist()], np.int64).reshape(x.shape)
    return lookup


def _embedding(layer):
    table = _array(layer.embeddings)
    return lambda x: table[x]


def _item_ids(layer):
    """two_tower.ItemIds.call: (embedding(lookup(ids)), float(lookup(ids) > 0))."""
    lookup, table = _string_lookup(layer.lookup), _array(layer.embedding.embeddings)

    def item_ids(ids: np.ndarray):
        index = lookup(ids)
        return table[index], (index > 0).astype(np.float32)
    return item_ids


def _activation(name, layer_name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name in ("linear", None):
        return lambda x: x
    if name == "relu":
        return lambda x: np.maximum(x, np.float32(0))
    if name == "gelu":  # tf-keras' gelu defaults to approximate=False (the erf form)
        return lambda x: np.float32(0.5) * x * erfc(-x * _GELU_SCALE).astype(np.float32, copy=False)
    if name == "sigmoid":
        return lambda x: np.float32(1) / (np.float32(1) + np.exp(-x))
    if name == "tanh":
        return np.tanh
    raise NotImplementedError(f"{layer_name}: activation {name!r}")


def _dense(layer):
    cfg = layer.get_config()
    kernel = _array(layer.kernel)
    bias = _array(layer.bias) if cfg["use_bias"] else None
    act = _activation(cfg["activation"], layer.name)

    def dense(x: np.ndarray) -> np.ndarray:
        y = x @ kernel
        if bias is not None:
            y += bias
        return act(y)
    return dense


def _concatenate(layer):
    axis = layer.get_config()["axis"]
    return lambda x: np.concatenate(x, axis=axis)


def _unit_normalization(layer):
    axis = layer.get_config()["axis"]
    axis = tuple(axis) if isinstance(axis, list) else axis

    def unit_normalization(x: np.ndarray) -> np.ndarray:  # tf.linalg.l2_normalize
        square_sum = np.sum(np.square(x), axis=axis, keepdims=True)
        return x * (np.float32(1) / np.sqrt(np.maximum(square_sum, np.float32(_L2_EPSILON))))
    return unit_normalization


def _normalization(layer):
    """(x - mean) / max(sqrt(variance), keras epsilon), with the adapted mean/variance."""
    import tensorflow as tf

    mean, variance = _array(layer.mean), _array(layer.variance)
    scale = np.maximum(np.sqrt(variance), np.float32(tf.keras.backend.epsilon()))
    if layer.get_config().get("invert"):
        return lambda x: mean + np.asarray(x, np.float32) * scale
    return lambda x: (np.asarray(x, np.float32) - mean) / scale


def _cross(layer):
    """tfrs.layers.dcn.Cross: x0 * (V(U x) + b [+ diag_scale x]) + x (U only with a
    projection_dim; without one, a single full-rank dense)."""
    cfg = layer.get_config()
    if cfg.get("projection_dim") is None:
        prod = _dense(layer._dense)
    else:
        u, v = _dense(layer._dense_u), _dense(layer._dense_v)

        def prod(x):
            return v(u(x))
    diag = float(cfg.get("diag_scale") or 0.0)

    def cross(x0: np.ndarray, x: np.ndarray | None) -> np.ndarray:
        x = x0 if x is None else x
        out = prod(x)
        if diag:
            out = out + np.float32(diag) * x
        return x0 * out + x
    return cross


# TF ops (TFOpLambda nodes) by symbol, with TF's parameter names so a node's recorded
# positional and keyword arguments bind the same way they did in TF


def _tf_cast(x, dtype, name=None):
    return np.asarray(x).astype(dtype, copy=False)


def _tf_reduce_sum(input_tensor, axis=None, keepdims=False, name=None):
    return np.add.reduce(input_tensor, axis=tuple(axis) if isinstance(axis, list) else axis, keepdims=bool(keepdims))


def _tf_clip_by_value(t, clip_value_min, clip_value_max, name=None):
    return np.maximum(np.minimum(t, clip_value_max), clip_value_min)  # tf's order; np.clip costs ~5x more


def _tf_expand_dims(input, axis, name=None):
    x = np.asarray(input)
    axis = int(axis) if int(axis) >= 0 else x.ndim + 1 + int(axis)
    return x.reshape(x.shape[:axis] + (1,) + x.shape[axis:])


def _tf_squeeze(input, axis):
    return np.squeeze(input, axis=tuple(axis) if isinstance(axis, list) else axis)


def _tf_getitem(tensor, slice_spec, var=None):
    return tensor[slice_spec]


def _slices(slice_spec) -> tuple:
    """A getitem node's slice spec (slices are saved as dicts) as a numpy index."""
    spec = slice_spec if isinstance(slice_spec, (tuple, list)) else (slice_spec,)
    return tuple(slice(s["start"], s["stop"], s["step"]) if isinstance(s, dict) else s for s in spec)


_OPS: dict[str, Callable] = {
    "math.multiply": lambda x, y, name=None: np.multiply(x, y),
    "math.truediv": lambda x, y, name=None: np.true_divide(x, y),
    "math.add": lambda x, y, name=None: np.add(x, y),
    "math.subtract": lambda x, y, name=None: np.subtract(x, y),
    "math.maximum": lambda x, y, name=None: np.maximum(x, y),
    "math.minimum": lambda x, y, name=None: np.minimum(x, y),
    "math.greater": lambda x, y, name=None: np.greater(x, y),
    "math.not_equal": lambda x, y, name=None: np.not_equal(x, y),
    "math.log1p": lambda x, name=None: np.log1p(x),
    "math.reduce_sum": _tf_reduce_sum,
    "cast": _tf_cast,
    "clip_by_value": _tf_clip_by_value,
    "expand_dims": _tf_expand_dims,
    "stack": lambda values, axis=0, name="stack": np.stack(values, axis=axis),
    "compat.v1.squeeze": lambda input, axis=None, name=None, squeeze_dims=None: _tf_squeeze(
        input, axis if axis is not None else squeeze_dims),
    "squeeze": lambda input, axis=None, name=None: _tf_squeeze(input, axis),
    "__operators__.getitem": _tf_getitem,
}
_TENSOR_PARAMS = ("x", "y", "t", "input", "input_tensor", "values", "tensor")


def _op_step(symbol: str, args: list, kwargs: dict) -> tuple[Callable, dict[str, Any]]:
    import tensorflow as tf

    if symbol not in _OPS:
        raise NotImplementedError(f"no numpy forward for TF op {symbol!r}")
    fn = _OPS[symbol]
    bound = inspect.signature(fn).bind(*args, **kwargs).arguments
    bound.pop("name", None)
    for param, value in bound.items():
        if param == "slice_spec":
            bound[param] = _slices(value)
        elif param == "dtype":
            bound[param] = tf.as_dtype(value).as_numpy_dtype
        elif param in _TENSOR_PARAMS and isinstance(value, (list, tuple)) and not _has_ref(value):
            # a constant operand (a tf.constant saved as a nested list): TF's default dtypes
            bound[param] = tf.convert_to_tensor(value).numpy()
    return fn, dict(bound)
