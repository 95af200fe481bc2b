"""The 'fft' algorithm: seeded sweeps of its three directions in 1D/2D/3D against the reference,
geometry edge cases (large kernels, pads larger than the kernel, outputs that see padding only),
chunking under the workspace limit, and its cost model."""
import tracemalloc

import numpy as np
import pytest
import reference as R
from helpers import compare, random_case

import nbconv
from nbconv import dispatch
from nbconv.cpu import fft, im2col
from nbconv.spec import build

DIRS = ("forward", "grad_input", "grad_weights")


def _spec(direction, nd, x_shape, w_shape, border_mode, subsample, dilation, groups, flip, dtype):
    return build(direction, nd, x_shape, w_shape, border_mode=border_mode, subsample=subsample,
                 filter_dilation=dilation, num_groups=groups, unshared=False, filter_flip=flip,
                 dtype=dtype, names={"x": "input", "w": "filters", "y": "output_grad"})


def _scale(a):
    return float(np.abs(a).max()) if a.size else 1.0


def _check(rng, nd, x_shape, w_shape, border_mode, subsample, dilation, groups=1, flip=True,
           dtype=np.float64, directions=DIRS):
    """Every direction through dispatch with algo='fft' (1D too: the spec is built for nd
    axes) against the float64 reference; returns the mismatch messages."""
    kw = {"border_mode": border_mode, "subsample": subsample, "filter_flip": flip,
          "filter_dilation": dilation, "num_groups": groups}
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    specs = {d: _spec(d, nd, x_shape, w_shape, border_mode, subsample, dilation, groups, flip,
                      dtype) for d in directions}
    y_shape = next(iter(specs.values())).user_y_shape
    dy = rng.standard_normal(y_shape).astype(dtype)
    errors = []
    for d, spec in specs.items():
        if d == "forward":
            ref = R.conv_nd(x, w, **kw)
            scale = _scale(R.conv_nd(np.abs(x), np.abs(w), **kw))
            a = dispatch.canonical(x, spec.x_shape, spec.np_dtype)
            b = dispatch.canonical_weights(spec, w)
        elif d == "grad_input":
            ref = R.conv_nd_grad_input(dy, w, x_shape, **kw)
            scale = _scale(R.conv_nd_grad_input(np.abs(dy), np.abs(w), x_shape, **kw))
            a = dispatch.canonical(dy, spec.y_shape, spec.np_dtype)
            b = dispatch.canonical_weights(spec, w)
        else:
            ref = R.conv_nd_grad_weights(x, dy, w_shape, **kw)
            scale = _scale(R.conv_nd_grad_weights(np.abs(x), np.abs(dy), w_shape, **kw))
            a = dispatch.canonical(x, spec.x_shape, spec.np_dtype)
            b = dispatch.canonical(dy, spec.y_shape, spec.np_dtype)
        try:
            out = dispatch.execute(spec, a, b, algo="fft")
        except Exception as exc:  # noqa: BLE001 - reported with the case
            errors.append(f"{d}: raised {type(exc).__name__}: {exc}")
            continue
        msg = compare(out, ref, dtype, scale, ref.shape)
        if msg:
            errors.append(f"{d}: {msg}")
    return errors


# ---------------------------------------------------------------------------------------------
# seeded sweeps
# ---------------------------------------------------------------------------------------------

# (cases, largest kernel, largest input) per rank: kernels up to the input size, so the FFT
# lengths range from 'valid' (F >= I) to 'full' (F >= I + K - 1) with every padding in between
SWEEP = {1: (60, 24, 40), 2: (60, 9, 17), 3: (36, 5, 9)}


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_fft_random_sweep(nd):
    rng = np.random.default_rng(9100 + nd)
    count, kmax, smax = SWEEP[nd]
    failures = []
    for idx in range(count):
        case = random_case(rng, nd, idx, unshared=False, kmax=kmax, max_spatial=smax,
                           batch=int(rng.choice([0, 1, 3])))
        errs = _check(rng, nd, case.x_shape, case.w_shape, case.border_mode, case.subsample,
                      case.dilation, case.groups, case.flip, case.dtype)
        failures += [f"[{idx}] {case!r}: {e}" for e in errs]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:8])


# ---------------------------------------------------------------------------------------------
# named cases
# ---------------------------------------------------------------------------------------------

