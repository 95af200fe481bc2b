"""Launch configuration of the CUDA kernels, and the small kernels every algorithm shares.

Block sizes, GEMM tiles and grid caps are not hard-coded in the kernels: they come from one
:class:`LaunchConfig`, so a test can run everything with tiny blocks in Numba's CUDA simulator
(which runs one Python thread per GPU thread) and a benchmark can try other tiles::

    from nbconv.cuda import launch
    with launch.override(threads=32, max_blocks=4, gemm_tile=(8, 8, 4, 2, 2)):
        ...

Kernels whose shared or local arrays need compile-time sizes and dtypes are built by factories
cached per (dtype, sizes) (``functools.lru_cache``); the constants reach the kernel as closure
variables, which Numba freezes at compile time. Float constants are NumPy scalars of the problem's
dtype (``zero(dtype)``) so float32 kernels never promote to float64.

Nothing here touches the GPU at import time. Importing installs one warnings filter: Numba's
"Grid size N will likely result in GPU under-utilization" performance warning is ignored (small
problems get small grids on purpose).
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numba
import numpy as np
from numba import cuda
from numba.core.errors import NumbaPerformanceWarning

# Small problems get small grids on purpose; Numba would warn about each such launch.
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization",
                        category=NumbaPerformanceWarning)


@dataclass(frozen=True)
class LaunchConfig:
    #: threads per block of the elementwise (grid-stride) kernels
    threads: int = 256
    #: grid cap of the grid-stride kernels (each thread then loops over several elements)
    max_blocks: int = 65535
    #: threads per block of the block reductions (a power of two)
    reduce_threads: int = 256
    #: GEMM block tile (BM, BN, BK) and per-thread micro-tile (TM, TN): (BM/TM)*(BN/TN) threads
    gemm_tile: tuple = (64, 64, 8, 4, 4)
    gemm_tile_f64: tuple = (64, 64, 8, 4, 4)
    #: the tile of GEMMs with few rows (M <= its BM: grouped and locally connected layers)
    gemm_tile_skinny: tuple = (16, 128, 8, 2, 4)
    #: depthwise forward: output rows x columns per block (threads per block = their product)
    dw_tile: tuple = (8, 32)
    #: elements of the depthwise forward's input tile in shared memory
    dw_smem: int = 4096
    #: cap of gridDim.y / gridDim.z (the kernels loop over what does not fit)
    max_grid_yz: int = 65535
    #: blocks a launch should have to fill the GPU (0: 4 x the device's multiprocessor count);
    #: split-K and the grad-weights reductions split their sums until they get this many
    target_blocks: int = 0
    #: fewest BK-deep k-tiles (GEMMs) or elements per thread (reductions) per split
    min_split_work: int = 8
    #: bytes of scratch memory one call may allocate (im2col columns, unshared patches)
    workspace_limit: int = 1 << 30


_config = LaunchConfig()
if os.environ.get("NBCONV_CUDA_WORKSPACE_LIMIT", "").strip():
    _config = replace(_config, workspace_limit=int(os.environ["NBCONV_CUDA_WORKSPACE_LIMIT"]))


def config() -> LaunchConfig:
    return _config


def configure(**changes) -> LaunchConfig:
    """Replace fields of the launch configuration (returns the previous one)."""
    global _config
    old = _config
    new = replace(_config, **changes)
    _check(new)
    _config = new
    return old


@contextmanager
def override(**changes):
    """``with override(threads=32): ...`` -- the configuration changed for the block only."""
    global _config
    old = configure(**changes)
    try:
        yield _config
    finally:
        _config = old


def _check(c):
    for tile in (c.gemm_tile, c.gemm_tile_f64, c.gemm_tile_skinny):
        bm, bn, _bk, tm, tn = tile
        if bm % tm or bn % tn:
            raise ValueError(f"gemm tile {tile}: BM must be a multiple of TM and BN of TN")
    if c.reduce_threads & (c.reduce_threads - 1):
        raise ValueError(f"reduce_threads must be a power of two, got {c.reduce_threads}")


def gemm_tile(dtype, m=None):
    """The (BM, BN, BK, TM, TN) tile of a GEMM of ``m`` rows."""
    if m is not None and m <= _config.gemm_tile_skinny[0]:
        return _config.gemm_tile_skinny
    return _config.gemm_tile_f64 if np.dtype(dtype) == np.float64 else _config.gemm_tile


_sm_count = None


def sm_count():
    """Multiprocessors of the current device (queried once, at the first launch); 16 when the
    device cannot say (the simulator)."""
    global _sm_count
    if _sm_count is None:
        try:
            _sm_count = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
        except Exception:  # noqa: BLE001  (the simulator has no device attributes)
            _sm_count = 16
    return _sm_count


def target_blocks():
    return _config.target_blocks or 4 * sm_count()


def ceil_div(a, b):
    return -(-a // b)


def grid1d(n, threads=None):
    """(blocks, threads) of a grid-stride launch over n elements."""
    threads = threads or _config.threads
    return max(1, min(ceil_div(n, threads), _config.max_blocks)), threads


def zero(dtype):
    """A typed zero: passed to kernels (or closed over) so accumulators keep the dtype."""
    return np.dtype(dtype).type(0)


def nb_type(dtype):
    return numba.from_dtype(np.dtype(dtype))


# --------------------------------------------------------------------------------------------
# Shared kernels: fill, sum of split partials
# --------------------------------------------------------------------------------------------


@cuda.jit
def _fill_kernel(a, value):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit
def _sum_splits_kernel(part, out, accumulate):
    """out[i] (+)= sum over s of part[s, i], in order of s (deterministic)."""
    S, size = part.shape[0], part.shape[1]
    for i in range(cuda.grid(1), size, cuda.gridsize(1)):
        acc = part[0, i]
        for s in range(1, S):
            acc += part[s, i]
        if accumulate:
            out[i] += acc
        else:
            out[i] = acc


def empty(shape, dtype):
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def fill(a, value):
    """Fill a C-contiguous device array with ``value`` (of its dtype)."""
    if a.size:
        flat = a.reshape(a.size)
        blocks, threads = grid1d(a.size)
        _fill_kernel[blocks, threads](flat, a.dtype.type(value))
    return a


def zeros(shape, dtype):
    return fill(empty(shape, dtype), 0)


def sum_splits(part, out, accumulate=False):
    """``out.flat (+)= part.sum(axis=0)`` for part (S, out.size), summed in a fixed order."""
    flat = out.reshape(out.size)
    blocks, threads = grid1d(out.size)
    _sum_splits_kernel[blocks, threads](part, flat, accumulate)


def split_count(work, units, min_work):
    """How many parts to split a sum of ``work`` terms into, when ``units`` blocks (or
    independent outputs) run without splitting: enough to reach the target block count, none
    smaller than ``min_work`` terms. Returns (parts, terms per part)."""
    if work <= 0:
        return 1, 0
    parts = max(1, min(target_blocks() // max(1, units), work // max(1, min_work), _config.max_grid_yz))
    per = ceil_div(work, parts)
    return ceil_div(work, per), per
