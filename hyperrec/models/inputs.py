"""Model input arrays from feature columns, without TensorFlow: the towers (training,
evaluation, the TF serving path) and the numpy forward passes read the same arrays."""

from __future__ import annotations

import numpy as np

from hyperrec.features.windows import RECENT_N


def pad_lists(values, width: int = RECENT_N) -> np.ndarray:
    """Ragged lists of ids as a [n, width] string array, newest first, "" as padding."""
    out = np.full((len(values), width), "", dtype=object)
    for row, items in enumerate(values):
        items = list(items)[:width] if items is not None else []
        out[row, :len(items)] = items
    return out.astype(str)


def tensors(frame, spec: dict[str, str], width: int = RECENT_N) -> dict[str, np.ndarray]:
    """Columns (a DataFrame, or a dict of arrays on the serving path) as the arrays a tower
    expects: strings as str, id lists padded to `width`, numbers as float32. One function
    for training, evaluation and serving."""
    out = {}
    for col, kind in spec.items():
        if kind == "string":
            out[col] = np.asarray(frame[col]).astype(str)
        elif kind == "string_list":
            out[col] = pad_lists(frame[col], width)
        else:
            out[col] = np.asarray(frame[col], np.float32)
    return out
