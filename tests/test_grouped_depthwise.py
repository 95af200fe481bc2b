"""grouped_direct and depthwise against the NumPy reference, on the problems they support.

The registry-wide sweeps (test_sweep.py) draw mostly problems these algorithms decline; here every
case is one they take: few channels per group (depthwise: one input channel per group, any
multiplier), 1D/2D/3D, float32/float64, strides, dilations, asymmetric pads and pads larger than
the kernel, batch 0/1/3, ragged sizes, and each of their code paths: the flat pass over whole
planes (unit strides, as many output as input columns), per-row passes, edge columns, rows with
taps outside the input, tap lists longer than 9, grad-input as a correlation of the (zero-inserted)
output_grad, grad-weights by masked flat dot products or per row; depthwise's padded-plane kernels
(small planes, strides) and its hand-over to the grouped kernels (large planes). The algorithms are
called through the registry on canonical arrays (no flip: cross-correlation), so a failure points
at the kernels rather than at dispatch.
"""
import numpy as np
import pytest
import reference as R
from helpers import Case, compare, random_case

import nbconv
from nbconv.cpu import depthwise
from nbconv.problems import load_workload
from nbconv.spec import build

DIRECTIONS = ("forward", "grad_input", "grad_weights")
NAMES = {"x": "input", "w": "filters", "y": "output_grad"}


def _spec(case, direction):
    return build(
        direction, case.nd, case.x_shape, case.w_shape, border_mode=case.border_mode,
        subsample=case.subsample, filter_dilation=case.dilation, num_groups=case.groups,
        unshared=False, filter_flip=False, dtype=case.dtype, names=NAMES,
    )


def _scale(a):
    return float(np.abs(a).max()) if a.size else 1.0


def _check_case(algo, case, rng):
    """Every direction of ``case``; a list of failure messages."""
    alg = nbconv.registry.get(algo)
    x = rng.standard_normal(case.x_shape).astype(case.dtype)
    w = rng.standard_normal(case.w_shape).astype(case.dtype)
    dy = rng.standard_normal(case.y_shape).astype(case.dtype)
    kw = {"border_mode": case.border_mode, "subsample": case.subsample, "filter_flip": False,
          "filter_dilation": case.dilation, "num_groups": case.groups}
    refs = {
        "forward": (lambda a, b: R.conv_nd(a, b, **kw), x, w),
        "grad_input": (lambda a, b: R.conv_nd_grad_input(a, b, case.x_shape, **kw), dy, w),
        "grad_weights": (lambda a, b: R.conv_nd_grad_weights(a, b, case.w_shape, **kw), x, dy),
    }
    failures = []
    for d in DIRECTIONS:
        spec = _spec(case, d)
        assert alg.applicable(spec), f"{algo} declined {d} {case!r}"
        ref_fn, a, b = refs[d]
        shapes = {"forward": (spec.x_shape, spec.w_shape), "grad_input": (spec.y_shape, spec.w_shape),
                  "grad_weights": (spec.x_shape, spec.y_shape)}[d]
        a0, b0 = a.copy(), b.copy()
        try:
            out = alg.run[d](spec, a.reshape(shapes[0]), b.reshape(shapes[1]))
            msg = compare(out.reshape(spec.user_result_shape), ref_fn(a, b), case.dtype,
                          _scale(ref_fn(np.abs(a), np.abs(b))))
            if msg is None and not (np.array_equal(a, a0) and np.array_equal(b, b0)):
                msg = "an operand was modified"
        except Exception as exc:  # noqa: BLE001  (report it with the case; the sweep goes on)
            msg = f"raised {type(exc).__name__}: {exc}"
        if msg:
            failures.append(f"{d} {case!r}: {msg}")
    return failures


def _draw(rng, nd, idx, algo, **kw):
    groups = int(rng.choice([1, 2, 3, 5]))
    cg = 1 if algo == "depthwise" else int(rng.integers(1, 5))
    og = int(rng.integers(1, 5))
    batch = int(rng.choice([0, 1, 1, 3]))
    return random_case(rng, nd, idx, unshared=False, groups=groups, cg=cg, og=og, batch=batch, **kw)


def _sweep(algo, cases):
    failures = []
    rng = np.random.default_rng(99)
    for case in cases:
        failures += _check_case(algo, case, rng)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:8])


