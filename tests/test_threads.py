"""Thread pools: the OpenBLAS spin timeout and the libgomp spin count nbconv's import sets (see nbconv.threads)."""
import json
import os
import subprocess
import sys

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
