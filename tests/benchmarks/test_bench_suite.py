"""pytest-benchmark timings of the benchmark suite: case x direction x algorithm x device.

Grouped ``op|case|dtype`` so each group compares the algorithms (and devices) on one problem. The
algorithm axis is read from the registry at collection time, so a newly registered algorithm is
benchmarked wherever it applies without touching this file; CUDA algorithms are collected when a
GPU is present (``nbconv.cuda`` registers them) and show up as one skipped item otherwise. By
default each case runs once, scaled down (batch 1, spatial sizes / 4), as a smoke test of the
benchmark machinery and of every algorithm on the suite's shapes; ``pytest tests/benchmarks -m
large`` runs the full-size cases with pytest-benchmark's calibrated rounds. A warm-up call before
timing keeps Numba's compilation out of the figures (compile time: ``test_bench_compile.py``).
"""
from dataclasses import replace

import numpy as np
import pytest

from nbconv import registry
from nbconv.problems import load_workload
from nbconv.spec import DIRECTIONS, out_size_1axis

_, SUITE = load_workload("suite")


def scaled(p):
    """The same layer at batch 1 with spatial sizes divided by 4 (never below what the kernel
    needs for a non-empty output); unshared filters follow the smaller output grid."""
    spec = p.spec()
    ex = 3 - p.nd
    sizes = []
    for a in range(ex, 3):
        need = spec.dilated_kernel[a] - spec.pad_lo[a] - spec.pad_hi[a]
        sizes.append(max(spec.in_size[a] // 4, need, 1))
    x = (1, p.input[1]) + tuple(sizes)
    w = p.filters
    if p.unshared:
        grid = tuple(
            out_size_1axis(i, spec.kernel[a + ex], spec.pad_lo[a + ex], spec.pad_hi[a + ex],
                           spec.stride[a + ex], spec.dilation[a + ex])
            for a, i in enumerate(sizes)
        )
        w = (w[0],) + grid + tuple(w[1 + p.nd:])
    return replace(p, input=x, filters=w)


def cuda_available():
    try:
        from numba import cuda

        return cuda.is_available()
    except Exception:  # no CUDA toolkit / driver at all
        return False


def devices():
    """The devices to benchmark: CPU always, CUDA when a GPU is there (importing nbconv.cuda
    registers its algorithms)."""
    if cuda_available():
        import nbconv.cuda  # noqa: F401

        return ("cpu", "cuda")
    return ("cpu",)


DEVICES = devices()


def _params():
    out = []
    for full in SUITE:
        for p, large in ((scaled(full), False), (full, True)):
            marks = (pytest.mark.large,) if large else ()
            size = "full" if large else "small"
            for d in DIRECTIONS:
                spec = p.spec(d)
                for device in DEVICES:
                    for alg in registry.algorithms(device=device):
                        if alg.applicable(spec):
                            out.append(pytest.param(p, d, alg.name, device, large, marks=marks,
                                                    id=f"{p.name}-{size}-{d}-{device}-{alg.name}"))
    if "cuda" not in DEVICES:
        out.append(pytest.param(None, None, None, "cuda", False,
                                marks=pytest.mark.skip(reason="no CUDA GPU: CUDA algorithms not benchmarked"),
                                id="cuda-unavailable"))
    return out


def _cuda_runner(spec, a, b, algo):
    from numba import cuda

    alg = registry.get(algo, "cuda")
    da, db = cuda.to_device(a), cuda.to_device(b)

    def run():
        out = alg.run[spec.direction](spec, da, db)
        cuda.synchronize()  # a launch returns at once: time the work, not the queueing
        return out

    return run, lambda out: out.copy_to_host()


@pytest.mark.parametrize("problem, direction, algo, device, large", _params())
def test_bench(benchmark, problem, direction, algo, device, large):
    spec, a, b = problem.operands(direction)
    benchmark.group = f"{problem.op}|{problem.name}|{problem.dtype}"
    benchmark.extra_info.update(direction=direction, algorithm=algo, device=device,
                                gflop=spec.flops() / 1e9, shapes=spec.describe())
    if device == "cpu":
        run, host = (lambda: problem.run(spec, a, b, algo)), (lambda out: out)
    else:
        run, host = _cuda_runner(spec, a, b, algo)
    out = host(run())  # warm-up (and compilation) outside the timing
    assert out.size == np.prod(spec.result_shape) and np.isfinite(out).all()
    if large:
        benchmark(run)
    else:
        benchmark.pedantic(run, rounds=1, iterations=1)
