"""Shape helpers (Theano semantics plus nbconv's documented fixes) and the conv-arithmetic
guide's relationships 1-14, checked with the helpers and with real nbconv calls."""
import itertools

import numpy as np
import pytest

import nbconv
import reference as R
from helpers import random_case


def pads1(bm, k, d):
    """(lo, hi) of a one-axis border_mode (a string, an int or a (lo, hi) pair)."""
    return R.pads_from_border_mode((bm,) if isinstance(bm, tuple) else bm, (k,), (d,))[0]


# ---------------------------------------------------------------------------------------------
# get_conv_shape_1axis
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "i,k,bm,s,d,expected",
    [
        (5, 3, "valid", 1, 1, 3),
        (5, 3, "full", 1, 1, 7),
        (5, 3, "half", 1, 1, 5),
        (5, 4, "half", 1, 1, 6),  # even kernel: dk//2 on both sides
        (5, 3, 2, 1, 1, 7),
        (5, 3, 0, 1, 1, 3),
        (5, 3, (1, 2), 1, 1, 6),
        (5, 3, (0, 0), 1, 1, 3),
        (5, 3, "valid", 2, 1, 2),
        (6, 3, "valid", 2, 1, 2),
        (7, 3, "valid", 2, 1, 3),
        (9, 3, "valid", 1, 2, 5),
        (9, 3, "half", 1, 2, 9),
        (9, 3, "full", 1, 2, 13),
        (10, 3, (0, 1), 3, 2, 3),
        (4, 2, "half", 1, 2, 4),  # dk = 3 -> pads (1, 1)
        (4, 2, "half", 1, 1, 5),  # dk = 2 -> pads (1, 1)
        (1, 1, "valid", 1, 1, 1),
        (8, 2, "full", 3, 3, 4),  # dk = 4: (8 + 6 - 4) // 3 + 1
    ],
)
def test_get_conv_shape_1axis(i, k, bm, s, d, expected):
    got = nbconv.get_conv_shape_1axis(i, k, bm, s, d)
    assert got == expected
    assert isinstance(got, (int, np.integer))
    assert got == R.conv_output_size(i, k, *pads1(bm, k, d), s, d)


def test_get_conv_shape_1axis_default_dilation():
    assert nbconv.get_conv_shape_1axis(5, 3, "valid", 1) == 3
    assert nbconv.get_conv_shape_1axis(9, 3, "full", 2) == 6


def test_get_conv_shape_1axis_none_propagates():
    assert nbconv.get_conv_shape_1axis(None, 3, "valid", 1) is None
    assert nbconv.get_conv_shape_1axis(5, None, "valid", 1) is None
    assert nbconv.get_conv_shape_1axis(None, None, "full", 2, 2) is None


@pytest.mark.parametrize("bm", [-1, (-1, 0), (0, -2)])
def test_get_conv_shape_1axis_negative_pad(bm):
    with pytest.raises(ValueError):
        nbconv.get_conv_shape_1axis(5, 3, bm, 1)


# ---------------------------------------------------------------------------------------------
# get_conv_output_shape
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image,kernel,bm,s,d,expected",
    [
        ((2, 3, 7, 9), (4, 3, 3, 2), "valid", (1, 1), None, (2, 4, 5, 8)),
        ((2, 3, 7, 9), (4, 3, 3, 2), "full", (2, 1), (1, 2), (2, 4, 5, 11)),
        ((2, 3, 7, 9), (4, 3, 3, 2), ((1, 2), 3), (1, 1), (1, 1), (2, 4, 8, 14)),
        ((2, 3, 7, 9), (4, 3, 3, 2), 1, (1, 1), None, (2, 4, 7, 10)),
        ((2, 3, 7, 9), (4, 3, 3, 2), (0, (1, 0)), (1, 1), None, (2, 4, 5, 9)),
        # unshared kernel shapes: the kernel's spatial dims are its last nd entries
        ((2, 3, 7, 9), (4, 5, 8, 3, 3, 2), "valid", (1, 1), None, (2, 4, 5, 8)),
        ((1, 2, 5, 6, 7), (3, 2, 1, 2, 3), "half", (1, 2, 3), None, (1, 3, 5, 4, 3)),
        ((1, 2, 5, 6, 7), (3, 4, 3, 2, 2, 1, 2, 3), "half", (1, 2, 3), None, (1, 3, 5, 4, 3)),
        ((None, 3, 7, None), (4, 3, 3, 2), "valid", (1, 1), None, (None, 4, 5, None)),
        ((2, 3, 7, 9), (None, 3, None, 2), "valid", (1, 1), None, (2, None, None, 8)),
    ],
)
def test_get_conv_output_shape(image, kernel, bm, s, d, expected):
    got = nbconv.get_conv_output_shape(image, kernel, bm, s, d)
    assert tuple(got) == expected


