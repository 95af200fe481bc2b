"""pytest-benchmark timings of the benchmark suite: case x direction x every applicable algorithm.

Grouped ``op|case|dtype`` so each group compares the algorithms on one problem. By default each
case runs once, scaled down (batch 1, spatial sizes / 4), as a smoke test of the benchmark
machinery and of every algorithm on the suite's shapes; ``pytest tests/benchmarks -m large`` runs
the full-size cases with pytest-benchmark's calibrated rounds. A warm-up call before timing keeps
Numba's compilation out of the figures (compile time is a separate matter).
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


def _params():
    out = []
    for full in SUITE:
        for p, large in ((scaled(full), False), (full, True)):
            marks = (pytest.mark.large,) if large else ()
            size = "full" if large else "small"
            for d in DIRECTIONS:
                spec = p.spec(d)
                for alg in registry.algorithms(device="cpu"):
                    if alg.applicable(spec):
                        out.append(pytest.param(p, d, alg.name, large, marks=marks,
                                                id=f"{p.name}-{size}-{d}-{alg.name}"))
    return out


@pytest.mark.parametrize("problem, direction, algo, large", _params())
def test_bench(benchmark, problem, direction, algo, large):
    spec, a, b = problem.operands(direction)
    benchmark.group = f"{problem.op}|{problem.name}|{problem.dtype}"
    benchmark.extra_info.update(direction=direction, algorithm=algo, gflop=spec.flops() / 1e9,
                                shapes=spec.describe())
    out = problem.run(spec, a, b, algo)  # warm-up (and compilation) outside the timing
    assert out.shape == spec.user_result_shape and np.isfinite(out).all()
    if large:
        benchmark(problem.run, spec, a, b, algo)
    else:
        benchmark.pedantic(problem.run, args=(spec, a, b, algo), rounds=1, iterations=1)
