"""The one place that owns nbconv's thread count: Numba's pool and the BLAS pool together.

The GEMM-based algorithms alternate Numba kernels (im2col, col2im) with BLAS calls made from Python
between them, never from inside a ``prange`` region, so at most one of the two pools runs at a
time. The one exception, winograd's independent GEMMs (``nbconv.cpu.winograd._gemm_rows``), runs
one GEMM per Numba worker with every BLAS held to one thread meanwhile (:func:`blas_one_thread`).
Both pools are sized to the same count, so neither ever asks for more cores than the other
was given. The initial count is ``NBCONV_NUM_THREADS`` if set, else Numba's default (the number of
cores, or ``NUMBA_NUM_THREADS``).

Numba's OpenMP threading layer (libgomp, the layer Numba picks here) lets its idle workers spin
after every parallel region (``GOMP_SPINCOUNT`` 300000 by default, milliseconds here) and then sleep
on a futex. Spinning that long shares the cores with a GEMM started right after an im2col kernel:
measured on 2 cores, an sgemm of 12 ms took 19 ms after a Numba kernel. Not spinning at all
(``OMP_WAIT_POLICY=PASSIVE``, nbconv's setting until this was measured) makes every launch a
wake-up of sleeping workers instead, which on this virtual machine costs ~45 us, not microseconds:
an empty ``prange`` kernel took 49 us with PASSIVE and 1.6 us spinning, a 100 us kernel 145 us
against 103. Algorithms launching a kernel per chunk paid it many times per call. So nbconv sets
``GOMP_SPINCOUNT=10000``: measured in one process per setting (medians), an empty kernel after a
50 us gap (Python between two kernels) 1.6 us (60 with PASSIVE, 25 with a spin count of 1000), after
a 300 us gap 24-34 us (it has fallen asleep), and a 1024^3 sgemm right after a Numba kernel 11.0-11.3
ms against 10.6-10.9 alone (13.2 with 100000, 23.7 with 1000000, 11.1 with PASSIVE). libgomp reads
the variable once, when it is loaded, which Numba does when its threads are first launched
(``numba.set_num_threads`` below), so it is set here, before that, unless the user chose a policy
or spin count.

OpenBLAS's idle threads do the same for 2^28 cycles (~0.1 s here) after every multi-threaded call,
calling sched_yield in a loop, which still takes a share of the cores: measured side by side, a
Numba-heavy winograd call on ResNet's 7x7 3x3 layer took 11.4 ms in the 0.1 s after an sgemm and 9.0
ms otherwise, and im2col on the strided 3x3 layer (whose own kernels follow its GEMMs) 15.3 ms
against 12.8. ``OPENBLAS_THREAD_TIMEOUT=14`` (2^14 cycles, microseconds) removes both; the price is a
wake-up per GEMM. OpenBLAS reads it when its thread server starts, usually at ``import numpy``,
before nbconv could set it, so :func:`_openblas_timeout` also restarts the server of every OpenBLAS
already loaded (the path OpenBLAS itself takes after a fork) unless the user chose a timeout.

Numba's count is per calling thread (``numba.set_num_threads`` is thread-local); the BLAS limit is
process-wide. Call :func:`set_num_threads` from the thread that runs the convolutions.
"""
from __future__ import annotations

import numbers
import os
import threading
from contextlib import contextmanager

import numba
from threadpoolctl import ThreadpoolController

ENV_VAR = "NBCONV_NUM_THREADS"

#: True when the policy below was set here (not by the user): the benchmark's worker processes
#: then start without it, so that a peer library (PyTorch) keeps its own default.
WAIT_POLICY_SET = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
SPIN_COUNT = "10000"
if WAIT_POLICY_SET:
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
#: the same for OpenBLAS's spin (see the module doc)
BLAS_TIMEOUT = "14"
BLAS_TIMEOUT_SET = "OPENBLAS_THREAD_TIMEOUT" not in os.environ
if BLAS_TIMEOUT_SET:
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = BLAS_TIMEOUT


def _openblas_timeout(controller):
    """Make every loaded OpenBLAS re-read its environment and restart its thread server at its
    next call, so that the timeout set above applies. Returns how many were restarted."""
    n = 0
    for lib in controller.lib_controllers:
        if lib.internal_api != "openblas":
            continue
        dll = lib.dynlib
        read_env = getattr(dll, "openblas_read_env", None)
        shutdown = getattr(dll, "blas_thread_shutdown_", None)
        timeout = getattr(dll, "openblas_thread_timeout", None)
        if read_env is None or shutdown is None or timeout is None:
            continue
        read_env()
        if timeout() != int(os.environ["OPENBLAS_THREAD_TIMEOUT"]):
            continue  # not the variable this build reads: leave it alone
        shutdown()  # no BLAS call runs now: this is an import
        n += 1
    return n

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


def _blas_counters():
    """(get, set) of every loaded BLAS library's thread count, process-wide. For OpenBLAS its own C
    functions: threadpoolctl lets only the first thread that set a limit set one on a pthreads
    OpenBLAS (others silently do nothing), and kernels run from any Python thread."""
    out = []
    for lib in ThreadpoolController().lib_controllers:
        if lib.user_api != "blas":
            continue
        get = put = None
        if lib.internal_api == "openblas":
            for pre in ("", "scipy_"):
                for suf in ("", "64_", "_64"):
                    g = getattr(lib.dynlib, f"{pre}openblas_get_num_threads{suf}", None)
                    p = getattr(lib.dynlib, f"{pre}openblas_set_num_threads{suf}", None)
                    if g is not None and p is not None and get is None:
                        get, put = g, p
        if get is None:
            get, put = (lambda lib=lib: lib.num_threads), lib.set_num_threads
        out.append((get, put))
    return out


_one_lock = threading.Lock()
_one_users = 0  # blocks inside blas_one_thread now, from any thread
_one_saved = []
_one_counters = None


@contextmanager
def blas_one_thread():
    """Every BLAS library single-threaded for the block, process-wide: for GEMMs that run one per
    Numba thread inside a prange region (see nbconv.cpu.winograd._gemm_rows). Blocks may overlap
    (convolutions run from several Python threads): the first saves the counts, the last restores
    them."""
    global _one_users, _one_saved, _one_counters
    with _one_lock:
        if _one_counters is None:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS of Numba's np.dot, loaded now)

            _one_counters = _blas_counters()
        if _one_users == 0:
            _one_saved = [get() for get, _ in _one_counters]
            for _, put in _one_counters:
                put(1)
        _one_users += 1
    try:
        yield
    finally:
        with _one_lock:
            _one_users -= 1
            if _one_users == 0:
                for (_, put), n in zip(_one_counters, _one_saved):
                    put(n)


if BLAS_TIMEOUT_SET:
    _openblas_timeout(ThreadpoolController())
set_num_threads(_initial())