def test_get_conv_output_shape_agrees_with_real_calls():
    rng = np.random.default_rng(31)
    for nd, fn in ((2, nbconv.conv2d), (3, nbconv.conv3d)):
        for idx in range(30):
            c = random_case(rng, nd, idx, batch=int(rng.integers(0, 3)))
            x = np.zeros(c.x_shape, c.dtype)
            w = np.zeros(c.w_shape, c.dtype)
            y = fn(x, w, border_mode=c.border_mode, subsample=c.subsample,
                   filter_dilation=c.dilation, num_groups=c.groups, unshared=c.unshared)
            assert y.shape == c.y_shape, c
            got = nbconv.get_conv_output_shape(c.x_shape, c.w_shape, c.border_mode, c.subsample,
                                               c.dilation)
            assert tuple(got) == c.y_shape, c


# ---------------------------------------------------------------------------------------------
# get_conv_gradinputs_shape(_1axis)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k,top,bm,s,d,expected",
    [
        (3, 5, "valid", 1, 1, 7),
        (3, 5, "full", 1, 1, 3),
        (3, 5, "half", 1, 1, 5),
        (3, 5, 2, 1, 1, 3),
        (3, 5, (1, 2), 1, 1, 4),
        (3, 5, "valid", 1, 2, 9),
        (4, 6, "half", 1, 1, 5),
        (3, 5, "valid", 2, 1, None),
        (3, 5, "full", 3, 2, None),
        (None, 5, "valid", 1, 1, None),
        (3, None, "valid", 1, 1, None),
    ],
)
def test_get_conv_gradinputs_shape_1axis(k, top, bm, s, d, expected):
    assert nbconv.get_conv_gradinputs_shape_1axis(k, top, bm, s, d) == expected


def test_gradinputs_1axis_inverts_conv_shape_for_unit_stride():
    for i, k, d in itertools.product(range(1, 9), range(1, 5), range(1, 4)):
        for bm in ("valid", "full", "half", 0, 2, (1, 3), (2, 0)):
            lo, hi = pads1(bm, k, d)
            if i + lo + hi < (k - 1) * d + 1:
                continue
            o = nbconv.get_conv_shape_1axis(i, k, bm, 1, d)
            assert nbconv.get_conv_gradinputs_shape_1axis(k, o, bm, 1, d) == i, (i, k, d, bm)


@pytest.mark.parametrize(
    "kernel,top,bm,s,d,groups,expected",
    [
        ((4, 3, 3, 2), (2, 4, 5, 8), "valid", (1, 1), None, 1, (2, 3, 7, 9)),
        ((4, 3, 3, 2), (2, 4, 5, 8), "valid", (1, 1), None, 2, (2, 6, 7, 9)),
        ((4, 3, 3, 2), (2, 4, 5, 8), "valid", (2, 1), None, 1, (2, 3, None, 9)),
        ((4, 3, 3, 2), (2, 4, 5, 8), ((1, 0), 2), (1, 1), (2, 1), 1, (2, 3, 8, 5)),
        ((4, 3, 3, 2), (None, 4, 5, None), "full", (1, 1), None, 1, (None, 3, 3, None)),
        ((4, 2, 3, 3, 3), (1, 4, 5, 5, 5), "half", (1, 1, 1), None, 2, (1, 4, 5, 5, 5)),
    ],
)
def test_get_conv_gradinputs_shape(kernel, top, bm, s, d, groups, expected):
    got = nbconv.get_conv_gradinputs_shape(kernel, top, bm, s, d, num_groups=groups)
    assert tuple(got) == expected


