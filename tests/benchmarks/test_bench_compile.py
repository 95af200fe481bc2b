"""pytest-benchmark timings of Numba's JIT compilation, per algorithm x direction (CPU).

The runtime benchmarks warm up first, so compilation never shows in them; this measures it on its
own: the Numba kernels that an algorithm's direction launches (found by running it once on a small
suite case with the module's dispatchers wrapped) are compiled again from their Python source by a
fresh, uncached dispatcher with the same options and the argument types recorded. That is the
first-call cost a user pays when the on-disk cache is cold (a new install, a changed kernel);
``test_cold_start`` measures the whole of it in a subprocess with an empty ``NUMBA_CACHE_DIR``.

Grouped ``compile|direction|dtype``. The normal test run compiles one kernel set as a smoke test;
the others are marked ``large`` (``pytest tests/benchmarks -m large``).
"""
import json
import os
import subprocess
import sys
import time

import numba
import pytest
from numba.core.registry import CPUDispatcher

from nbconv import registry
from nbconv.spec import DIRECTIONS

from test_bench_suite import SUITE, scaled

SMALL = [scaled(p) for p in SUITE]


def _smallest(alg, direction):
    """The scaled suite case with the least work that ``alg`` computes for ``direction``."""
    fits = [p for p in SMALL if alg.applicable(p.spec(direction))]
    return min(fits, key=lambda p: p.spec(direction).flops(), default=None)


def kernels_used(alg, spec, a, b):
    """{dispatcher: argument types} of the Numba kernels that ``alg`` launches from Python for
    ``spec.direction`` on these operands (kernels called from kernels are compiled into them).
    Found by routing every CPU dispatcher call through a recorder for one run: the kernels may
    sit in tables or other modules, where wrapping module globals would miss them."""
    used = {}
    had_own = "__call__" in CPUDispatcher.__dict__
    previous = CPUDispatcher.__call__

    def call(self, *args, **kwargs):
        used.setdefault(self, tuple(numba.typeof(v) for v in args))
        return previous(self, *args, **kwargs)

    CPUDispatcher.__call__ = call
    try:
        alg.run[spec.direction](spec, a, b)
    finally:
        if had_own:
            CPUDispatcher.__call__ = previous
        else:
            del CPUDispatcher.__call__
    return used


def compile_fresh(used):
    """Compile every recorded kernel again, uncached; returns the seconds per kernel."""
    times = {}
    for disp, sig in used.items():
        # njit's own option, warned about when passed back to it
        options = {k: v for k, v in disp.targetoptions.items() if k != "nopython"}
        fresh = numba.njit(**options)(disp.py_func)
        t0 = time.perf_counter()
        fresh.compile(sig)
        times[disp.py_func.__qualname__] = time.perf_counter() - t0
    return times


def _params():
    out, smoke = [], True
    for alg in registry.algorithms(device="cpu"):
        for d in DIRECTIONS:
            if d not in alg.directions:
                continue
            p = _smallest(alg, d)
            if p is None:
                continue
            marks = () if smoke else (pytest.mark.large,)
            smoke = False
            out.append(pytest.param(alg.name, d, p, marks=marks, id=f"{alg.name}-{d}"))
    return out


@pytest.mark.parametrize("algo, direction, problem", _params())
def test_compile(benchmark, algo, direction, problem):
    alg = registry.get(algo)
    spec, a, b = problem.operands(direction)
    used = kernels_used(alg, spec, a, b)
    if not used:
        pytest.skip(f"{algo} launches no Numba kernel of its own for {direction}")
    benchmark.group = f"compile|{direction}|{problem.dtype}"
    benchmark.extra_info.update(algorithm=algo, case=problem.name,
                                kernels=sorted(d.py_func.__qualname__ for d in used))
    times = benchmark.pedantic(compile_fresh, args=(used,), rounds=1, iterations=1)
    benchmark.extra_info["per_kernel_s"] = times
    assert all(t > 0 for t in times.values())


_COLD = """
import json, time, sys
t0 = time.perf_counter()
import numpy as np, nbconv
t1 = time.perf_counter()
x = np.ones((1, 3, 16, 16), np.float32); w = np.ones((4, 3, 3, 3), np.float32)
nbconv.conv2d(x, w, border_mode=1, algo=sys.argv[1])
t2 = time.perf_counter()
nbconv.conv2d(x, w, border_mode=1, algo=sys.argv[1])
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_call_s": t2 - t1, "second_call_s": t3 - t2}))
"""


@pytest.mark.large
@pytest.mark.parametrize("algo", ["direct", "im2col"])
def test_cold_start(benchmark, algo, tmp_path):
    """Import and first forward call in a fresh interpreter with an empty Numba cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))

    def cold():
        out = subprocess.run([sys.executable, "-c", _COLD, algo], env=env, check=True,
                             capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    benchmark.group = "compile|cold-start|float32"
    info = benchmark.pedantic(cold, rounds=1, iterations=1)
    benchmark.extra_info.update(algorithm=algo, **info)
    assert info["first_call_s"] > info["second_call_s"]
