"""What the CUDA algorithms declare, and the default choice among them (no kernel runs here)."""
import dataclasses

import numpy as np
import pytest
from helpers import random_case

import nbconv.cuda  # noqa: F401  (registers the CUDA algorithms)
from nbconv import registry
from nbconv.cuda import front, launch
from nbconv.spec import DIRECTIONS, build

CUDA = registry.algorithms(device="cuda")
EXPECTED = {"direct", "im2col", "depthwise", "unshared_gemm", "implicit_gemm"}


def _spec(direction, nd, x, w, **kw):
    opts = {"border_mode": 1, "subsample": 1, "filter_dilation": 1, "num_groups": 1,
            "unshared": False, "filter_flip": True, "dtype": "float32"}
    opts.update(kw)
    return build(direction, nd, x, w, names={"x": "input", "w": "filters"}, **opts)


def test_the_cuda_algorithms_are_registered():
    assert {a.name for a in CUDA} == EXPECTED
    cpu = set(registry.names(device="cpu"))
    # the twins carry the CPU names
    assert {"direct", "im2col", "depthwise", "unshared_gemm"} <= cpu


@pytest.mark.parametrize("alg", CUDA, ids=lambda a: a.name)
def test_declarations(alg):
    assert alg.device == "cuda" and alg.deterministic
    assert set(alg.directions) == set(DIRECTIONS)
    rng = np.random.default_rng(1)
    applicable = 0
    for idx in range(30):
        case = random_case(rng, int(rng.integers(1, 4)), idx, batch=2)
        for d in DIRECTIONS:
            spec = _spec(d, case.nd, case.x_shape, case.w_shape, border_mode=case.border_mode,
                         subsample=case.subsample, filter_dilation=case.dilation,
                         num_groups=case.groups, unshared=case.unshared, filter_flip=case.flip,
                         dtype=case.dtype)
            if alg.applicable(spec):
                applicable += 1
                assert alg.workspace(spec) >= 0
                assert alg.estimate(spec) > 0
    assert applicable


def test_direct_applies_to_everything():
    direct = registry.get("direct", "cuda")
    rng = np.random.default_rng(2)
    for idx in range(50):
        case = random_case(rng, int(rng.integers(1, 4)), idx)
        spec = _spec("forward", case.nd, case.x_shape, case.w_shape, border_mode=case.border_mode,
                     subsample=case.subsample, num_groups=case.groups, unshared=case.unshared,
                     filter_dilation=case.dilation)
        assert direct.applicable(spec)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_default_choice(direction):
    with launch.override(**dataclasses.asdict(launch.LaunchConfig())):  # the real tiles
        _check_default_choice(direction)


def _check_default_choice(direction):
    dense = _spec(direction, 2, (8, 64, 56, 56), (64, 64, 3, 3))
    assert front.choose(dense).name in ("implicit_gemm", "im2col")
    dw = _spec(direction, 2, (8, 144, 56, 56), (144, 1, 3, 3), num_groups=144)
    assert front.choose(dw).name == "depthwise"
    local = _spec(direction, 2, (8, 16, 32, 32), (16, 30, 30, 16, 3, 3), unshared=True, border_mode=0)
    assert front.choose(local).name in ("unshared_gemm", "direct")  # the two that apply