CASES = {
    # causal 1D with a long kernel, plain and strided/dilated
    "causal_k200": (1, (2, 3, 300), (4, 3, 200), ((199, 0),), 1, 1, 1),
    "causal_k64_s3_d2": (1, (3, 2, 257), (2, 2, 64), ((126, 0),), 3, 2, 1),
    # pads larger than the kernel, asymmetric, strided; and a 'full' 11x11 with groups
    "big_pads": (2, (1, 2, 5, 6), (3, 2, 2, 3), ((7, 1), (0, 9)), (3, 2), 1, 1),
    "full_11x11_groups": (2, (3, 4, 23, 29), (6, 2, 11, 11), "full", 1, 1, 2),
    "valid_ragged": (2, (2, 3, 31, 17), (5, 3, 7, 13), "valid", (2, 3), (1, 1), 1),
    # every output row in the padding on one axis: the result is zero
    "padding_only_axis": (2, (2, 1, 1, 4), (1, 1, 1, 2), ((3, 3), (0, 0)), (7, 1), 1, 1),
    # a 3D problem with everything at once
    "3d_mixed": (3, (2, 6, 9, 7, 8), (4, 3, 4, 2, 5), (1, (2, 0), (0, 3)), (1, 2, 3),
                 (2, 1, 1), 2),
    # only W is 1: the transforms run over D and H
    "3d_w_singleton": (3, (2, 2, 8, 7, 1), (3, 2, 3, 4, 1), "half", (2, 1, 1), 1, 1),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_fft_named_cases(name, dtype, rng):
    nd, xs, ws, bm, s, d, g = CASES[name]
    for flip in (True, False):
        errs = _check(rng, nd, xs, ws, bm, s, d, g, flip, dtype)
        assert not errs, "\n".join(errs)


def test_fft_through_the_api(rng):
    """conv2d / conv3d and their gradients with algo='fft', float32 with a large kernel."""
    x = rng.standard_normal((2, 6, 40, 37)).astype(np.float32)
    w = rng.standard_normal((4, 3, 13, 13)).astype(np.float32)
    kw = {"border_mode": ((6, 2), 9), "subsample": (1, 2), "filter_dilation": (1, 2),
          "num_groups": 2}
    y = nbconv.conv2d(x, w, algo="fft", **kw)
    assert compare(y, R.conv2d(x, w, **kw), np.float32,
                   _scale(R.conv2d(np.abs(x), np.abs(w), **kw))) is None
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = nbconv.conv2d_grad_wrt_inputs(dy, w, x.shape, algo="fft", **kw)
    assert compare(dx, R.conv2d_grad_wrt_inputs(dy, w, x.shape, **kw), np.float32,
                   _scale(R.conv2d_grad_wrt_inputs(np.abs(dy), np.abs(w), x.shape, **kw))) is None
    dw = nbconv.conv2d_grad_wrt_weights(x, dy, w.shape, algo="fft", **kw)
    assert compare(dw, R.conv2d_grad_wrt_weights(x, dy, w.shape, **kw), np.float32,
                   _scale(R.conv2d_grad_wrt_weights(np.abs(x), np.abs(dy), w.shape, **kw))) is None
    x3 = rng.standard_normal((1, 2, 12, 10, 11))
    w3 = rng.standard_normal((3, 2, 5, 4, 6))
    y3 = nbconv.conv3d(x3, w3, border_mode="half", algo="fft")
    np.testing.assert_allclose(y3, R.conv3d(x3, w3, border_mode="half"), rtol=1e-10, atol=1e-10 * 60)
    wc = rng.standard_normal((3, 2, 150)).astype(np.float32)
    xc = rng.standard_normal((2, 2, 400)).astype(np.float32)
    yc = nbconv.causal_conv1d(xc, wc, wc.shape, filter_dilation=2, algo="fft")
    ref = R.causal_conv1d(xc, wc, filter_dilation=2)
    assert compare(yc, ref, np.float32, _scale(R.causal_conv1d(np.abs(xc), np.abs(wc),
                                                                filter_dilation=2))) is None


def test_fft_is_not_for_unshared():
    spec = build("forward", 2, (1, 2, 5, 5), (3, 3, 3, 2, 3, 3), border_mode="valid",
                 subsample=1, filter_dilation=1, num_groups=1, unshared=True, filter_flip=True,
                 dtype="float64", names={"x": "input", "w": "filters"})
    assert not nbconv.registry.get("fft").applicable(spec)


def test_fast_len():
    smooth = [n for n in range(1, 3001) if _is_5_smooth(n)]
    for n in range(1, 2900):
        assert fft.fast_len(n) == min(m for m in smooth if m >= n), n


def _is_5_smooth(n):
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


# ---------------------------------------------------------------------------------------------
# workspace limit: chunks of images, the accounting, refusal
# ---------------------------------------------------------------------------------------------


def _run_direct(spec, a, b):
    return getattr(fft, spec.direction)(spec, a, b)


@pytest.mark.parametrize("direction", DIRS)
def test_fft_workspace_limit(direction, rng):
    nd, xs, ws, bm, s, d = 2, (5, 4, 21, 18), (6, 4, 5, 4), ((3, 1), 2), (2, 1), (1, 2)
    spec = _spec(direction, nd, xs, ws, bm, s, d, 1, True, np.float64)
    one = build(direction, nd, (1,) + xs[1:], ws, border_mode=bm, subsample=s, filter_dilation=d,
                num_groups=1, unshared=False, filter_flip=True, dtype="float64",
                names={"x": "input", "w": "filters"})
    previous = im2col.get_workspace_limit()
    try:
        whole = fft.workspace(spec)
        assert fft._plan(spec)[0] == 5
        # room for two images at a time, not for five
        im2col.set_workspace_limit(int(fft.workspace(one) + 0.6 * (whole - fft.workspace(one))))
        dispatch.clear_cache()
        nb, ws_bytes = fft._plan(spec)
        assert 1 <= nb < 5 and ws_bytes <= im2col.get_workspace_limit()
        assert fft.supports(spec)
        errs = _check(rng, nd, xs, ws, bm, s, d, directions=(direction,))
        assert not errs, errs
        # the accounting: what one call allocates beyond its result, measured
        x = rng.standard_normal(spec.x_shape)
        w = rng.standard_normal(spec.w_shape)
        dy = rng.standard_normal(spec.y_shape)
        a, b = {"forward": (x, w), "grad_input": (dy, w), "grad_weights": (x, dy)}[direction]
        x, w, dy = x.reshape(xs), w.reshape(ws), dy.reshape(spec.user_y_shape)
        _run_direct(spec, a, b)  # compiled and cached before measuring
        tracemalloc.start()
        try:
            out = _run_direct(spec, a, b)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak - out.nbytes <= 1.05 * ws_bytes + 65536, (peak - out.nbytes, ws_bytes)
        # below one image's buffers the problem is refused, and dispatch says so
        im2col.set_workspace_limit(max(1, fft.workspace(one) // 2))
        dispatch.clear_cache()
        assert not fft.supports(spec)
        call = {
            "forward": lambda: nbconv.conv2d(x, w, border_mode=bm, subsample=s,
                                             filter_dilation=d, algo="fft"),
            "grad_input": lambda: nbconv.conv2d_grad_wrt_inputs(
                dy, w, xs, border_mode=bm, subsample=s, filter_dilation=d, algo="fft"),
            "grad_weights": lambda: nbconv.conv2d_grad_wrt_weights(
                x, dy, ws, border_mode=bm, subsample=s, filter_dilation=d, algo="fft"),
        }[direction]
        with pytest.raises(nbconv.AlgorithmNotApplicable):
            call()
    finally:
        im2col.set_workspace_limit(previous)
        dispatch.clear_cache()


# ---------------------------------------------------------------------------------------------
# the estimate: where the guess policy should (not) pick it
# ---------------------------------------------------------------------------------------------


def _estimates(nd, xs, ws, bm, s=1, direction="forward"):
    spec = _spec(direction, nd, xs, ws, bm, s, 1, 1, True, np.float32)
    return {a.name: a.estimate(spec) for a in nbconv.registry.candidates(spec)
            if a.estimate is not None}


@pytest.mark.parametrize("direction", DIRS)
def test_fft_estimate_ranks_large_kernels_first(direction):
    for nd, xs, ws, bm in [(2, (8, 32, 64, 64), (32, 32, 11, 11), "half"),
                           (1, (4, 32, 2048), (32, 32, 256), ((255, 0),))]:
        est = _estimates(nd, xs, ws, bm, direction=direction)
        assert est["fft"] < min(est["im2col"], est["direct"]), est


@pytest.mark.parametrize("direction", DIRS)
def test_fft_estimate_leaves_small_kernels_to_others(direction):
    for nd, xs, ws, bm, s in [(2, (8, 64, 56, 56), (64, 64, 3, 3), 1, 1),
                              (2, (8, 3, 224, 224), (64, 3, 7, 7), 3, 2)]:
        est = _estimates(nd, xs, ws, bm, s, direction=direction)
        assert est["fft"] > min(v for k, v in est.items() if k != "fft"), est


def test_fft_without_scipy(rng, monkeypatch):
    """SciPy is optional: NumPy's transforms give the same results (and a larger accounting)."""
    spec = _spec("forward", 2, (3, 4, 21, 18), (6, 2, 5, 4), ((3, 1), 2), (2, 1), (1, 2), 2,
                 True, np.float32)
    with_scipy = fft.workspace(spec)
    monkeypatch.setattr(fft, "_sfft", None)
    assert fft.workspace(spec) > with_scipy
    for nd, xs, ws, bm, s, d, g in [CASES["3d_mixed"], CASES["causal_k64_s3_d2"],
                                    CASES["full_11x11_groups"]]:
        for dtype in (np.float32, np.float64):
            errs = _check(rng, nd, xs, ws, bm, s, d, g, True, dtype)
            assert not errs, "\n".join(errs)
