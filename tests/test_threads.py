"""Thread pools: the OpenBLAS spin timeout and the libgomp spin count nbconv's import sets, and the
blocks that hold BLAS to one thread (see nbconv.threads)."""
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import nbconv
from nbconv import threads

_PROBE = """
import json, numpy  # OpenBLAS loads (and starts its thread server) before nbconv can set anything
numpy.ones((300, 300), numpy.float32) @ numpy.ones((300, 300), numpy.float32)
import nbconv
from threadpoolctl import ThreadpoolController
libs = [c for c in ThreadpoolController().lib_controllers if c.internal_api == "openblas"]
a = numpy.ones((300, 300), numpy.float32)
ok = bool(((a @ a) == 300).all())  # BLAS still works after its server restarted
print(json.dumps({"timeouts": [c.dynlib.openblas_thread_timeout() for c in libs], "ok": ok,
                  "threads": [c.num_threads for c in libs], "want": nbconv.threads.get_num_threads()}))
"""


def _probe(**env):
    e = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=e, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_openblas_loaded_before_nbconv_gets_the_short_spin():
    r = _probe()
    assert r["timeouts"] and all(t == 14 for t in r["timeouts"]), r
    assert r["ok"] and all(n == r["want"] for n in r["threads"]), r


def test_a_timeout_the_user_chose_is_kept():
    r = _probe(OPENBLAS_THREAD_TIMEOUT="20")
    assert r["timeouts"] and all(t == 20 for t in r["timeouts"]), r


_GOMP_PROBE = """
import json, os
import nbconv
from nbconv.bench import worker_env
w = worker_env()
print(json.dumps({k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
                 | {"worker_" + k: w.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}))
"""


def _gomp_probe(**env):
    e = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", _GOMP_PROBE], env=e, capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_libgomp_gets_a_short_spin_not_the_passive_policy():
    """Short spin: kernels launched within ~50 us of each other find the workers awake (PASSIVE
    cost ~45 us per launch here); the benchmark's workers start without it (torch keeps its own)."""
    r = _gomp_probe()
    assert r["GOMP_SPINCOUNT"] == "10000" and r["OMP_WAIT_POLICY"] is None, r
    assert r["worker_GOMP_SPINCOUNT"] is None, r


def test_a_wait_policy_the_user_chose_is_kept():
    for env in ({"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "500"}):
        r = _gomp_probe(**env)
        k = next(iter(env))
        assert r[k] == env[k] and r["worker_" + k] == env[k], r
        assert r["GOMP_SPINCOUNT" if k == "OMP_WAIT_POLICY" else "OMP_WAIT_POLICY"] is None, r


def test_per_thread_gemms_leave_the_blas_thread_counts_as_they_were():
    """The GEMMs that run one per Numba thread (winograd's) hold every BLAS to one thread
    meanwhile, and give the counts back afterwards (also when a block raises)."""
    before = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    x = np.random.default_rng(5).standard_normal((2, 4, 9, 9)).astype(np.float32)
    w = np.ones((4, 4, 3, 3), np.float32)
    nbconv.conv2d(x, w, border_mode=1, algo="winograd")
    nbconv.conv2d_grad_wrt_weights(x, x, w.shape, border_mode=1, algo="winograd")
    with threads.blas_one_thread():
        inside = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        with pytest.raises(ZeroDivisionError):
            with threads.blas_one_thread():
                1 / 0
    after = {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    assert inside and all(n == 1 for n in inside.values()), inside
    assert {k: after[k] for k in before} == before


def test_overlapping_per_thread_gemms_from_two_threads_restore_the_blas_counts():
    """Two Python threads whose one-thread-BLAS blocks overlap (the counts are process-wide): the
    counts come back to what they were, not to the 1 the second block saw on entry, and a block
    entered from a thread other than the first one to set a limit does hold BLAS to one thread
    (threadpoolctl alone ignores such a thread's limits on a pthreads OpenBLAS)."""
    def counts():
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threads.blas_one_thread():  # loads SciPy's BLAS, so that `before` lists it
        pass
    before = counts()
    entered, release = threading.Event(), threading.Event()
    inside = []

    def second():
        with threads.blas_one_thread():
            inside.append(counts())
            entered.set()
            release.wait(30)

    with threads.blas_one_thread():
        t = threading.Thread(target=second)
        t.start()
        assert entered.wait(30)
    # the first block has ended while the second still runs: still one thread
    assert all(n == 1 for n in counts().values())
    assert inside and all(n == 1 for n in inside[0].values()), inside
    release.set()
    t.join(30)
    assert counts() == before
