"""NaN and Inf: every algorithm keeps them, the exact ones keep them where the definition puts them.

A convolution output depends on an operand element when some term of its sum multiplies that
element. The dependency mask is computed with the reference on an indicator of the poked element
and an all-ones other operand (positive terms only: no cancellation, padding contributes nothing).

* Every algorithm must make every dependent output non-finite: a NaN or Inf never vanishes
  (a fast path that dropped one would hide a diverging training run).
* Algorithms registered with ``exact_nonfinite=True`` must make exactly those outputs
  non-finite. The others may spread a non-finite value further, as cuDNN's and oneDNN's
  transform and padded-GEMM paths do: Winograd and FFT mix whole tiles or planes, im2col and the
  padded-plane kernels multiply padding zeros by a NaN weight (0 x NaN = NaN), strided
  grad-inputs correlate zero-inserted gradients.
"""
import warnings

import numpy as np
import pytest
import reference as R
from helpers import SAME_EXTRA, form_at, random_case

import nbconv
from nbconv.spec import build

# the registry's BLAS-backed algorithms, called here without dispatch's errstate
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

DIRECTIONS = ("forward", "grad_input", "grad_weights")
NAMES = {"x": "input", "w": "filters", "y": "output_grad"}
CPU_ALGOS = nbconv.registry.algorithms(device="cpu")


def _refs(case):
    kw = dict(border_mode=case.border_mode, subsample=case.subsample, filter_flip=False,
              filter_dilation=case.dilation, num_groups=case.groups, unshared=case.unshared)
    return {
        "forward": lambda a, b: R.conv_nd(a, b, **kw),
        "grad_input": lambda a, b: R.conv_nd_grad_input(a, b, case.x_shape, **kw),
        "grad_weights": lambda a, b: R.conv_nd_grad_weights(a, b, case.w_shape, **kw),
    }


def _operand_shapes(case, d):
    return {"forward": (case.x_shape, case.w_shape), "grad_input": (case.y_shape, case.w_shape),
            "grad_weights": (case.x_shape, case.y_shape)}[d]


def _check(alg, case, rng):
    """Failure messages for one problem: each direction, a NaN or an Inf poked into each operand."""
    failures, checked = [], 0
    refs = _refs(case)
    for d in DIRECTIONS:
        spec = build(d, case.nd, case.x_shape, case.w_shape, border_mode=case.border_mode,
                     subsample=case.subsample, filter_dilation=case.dilation,
                     num_groups=case.groups, unshared=case.unshared, filter_flip=False,
                     dtype=case.dtype, names=NAMES)
        if not alg.applicable(spec):
            continue
        shapes = _operand_shapes(case, d)
        for which in (0, 1):
            ops = [rng.standard_normal(s).astype(case.dtype) for s in shapes]
            if not ops[which].size:
                continue
            at = tuple(int(rng.integers(0, n)) for n in shapes[which])
            ops[which][at] = np.nan if rng.random() < 0.5 else np.inf
            ind = [np.ones(s) for s in shapes]
            ind[which] = np.zeros(shapes[which])
            ind[which][at] = 1.0
            depends = refs[d](*ind).reshape(spec.user_result_shape) > 0
            checked += 1
            out = alg.run[d](spec, *[o.reshape(s) for o, s in zip(ops, _canonical(spec, d))])
            bad = ~np.isfinite(np.asarray(out).reshape(spec.user_result_shape))
            where = f"{d}, non-finite in operand {which} at {at}, {case!r}"
            if (depends & ~bad).any():
                failures.append(f"lost: {int((depends & ~bad).sum())} dependent outputs finite; {where}")
            elif alg.exact_nonfinite and (bad & ~depends).any():
                failures.append(f"spread: {int((bad & ~depends).sum())} independent outputs "
                                f"non-finite; {where}")
    return failures, checked


def _canonical(spec, d):
    return {"forward": (spec.x_shape, spec.w_shape), "grad_input": (spec.y_shape, spec.w_shape),
            "grad_weights": (spec.x_shape, spec.y_shape)}[d]


@pytest.mark.parametrize("alg", CPU_ALGOS, ids=lambda a: a.name)
def test_nonfinite_values_propagate(alg):
    rng = np.random.default_rng(71)
    failures, ran = [], 0
    for i in range(90 + SAME_EXTRA):
        nd = 1 + i % 3
        unshared = None if alg.name in ("direct", "direct_serial", "unshared_gemm") else False
        case = random_case(rng, nd, i, unshared=unshared, batch=int(rng.choice([1, 2])),
                           max_spatial=12 if nd < 3 else 6, form=form_at(i, 90))
        msgs, n = _check(alg, case, rng)
        failures += msgs
        ran += n
    assert ran >= 20, f"{alg.name} took only {ran} of the drawn problem-directions"
    assert not failures, f"{len(failures)} failures (algo={alg.name}):\n" + "\n".join(failures[:6])


@pytest.mark.parametrize("unshared", [False, True], ids=["shared", "unshared"])
def test_nonfinite_operands_raise_no_warning(unshared):
    """NumPy's 'invalid value encountered' must not leak out of any algorithm in any direction:
    dispatch wraps the BLAS-backed ones in np.errstate and skips it for those registered
    ``numba_only`` (their arithmetic must then all be in Numba kernels)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    w_shape = (8, 10, 10, 8, 3, 3) if unshared else (8, 8, 3, 3)
    w = rng.standard_normal(w_shape).astype(np.float32)
    dy = rng.standard_normal((2, 8, 10, 10)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 1, 4, 4], dy[0, 2, 3, 3] = np.nan, np.inf, -np.inf
    w.reshape(-1)[5] = np.inf
    kw = dict(border_mode="half", unshared=unshared)
    calls = {
        "forward": lambda a: nbconv.conv2d(x, w, algo=a, **kw),
        "grad_input": lambda a: nbconv.conv2d_grad_wrt_inputs(dy, w, x.shape, algo=a, **kw),
        "grad_weights": lambda a: nbconv.conv2d_grad_wrt_weights(x, dy, w.shape, algo=a, **kw),
    }
    ran = set()
    for alg in CPU_ALGOS + [None]:
        for direction, call in calls.items():
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    out = call(None if alg is None else alg.name)
                except nbconv.AlgorithmNotApplicable:
                    continue
            assert not np.isfinite(out).all(), (alg, direction)
            ran.add(None if alg is None else alg.name)
    expected = {"unshared_gemm", "direct_serial"} if unshared else {
        "im2col", "winograd", "fft", "flat", "direct_serial", "grouped_direct"}
    assert expected | {"direct", None} <= ran, ran


def test_exact_algorithms_are_declared():
    """The claim is made by the algorithms that sum only the definition's terms."""
    exact = {a.name for a in CPU_ALGOS if a.exact_nonfinite}
    assert {"direct", "direct_serial", "gemm_1x1"} <= exact
    assert not exact & {"winograd", "fft"}
