"""Captum-style target forms -> ``target_weights`` (DeepExplain's ``ys``).

``target_weights`` has the explained output's shape, batch first; the explained
scalar of row ``n`` is ``sum(target_weights[n] * output[n])``.
"""
from __future__ import annotations

import numbers

import numpy as np


def target_weights(target, out_shape: tuple, n_rows: int, dtype=np.float32) -> np.ndarray:
    """Weights selecting, per row, the output element(s) that ``target`` names.

    ``out_shape`` is the per-row shape of the output (without the batch).
    Forms (Captum's, plus numpy and torch arrays):

    * ``None``: the output has one value per row;
    * an int, a numpy integer or a 0-d (or one-element) integer array or
      tensor: an index of the first non-batch dimension;
    * a tuple of ints: one index per non-batch dimension;
    * one target per row: a list of ints or tuples, a 1-D integer array of
      ``N`` ints, or a 2-D integer array ``(N, k)`` of index tuples.

    An index may name fewer dimensions than the output has when the dimensions
    left are all of size 1 (Captum's ``output[:, c]`` on an ``(N, C, 1)`` output).
    """
    out_shape = tuple(int(d) for d in out_shape)
    w = np.zeros((n_rows,) + out_shape, dtype=dtype)
    if target is None:
        if int(np.prod(out_shape)) != 1:
            raise ValueError(f"target=None needs an output with one value per row, but each row of the output "
                             f"has shape {out_shape}; pass target=<index> (or a tuple, or one per row)")
        w[...] = 1
        return w
    target = _plain(target)
    if isinstance(target, (numbers.Integral, tuple)):
        index = _index(target, out_shape)
        w[(slice(None),) + index] = 1
        return w
    if not isinstance(target, list):
        raise ValueError(f"a target must be None, an int, a tuple of ints, or one per row (a list or an integer "
                         f"array), got {type(target).__name__}")
    if len(target) != n_rows:
        raise ValueError(f"a target per row needs {n_rows} entries (one for each input row), got {len(target)}")
    for n, t in enumerate(target):
        t = tuple(t) if isinstance(t, list) else t
        w[(n,) + _index(t, out_shape)] = 1
    return w


def _plain(target):
    """numpy and torch targets as Python ints, tuples and lists (0-d -> int, 1-D -> per-row ints,
    2-D -> per-row tuples)."""
    if isinstance(target, (numbers.Integral, tuple, list)):
        return target
    if not hasattr(target, "__array__"):
        return target
    arr = np.asarray(target)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"a target array must hold integer indices, got dtype {arr.dtype}")
    if arr.size == 1 and arr.ndim <= 1:   # Captum: a one-element tensor is one index for every row
        return int(arr.reshape(()))
    if arr.ndim == 1:
        return [int(i) for i in arr]
    if arr.ndim == 2:
        return [tuple(int(i) for i in row) for row in arr]
    raise ValueError(f"a target array has one entry (an index, or a row of indices) per input row: shape (N,) "
                     f"or (N, k), got shape {arr.shape}")


def check_target_weights(weights, out_shape: tuple, n_rows: int, dtype=np.float32) -> np.ndarray:
    """``target_weights`` given by the caller: shaped like the output, or like one row of it."""
    w = np.asarray(weights, dtype=dtype)
    full = (n_rows,) + tuple(out_shape)
    if w.shape == tuple(out_shape):
        w = np.broadcast_to(w, full)
    if w.shape != full:
        raise ValueError(f"target_weights must have the output's shape {full} (or one row of it, "
                         f"{tuple(out_shape)}), got {w.shape}")
    return np.ascontiguousarray(w)


def _index(t, out_shape: tuple) -> tuple:
    if isinstance(t, numbers.Integral) and not isinstance(t, bool):
        t = (int(t),)
    if not isinstance(t, tuple) or not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in t):
        raise ValueError(f"a target must be an int or a tuple of ints, got {t!r}")
    if len(t) > len(out_shape) or int(np.prod(out_shape[len(t):])) != 1:
        raise ValueError(f"the output has {len(out_shape)} non-batch dimension(s) {out_shape}, so a target needs "
                         f"{len(out_shape)} index(es) (fewer only where the dimensions left have size 1); got {t!r}")
    for i, d in zip(t, out_shape):
        if not -d <= i < d:
            raise ValueError(f"target {t!r} is out of range for an output whose rows have shape {out_shape}")
    return tuple(int(i) % d for i, d in zip(t, out_shape))


PREDICTED = "pred"


def parse_target(words) -> object:
    """A target typed as text (the command line's ``--target``) in Captum's forms.

    ``["3"]`` -> 3; ``["1,2"]`` or ``["(1,2)"]`` -> (1, 2); ``["3", "1", "0"]`` ->
    one per row; ``["none"]`` -> None; ``["pred"]`` -> :data:`PREDICTED` (each
    row's largest output: resolve it with :func:`predicted_target`).
    """
    words = [str(w).strip() for w in ([words] if isinstance(words, str) else words)]
    lowered = [w.lower() for w in words]
    if lowered == ["none"]:
        return None
    if lowered in (["pred"], ["predicted"]):
        return PREDICTED
    parsed = [_one_target(w) for w in words]
    return parsed[0] if len(parsed) == 1 else parsed


def _one_target(text: str):
    parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
    try:
        idx = [int(p) for p in parts]
    except ValueError:
        idx = []
    if not idx:
        raise ValueError(f"bad target {text!r}: expected an index (3), a tuple of indices (1,2), one per row, "
                         f"'pred' or 'none'")
    return idx[0] if len(idx) == 1 and "," not in text else tuple(idx)


def predicted_target(output) -> list:
    """Each row's largest output as a target: an int per row (2-D outputs) or a tuple of indices per row."""
    out = np.asarray(output)
    flat = out.reshape(len(out), -1).argmax(axis=1)
    shape = out.shape[1:]
    if len(shape) == 1:
        return [int(i) for i in flat]
    return [tuple(int(j) for j in np.unravel_index(int(i), shape)) for i in flat]
