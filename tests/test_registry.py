"""The algorithm registry: what every registered algorithm declares, and the 'direct' one."""
import numpy as np
import pytest

import nbconv
from helpers import SAME_EXTRA, form_at, random_case
from nbconv.spec import build

DIRECTIONS = {"forward", "grad_input", "grad_weights"}
CPU_ALGOS = nbconv.registry.algorithms(device="cpu")


def _spec(case, direction):
    return build(
        direction, case.nd, case.x_shape, case.w_shape, border_mode=case.border_mode,
        subsample=case.subsample, filter_dilation=case.dilation, num_groups=case.groups,
        unshared=case.unshared, filter_flip=case.flip, dtype=case.dtype,
        names={"x": "input", "w": "filters", "y": "output_grad"},
    )


def test_cpu_algorithms_registered():
    assert isinstance(CPU_ALGOS, list) and CPU_ALGOS
    names = [a.name for a in CPU_ALGOS]
    assert len(names) == len(set(names)), f"duplicate algorithm names: {names}"


@pytest.mark.parametrize("alg", CPU_ALGOS, ids=lambda a: a.name)
def test_algorithm_declares_its_interface(alg):
    assert isinstance(alg.name, str) and alg.name
    assert alg.device == "cpu"
    directions = set(alg.directions)
    assert directions and directions <= DIRECTIONS
    assert callable(alg.supports)
    rng = np.random.default_rng(1)
    for idx in range(20):
        case = random_case(rng, int(rng.integers(1, 4)), idx)
        for d in directions:
            assert isinstance(bool(alg.supports(_spec(case, d))), bool)


def test_every_device_listing_is_consistent():
    everything = nbconv.registry.algorithms()
    cpu = nbconv.registry.algorithms(device="cpu")
    assert all(a in everything for a in cpu)
    assert all(a.device == "cpu" for a in cpu)


def test_direct_is_registered_for_cpu_with_all_directions():
    direct = [a for a in CPU_ALGOS if a.name == "direct"]
    assert len(direct) == 1
    assert set(direct[0].directions) == DIRECTIONS


def test_direct_supports_random_specs():
    (direct,) = [a for a in CPU_ALGOS if a.name == "direct"]
    rng = np.random.default_rng(2)
    for idx in range(200):
        nd = int(rng.integers(1, 4))
        case = random_case(rng, nd, idx)
        for d in DIRECTIONS:
            assert direct.supports(_spec(case, d)), case


@pytest.mark.parametrize("alg", CPU_ALGOS, ids=lambda a: a.name)
def test_supported_specs_can_be_run_through_the_api(alg):
    """An algorithm that says it supports a (forward) problem must compute it when named."""
    rng = np.random.default_rng(3)
    ran = 0
    for idx in range(30):
        case = random_case(rng, 2, idx, batch=1)
        if "forward" not in alg.directions or not alg.supports(_spec(case, "forward")):
            continue
        x = rng.standard_normal(case.x_shape).astype(case.dtype)
        w = rng.standard_normal(case.w_shape).astype(case.dtype)
        y = nbconv.conv2d(x, w, subsample=case.subsample, algo=alg.name, **case.kwargs())
        assert y.shape == case.y_shape
        ran += 1
    if "forward" in alg.directions:
        assert ran > 0


def test_unknown_algorithm_name_raises_value_error():
    x = np.zeros((1, 1, 4, 4))
    w = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="no_such_algo"):
        nbconv.conv2d(x, w, algo="no_such_algo")
    with pytest.raises(ValueError, match="no_such_algo"):
        nbconv.conv2d_grad_wrt_inputs(np.zeros((1, 1, 3, 3)), w, x.shape, algo="no_such_algo")
    with pytest.raises(ValueError, match="no_such_algo"):
        nbconv.conv2d_grad_wrt_weights(x, np.zeros((1, 1, 3, 3)), w.shape, algo="no_such_algo")


def test_algorithm_not_applicable_is_a_value_error():
    assert issubclass(nbconv.AlgorithmNotApplicable, ValueError)


