"""Helpers of the CUDA tests: device copies in several layouts, interface objects, pointers."""
from __future__ import annotations

import numpy as np
from numba import cuda

import nbconv.cuda  # noqa: F401  (registers the CUDA algorithms)
from nbconv.cuda import arrays


def device(a, layout="C"):
    """A device array holding ``a``'s values: C-contiguous, or a strided view of a bigger one."""
    a = np.ascontiguousarray(a)
    if layout == "C" or a.ndim == 0:
        return cuda.to_device(a)
    if layout == "strided":  # every other element of the last axis of a twice-as-wide array
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        return cuda.to_device(big)[..., ::2]
    raise ValueError(layout)


def host(d):
    return d.copy_to_host()


class Interface:
    """A foreign device array: only ``__cuda_array_interface__`` (as CuPy or PyTorch export it)."""

    def __init__(self, d):
        self.base = d  # keeps the memory alive
        if arrays.SIMULATOR:
            ai = d._ary.__array_interface__
            self.__cuda_array_interface__ = {
                "shape": tuple(ai["shape"]), "typestr": ai["typestr"], "data": (ai["data"][0], False),
                "strides": ai.get("strides"), "version": 3,
            }
        else:
            self.__cuda_array_interface__ = dict(d.__cuda_array_interface__)


def pointer(a):
    if isinstance(a, Interface):
        return a.__cuda_array_interface__["data"][0]
    return arrays.device_pointer(a)
