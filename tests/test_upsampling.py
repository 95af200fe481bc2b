"""Bilinear kernels and (fractional) bilinear upsampling against the reference."""
import itertools

import numpy as np
import pytest

import nbconv
import reference as R
from helpers import assert_matches, with_layout

BAD = (ValueError, TypeError)


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio,expected",
    [
        (1, [1.0]),
        (2, [0.5, 1.0, 0.5]),
        (3, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3]),
        (4, [0.25, 0.5, 0.75, 1.0, 0.75, 0.5, 0.25]),
    ],
)
def test_bilinear_kernel_1D_normalized(ratio, expected):
    k = nbconv.bilinear_kernel_1D(ratio)
    assert isinstance(k, np.ndarray) and k.ndim == 1 and k.shape == (2 * ratio - 1,)
    np.testing.assert_allclose(k, expected, rtol=1e-15, atol=0)
    np.testing.assert_allclose(nbconv.bilinear_kernel_1D(ratio, normalize=True), expected,
                               rtol=1e-15)


@pytest.mark.parametrize("ratio", [1, 2, 3, 5, 8])
def test_bilinear_kernel_1D_unnormalized(ratio):
    k = nbconv.bilinear_kernel_1D(ratio, normalize=False)
    expected = list(range(1, ratio + 1)) + list(range(ratio - 1, 0, -1))
    np.testing.assert_array_equal(k, expected)
    assert k.shape == (2 * ratio - 1,)


@pytest.mark.parametrize("ratio", [1, 2, 3, 4, (2, 3), (3, 1), (1, 4)])
@pytest.mark.parametrize("normalize", [True, False])
def test_bilinear_kernel_2D(ratio, normalize):
    rv, rh = ratio if isinstance(ratio, tuple) else (ratio, ratio)
    k = nbconv.bilinear_kernel_2D(ratio, normalize=normalize)
    assert isinstance(k, np.ndarray) and k.shape == (2 * rv - 1, 2 * rh - 1)
    expected = np.outer(R.bilinear_kernel_1D(rv, normalize), R.bilinear_kernel_1D(rh, normalize))
    np.testing.assert_allclose(k, expected, rtol=1e-15)
    np.testing.assert_allclose(
        k, np.outer(nbconv.bilinear_kernel_1D(rv, normalize),
                    nbconv.bilinear_kernel_1D(rh, normalize)), rtol=1e-15)


def test_bilinear_kernel_2D_exact_values():
    np.testing.assert_allclose(
        nbconv.bilinear_kernel_2D(2),
        [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]], rtol=1e-15)
    np.testing.assert_array_equal(
        nbconv.bilinear_kernel_2D((2, 3), normalize=False),
        [[1, 2, 3, 2, 1], [2, 4, 6, 4, 2], [1, 2, 3, 2, 1]])


# ---------------------------------------------------------------------------------------------
# integer ratios
# ---------------------------------------------------------------------------------------------


def _scale(x, ratio):
    return float(np.abs(x).max()) * ratio if x.size else 1.0