# ---------------------------------------------------------------------------------------------
# get_conv_gradweights_shape(_1axis)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "i,top,bm,s,d,expected",
    [
        (7, 5, "valid", 1, 1, 3),
        (5, 7, "full", 1, 1, 3),
        (5, 5, 1, 1, 1, 3),
        (5, 6, (1, 2), 1, 1, 3),
        (9, 5, "valid", 1, 2, 3),
        (5, 9, "full", 1, 2, 3),
        (6, 6, (1, 1), 1, 2, 2),
        (7, 5, "valid", 2, 1, None),
        (7, 7, "half", 1, 1, None),
        (None, 5, "valid", 1, 1, None),
        (7, None, "valid", 1, 1, None),
    ],
)
def test_get_conv_gradweights_shape_1axis(i, top, bm, s, d, expected):
    got = nbconv.get_conv_gradweights_shape_1axis(i, top, bm, s, d)
    assert got == expected
    if expected is not None:
        # an int (Theano returned a float when dilation > 1)
        assert isinstance(got, (int, np.integer)) and not isinstance(got, bool)


@pytest.mark.parametrize("i,top,bm,d", [(8, 5, "valid", 2), (5, 8, "full", 2), (7, 4, 1, 3)])
def test_get_conv_gradweights_shape_1axis_non_integer(i, top, bm, d):
    with pytest.raises(ValueError):
        nbconv.get_conv_gradweights_shape_1axis(i, top, bm, 1, d)


def test_gradweights_1axis_inverts_conv_shape_for_unit_stride():
    for i, k, d in itertools.product(range(1, 9), range(1, 5), range(1, 4)):
        for bm in ("valid", "full", 0, 2, (1, 3), (2, 0)):
            lo, hi = pads1(bm, k, d)
            if i + lo + hi < (k - 1) * d + 1:
                continue
            o = nbconv.get_conv_shape_1axis(i, k, bm, 1, d)
            assert nbconv.get_conv_gradweights_shape_1axis(i, o, bm, 1, d) == k, (i, k, d, bm)


@pytest.mark.parametrize(
    "image,top,bm,s,groups,unshared,expected",
    [
        ((2, 6, 7, 9), (2, 4, 5, 8), "valid", (1, 1), 1, False, (4, 6, 3, 2)),
        # nbconv's fix: the *input* channels are divided by num_groups
        ((2, 6, 7, 9), (2, 4, 5, 8), "valid", (1, 1), 2, False, (4, 3, 3, 2)),
        ((2, 6, 7, 9), (2, 4, 5, 8), "valid", (1, 1), 3, False, (4, 2, 3, 2)),
        ((2, 6, 7, 9), (2, 4, 5, 8), "valid", (1, 1), 2, True, (4, 5, 8, 3, 3, 2)),
        ((2, 6, 7, 9), (2, 4, 5, 8), "valid", (2, 1), 1, False, (4, 6, None, 2)),
        ((2, 6, 7, 9), (2, 4, 7, 9), "half", (1, 1), 1, False, (4, 6, None, None)),
        ((2, 6, 5, 6), (2, 4, 7, 9), "full", (1, 1), 1, False, (4, 6, 3, 4)),
        ((1, 4, 5, 6, 7), (1, 2, 3, 4, 5), "valid", (1, 1, 1), 4, False, (2, 1, 3, 3, 3)),
        ((1, 4, 5, 6, 7), (1, 2, 3, 4, 5), "valid", (1, 1, 1), 2, True,
         (2, 3, 4, 5, 2, 3, 3, 3)),
    ],
)
def test_get_conv_gradweights_shape(image, top, bm, s, groups, unshared, expected):
    got = nbconv.get_conv_gradweights_shape(image, top, bm, s, None, num_groups=groups,
                                            unshared=unshared)
    assert tuple(got) == expected


def test_get_conv_gradweights_shape_with_dilation():
    got = nbconv.get_conv_gradweights_shape((1, 2, 9, 9), (1, 3, 5, 7), "valid", (1, 1), (2, 1))
    assert tuple(got) == (3, 2, 3, 3)


def test_gradweights_shape_feeds_real_grad_weights():
    rng = np.random.default_rng(32)
    for idx in range(30):
        c = random_case(rng, 2, idx, max_stride=1, batch=1)
        if c.border_mode == "half":
            continue
        got = tuple(nbconv.get_conv_gradweights_shape(c.x_shape, c.y_shape, c.border_mode,
                                                      c.subsample, c.dilation,
                                                      num_groups=c.groups, unshared=c.unshared))
        assert got == c.w_shape, c
        dw = nbconv.conv2d_grad_wrt_weights(
            np.zeros(c.x_shape), np.zeros(c.y_shape), got, border_mode=c.border_mode,
            filter_dilation=c.dilation, num_groups=c.groups, unshared=c.unshared)
        assert dw.shape == c.w_shape