@pytest.mark.parametrize("alg", CPU_ALGOS, ids=lambda a: a.name)
def test_named_algorithm_matches_direct(alg):
    """Every algorithm, wherever applicable, agrees with 'direct' on a fixed small problem."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 8, 8))
    w = rng.standard_normal((6, 2, 3, 3))
    dy = rng.standard_normal((2, 6, 8, 8))
    kw = dict(border_mode="half", num_groups=2)
    calls = {
        "forward": lambda a: nbconv.conv2d(x, w, algo=a, **kw),
        "grad_input": lambda a: nbconv.conv2d_grad_wrt_inputs(dy, w, x.shape, algo=a, **kw),
        "grad_weights": lambda a: nbconv.conv2d_grad_wrt_weights(x, dy, w.shape, algo=a, **kw),
    }
    for d, call in calls.items():
        want = call("direct")
        try:
            got = call(alg.name)
        except nbconv.AlgorithmNotApplicable:
            assert d not in alg.directions or not alg.supports(
                build(d, 2, x.shape, w.shape, border_mode="half", subsample=(1, 1),
                      filter_dilation=(1, 1), num_groups=2, unshared=False, filter_flip=True,
                      dtype=np.float64, names={"x": "input", "w": "filters"}))
            continue
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@pytest.mark.parametrize("alg", CPU_ALGOS, ids=lambda a: a.name)
def test_compute_takes_flipped_weights_whether_or_not_the_algorithm_flips(alg):
    """``Algorithm.compute`` (what the tuner times and checks) gives every algorithm the same
    contract, weights already flipped; dispatch's unflipped path (the API's) agrees with it."""
    from nbconv import dispatch

    rng = np.random.default_rng(17)
    direct, ran = nbconv.registry.get("direct"), 0
    for i in range(40 + SAME_EXTRA):
        # every other problem unit-stride with small kernels: the algorithms limited to those
        case = random_case(rng, 2, 2 * i, unshared=None if alg.flips or alg.name == "direct" else False,
                           batch=2, max_stride=1 + 2 * (i % 2), kmax=4 - (i % 2 == 0),
                           form=form_at(i, 40))
        x = rng.standard_normal(case.x_shape)
        w = rng.standard_normal(case.w_shape)
        dy = rng.standard_normal(case.y_shape)
        for d, (a, b) in {"forward": (x, w), "grad_input": (dy, w), "grad_weights": (x, dy)}.items():
            spec = build(d, 2, case.x_shape, case.w_shape, border_mode=case.border_mode,
                         subsample=case.subsample, filter_dilation=case.dilation,
                         num_groups=case.groups, unshared=case.unshared, filter_flip=True,
                         dtype=np.float64, names={"x": "input", "w": "filters"})
            if not alg.applicable(spec):
                continue
            shapes = {"forward": (spec.x_shape, spec.w_shape), "grad_input": (spec.y_shape, spec.w_shape),
                      "grad_weights": (spec.x_shape, spec.y_shape)}[d]
            ca = a.reshape(shapes[0])
            cb = dispatch.canonical_weights(spec, b) if d != "grad_weights" else b.reshape(shapes[1])
            want = direct.compute(spec, ca, cb)
            np.testing.assert_allclose(alg.compute(spec, ca, cb), want, rtol=1e-9,
                                       atol=1e-9 * (np.abs(want).max() + 1), err_msg=f"{d} {case!r}")
            user = dispatch.execute(spec, ca, b, algo=alg.name, unflipped=True) if d != "grad_weights" \
                else dispatch.execute(spec, ca, cb, algo=alg.name)
            ref = dispatch.execute(spec, ca, cb, algo="direct")
            np.testing.assert_allclose(user, ref, rtol=1e-9, atol=1e-9 * (np.abs(ref).max() + 1),
                                       err_msg=f"{d} {case!r}")
            ran += 1
    assert ran >= 10, f"{alg.name} applied to only {ran} problem-directions"
