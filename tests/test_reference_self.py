"""Sanity of the slow reference itself (and the worked example against nbconv)."""
import itertools

import numpy as np
import pytest

import nbconv
import reference as R
from helpers import random_case

WORKED_X = np.arange(25, dtype=np.float64).reshape(5, 5)
WORKED_W = np.ones((3, 3))
WORKED_FULL = np.array(
    [
        [0, 1, 3, 6, 9, 7, 4],
        [5, 12, 21, 27, 33, 24, 13],
        [15, 33, 54, 63, 72, 51, 27],
        [30, 63, 99, 108, 117, 81, 42],
        [45, 93, 144, 153, 162, 111, 57],
        [35, 72, 111, 117, 123, 84, 43],
        [20, 41, 63, 66, 69, 47, 24],
    ],
    dtype=np.float64,
)
WORKED_VALID = np.array([[54, 63, 72], [99, 108, 117], [144, 153, 162]], dtype=np.float64)


@pytest.mark.parametrize("mode,expected", [("full", WORKED_FULL), ("valid", WORKED_VALID)])
@pytest.mark.parametrize("flip", [True, False])
def test_worked_example_reference(mode, expected, flip):
    y = R.conv2d(WORKED_X[None, None], WORKED_W[None, None], border_mode=mode, filter_flip=flip)
    np.testing.assert_array_equal(y[0, 0], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,expected", [("full", WORKED_FULL), ("valid", WORKED_VALID)])
def test_worked_example_nbconv(mode, expected, dtype):
    x = WORKED_X.astype(dtype)[None, None]
    w = WORKED_W.astype(dtype)[None, None]
    y = nbconv.conv2d(x, w, border_mode=mode)
    assert y.dtype == dtype
    assert y.shape == (1, 1) + expected.shape
    np.testing.assert_array_equal(y[0, 0], expected)  # small integers: exact in both dtypes


def test_worked_example_nbconv_pads():
    # 'full' with a 3x3 kernel is the same as border_mode=2 and ((2, 2), (2, 2))
    x = WORKED_X[None, None]
    w = WORKED_W[None, None]
    for bm in (2, (2, 2), ((2, 2), (2, 2)), (2, (2, 2))):
        np.testing.assert_array_equal(nbconv.conv2d(x, w, border_mode=bm)[0, 0], WORKED_FULL)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_vectorised_reference_matches_scalar_loops(nd):
    rng = np.random.default_rng(100 + nd)
    for idx in range(40 if nd < 3 else 20):
        case = random_case(rng, nd, idx, max_spatial=6 if nd < 3 else 4, kmax=3)
        x = rng.standard_normal(case.x_shape)
        w = rng.standard_normal(case.w_shape)
        y = R.conv_nd(x, w, **case.ref_kwargs())
        y_naive = R.conv_nd_naive(x, w, **case.ref_kwargs())
        assert y.shape == case.y_shape
        np.testing.assert_allclose(y, y_naive, rtol=1e-12, atol=1e-12, err_msg=repr(case))


def _dilate_kernel(w, d):
    """Insert d-1 zeros between kernel taps (a dilated kernel as a plain dense kernel)."""
    out = np.zeros(tuple((k - 1) * dd + 1 for k, dd in zip(w.shape, d)))
    out[tuple(slice(None, None, dd) for dd in d)] = w
    return out


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_reference_against_scipy(nd):
    import scipy.signal  # imported here: only this test needs scipy

    rng = np.random.default_rng(7 + nd)
    for _ in range(6):
        ishape = tuple(int(v) for v in rng.integers(5, 9, size=nd))
        kshape = tuple(int(v) for v in rng.integers(1, 4, size=nd))
        d = tuple(int(v) for v in rng.integers(1, 3, size=nd))
        s = tuple(int(v) for v in rng.integers(1, 4, size=nd))
        x = rng.standard_normal(ishape)
        w = rng.standard_normal(kshape)
        wd = _dilate_kernel(w, d)
        if any(a < b for a, b in zip(ishape, wd.shape)):
            continue
        for mode in ("full", "valid"):
            conv = scipy.signal.convolve(x, wd, mode=mode, method="direct")
            corr = scipy.signal.correlate(x, wd, mode=mode, method="direct")
            sub = tuple(slice(None, None, ss) for ss in s)
            y = R.conv_nd(x[None, None], w[None, None], mode, s, True, d)[0, 0]
            np.testing.assert_allclose(y, conv[sub], rtol=1e-12, atol=1e-12)
            y = R.conv_nd(x[None, None], w[None, None], mode, s, False, d)[0, 0]
            np.testing.assert_allclose(y, corr[sub], rtol=1e-12, atol=1e-12)


def test_reference_padding_is_zero_padding():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((4, 3, 2, 3))
    bm = ((1, 3), (2, 0))
    xp = np.pad(x, [(0, 0), (0, 0), (1, 3), (2, 0)])
    np.testing.assert_allclose(R.conv2d(x, w, bm), R.conv2d(xp, w, "valid"), rtol=1e-12)
    # 'half' for even kernels pads dk // 2 on both sides
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    np.testing.assert_allclose(R.conv2d(x, w, "half"), R.conv2d(xp, w, "valid"), rtol=1e-12)


def test_reference_groups_are_independent_convolutions():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 5, 5))
    w = rng.standard_normal((4, 3, 3, 2))
    y = R.conv2d(x, w, "half", num_groups=2)
    np.testing.assert_allclose(y[:, :2], R.conv2d(x[:, :3], w[:2], "half"), rtol=1e-12)
    np.testing.assert_allclose(y[:, 2:], R.conv2d(x[:, 3:], w[2:], "half"), rtol=1e-12)


