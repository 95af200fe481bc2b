"""Compile every CUDA kernel for a real GPU target, without a GPU (and without the simulator).

``python tests/cuda/check_compile.py`` runs each registered CUDA algorithm's wrappers on NumPy
stand-ins for device arrays, over problems chosen to take every branch of the wrappers (shared,
unshared, depthwise with and without its shared-memory tile, split-K and chunked GEMMs, float32 and
float64). Launches are intercepted: instead of running, each kernel is compiled by Numba's real
CUDA pipeline (type inference and lowering to NVVM IR: ``numba.cuda.compiler.compile_cuda``; only
the IR -> PTX step needs NVVM, which is not installed here) for the argument types of the launch.
That catches what the simulator cannot: unsupported Python features, untyped constants, shared
arrays without compile-time shapes. On the IR of every float32 kernel it then checks that no
arithmetic is done in float64 (no ``fpext``, no double-precision ``fadd``/``fmul``/...).

Exit status 0 when everything compiled and no float32 kernel promotes; prints a summary.
"""
from __future__ import annotations

import os
import re
import sys
import time

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    sys.exit("check_compile.py needs the real numba.cuda: unset NUMBA_ENABLE_CUDASIM")

import numba.cuda
import numba.cuda.dispatcher as _dispatcher
import numpy as np
from numba import types
from numba.cuda.compiler import compile_cuda

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import nbconv
import nbconv.cuda  # noqa: F401  (registers the CUDA algorithms)
from nbconv import registry
from nbconv.cuda import arrays, launch
from nbconv.spec import DIRECTIONS, build

CC = (8, 0)


class _Device:
    compute_capability = CC


# device functions are compiled for the current device's compute capability
_dispatcher.get_current_device = lambda: _Device()
# "device" arrays are NumPy arrays: Numba types them exactly like device arrays
numba.cuda.device_array = lambda shape, dtype=np.float64, **kw: np.empty(shape, dtype=dtype)

compiled = {}
DOUBLE_MATH = re.compile(r"\bfpext\b|= (fadd|fsub|fmul|fdiv|frem|fneg)\b[^=]*\bdouble\b|fcmp \w+ double|"
                         r"call[^(]*double @")


def _fake_launch(self, *args):
    disp = self.dispatcher
    argtypes = tuple(disp.typeof_pyval(a) for a in args)
    key = (disp.py_func, argtypes)
    if key in compiled:
        return
    t0 = time.perf_counter()
    cres = compile_cuda(disp.py_func, types.void, argtypes, debug=False, lineinfo=False, cc=CC)
    ir = cres.library.get_llvm_str()
    arrays_ = [t for t in argtypes if isinstance(t, types.Array)]
    f32 = arrays_ and all(t.dtype == types.float32 for t in arrays_)
    bad = [line.strip() for line in ir.splitlines() if DOUBLE_MATH.search(line)] if f32 else []
    compiled[key] = (disp.py_func.__qualname__, argtypes, time.perf_counter() - t0, bad)


_dispatcher._LaunchConfiguration.__call__ = _fake_launch


def _spec(direction, nd, x_shape, w_shape, dtype, **kw):
    opts = {"border_mode": 1, "subsample": 1, "filter_dilation": 1, "num_groups": 1,
            "unshared": False, "filter_flip": True}
    opts.update(kw)
    return build(direction, nd, x_shape, w_shape, dtype=dtype, names={"x": "x", "w": "w"}, **opts)


PROBLEMS = [
    # (nd, x, w, options)
    (2, (2, 4, 7, 6), (6, 2, 3, 3), {"num_groups": 2, "subsample": 2, "filter_dilation": (1, 2)}),
    (3, (2, 3, 4, 5, 6), (4, 3, 2, 3, 1), {"border_mode": ((1, 0), 0, (0, 2))}),
    (2, (2, 4, 6, 6), (8, 1, 3, 3), {"num_groups": 4}),  # depthwise, shared-memory tile
    (2, (1, 2, 9, 9), (2, 1, 3, 3), {"num_groups": 2, "subsample": 9, "border_mode": 0}),  # no tile
    (2, (2, 2, 5, 5), (3, 3, 3, 2, 3, 3), {"unshared": True, "border_mode": 0}),
    (1, (2, 4, 9), (4, 4, 3), {"filter_dilation": 2}),
]


def run_algorithms():
    rng = np.random.default_rng(0)
    for dtype in ("float32", "float64"):
        for nd, xs, ws, kw in PROBLEMS:
            for direction in DIRECTIONS:
                spec = _spec(direction, nd, xs, ws, dtype, **kw)
                x = rng.standard_normal(spec.x_shape).astype(dtype)
                w = rng.standard_normal(spec.w_shape).astype(dtype)
                dy = rng.standard_normal(spec.y_shape).astype(dtype)
                a, b = {"forward": (x, w), "grad_input": (dy, w), "grad_weights": (x, dy)}[direction]
                for alg in registry.algorithms(device="cuda", direction=direction):
                    if alg.applicable(spec):
                        alg.run[direction](spec, a, b)


def run_helpers():
    for src_t, dst_t in (("float32", "float32"), ("float32", "float64"), ("float64", "float32"),
                         ("float64", "float64")):
        src = np.zeros((1, 1, 1, 3, 4, 2, 5, 6), dtype=src_t)[..., ::-1]  # a non-contiguous view
        arrays._copy_kernel[1, 32](src, np.empty(src.size, dst_t), 3)
    for dt in ("float32", "float64"):
        launch.fill(np.empty((3, 4), dt), 0)
        launch.sum_splits(np.ones((3, 4), dt), np.empty(4, dt), accumulate=True)


def main():
    t0 = time.perf_counter()
    # small workspace and target so the chunked and split-K paths are taken too
    with launch.override(workspace_limit=600, target_blocks=64, min_split_work=1):
        run_algorithms()
    run_algorithms()
    run_helpers()
    failures = 0
    for name, argtypes, secs, bad in sorted(compiled.values(), key=lambda v: v[0]):
        dt = "f32" if any(getattr(t, "dtype", None) == types.float32 for t in argtypes) else "f64"
        status = "ok" if not bad else "FLOAT64 MATH: " + "; ".join(bad[:3])
        failures += bool(bad)
        print(f"{name:40s} {dt} {secs:5.2f}s {status}")
    names = {v[0] for v in compiled.values()}
    print(f"{len(compiled)} kernel specialisations ({len(names)} kernels) compiled in "
          f"{time.perf_counter() - t0:.1f}s; {failures} promote float32 to float64")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