@pytest.mark.parametrize("ratio", [1, 2, 3, 4])
@pytest.mark.parametrize("use_1D_kernel", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilinear_upsampling_matches_reference(ratio, use_1D_kernel, dtype):
    rng = np.random.default_rng(ratio * 10 + use_1D_kernel)
    for shape, layout in zip([(2, 3, 4, 5), (1, 1, 1, 1), (1, 2, 1, 6), (3, 1, 5, 2), (2, 2, 3, 3)],
                             ["C", "F", "strided", "reversed", "C"]):
        x = with_layout(rng.standard_normal(shape).astype(dtype), layout)
        out = nbconv.bilinear_upsampling(x, ratio=ratio, use_1D_kernel=use_1D_kernel)
        ref = R.bilinear_upsampling(x, ratio)
        assert ref.shape == (shape[0], shape[1], shape[2] * ratio, shape[3] * ratio)
        assert_matches(out, ref, dtype, _scale(x, ratio))


def test_bilinear_upsampling_with_batch_and_channel_hints(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    out = nbconv.bilinear_upsampling(x, ratio=2, batch_size=2, num_input_channels=3)
    assert_matches(out, R.bilinear_upsampling(x, 2), np.float64, _scale(x, 2))
    out = nbconv.bilinear_upsampling(x, 3, None, 2, 3, False)  # positional, Theano's order
    assert_matches(out, R.bilinear_upsampling(x, 3), np.float64, _scale(x, 3))


@pytest.mark.parametrize("ratio", [1, 2, 3, 4, 5])
def test_bilinear_1D_and_2D_kernel_paths_agree(ratio, rng):
    x = rng.standard_normal((2, 2, 5, 4))
    a = nbconv.bilinear_upsampling(x, ratio=ratio, use_1D_kernel=True)
    b = nbconv.bilinear_upsampling(x, ratio=ratio, use_1D_kernel=False)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ratio", [1, 2, 3, 4])
@pytest.mark.parametrize("use_1D_kernel", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bilinear_constant_image_stays_constant(ratio, use_1D_kernel, dtype):
    x = np.full((2, 3, 4, 5), 1.75, dtype)
    out = nbconv.bilinear_upsampling(x, ratio=ratio, use_1D_kernel=use_1D_kernel)
    assert out.shape == (2, 3, 4 * ratio, 5 * ratio)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, 1.75, rtol=1e-6 if dtype == np.float32 else 1e-13)


def test_bilinear_ratio_1_is_identity(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    for use_1D in (True, False):
        np.testing.assert_allclose(nbconv.bilinear_upsampling(x, ratio=1, use_1D_kernel=use_1D),
                                   x, rtol=1e-13, atol=1e-13)


def test_bilinear_upsampling_keeps_samples_and_interpolates_linearly():
    """With an odd ratio the input samples reappear every ratio-th pixel (offset ratio//2) and the
    pixels between two samples lie on the straight line joining them."""
    ratio = 3
    x = np.array([[0.0, 3.0, 9.0, 6.0]])[None, None]  # (1, 1, 1, 4)
    out = nbconv.bilinear_upsampling(x, ratio=ratio)[0, 0, 0]
    np.testing.assert_allclose(out[1::3], [0.0, 3.0, 9.0, 6.0], atol=1e-12)
    np.testing.assert_allclose(out[1:11], np.interp(np.arange(1, 11), [1, 4, 7, 10],
                                                    [0.0, 3.0, 9.0, 6.0]), atol=1e-12)
    np.testing.assert_allclose(out[0], 0.0, atol=1e-12)  # the replicated border
    np.testing.assert_allclose(out[11], 6.0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# fractional ratios
# ---------------------------------------------------------------------------------------------

FRAC_RATIOS = [(3, 2), (2, 1), (5, 3), (4, 2), (6, 4), (1, 1), (2, 3), ((3, 2), (5, 2)),
               ((2, 4), (3, 1)), ((1, 1), (7, 3))]


@pytest.mark.parametrize("frac_ratio", FRAC_RATIOS, ids=repr)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frac_bilinear_upsampling_matches_reference(frac_ratio, dtype):
    rng = np.random.default_rng(5)
    for shape in [(2, 3, 4, 5), (1, 1, 1, 1), (1, 2, 3, 1)]:
        x = rng.standard_normal(shape).astype(dtype)
        ref = R.frac_bilinear_upsampling(x, frac_ratio)
        out = nbconv.frac_bilinear_upsampling(x, frac_ratio)
        big = max(p for p in np.array(frac_ratio).ravel())
        assert_matches(out, ref, dtype, _scale(x, big))
        # the same through bilinear_upsampling
        out2 = nbconv.bilinear_upsampling(x, frac_ratio=frac_ratio, use_1D_kernel=False)
        assert_matches(out2, ref, dtype, _scale(x, big))


def test_frac_ratio_reduced_by_gcd(rng):
    x = rng.standard_normal((1, 2, 3, 4))
    np.testing.assert_allclose(nbconv.frac_bilinear_upsampling(x, (6, 4)),
                               nbconv.frac_bilinear_upsampling(x, (3, 2)), rtol=1e-13)
    np.testing.assert_allclose(nbconv.frac_bilinear_upsampling(x, ((4, 2), (9, 6))),
                               nbconv.frac_bilinear_upsampling(x, ((2, 1), (3, 2))), rtol=1e-13)


@pytest.mark.parametrize("frac_ratio", [(3, 2), (5, 3), ((3, 2), (5, 4))], ids=repr)
def test_frac_constant_image_stays_constant(frac_ratio):
    x = np.full((1, 2, 4, 5), -2.5)
    out = nbconv.frac_bilinear_upsampling(x, frac_ratio)
    assert out.shape == R.frac_bilinear_upsampling(x, frac_ratio).shape
    np.testing.assert_allclose(out, -2.5, rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_ratio_and_frac_ratio_together(rng):
    x = rng.standard_normal((1, 1, 3, 3))
    with pytest.raises(ValueError):
        nbconv.bilinear_upsampling(x, ratio=2, frac_ratio=(3, 2))
    with pytest.raises(ValueError):
        nbconv.bilinear_upsampling(x, ratio=2, frac_ratio=(3, 2), use_1D_kernel=False)


def test_no_ratio(rng):
    x = rng.standard_normal((1, 1, 3, 3))
    with pytest.raises(ValueError):
        nbconv.bilinear_upsampling(x)
    with pytest.raises(ValueError):
        nbconv.bilinear_upsampling(x, use_1D_kernel=False)


def test_frac_ratio_with_1D_kernel(rng):
    x = rng.standard_normal((1, 1, 3, 3))
    with pytest.raises(ValueError):
        nbconv.bilinear_upsampling(x, frac_ratio=(3, 2))  # use_1D_kernel defaults to True
    with pytest.raises(ValueError):
        nbconv.bilinear_upsampling(x, frac_ratio=(3, 2), use_1D_kernel=True)


def test_upsampling_bad_input(rng):
    with pytest.raises(BAD, match="input"):
        nbconv.bilinear_upsampling(rng.standard_normal((3, 3, 3)), ratio=2)
    with pytest.raises(BAD, match="input"):
        nbconv.frac_bilinear_upsampling(rng.standard_normal((1, 1, 3, 3, 3)), (3, 2))
    for dtype in (np.int64, np.complex128, np.bool_, np.float16):
        with pytest.raises(TypeError):
            nbconv.bilinear_upsampling(np.ones((1, 1, 3, 3), dtype), ratio=2)
        with pytest.raises(TypeError):
            nbconv.frac_bilinear_upsampling(np.ones((1, 1, 3, 3), dtype), (3, 2))
    x = rng.standard_normal((1, 1, 3, 3))
    for ratio in (0, -1, 1.5, "2"):
        with pytest.raises(BAD):
            nbconv.bilinear_upsampling(x, ratio=ratio)
    for fr in ((0, 1), (1, 0), (-3, 2), (1.5, 1), (3, 2, 1), ((3, 2), (2, 1), (1, 1))):
        with pytest.raises(BAD):
            nbconv.frac_bilinear_upsampling(x, fr)
    for ratio in (0, -2, 1.5):
        with pytest.raises(BAD):
            nbconv.bilinear_kernel_1D(ratio)


def test_upsampling_accepts_all_layouts(rng):
    base = rng.standard_normal((2, 3, 4, 5))
    expected = R.bilinear_upsampling(base, 2)
    for layout, dtype in itertools.product(("C", "F", "strided", "reversed"),
                                           (np.float32, np.float64)):
        x = with_layout(base.astype(dtype), layout)
        assert_matches(nbconv.bilinear_upsampling(x, ratio=2), expected, dtype, _scale(x, 2))
