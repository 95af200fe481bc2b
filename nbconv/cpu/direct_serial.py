"""The direct kernels compiled without ``parallel``, for problems too small to share out.

Waking Numba's worker pool once it has fallen asleep costs 25-60 us per launch on this machine (a
futex wake-up per worker, see :mod:`nbconv.threads`), which is more than LeNet's whole 0.17 MFLOP
first layer takes on one core. The same Python kernels compiled with
``parallel=False`` run their ``prange`` loops as plain loops on the calling thread.
"""
import types

from numba import njit

from . import direct
from .direct import _FASTMATH


def _serial_twin(kernel):
    f = kernel.py_func
    # A distinct qualified name gives the twin its own on-disk cache entries: Numba names cache
    # files after the function's qualname (and line), which the parallel original also uses.
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    twin.__qualname__ = twin.__name__
    twin.__doc__ = f.__doc__
    return njit(cache=True, fastmath=_FASTMATH)(twin)


_KERNELS = {direction: tuple(_serial_twin(k) for k in pair) for direction, pair in direct._KERNELS.items()}


def forward(spec, x, w):
    return direct._launch(_KERNELS, spec, x, w)


def grad_input(spec, dy, w):
    return direct._launch(_KERNELS, spec, dy, w)


def grad_weights(spec, x, dy):
    return direct._launch(_KERNELS, spec, x, dy)
