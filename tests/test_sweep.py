"""Seeded random sweeps of every public conv function against the slow reference.

Every sweep is parametrized over the registered CPU algorithms (plus ``None``, the library's own
choice). An algorithm that raises ``AlgorithmNotApplicable`` for a case is counted, not failed;
each algorithm must be applicable to some cases, and 'direct' (and the default choice) to all.
Mismatches are collected and reported together with the offending cases.
"""
import numpy as np
import pytest

import nbconv
import reference as R
from helpers import (SAME_EXTRA, Sweep, algo_id, algo_params, compare, for_direction, form_at, hint,
                     only_unshared, rand, random_case, with_layout)

ALGOS = algo_params()

FWD = {2: nbconv.conv2d, 3: nbconv.conv3d}
GIN = {2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}
GW = {2: nbconv.conv2d_grad_wrt_weights, 3: nbconv.conv3d_grad_wrt_weights}
TR = {2: nbconv.conv2d_transpose, 3: nbconv.conv3d_transpose}
SEP = {2: nbconv.separable_conv2d, 3: nbconv.separable_conv3d}


def n_cases(base, algo):
    """Full sweeps for named algorithms; the default choice gets a third of them."""
    return base if algo is not None else max(10, base // 3)


def scale_of(a):
    return float(np.abs(a).max()) if a.size else 1.0


def w_channel_axes(case):
    return (0, case.nd + 1) if case.unshared else (0, 1)


def unchanged(*pairs):
    for orig, copy in pairs:
        if not np.array_equal(orig, copy, equal_nan=True):
            return "the call modified one of its input arrays"
    return None


# ---------------------------------------------------------------------------------------------
# forward / grad-input / grad-weights, 2D and 3D
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("nd", [2, 3])
def test_forward_sweep(nd, algo):
    rng = np.random.default_rng(1000 + nd)
    sweep = Sweep(algo)
    n = n_cases(450 if nd == 2 else 150, algo)
    for idx in range(n + SAME_EXTRA):
        case = random_case(rng, nd, idx, form=form_at(idx, n))
        x = rand(rng, case.x_shape, case.dtype, case.x_layout)
        w = rand(rng, case.w_shape, case.dtype, case.w_layout)
        ih = hint(case.x_shape, rng)
        fh = hint(case.w_shape, rng, w_channel_axes(case))
        ref = R.conv_nd(x, w, **case.ref_kwargs())
        scale = scale_of(R.conv_nd(np.abs(x), np.abs(w), **case.ref_kwargs()))
        x0, w0 = x.copy(), w.copy()

        def thunk():
            out = FWD[nd](x, w, input_shape=ih, filter_shape=fh, subsample=case.subsample,
                          algo=algo, **case.kwargs())
            return compare(out, ref, case.dtype, scale, case.y_shape) or unchanged((x, x0), (w, w0))

        sweep.run(f"[{idx}] {case!r} input_shape={ih} filter_shape={fh}", thunk)
    sweep.check()


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("nd", [2, 3])
def test_grad_input_sweep(nd, algo):
    rng = np.random.default_rng(2000 + nd)
    sweep = Sweep(algo)
    n = n_cases(360 if nd == 2 else 120, algo)
    for idx in range(n + SAME_EXTRA):
        case = random_case(rng, nd, idx, form=form_at(idx, n))
        dy = rand(rng, case.y_shape, case.dtype, case.x_layout)
        w = rand(rng, case.w_shape, case.dtype, case.w_layout)
        ishape = hint(case.x_shape, rng) or case.x_shape  # required; may hold None for N / C
        fh = hint(case.w_shape, rng, w_channel_axes(case))
        ref = R.conv_nd_grad_input(dy, w, case.x_shape, **case.ref_kwargs())
        scale = scale_of(R.conv_nd_grad_input(np.abs(dy), np.abs(w), case.x_shape,
                                              **case.ref_kwargs()))
        dy0, w0 = dy.copy(), w.copy()

        def thunk():
            out = GIN[nd](dy, w, ishape, filter_shape=fh, subsample=case.subsample, algo=algo,
                          **case.kwargs())
            return compare(out, ref, case.dtype, scale, case.x_shape) or unchanged(
                (dy, dy0), (w, w0))

        sweep.run(f"[{idx}] {case!r} input_shape={ishape} filter_shape={fh}", thunk)
    sweep.check()


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("nd", [2, 3])
def test_grad_weights_sweep(nd, algo):
    rng = np.random.default_rng(3000 + nd)
    sweep = Sweep(algo, "grad_weights")
    n = n_cases(360 if nd == 2 else 120, algo)
    for idx in range(n + SAME_EXTRA):
        case = random_case(rng, nd, idx, form=form_at(idx, n))
        x = rand(rng, case.x_shape, case.dtype, case.x_layout)
        dy = rand(rng, case.y_shape, case.dtype, case.w_layout)
        fshape = hint(case.w_shape, rng, w_channel_axes(case)) or case.w_shape
        ih = hint(case.x_shape, rng)
        ref = R.conv_nd_grad_weights(x, dy, case.w_shape, **case.ref_kwargs())
        scale = scale_of(R.conv_nd_grad_weights(np.abs(x), np.abs(dy), case.w_shape,
                                                **case.ref_kwargs()))
        x0, dy0 = x.copy(), dy.copy()

        def thunk():
            out = GW[nd](x, dy, fshape, input_shape=ih, subsample=case.subsample, algo=algo,
                         **case.kwargs())
            return compare(out, ref, case.dtype, scale, case.w_shape) or unchanged(
                (x, x0), (dy, dy0))

        sweep.run(f"[{idx}] {case!r} filter_shape={fshape} input_shape={ih}", thunk)
    sweep.check()


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("nd", [2, 3])
def test_transpose_sweep(nd, algo):
    """convNd_transpose(input, filters, output_shape, input_dilation=s) is grad-input with s."""
    rng = np.random.default_rng(4000 + nd)
    sweep = Sweep(algo)
    n = n_cases(150 if nd == 2 else 60, algo)
    for idx in range(n + SAME_EXTRA):
        case = random_case(rng, nd, idx, form=form_at(idx, n))
        inp = rand(rng, case.y_shape, case.dtype, case.x_layout)
        w = rand(rng, case.w_shape, case.dtype, case.w_layout)
        oshape = hint(case.x_shape, rng) or case.x_shape
        fh = hint(case.w_shape, rng, w_channel_axes(case))
        ref = R.conv_nd_grad_input(inp, w, case.x_shape, **case.ref_kwargs())
        scale = scale_of(R.conv_nd_grad_input(np.abs(inp), np.abs(w), case.x_shape,
                                              **case.ref_kwargs()))

        def thunk():
            out = TR[nd](inp, w, oshape, filter_shape=fh, input_dilation=case.subsample,
                         algo=algo, **case.kwargs())
            return compare(out, ref, case.dtype, scale, case.x_shape)

        sweep.run(f"[{idx}] {case!r} output_shape={oshape}", thunk)
    sweep.check()


# ---------------------------------------------------------------------------------------------
# 1-D: conv2d with a singleton axis, and causal_conv1d
# ---------------------------------------------------------------------------------------------


def _border_1d_to_2d(bm):
    """A 1-D border_mode as the 2-D border_mode of a problem whose first axis is a singleton."""
    if isinstance(bm, str):
        return bm  # the singleton axis has a 1-tap kernel: 'valid'/'full'/'half' pad it by 0
    if isinstance(bm, int):
        return (0, bm)
    (e,) = bm
    return ((0, 0), e)


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
def test_conv1d_as_conv2d_singleton_axis_sweep(algo):
    rng = np.random.default_rng(5000)
    sweep = Sweep(algo)
    n = n_cases(180, algo)
    for idx in range(n + SAME_EXTRA):
        case = random_case(rng, 1, idx, form=form_at(idx, n))
        N, C, L = case.x_shape
        x1 = rng.standard_normal(case.x_shape).astype(case.dtype)
        w1 = rng.standard_normal(case.w_shape).astype(case.dtype)
        dy1 = rng.standard_normal(case.y_shape).astype(case.dtype)
        kw1 = case.ref_kwargs()
        y1 = R.conv_nd(x1, w1, **kw1)
        dx1 = R.conv_nd_grad_input(dy1, w1, case.x_shape, **kw1)
        dw1 = R.conv_nd_grad_weights(x1, dy1, case.w_shape, **kw1)
        sy = scale_of(R.conv_nd(np.abs(x1), np.abs(w1), **kw1))
        sx = scale_of(R.conv_nd_grad_input(np.abs(dy1), np.abs(w1), case.x_shape, **kw1))
        sw = scale_of(R.conv_nd_grad_weights(np.abs(x1), np.abs(dy1), case.w_shape, **kw1))

        x_shape = (N, C, 1, L)
        y_shape = case.y_shape[:2] + (1,) + case.y_shape[2:]
        if case.unshared:
            O, oL, Cg, K = case.w_shape
            w_shape = (O, 1, oL, Cg, 1, K)
        else:
            w_shape = case.w_shape[:2] + (1,) + case.w_shape[2:]
        x = with_layout(x1.reshape(x_shape), case.x_layout)
        w = with_layout(w1.reshape(w_shape), case.w_layout)
        dy = with_layout(dy1.reshape(y_shape), case.x_layout)
        opts = dict(
            border_mode=_border_1d_to_2d(case.border_mode),
            subsample=(int(rng.integers(1, 4)), case.subsample[0]),
            filter_dilation=(int(rng.integers(1, 4)), case.dilation[0]),
            filter_flip=case.flip, num_groups=case.groups, unshared=case.unshared, algo=algo,
        )

        def thunk():
            msgs = [
                compare(nbconv.conv2d(x, w, **opts), y1.reshape(y_shape), case.dtype, sy),
                compare(nbconv.conv2d_grad_wrt_inputs(dy, w, x_shape, **opts),
                        dx1.reshape(x_shape), case.dtype, sx),
                compare(nbconv.conv2d_grad_wrt_weights(
                    x, dy, w_shape, **{**opts, "algo": for_direction(algo, "grad_weights")}),
                        dw1.reshape(w_shape), case.dtype, sw),
            ]
            return "; ".join(f"{d}: {m}" for d, m in zip(("fwd", "gin", "gw"), msgs) if m)

        sweep.run(f"[{idx}] {case!r} as 2D {opts}", thunk)
    sweep.check()


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
def test_causal_conv1d_sweep(algo):
    rng = np.random.default_rng(6000)
    sweep = Sweep(algo)
    for idx in range(n_cases(240, algo)):
        G = int(rng.choice([1, 1, 2, 3, 4]))
        Cg, Og = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        N = int(rng.choice([0, 1, 2, 3]))
        L, K = int(rng.integers(1, 10)), int(rng.integers(1, 5))
        s, d = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        flip = idx % 2 == 0
        unshared = idx % 3 == 0
        dtype = (np.float32, np.float64)[(idx // 2) % 2]
        out_len = (L - 1) // s + 1
        x_shape = (N, Cg * G, L)
        w_shape = (Og * G, out_len, Cg, K) if unshared else (Og * G, Cg, K)
        x = rand(rng, x_shape, dtype, ("C", "F", "strided", "reversed")[idx % 4])
        w = rand(rng, w_shape, dtype, ("C", "F", "strided", "reversed")[(idx // 4) % 4])
        fshape = hint(w_shape, rng, (0, 2) if unshared else (0, 1)) or w_shape
        ih = hint(x_shape, rng)
        kw = dict(subsample=s, filter_flip=flip, filter_dilation=d, num_groups=G,
                  unshared=unshared)
        ref = R.causal_conv1d(x, w, **kw)
        scale = scale_of(R.causal_conv1d(np.abs(x), np.abs(w), **kw))
        assert ref.shape == (N, Og * G, out_len)

        def thunk():
            out = nbconv.causal_conv1d(x, w, fshape, input_shape=ih, algo=algo, **kw)
            return compare(out, ref, dtype, scale, ref.shape)

        sweep.run(f"[{idx}] causal x{x_shape} w{w_shape} {kw} {np.dtype(dtype)} "
                  f"filter_shape={fshape} input_shape={ih}", thunk)
    sweep.check()


# ---------------------------------------------------------------------------------------------
# separable
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("nd", [2, 3])
def test_separable_sweep(nd, algo):
    rng = np.random.default_rng(7000 + nd)
    sweep = Sweep(algo)
    n = n_cases(120 if nd == 2 else 48, algo)
    for idx in range(n + SAME_EXTRA):
        C = int(rng.integers(1, 5))
        M = int(rng.integers(1, 3))
        O = int(rng.integers(1, 5))
        case = random_case(rng, nd, idx, groups=C, cg=1, og=M, unshared=False, form=form_at(idx, n))
        x = rand(rng, case.x_shape, case.dtype, case.x_layout)
        dw = rand(rng, case.w_shape, case.dtype, case.w_layout)
        pw_shape = (O, M * C) + (1,) * nd
        pw = rand(rng, pw_shape, case.dtype, case.x_layout)
        ih = hint(case.x_shape, rng)
        dh = hint(case.w_shape, rng)
        ph = hint(pw_shape, rng)
        kw = dict(border_mode=case.border_mode, subsample=case.subsample,
                  filter_flip=case.flip, filter_dilation=case.dilation)
        ref = R._separable(x, dw, pw, C, **kw)
        scale = scale_of(R._separable(np.abs(x), np.abs(dw), np.abs(pw), C, **kw))
        assert ref.shape == (case.N, O) + case.y_shape[2:]

        def thunk():
            out = SEP[nd](x, dw, pw, C, input_shape=ih, depthwise_filter_shape=dh,
                          pointwise_filter_shape=ph, algo=algo, **kw)
            return compare(out, ref, case.dtype, scale, ref.shape)

        sweep.run(f"[{idx}] separable {case!r} pointwise{pw_shape} hints={ih},{dh},{ph}", thunk)
    # separable convolutions are never unshared
    sweep.check(require_applicable=not only_unshared(algo))


# ---------------------------------------------------------------------------------------------
# adjoint identities computed with nbconv alone (float64)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("nd", [2, 3])
def test_adjoint_identities(nd, algo):
    """<conv(x, w), g> == <x, grad_in(g, w)> == <w, grad_w(x, g)> for random problems."""
    rng = np.random.default_rng(8000 + nd)
    sweep = Sweep(algo)
    n = n_cases(180 if nd == 2 else 60, algo)
    for idx in range(n + SAME_EXTRA):
        case = random_case(rng, nd, idx, dtype=np.float64, batch=int(rng.integers(1, 4)), form=form_at(idx, n))
        x = rand(rng, case.x_shape, np.float64, case.x_layout)
        w = rand(rng, case.w_shape, np.float64, case.w_layout)
        g = rand(rng, case.y_shape, np.float64)
        opts = dict(subsample=case.subsample, algo=algo, **case.kwargs())

        def thunk():
            y = FWD[nd](x, w, **opts)
            dx = GIN[nd](g, w, case.x_shape, **opts)
            dw = GW[nd](x, g, case.w_shape, **{**opts, "algo": for_direction(algo, "grad_weights")})
            a, b, c = np.vdot(y, g), np.vdot(x, dx), np.vdot(w, dw)
            bound = np.vdot(np.abs(y), np.abs(g)) + np.vdot(np.abs(x), np.abs(dx)) + 1.0
            if abs(a - b) > 1e-10 * bound or abs(a - c) > 1e-10 * bound:
                return f"<y,g>={a!r} <x,dx>={b!r} <w,dw>={c!r}"
            return None

        sweep.run(f"[{idx}] {case!r}", thunk)
    sweep.check()


# ---------------------------------------------------------------------------------------------
# a few fixed, named cases (readable failures for the most common configurations)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("border_mode", ["valid", "full", "half", 1, (2, 1), ((1, 0), (0, 2))])
@pytest.mark.parametrize("flip", [True, False])
def test_common_2d_cases(border_mode, flip, dtype, rng):
    x = rng.standard_normal((2, 4, 8, 7)).astype(dtype)
    w = rng.standard_normal((6, 4, 3, 3)).astype(dtype)
    kw = dict(border_mode=border_mode, filter_flip=flip)
    y = nbconv.conv2d(x, w, **kw)
    ref = R.conv2d(x, w, **kw)
    scale = scale_of(R.conv2d(np.abs(x), np.abs(w), **kw))
    assert compare(y, ref, dtype, scale) is None, compare(y, ref, dtype, scale)
    g = rng.standard_normal(ref.shape).astype(dtype)
    dx = nbconv.conv2d_grad_wrt_inputs(g, w, x.shape, **kw)
    msg = compare(dx, R.conv2d_grad_wrt_inputs(g, w, x.shape, **kw), dtype,
                  scale_of(R.conv2d_grad_wrt_inputs(np.abs(g), np.abs(w), x.shape, **kw)))
    assert msg is None, msg
    dw = nbconv.conv2d_grad_wrt_weights(x, g, w.shape, **kw)
    msg = compare(dw, R.conv2d_grad_wrt_weights(x, g, w.shape, **kw), dtype,
                  scale_of(R.conv2d_grad_wrt_weights(np.abs(x), np.abs(g), w.shape, **kw)))
    assert msg is None, msg


def test_larger_problem_exercises_parallel_paths(rng):
    """A (still small) problem with enough work items that every thread gets some."""
    x = rng.standard_normal((3, 8, 9, 9))
    w = rng.standard_normal((8, 4, 3, 2))
    kw = dict(border_mode=(1, (2, 0)), subsample=(1, 2), filter_dilation=(2, 1), num_groups=2)
    y = nbconv.conv2d(x, w, **kw)
    np.testing.assert_allclose(y, R.conv2d(x, w, **kw), rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(y.shape)
    np.testing.assert_allclose(nbconv.conv2d_grad_wrt_inputs(g, w, x.shape, **kw),
                               R.conv2d_grad_wrt_inputs(g, w, x.shape, **kw), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(nbconv.conv2d_grad_wrt_weights(x, g, w.shape, **kw),
                               R.conv2d_grad_wrt_weights(x, g, w.shape, **kw), rtol=1e-10,
                               atol=1e-10)


def test_repeated_calls_are_deterministic_and_independent(rng):
    """Same call twice gives the same bits; a call with other parameters in between is not
    affected by anything cached from the first."""
    x = rng.standard_normal((2, 3, 7, 7))
    w = rng.standard_normal((4, 3, 3, 3))
    a = nbconv.conv2d(x, w, border_mode="half")
    b = nbconv.conv2d(x, w, border_mode="full")
    c = nbconv.conv2d(x, w, border_mode="half")
    d = nbconv.conv2d(x, w, border_mode="half", filter_flip=False)
    np.testing.assert_array_equal(a, c)
    assert b.shape == (2, 4, 9, 9)
    np.testing.assert_allclose(d, R.conv2d(x, w, "half", filter_flip=False), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(a, R.conv2d(x, w, "half"), rtol=1e-10, atol=1e-10)
    # the result is a fresh array: writing to it does not change a later result
    a[...] = 0
    np.testing.assert_array_equal(nbconv.conv2d(x, w, border_mode="half"), c)