def test_reference_unshared_with_equal_filters_is_shared():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    for flip in (True, False):
        y = R.conv2d(x, w, (1, (0, 2)), (2, 1), flip, (1, 2))
        wu = np.broadcast_to(w[:, None, None], (4,) + y.shape[2:] + (3, 3, 2)).copy()
        yu = R.conv2d(x, wu, (1, (0, 2)), (2, 1), flip, (1, 2), unshared=True)
        np.testing.assert_allclose(yu, y, rtol=1e-12)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_reference_adjoint_identities(nd):
    rng = np.random.default_rng(200 + nd)
    for idx in range(40 if nd < 3 else 20):
        case = random_case(rng, nd, idx, batch=int(rng.integers(1, 3)))
        x = rng.standard_normal(case.x_shape)
        w = rng.standard_normal(case.w_shape)
        g = rng.standard_normal(case.y_shape)
        kw = case.ref_kwargs()
        y = R.conv_nd(x, w, **kw)
        dx = R.conv_nd_grad_input(g, w, case.x_shape, **kw)
        dw = R.conv_nd_grad_weights(x, g, case.w_shape, **kw)
        assert dx.shape == case.x_shape and dw.shape == case.w_shape
        a, b, c = np.vdot(y, g), np.vdot(x, dx), np.vdot(w, dw)
        tol = 1e-10 * max(1.0, np.abs(y).sum() * np.abs(g).max())
        assert abs(a - b) < tol and abs(a - c) < tol, (case, a, b, c)


def test_reference_grad_input_is_transpose_of_matrix():
    """Build the forward map's matrix column by column; grad-input must be its transpose."""
    rng = np.random.default_rng(9)
    x_shape, w_shape = (1, 2, 5, 4), (4, 1, 2, 3)
    kw = dict(border_mode=((1, 0), 2), subsample=(2, 1), filter_flip=True,
              filter_dilation=(1, 2), num_groups=2)
    w = rng.standard_normal(w_shape)
    cols = []
    for j in range(int(np.prod(x_shape))):
        e = np.zeros(int(np.prod(x_shape)))
        e[j] = 1
        cols.append(R.conv_nd(e.reshape(x_shape), w, **kw).ravel())
    M = np.stack(cols, axis=1)
    g = rng.standard_normal(R.conv_nd(np.zeros(x_shape), w, **kw).shape)
    dx = R.conv_nd_grad_input(g, w, x_shape, **kw)
    np.testing.assert_allclose(dx.ravel(), M.T @ g.ravel(), rtol=1e-12, atol=1e-12)


def test_reference_causal_is_causal():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 9))
    w = rng.standard_normal((2, 3, 3))
    for s, d in itertools.product((1, 2, 3), (1, 2)):
        y = R.causal_conv1d(x, w, subsample=s, filter_dilation=d)
        assert y.shape == (2, 2, (9 - 1) // s + 1)
        for t in range(y.shape[2]):
            x2 = x.copy()
            x2[:, :, t * s + 1:] = rng.standard_normal(x2[:, :, t * s + 1:].shape)
            y2 = R.causal_conv1d(x2, w, subsample=s, filter_dilation=d)
            np.testing.assert_allclose(y2[:, :, : t + 1], y[:, :, : t + 1], rtol=1e-12)
        # and the output at t does depend on the input at t*s (the newest tap, w[..., -1])
        x3 = x.copy()
        x3[:, :, 0] += 1.0
        assert not np.allclose(R.causal_conv1d(x3, w, subsample=s, filter_dilation=d)[:, :, 0],
                               y[:, :, 0])


def test_reference_bilinear_kernels():
    np.testing.assert_array_equal(R.bilinear_kernel_1D(3, normalize=False), [1, 2, 3, 2, 1])
    np.testing.assert_allclose(R.bilinear_kernel_1D(2), [0.5, 1, 0.5])
    np.testing.assert_allclose(R.bilinear_kernel_2D((2, 3)),
                               np.outer([0.5, 1, 0.5], np.array([1, 2, 3, 2, 1]) / 3))


def test_reference_bilinear_constant_image():
    for ratio in (1, 2, 3, 4):
        up = R.bilinear_upsampling(np.full((2, 3, 4, 5), 2.5), ratio)
        assert up.shape == (2, 3, 4 * ratio, 5 * ratio)
        np.testing.assert_allclose(up, 2.5, rtol=1e-14)
    for fr in ((3, 2), ((5, 3), (3, 2)), (4, 2)):
        up = R.frac_bilinear_upsampling(np.full((1, 2, 4, 5), 1.5), fr)
        np.testing.assert_allclose(up, 1.5, rtol=1e-14)
