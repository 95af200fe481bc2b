"""What a tuning result depends on besides the problem: machine, libraries, kernel sources.

A database section is trusted only by a process whose fingerprint is identical: another CPU, another
BLAS, another Numba or an edited kernel can change which algorithm wins, so results measured under
any other fingerprint are ignored (kept in the file, never used).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform

_PACKAGE = pathlib.Path(__file__).resolve().parent.parent
_cache: dict = {}


def source_hash():
    """sha256 of the kernel sources (nbconv/cpu/*.py, nbconv/cuda/*.py), names included."""
    h = hashlib.sha256()
    for sub in ("cpu", "cuda"):
        for path in sorted((_PACKAGE / sub).glob("*.py")):
            h.update(f"{sub}/{path.name}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()[:16]


def _cpuinfo():
    """Model name, cache size and a hash of the feature flags of the first processor."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break  # the first processor block is enough
                    continue
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "cache size", "vendor_id", "cpu family", "model"):
                    info[key] = value
                elif key in ("flags", "Features"):  # x86, ARM
                    flags = " ".join(sorted(value.split()))
                    info["flags_sha256"] = hashlib.sha256(flags.encode()).hexdigest()[:16]
    except OSError:
        pass
    if not info:
        info["processor"] = platform.processor() or platform.machine()
    return info


def _blas():
    """NumPy's BLAS (nbconv's GEMMs are NumPy matmuls), from NumPy's build configuration: unlike
    the libraries loaded in the process (threadpoolctl), it does not depend on what else the
    program imported first (SciPy, PyTorch bring their own)."""
    try:
        import numpy

        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # noqa: BLE001  (older NumPy: no dict mode; the NumPy version still counts)
        return "unknown"


def _cuda_runtime(cuda):
    """The CUDA runtime (libcudart) version, as "major.minor".
    Guarded on its own: a GPU whose libcudart cannot be found is still fingerprinted."""
    try:
        return ".".join(map(str, cuda.runtime.get_version()))
    except Exception as exc:  # noqa: BLE001
        return f"unavailable ({type(exc).__name__})"


def _cuda():
    try:
        import numba
        from numba import cuda

        if numba.config.ENABLE_CUDASIM:  # no device or driver to ask; its own section
            return {"gpu": "CUDA simulator", "compute_capability": list(cuda.current_context().compute_capability),
                    "driver": "simulator", "runtime": _cuda_runtime(cuda)}
        dev = cuda.get_current_device()
        return {
            "gpu": dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name),
            "compute_capability": list(dev.compute_capability),
            "driver": str(cuda.cudadrv.driver.driver.get_version()),
            "runtime": _cuda_runtime(cuda),
        }
    except Exception as exc:  # noqa: BLE001  (no GPU, no driver: still a fingerprint)
        return {"gpu": f"unavailable ({type(exc).__name__})"}


def fingerprint(device="cpu"):
    """The fingerprint of this process for ``device`` (a JSON-able dict; cached per process)."""
    fp = _cache.get(device)
    if fp is not None:
        return fp
    import llvmlite
    import numba
    import numpy

    from .. import __version__

    fp = {
        "device": device,
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu": _cpuinfo(),
        "cpu_count": os.cpu_count(),
        "threads": {
            "numba_pool": numba.config.NUMBA_NUM_THREADS,
            "threading_layer": str(numba.config.THREADING_LAYER),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", ""),
            "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT", ""),
            "blas": _blas(),
        },
        "versions": {
            "nbconv": __version__, "numba": numba.__version__, "llvmlite": llvmlite.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
        },
        "kernel_sources": source_hash(),
    }
    if device == "cuda":
        fp["cuda"] = _cuda()
    _cache[device] = fp
    return fp


def fingerprint_id(fp):
    """A short stable id of a fingerprint (the section name in the database file)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


_ids: dict = {}


def current_id(device="cpu"):
    fid = _ids.get(device)
    if fid is None:
        fid = _ids[device] = fingerprint_id(fingerprint(device))
    return fid
