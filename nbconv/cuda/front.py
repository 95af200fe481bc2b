"""The CUDA path of the API: :func:`execute` is :func:`nbconv.dispatch.execute` for device arrays.

The public functions of :mod:`nbconv.api` validate their arguments into a spec exactly as for
NumPy arrays (shapes and dtypes are all they read), then call :func:`execute` with the operands as
the user passed them: device arrays (Numba, CuPy, PyTorch CUDA tensors, anything exporting
``__cuda_array_interface__``; wrapped without a copy), or NumPy arrays when the caller asked for
``device='cuda'`` (copied in, and the result copied back out as a NumPy array).

Operands are made canonical on the device (:mod:`nbconv.cuda.arrays`: no copy when they already
are; the filter flip applied in the one copy otherwise), the algorithm is the named one or the
applicable CUDA algorithm with the lowest estimate (:func:`nbconv.registry.guess`), and the result
is a Numba device array in the user's shape.
"""
from __future__ import annotations

import numpy as np

from .. import registry
from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS, AlgorithmNotApplicable
from . import arrays, launch

DEVICE = "cuda"

_choice_cache: dict = {}
_CACHE_MAX = 4096


def choose(spec, algo=None):
    """The CUDA algorithm that will compute ``spec``: the named one, or the heuristic default."""
    key = (spec, algo)
    alg = _choice_cache.get(key)
    if alg is not None:
        return alg
    if algo is None:
        alg = registry.guess(spec, DEVICE)
        if alg is None:
            raise AlgorithmNotApplicable(f"no {DEVICE} algorithm supports {spec.describe()}")
    elif isinstance(algo, str):
        alg = registry.get(algo, DEVICE)
        if not alg.applicable(spec):
            raise AlgorithmNotApplicable(
                f"algo={algo!r} does not support {spec.direction} of {spec.describe()} on {DEVICE}"
            )
    else:
        raise TypeError(f"algo must be None or an algorithm name, got {algo!r}")
    if len(_choice_cache) >= _CACHE_MAX:
        _choice_cache.clear()
    _choice_cache[key] = alg
    return alg


def _on_device(a, name):
    if isinstance(a, np.ndarray):
        return arrays.to_device(a)
    return arrays.wrap(a, name)


def canonical_operands(spec, a, b):
    """The canonical device operands (a, b) of ``spec.direction`` from user-shaped device arrays
    (see :mod:`nbconv.registry` for what a and b are)."""
    dt = spec.np_dtype
    if spec.direction == FORWARD:
        return arrays.canonical(a, spec.x_shape, dt), arrays.canonical_weights(spec, b)
    if spec.direction == GRAD_INPUT:
        return arrays.canonical(a, spec.y_shape, dt), arrays.canonical_weights(spec, b)
    return arrays.canonical(a, spec.x_shape, dt), arrays.canonical(b, spec.y_shape, dt)


def execute(spec, a, b, algo=None, names=("a", "b")):
    """Run ``spec.direction`` on operands a, b (user-shaped; device arrays, or both NumPy arrays,
    then copied in and the result copied out). Returns the user-shaped result."""
    alg = choose(spec, algo)
    host = isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    a, b = canonical_operands(spec, _on_device(a, names[0]), _on_device(b, names[1]))
    out_shape = spec.user_result_shape
    if 0 in out_shape:
        out = launch.empty(out_shape, spec.np_dtype)
    elif spec.batch == 0:  # grad-weights of an empty batch
        out = launch.zeros(out_shape, spec.np_dtype)
    else:
        out = alg.run[spec.direction](spec, a, b)
        if spec.direction == GRAD_WEIGHTS and spec.flip:
            out = arrays.flip_kernel_axes(out)
        out = out.reshape(out_shape)
    return out.copy_to_host() if host else out