# ---------------------------------------------------------------------------------------------
# check_conv_gradinputs_shape, border_mode_to_pad, assert_conv_shape
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image,kernel,output,bm,s,d,expected",
    [
        ((2, 3, 7, 9), (4, 3, 3, 2), (2, 4, 5, 8), "valid", (1, 1), None, True),
        ((2, 3, 7, 9), (4, 3, 3, 2), (2, 4, 5, 7), "valid", (1, 1), None, False),
        ((2, 3, 7, 9), (4, 3, 3, 2), (3, 4, 5, 8), "valid", (1, 1), None, False),
        ((2, 3, 7, 9), (4, 3, 3, 2), (2, 5, 5, 8), "valid", (1, 1), None, False),
        ((2, 3, 7, 9), (4, 3, 3, 2), (2, 4, 5), "valid", (1, 1), None, False),
        ((2, 3, 7, 9), (4, 3, 3), (2, 4, 5, 8), "valid", (1, 1), None, False),
        ((2, 3, 7, 9), (4, 3, 3, 2), (None, 4, 5, None), "valid", (1, 1), None, True),
        ((None, 3, None, 9), (4, 3, 3, 2), (2, 4, 5, 8), "valid", (1, 1), None, True),
        ((2, 3, 7, 9), (4, 3, 3, 2), (2, 4, 4, 10), "half", (2, 1), (1, 1), True),
        ((2, 3, 8, 9), (4, 3, 3, 2), (2, 4, 4, 10), "half", (2, 1), (1, 1), True),
        ((2, 3, 9, 9), (4, 3, 3, 2), (2, 4, 4, 10), "half", (2, 1), (1, 1), False),
        ((2, 3, 7, 9), (4, 3, 3, 2), (2, 4, 4, 8), "half", (2, 1), (1, 1), False),
        ((2, 3, 7, 9), (4, 3, 3, 2), (2, 4, 3, 7), "valid", (1, 1), (2, 2), True),
        ((1, 1, 5, 5, 5), (1, 1, 3, 3, 3), (1, 1, 5, 5, 5), "half", (1, 1, 1), None, True),
        ((1, 1, 5, 5, 5), (1, 1, 3, 3, 3), (1, 1, 5, 5, 5), "valid", (1, 1, 1), None, False),
    ],
)
def test_check_conv_gradinputs_shape(image, kernel, output, bm, s, d, expected):
    got = nbconv.check_conv_gradinputs_shape(image, kernel, output, bm, s, d)
    assert bool(got) is expected


def _pads(p):
    return tuple(tuple(int(v) for v in pair) for pair in p)


@pytest.mark.parametrize(
    "mode,convdim,kshp,expected",
    [
        ("full", 2, (3, 5), ((2, 2), (4, 4))),
        ("half", 2, (3, 4), ((1, 1), (2, 2))),
        ("valid", 3, (1, 2, 3), ((0, 0), (0, 0), (0, 0))),
        (2, 2, (3, 3), ((2, 2), (2, 2))),  # a bare int: nbconv accepts it (Theano did not)
        (0, 3, (3, 3, 3), ((0, 0), (0, 0), (0, 0))),
        ((1, (2, 3)), 2, (3, 3), ((1, 1), (2, 3))),
        (((0, 1), 2), 2, (3, 3), ((0, 1), (2, 2))),
        ((1, 2, 3), 3, (3, 3, 3), ((1, 1), (2, 2), (3, 3))),
        (((1, 0), (0, 2), 1), 3, (3, 3, 3), ((1, 0), (0, 2), (1, 1))),
    ],
)
def test_border_mode_to_pad(mode, convdim, kshp, expected):
    got = nbconv.border_mode_to_pad(mode, convdim, kshp)
    assert isinstance(got, tuple)
    assert len(got) == convdim
    assert _pads(got) == expected


@pytest.mark.parametrize(
    "mode,convdim",
    [("same", 2), ((1, 2, 3), 2), ((1,), 2), (-1, 2), ((1, -1), 2), ((1, (2, -1)), 2),
     ((1.5, 1), 2), ("VALID", 2)],
)
def test_border_mode_to_pad_errors(mode, convdim):
    with pytest.raises((ValueError, TypeError)):
        nbconv.border_mode_to_pad(mode, convdim, (3,) * convdim)


