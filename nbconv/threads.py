"""The one place that owns nbconv's thread count: Numba's pool and the BLAS pool together.

The GEMM-based algorithms alternate Numba kernels (im2col, col2im) with BLAS calls made from Python
between them, never from inside a ``prange`` region, so at most one of the two pools runs at a
time. Both pools are sized to the same count, so neither ever asks for more cores than the other
was given. The initial count is ``NBCONV_NUM_THREADS`` if set, else Numba's default (the number of
cores, or ``NUMBA_NUM_THREADS``).

Numba's OpenMP threading layer (libgomp, the layer Numba picks here) lets its idle workers spin for
milliseconds after every parallel region (``GOMP_SPINCOUNT`` 300000 by default). A GEMM started right
after an im2col kernel then shares the cores with spinning workers: measured on 2 cores, an sgemm of
12 ms took 19 ms after a Numba kernel, and 12 ms with ``OMP_WAIT_POLICY=PASSIVE``, which costs a
futex wake-up per kernel launch instead (microseconds; the kernels run for milliseconds). libgomp
reads the variable once, when it is loaded, which Numba does when its threads are first launched
(``numba.set_num_threads`` below), so it is set here, before that, unless the user chose a policy
or spin count. OpenBLAS's idle threads, by contrast, yield the CPU: a Numba kernel right after an
sgemm measured as fast as one after a pause, so the BLAS side needs no setting.

Numba's count is per calling thread (``numba.set_num_threads`` is thread-local); the BLAS limit is
process-wide. Call :func:`set_num_threads` from the thread that runs the convolutions.
"""
from __future__ import annotations

import numbers
import os
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController

ENV_VAR = "NBCONV_NUM_THREADS"

#: True when the policy below was set here (not by the user): the benchmark's worker processes
#: then start without it, so that a peer library (PyTorch) keeps its own default.
WAIT_POLICY_SET = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if WAIT_POLICY_SET:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

_num_threads = None


def _check(n, name):
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {n!r} ({type(n).__name__})")
    n = int(n)
    limit = numba.config.NUMBA_NUM_THREADS  # Numba's pool is created at this size and cannot grow
    if not 1 <= n <= limit:
        raise ValueError(f"{name} must be between 1 and {limit} (NUMBA_NUM_THREADS), got {n}")
    return n


def get_num_threads():
    """The thread count nbconv's kernels and GEMMs use."""
    return _num_threads


def set_num_threads(n):
    """Use ``n`` threads in Numba kernels and limit every loaded BLAS library to ``n`` threads."""
    global _num_threads
    n = _check(n, "n")
    numba.set_num_threads(n)
    # A fresh controller each time: it sees BLAS libraries loaded since the last call (e.g. SciPy's).
    ThreadpoolController().limit(limits=n, user_api="blas")
    _num_threads = n


@contextmanager
def threads(n):
    """``with threads(1): ...`` runs the block with ``n`` threads, then restores the previous count."""
    previous = get_num_threads()
    set_num_threads(n)
    try:
        yield n
    finally:
        set_num_threads(previous)


def _initial():
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return numba.config.NUMBA_NUM_THREADS
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be an integer, got {value!r}") from None
    return _check(n, ENV_VAR)


set_num_threads(_initial())