@pytest.mark.parametrize("algo", ["grouped_direct", "depthwise"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_random_sweep(algo, nd):
    """Random problems: every border_mode form (asymmetric pairs included), strides and dilations
    up to 3, kernels up to 4 (3 in 3D), ragged sizes."""
    rng = np.random.default_rng(300 + 10 * nd + (algo == "depthwise"))
    n = {1: 60, 2: 90, 3: 40}[nd]
    _sweep(algo, [_draw(rng, nd, i, algo, max_spatial=14 if nd < 3 else 7) for i in range(n)])


@pytest.mark.parametrize("algo", ["grouped_direct", "depthwise"])
def test_flat_path_same_size(algo):
    """Unit strides and 'half' padding (as many output as input columns): the flat passes over
    whole planes, their redone edge columns and border rows, in planes wider than the vectors."""
    rng = np.random.default_rng(400 + (algo == "depthwise"))
    cases = []
    for i in range(24):
        nd = 2 + i % 2
        case = _draw(rng, nd, i, algo, form="half", max_stride=1, max_spatial=23 if nd == 2 else 9)
        cases.append(case)
    _sweep(algo, cases)


@pytest.mark.parametrize("algo", ["grouped_direct", "depthwise"])
def test_long_tap_lists_and_odd_shapes(algo):
    """More than 9 taps per output channel (passes of 9, 3, 2 and 1), one-tap kernels, odd
    multipliers, pads larger than the kernel (negative mirrored pads in grad-input)."""
    rng = np.random.default_rng(500 + (algo == "depthwise"))
    cases = []
    for i in range(30):
        nd = 2 + i % 2
        case = _draw(rng, nd, i, algo, kmax=5 if nd == 2 else 3, max_stride=2 + i % 2,
                     max_spatial=16 if nd == 2 else 8)
        cases.append(case)
    _sweep(algo, cases)


def test_depthwise_takes_large_multipliers_grouped_direct_declines():
    rng = np.random.default_rng(600)
    case = random_case(rng, 2, 0, unshared=False, groups=2, cg=1, og=17, batch=2, form="half",
                       max_stride=1, max_spatial=11)
    assert not nbconv.registry.get("grouped_direct").applicable(_spec(case, "forward"))
    _sweep("depthwise", [case])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_large_planes(dtype):
    """Depthwise hands planes of 1024 outputs and more (unit strides) to the grouped kernels."""
    rng = np.random.default_rng(650)
    cases = []
    for i, (form, og) in enumerate((("half", 1), ("pairs", 3), ("valid", 2), ("full", 1))):
        case = random_case(rng, 2, i, unshared=False, groups=3, cg=1, og=og, batch=2, form=form,
                           max_stride=1, kmax=3, dtype=dtype)
        h, w = 40 + i, 37 + 2 * i  # the random sizes replaced by large ones
        case = Case(**case.__dict__)
        case.x_shape = case.x_shape[:2] + (h, w)
        pads = R.pads_from_border_mode(case.border_mode, case.kshape, case.dilation)
        out = tuple(R.conv_output_size(n, k, lo, hi, s, d) for n, k, (lo, hi), s, d in
                    zip((h, w), case.kshape, pads, case.subsample, case.dilation))
        case.y_shape = case.y_shape[:2] + out
        for d in DIRECTIONS:
            assert depthwise._flat_kernels(_spec(case, d)), (d, case)
        cases.append(case)
    _sweep("depthwise", cases)


def test_supports():
    g = nbconv.registry.get("grouped_direct")
    d = nbconv.registry.get("depthwise")
    rng = np.random.default_rng(700)
    for idx in range(60):
        case = random_case(rng, int(rng.integers(1, 4)), idx)
        for direction in DIRECTIONS:
            spec = _spec(case, direction) if not case.unshared else None
            if spec is None:
                continue
            assert g.applicable(spec) == (spec.group_in <= 16 and spec.group_out <= 16)
            assert d.applicable(spec) == (spec.group_in == 1)


def test_grad_weights_independent_of_thread_count():
    """The weight gradient sums per-task partials in a fixed order: the same bits with one
    thread or several, and from call to call."""
    rng = np.random.default_rng(800)
    x = rng.standard_normal((3, 8, 19, 17)).astype(np.float32)
    dy = rng.standard_normal((3, 8, 19, 17)).astype(np.float32)
    for algo in ("grouped_direct", "depthwise"):
        w_shape = (8, 4 if algo == "grouped_direct" else 1, 3, 3)
        groups = 2 if algo == "grouped_direct" else 8
        kw = {"border_mode": "half", "num_groups": groups, "algo": algo}
        with nbconv.threads.threads(1):
            one = nbconv.conv2d_grad_wrt_weights(x, dy, w_shape, **kw)
        with nbconv.threads.threads(nbconv.threads.get_num_threads()):
            many = nbconv.conv2d_grad_wrt_weights(x, dy, w_shape, **kw)
            again = nbconv.conv2d_grad_wrt_weights(x, dy, w_shape, **kw)
        np.testing.assert_array_equal(one, many)
        np.testing.assert_array_equal(many, again)


def test_guess_picks_them_for_the_suite_layers():
    _, problems = load_workload("suite")
    by_name = {p.name: p for p in problems}
    # phase_direct's 4-channel blocks fit ResNeXt's 4 channels per group too (measured faster
    # than grouped_direct forward and grad-input: 2.4 vs 2.7-2.8 ms)
    for name, picks in (("mbv2_dw", ("grouped_direct", "depthwise")),
                        ("resnext_g32", ("grouped_direct", "phase_direct"))):
        for direction in DIRECTIONS:
            chosen = nbconv.registry.guess(by_name[name].spec(direction))
            assert chosen.name in picks, (name, direction, chosen.name)