@pytest.mark.parametrize(
    "shape", [(2, 3, 4, 5), (0, 0, 1, 1), (1, 2, 3, 4, 5), (None, None, 3, None), [2, 3, 4, 5]]
)
def test_assert_conv_shape_ok(shape):
    got = nbconv.assert_conv_shape(shape)
    assert isinstance(got, tuple)
    assert got == tuple(shape)


@pytest.mark.parametrize(
    "shape", [(-1, 3, 4, 5), (2, -1, 4, 5), (2, 3, 0, 5), (2, 3, 4, -2), (1, 1, 1, 1, 0)]
)
def test_assert_conv_shape_errors(shape):
    with pytest.raises(ValueError):
        nbconv.assert_conv_shape(shape)


# ---------------------------------------------------------------------------------------------
# the conv-arithmetic guide's relationships 1-14
# ---------------------------------------------------------------------------------------------

I_RANGE = range(1, 10)
K_RANGE = range(1, 5)
P_RANGE = range(0, 3)
S_RANGE = range(1, 4)


def fwd_size(i, k, border_mode, s=1, d=1):
    """Output size of a real nbconv.conv2d on a square problem (checked square)."""
    x = np.zeros((1, 1, i, i), np.float32)
    w = np.zeros((1, 1, k, k), np.float32)
    y = nbconv.conv2d(x, w, border_mode=border_mode, subsample=(s, s), filter_dilation=(d, d))
    assert y.shape[:2] == (1, 1) and y.shape[2] == y.shape[3]
    return y.shape[2]


def helper_size(i, k, border_mode, s=1, d=1):
    return nbconv.get_conv_shape_1axis(i, k, border_mode, s, d)


def transpose_accepts(i_t, k, o_t, border_mode, s=1):
    """Real nbconv: does a transposed conv of input size i_t produce output size o_t?

    Checks conv2d_transpose and conv2d_grad_wrt_inputs; both must agree."""
    inp = np.zeros((1, 1, i_t, i_t), np.float32)
    w = np.zeros((1, 1, k, k), np.float32)
    results = []
    for call in (
        lambda: nbconv.conv2d_transpose(inp, w, (1, 1, o_t, o_t), border_mode=border_mode,
                                        input_dilation=(s, s)),
        lambda: nbconv.conv2d_grad_wrt_inputs(inp, w, (1, 1, o_t, o_t),
                                              border_mode=border_mode, subsample=(s, s)),
    ):
        try:
            out = call()
        except ValueError:
            results.append(False)
        else:
            assert out.shape == (1, 1, o_t, o_t)
            results.append(True)
    assert results[0] == results[1]
    return results[0]


def _valid(i, k, p=0, d=1):
    return i + 2 * p >= (k - 1) * d + 1


def test_relationship_01_valid_unit_stride():
    for i, k in itertools.product(I_RANGE, K_RANGE):
        if _valid(i, k):
            assert fwd_size(i, k, "valid") == helper_size(i, k, "valid") == (i - k) + 1


def test_relationship_02_zero_padding_unit_stride():
    for i, k, p in itertools.product(I_RANGE, K_RANGE, P_RANGE):
        if _valid(i, k, p):
            assert fwd_size(i, k, p) == helper_size(i, k, p) == (i - k) + 2 * p + 1


def test_relationship_03_half_padding():
    for i, k in itertools.product(I_RANGE, (1, 3, 5)):
        assert fwd_size(i, k, "half") == helper_size(i, k, "half") == i


def test_relationship_04_full_padding():
    for i, k in itertools.product(I_RANGE, K_RANGE):
        assert fwd_size(i, k, "full") == helper_size(i, k, "full") == i + (k - 1)


def test_relationship_05_no_padding_strides():
    for i, k, s in itertools.product(I_RANGE, K_RANGE, S_RANGE):
        if _valid(i, k):
            assert fwd_size(i, k, "valid", s) == helper_size(i, k, "valid", s) == (i - k) // s + 1


def test_relationship_06_padding_and_strides():
    for i, k, p, s in itertools.product(I_RANGE, K_RANGE, P_RANGE, S_RANGE):
        if _valid(i, k, p):
            expected = (i + 2 * p - k) // s + 1
            assert fwd_size(i, k, p, s) == helper_size(i, k, p, s) == expected


