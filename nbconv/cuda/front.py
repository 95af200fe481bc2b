"""The CUDA path of the API: :func:`execute` is :func:`nbconv.dispatch.execute` for device arrays.

The public functions of :mod:`nbconv.api` validate their arguments into a spec exactly as for
NumPy arrays (shapes and dtypes are all they read), then call :func:`execute` with the operands as
the user passed them: device arrays (Numba, CuPy, PyTorch CUDA tensors, anything exporting
``__cuda_array_interface__``; wrapped without a copy), or NumPy arrays when the caller asked for
``device='cuda'`` (copied in, and the result copied back out as a NumPy array).

Operands are made canonical on the device (:mod:`nbconv.cuda.arrays`: no copy when they already
are; the filter flip applied in the one copy otherwise, unless the chosen algorithm applies it
itself, ``Algorithm.flips``), the algorithm is chosen as on the CPU
(:func:`nbconv.dispatch.choose` with ``device='cuda'``: a name, or a policy consulting the tuning
database, whose records and fingerprint are per device), and the result is a Numba device array in
the user's shape.
"""
from __future__ import annotations

import numpy as np

from .. import dispatch
from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import arrays, launch

DEVICE = "cuda"



def choose(spec, algo=None):
    """The CUDA algorithm that will compute ``spec``: ``algo`` (an algorithm name or a policy), or
    the policy ``nbconv.config`` sets for the direction; the tuning database's winner for the
    problem on this GPU when there is one (see :func:`nbconv.dispatch.choose`)."""
    return dispatch.choose(spec, algo, device=DEVICE)


def _on_device(a, name):
    if isinstance(a, np.ndarray):
        return arrays.to_device(a)
    return arrays.wrap(a, name)


def canonical_operands(spec, a, b, flip=None):
    """The canonical device operands (a, b) of ``spec.direction`` from user-shaped device arrays
    (see :mod:`nbconv.registry` for what a and b are). The weights' kernel axes are reversed when
    ``flip`` (default: ``spec.flip``); an algorithm that applies the flip itself takes them as
    they are."""
    dt = spec.np_dtype
    flip = spec.flip if flip is None else flip
    if spec.direction == GRAD_WEIGHTS:
        return arrays.canonical(a, spec.x_shape, dt), arrays.canonical(b, spec.y_shape, dt)
    first = spec.x_shape if spec.direction == FORWARD else spec.y_shape
    weights = arrays.canonical_weights(spec, b) if flip else arrays.canonical(b, spec.w_shape, dt)
    return arrays.canonical(a, first, dt), weights


def execute(spec, a, b, algo=None, names=("a", "b")):
    """Run ``spec.direction`` on operands a, b (user-shaped; device arrays, or both NumPy arrays,
    then copied in and the result copied out). Returns the user-shaped result."""
    alg = choose(spec, algo)
    host = isinstance(a, np.ndarray) and isinstance(b, np.ndarray)
    flip_here = spec.flip and not alg.flips  # as nbconv.dispatch.execute does on the CPU
    a, b = canonical_operands(spec, _on_device(a, names[0]), _on_device(b, names[1]), flip_here)
    out_shape = spec.user_result_shape
    if 0 in out_shape:
        out = launch.empty(out_shape, spec.np_dtype)
    elif spec.batch == 0:  # grad-weights of an empty batch
        out = launch.zeros(out_shape, spec.np_dtype)
    else:
        out = alg.run[spec.direction](spec, a, b)
        if spec.direction == GRAD_WEIGHTS and flip_here:
            out = arrays.flip_kernel_axes(out)
        out = out.reshape(out_shape)
    return out.copy_to_host() if host else out
