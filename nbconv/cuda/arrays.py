"""Device arrays: recognise them, wrap them without a copy, make them canonical on the device.

Accepted are Numba device arrays and any object exporting ``__cuda_array_interface__`` (CuPy
arrays, PyTorch CUDA tensors, ...): :func:`wrap` views the same device memory as a Numba device
array (``numba.cuda.as_cuda_array``; nothing is copied). :func:`contiguous` returns the array itself
when it already is C-contiguous, of the wanted dtype and needs no flip; otherwise one copy kernel
writes a C-contiguous array, converting the dtype and reversing the kernel axes on the way (the
filter flip), without a round trip through the host. Results are Numba device arrays, which
export ``__cuda_array_interface__`` themselves (``cupy.asarray(r)`` / ``torch.as_tensor(r,
device='cuda')`` wrap them without a copy).

Under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) "device" memory is host memory: an
interface object is wrapped as a NumPy view of the memory its pointer names (again no copy), so
the zero-copy paths are testable without a GPU.
"""
from __future__ import annotations

import numpy as np
from numba import config as _numba_config
from numba import cuda

from .launch import empty, grid1d

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NDIM = 8  # the copy kernel's rank: every array is viewed with leading singleton axes up to 8


def is_device_array(a):
    """True for a Numba device array or an object exporting ``__cuda_array_interface__``."""
    if getattr(a, "__cuda_ndarray__", False):
        return True
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001  (a PyTorch CUDA tensor that requires grad: on the device)
        return True


def _check_dtype(dtype, name):
    dtype = np.dtype(dtype)
    if dtype not in _FLOATS or not dtype.isnative:
        raise TypeError(
            f"{name} must have dtype float32 or float64 (native byte order), got {dtype} "
            f"(cast it on the device first, e.g. {name}.astype('float32'))"
        )


class _InterfaceView:
    """Simulator only: exposes a __cuda_array_interface__'s memory through __array_interface__."""

    def __init__(self, desc, owner):
        self.owner = owner  # keeps the memory alive as long as the view
        self.__array_interface__ = {
            "shape": tuple(desc["shape"]), "typestr": desc["typestr"], "data": tuple(desc["data"]),
            "strides": desc.get("strides"), "version": 3,
        }


if SIMULATOR:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    class _SimulatedDeviceArray(FakeCUDAArray):
        """A simulator device array whose ``shape`` is a plain tuple, as a real device array's is
        (the simulator's own refuses negative indices, like shapes inside kernels)."""

        @property
        def shape(self):
            return self._ary.shape


def _simulated(ary):
    return _SimulatedDeviceArray(ary)


def wrap(a, name="array"):
    """``a`` as a Numba device array of the same memory (no copy); TypeError if ``a`` is no device
    array or not float32/float64."""
    if getattr(a, "__cuda_ndarray__", False):
        _check_dtype(a.dtype, name)
        return _simulated(a._ary) if SIMULATOR else a
    try:
        desc = a.__cuda_array_interface__
    except AttributeError:
        raise TypeError(f"{name} is not a CUDA device array (got {type(a).__name__})") from None
    except Exception as exc:  # noqa: BLE001  (whatever the exporter raises, named for the user)
        raise TypeError(f"{name}: its __cuda_array_interface__ cannot be read: {exc}") from None
    _check_dtype(desc["typestr"], name)
    if desc.get("mask") is not None:
        raise TypeError(f"{name}: masked device arrays are not supported")
    if SIMULATOR:
        return _simulated(np.asarray(_InterfaceView(desc, a)))
    return cuda.as_cuda_array(a)


def to_device(a):
    """A host (NumPy) array copied to the device, as it is (C-contiguous)."""
    return cuda.to_device(np.ascontiguousarray(a))


def device_pointer(a):
    """The device address of ``a``'s first element (0 for an empty array)."""
    if SIMULATOR and hasattr(a, "_ary"):
        return a._ary.__array_interface__["data"][0] if a.size else 0
    if a.size == 0:
        return 0
    return a.__cuda_array_interface__["data"][0]


def _c_strides(shape, itemsize):
    strides, step = [], itemsize
    for s in reversed(shape):
        strides.append(step)
        step *= max(s, 1)
    return tuple(reversed(strides))


def _as_8d(a):
    """A view of ``a`` with leading singleton axes up to 8 dimensions (no copy)."""
    k = _NDIM - a.ndim
    if SIMULATOR:
        return FakeCUDAArray(a._ary[(None,) * k])
    desc = dict(a.__cuda_array_interface__)
    shape = tuple(desc["shape"])
    strides = desc.get("strides") or _c_strides(shape, a.dtype.itemsize)
    desc["shape"] = (1,) * k + shape
    desc["strides"] = (a.dtype.itemsize,) * k + tuple(strides)
    desc.pop("stream", None)  # already synchronised when it was wrapped
    return cuda.from_cuda_array_interface(desc, owner=a)


@cuda.jit
def _copy_kernel(src, dst, nflip):
    """dst (flat, C order) = src (8-D, any strides), the last ``nflip`` axes reversed."""
    _s0, s1, s2, s3, s4, s5, s6, s7 = src.shape
    for e in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
        r = e
        i7 = r % s7
        r //= s7
        i6 = r % s6
        r //= s6
        i5 = r % s5
        r //= s5
        i4 = r % s4
        r //= s4
        i3 = r % s3
        r //= s3
        i2 = r % s2
        r //= s2
        i1 = r % s1
        i0 = r // s1
        if nflip >= 1:
            i7 = s7 - 1 - i7
        if nflip >= 2:
            i6 = s6 - 1 - i6
        if nflip >= 3:
            i5 = s5 - 1 - i5
        dst[e] = src[i0, i1, i2, i3, i4, i5, i6, i7]


def contiguous(a, dtype, nflip=0):
    """``a`` C-contiguous, of ``dtype``, its last ``nflip`` axes reversed: ``a`` itself when that
    is already so, else a copy made on the device."""
    dtype = np.dtype(dtype)
    if nflip == 0 and a.dtype == dtype and a.is_c_contiguous():
        return a
    out = empty(a.shape, dtype)
    if a.size:
        blocks, threads = grid1d(a.size)
        _copy_kernel[blocks, threads](_as_8d(a), out.reshape(a.size), nflip)
    return out


def canonical(a, shape, dtype):
    """``a`` as a C-contiguous device array of ``dtype`` in the canonical ``shape``."""
    return contiguous(a, dtype).reshape(shape)


def canonical_weights(spec, w):
    """Canonical weights, kernel axes reversed when the spec flips (one copy at most)."""
    return contiguous(w, spec.np_dtype, spec.nd if spec.flip else 0).reshape(spec.w_shape)


def flip_kernel_axes(a):
    """A canonical weight (gradient) with its three kernel axes reversed (a copy)."""
    return contiguous(a, a.dtype, 3)