def test_relationship_07_transpose_valid_unit_stride():
    for i_t, k in itertools.product(range(1, 7), K_RANGE):
        o_t = i_t + (k - 1)
        assert helper_size(o_t, k, "valid") == i_t
        assert nbconv.get_conv_gradinputs_shape_1axis(k, i_t, "valid", 1, 1) == o_t
        assert transpose_accepts(i_t, k, o_t, "valid")
        assert not transpose_accepts(i_t, k, o_t + 1, "valid")
        if o_t > 1:
            assert not transpose_accepts(i_t, k, o_t - 1, "valid")


def test_relationship_08_transpose_padding_unit_stride():
    for i_t, k, p in itertools.product(range(1, 7), K_RANGE, P_RANGE):
        o_t = i_t + (k - 1) - 2 * p
        if o_t < 1:
            continue
        assert helper_size(o_t, k, p) == i_t
        assert nbconv.get_conv_gradinputs_shape_1axis(k, i_t, p, 1, 1) == o_t
        assert transpose_accepts(i_t, k, o_t, p)
        assert not transpose_accepts(i_t, k, o_t + 1, p)


def test_relationship_09_transpose_half_padding():
    for i_t, k in itertools.product(range(1, 7), (1, 3, 5)):
        o_t = i_t
        assert nbconv.get_conv_gradinputs_shape_1axis(k, i_t, "half", 1, 1) == o_t
        assert transpose_accepts(i_t, k, o_t, "half")
        assert not transpose_accepts(i_t, k, o_t + 1, "half")


def test_relationship_10_transpose_full_padding():
    for i_t, k in itertools.product(range(1, 9), K_RANGE):
        o_t = i_t - (k - 1)
        if o_t < 1:
            continue
        assert helper_size(o_t, k, "full") == i_t
        assert nbconv.get_conv_gradinputs_shape_1axis(k, i_t, "full", 1, 1) == o_t
        assert transpose_accepts(i_t, k, o_t, "full")
        assert not transpose_accepts(i_t, k, o_t + 1, "full")


def test_relationship_11_transpose_strides_no_padding():
    for i_t, k, s in itertools.product(range(1, 6), K_RANGE, S_RANGE):
        o_t = s * (i_t - 1) + k  # (o_t - k) is a multiple of s
        assert helper_size(o_t, k, "valid", s) == i_t
        assert transpose_accepts(i_t, k, o_t, "valid", s)
        assert not transpose_accepts(i_t, k, o_t + s, "valid", s)


def test_relationship_12_transpose_strides_padding():
    for i_t, k, p, s in itertools.product(range(1, 6), K_RANGE, P_RANGE, S_RANGE):
        o_t = s * (i_t - 1) + k - 2 * p
        if o_t < 1:
            continue
        assert helper_size(o_t, k, p, s) == i_t
        assert transpose_accepts(i_t, k, o_t, p, s)
        assert not transpose_accepts(i_t, k, o_t + s, p, s)


def test_relationship_13_transpose_general():
    for i_t, k, p, s in itertools.product(range(1, 6), K_RANGE, P_RANGE, S_RANGE):
        for a in range(s):  # a = (o + 2p - k) mod s: every such o maps to i_t
            o_t = s * (i_t - 1) + a + k - 2 * p
            if o_t < 1:
                continue
            assert (o_t + 2 * p - k) % s == a
            assert helper_size(o_t, k, p, s) == i_t
            assert transpose_accepts(i_t, k, o_t, p, s), (i_t, k, p, s, a)
        # one past the last accepted size and one before the first are rejected
        o_hi = s * (i_t - 1) + s + k - 2 * p
        if o_hi >= 1:
            assert not transpose_accepts(i_t, k, o_hi, p, s)
        o_lo = s * (i_t - 1) - 1 + k - 2 * p
        if o_lo >= 1:
            assert not transpose_accepts(i_t, k, o_lo, p, s)


def test_relationship_14_dilation():
    for i, k, p, s, d in itertools.product(I_RANGE, K_RANGE, P_RANGE, S_RANGE, (1, 2, 3)):
        if not _valid(i, k, p, d):
            continue
        expected = (i + 2 * p - k - (k - 1) * (d - 1)) // s + 1
        assert fwd_size(i, k, p, s, d) == helper_size(i, k, p, s, d) == expected
