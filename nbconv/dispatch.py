"""From a validated spec and user arrays to a result: canonical arrays, algorithm choice, flip.

``filter_flip`` is applied here, once, for every algorithm: the weights are reversed along their
three kernel axes while they are made contiguous (the copy that canonicalisation may need anyway),
and a weight gradient is reversed back, so algorithms only ever implement cross-correlation.
"""
from __future__ import annotations

import numpy as np

from . import registry
from .spec import GRAD_WEIGHTS, AlgorithmNotApplicable

_KERNEL_AXES_REVERSED = (Ellipsis, slice(None, None, -1), slice(None, None, -1), slice(None, None, -1))

# The algorithm chosen per (problem, request); the hot path of a repeated call is one look-up.
_choice_cache: dict = {}


def canonical(a, shape, dtype):
    """``a`` as a C-contiguous array of ``dtype`` in the canonical (3-spatial-axis) ``shape``."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(shape)


def canonical_weights(spec, w):
    """Canonical weights, kernel axes reversed when the spec flips (one copy at most)."""
    w = w.reshape(spec.w_shape)
    if spec.flip:
        w = w[_KERNEL_AXES_REVERSED]
    return np.ascontiguousarray(w, dtype=spec.np_dtype)


def choose(spec, algo=None, device="cpu"):
    """The algorithm that will compute ``spec``: the named one, or the heuristic default."""
    key = (spec, algo, device)
    alg = _choice_cache.get(key)
    if alg is not None:
        return alg
    if algo is None:
        alg = registry.guess(spec, device)
        if alg is None:
            raise AlgorithmNotApplicable(f"no {device} algorithm supports {spec.describe()}")
    elif isinstance(algo, str):
        alg = registry.get(algo, device)
        if not alg.applicable(spec):
            raise AlgorithmNotApplicable(
                f"algo={algo!r} does not support {spec.direction} of {spec.describe()}"
            )
    else:
        raise TypeError(f"algo must be None or an algorithm name, got {algo!r}")
    _choice_cache[key] = alg
    return alg


def execute(spec, a, b, algo=None):
    """Run ``spec.direction`` on canonical operands; returns the user-shaped result."""
    alg = choose(spec, algo)
    out_shape = spec.user_result_shape
    if 0 in out_shape:
        return np.zeros(out_shape, dtype=spec.np_dtype)
    out = alg.run[spec.direction](spec, a, b)
    if spec.direction == GRAD_WEIGHTS and spec.flip:
        out = np.ascontiguousarray(out[_KERNEL_AXES_REVERSED])
    return out.reshape(out_shape)
