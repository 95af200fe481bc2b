"""Compile every CUDA kernel for a real GPU target, without a GPU (and without the simulator).

``python tests/cuda/check_compile.py`` runs each registered CUDA algorithm's wrappers on NumPy
stand-ins for device arrays, over problems chosen to take every branch of the wrappers (shared,
unshared, depthwise with and without its shared-memory tile, split-K and chunked GEMMs, float32 and
float64). Launches are intercepted: instead of running, each kernel is compiled by Numba's real
CUDA pipeline (type inference and lowering to NVVM IR: ``numba.cuda.compiler.compile_cuda``) for
the argument types of the launch. That catches what the simulator cannot: unsupported Python
features, untyped constants, shared arrays without compile-time shapes. On the IR of every float32
kernel it then checks that no arithmetic is done in float64 (no ``fpext``, no double-precision
``fadd``/``fmul``/...).

When libNVVM is there (the ``nvidia-nvvm`` wheel of the ``test`` extra, or a CUDA toolkit) every
specialisation also goes through ``numba.cuda.compile_ptx`` for sm_80, as on a GPU: NVVM rejects
IR that Numba's lowering accepts; the PTX of float32 kernels must hold no ``.f64`` instruction and
each kernel's static shared memory must fit the 48 KiB a block gets without opting in. Without
libNVVM that step is skipped (one ``ptx: skipped (...)`` line); ``--no-ptx`` skips it too.

Every module-level kernel of ``nbconv/cuda/`` must have been compiled for float32 and for float64
operands (kernels built by factories are compiled through the launches).

Exit status 0 when everything compiled (to PTX too, where it ran), no float32 kernel promotes
and every kernel was covered; prints a summary.
"""
from __future__ import annotations

import atexit
import glob
import importlib
import importlib.util
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import time

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
    sys.exit("check_compile.py needs the real numba.cuda: unset NUMBA_ENABLE_CUDASIM")

PTX = "--no-ptx" not in sys.argv[1:]


def _nvvm_from_wheels():
    """Point Numba at the NVIDIA pip wheels' libNVVM and libdevice (numba 0.68 looks only in
    conda, CUDA_HOME and /usr/local/cuda): a throw-away CUDA_HOME of symlinks. Returns a reason
    string when there is no libNVVM at all."""
    from numba.cuda import cuda_paths

    if cuda_paths._get_nvvm_path().info is not None:
        return None  # a toolkit Numba finds by itself
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec else []
    libs = [p for r in roots for p in glob.glob(os.path.join(r, "**", "libnvvm.so*"), recursive=True)]
    bcs = [p for r in roots for p in glob.glob(os.path.join(r, "**", "libdevice.*.bc"), recursive=True)]
    if not libs or not bcs:
        return "no libNVVM: pip install nvidia-nvvm (the test extra), or a CUDA toolkit"
    lib = max(libs)
    bc = max(bcs, key=lambda b: len(os.path.commonpath([b, lib])))  # from the same wheel
    home = tempfile.mkdtemp(prefix="nbconv-nvvm-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.makedirs(os.path.join(home, "nvvm", "lib64"))
    os.symlink(lib, os.path.join(home, "nvvm", "lib64", os.path.basename(lib)))
    os.symlink(os.path.dirname(bc), os.path.join(home, "nvvm", "libdevice"))
    os.environ["CUDA_HOME"] = home
    return None


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
#: static shared memory a block may declare without opting in to more (every architecture)
SHARED_LIMIT = 48 * 1024
# ".visible .shared .align 8 .b8 _cudapy_smem_1[65536];" (element bits, count)
SHARED_DECL = re.compile(r"^\s*(?:\.\w+\s+)*?\.shared\s+(?:\.align\s+\d+\s+)?\.[bfsu](8|16|32|64)\s+[^\s\[]+\[(\d+)\]",
                         re.MULTILINE)
PTX_F64 = re.compile(r"\.f64\b")

ptx_skip = _nvvm_from_wheels() if PTX else "--no-ptx"
if ptx_skip is None:
    from numba.cuda.cudadrv import libs, nvvm

    try:  # found but unusable is an error, not a skip
        NVVM_VERSION = nvvm.NVVM().get_version()
        libs.get_libdevice()
    except Exception as exc:  # noqa: BLE001
        sys.exit(f"ptx: libNVVM found but unusable: {type(exc).__name__}: {exc}")


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
    ptx_error = None
    if ptx_skip is None:
        opts = disp.targetoptions
        try:
            ptx, _ = numba.cuda.compile_ptx(disp.py_func, argtypes, cc=CC, fastmath=opts.get("fastmath", False),
                                            opt=opts.get("opt", True))
        except Exception as exc:  # noqa: BLE001  (report every kernel, not the first)
            ptx_error = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
        else:
            shared = sum(int(bits) // 8 * int(n) for bits, n in SHARED_DECL.findall(ptx))
            f64 = [line.strip() for line in ptx.splitlines() if PTX_F64.search(line)] if f32 else []
            if shared > SHARED_LIMIT:
                ptx_error = f"{shared} bytes of static shared memory > {SHARED_LIMIT}"
            elif f64:
                ptx_error = "float64 in the PTX of a float32 kernel: " + "; ".join(f64[:3])
    compiled[key] = (disp.py_func.__qualname__, argtypes, time.perf_counter() - t0, bad, ptx_error)


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


def uncovered():
    """Module-level kernels of nbconv/cuda/ not compiled for both float32 and float64 operands."""
    import nbconv.cuda as pkg

    kernels = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for v in vars(mod).values():
            if isinstance(v, _dispatcher.CUDADispatcher) and not v.targetoptions.get("device"):
                kernels[v.py_func] = f"{mod.__name__}.{v.py_func.__name__}"
    dtypes = {f: set() for f in kernels}
    for f, argtypes in compiled:
        if f in dtypes:
            dtypes[f].update(t.dtype for t in argtypes if isinstance(t, types.Array))
    return sorted(name for f, name in kernels.items() if not {types.float32, types.float64} <= dtypes[f])


def main():
    t0 = time.perf_counter()
    # small workspace and target so the chunked and split-K paths are taken too
    with launch.override(workspace_limit=600, target_blocks=64, min_split_work=1):
        run_algorithms()
    run_algorithms()
    run_helpers()
    failures = ptx_failures = 0
    for name, argtypes, secs, bad, ptx_error in sorted(compiled.values(), key=lambda v: v[0]):
        dt = "f32" if any(getattr(t, "dtype", None) == types.float32 for t in argtypes) else "f64"
        status = "ok" if not bad else "FLOAT64 MATH: " + "; ".join(bad[:3])
        if ptx_error:
            status += f"; PTX FAILED: {ptx_error}"
        failures += bool(bad)
        ptx_failures += bool(ptx_error)
        print(f"{name:40s} {dt} {secs:5.2f}s {status}")
    names = {v[0] for v in compiled.values()}
    missing = uncovered()
    for name in missing:
        print(f"NOT COMPILED for float32 and float64: {name}")
    print(f"{len(compiled)} kernel specialisations ({len(names)} kernels) compiled in "
          f"{time.perf_counter() - t0:.1f}s; {failures} promote float32 to float64; "
          f"{len(missing)} kernels not covered")
    if ptx_skip is None:
        print(f"ptx: sm_{CC[0]}{CC[1]}, NVVM {'.'.join(map(str, NVVM_VERSION))}: {len(compiled)} "
              f"specialisations, {ptx_failures} failed")
    else:
        print(f"ptx: skipped ({ptx_skip})")
    return 1 if failures or ptx_failures or missing else 0


if __name__ == "__main__":
    sys.exit(main())
