"""Bad input raises ValueError/TypeError naming the parameter; batch 0; NaN/Inf propagation;
and a subprocess fuzz proving that no argument combination crashes the interpreter."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import nbconv
import reference as R
from helpers import algo_id, algo_params

BAD = (ValueError, TypeError)

_rng = np.random.default_rng(0)
# a valid 2D problem: x (2, 4, 6, 7) (*) w (6, 4, 3, 3) -> y (2, 6, 4, 5)
X = _rng.standard_normal((2, 4, 6, 7))
W = _rng.standard_normal((6, 4, 3, 3))
DY = _rng.standard_normal((2, 6, 4, 5))
WU = _rng.standard_normal((6, 4, 5, 4, 3, 3))  # unshared, matching grid (4, 5)
# grouped: x (2, 4, 6, 7) (*) w (6, 2, 3, 3), num_groups=2
WG = _rng.standard_normal((6, 2, 3, 3))
# 3D: x (1, 2, 4, 5, 6) (*) w (3, 2, 2, 3, 3) -> y (1, 3, 3, 3, 4)
X3 = _rng.standard_normal((1, 2, 4, 5, 6))
W3 = _rng.standard_normal((3, 2, 2, 3, 3))
DY3 = _rng.standard_normal((1, 3, 3, 3, 4))
# 1D causal: x (2, 4, 9) (*) w (3, 4, 3) -> y (2, 3, 9)
X1 = _rng.standard_normal((2, 4, 9))
W1 = _rng.standard_normal((3, 4, 3))
# separable: x (2, 4, 6, 7), depthwise (8, 1, 3, 3) (M=2), pointwise (5, 8, 1, 1)
DW = _rng.standard_normal((8, 1, 3, 3))
PW = _rng.standard_normal((5, 8, 1, 1))


def bad(fn, *args, match=None, exc=BAD, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


def test_baseline_problems_are_valid():
    """The problems the error tests perturb are themselves accepted."""
    assert nbconv.conv2d(X, W).shape == (2, 6, 4, 5)
    assert nbconv.conv2d(X, WU, unshared=True).shape == (2, 6, 4, 5)
    assert nbconv.conv2d(X, WG, num_groups=2).shape == (2, 6, 4, 5)
    assert nbconv.conv3d(X3, W3).shape == (1, 3, 3, 3, 4)
    assert nbconv.conv2d_grad_wrt_inputs(DY, W, X.shape).shape == X.shape
    assert nbconv.conv2d_grad_wrt_weights(X, DY, W.shape).shape == W.shape
    assert nbconv.conv3d_grad_wrt_inputs(DY3, W3, X3.shape).shape == X3.shape
    assert nbconv.conv3d_grad_wrt_weights(X3, DY3, W3.shape).shape == W3.shape
    assert nbconv.causal_conv1d(X1, W1, W1.shape).shape == (2, 3, 9)
    assert nbconv.separable_conv2d(X, DW, PW, 4).shape == (2, 5, 4, 5)
    assert nbconv.conv2d_transpose(DY, W, X.shape).shape == X.shape


# ---------------------------------------------------------------------------------------------
# one test per class of bad input
# ---------------------------------------------------------------------------------------------


def test_wrong_ndim():
    bad(nbconv.conv2d, X[0], W, match="input")
    bad(nbconv.conv2d, X[None], W, match="input")
    bad(nbconv.conv2d, X, W[0], match="filters")
    bad(nbconv.conv2d, X, WU, match="filters")  # 6-D filters without unshared=True
    bad(nbconv.conv2d, np.float64(1.0), W)
    bad(nbconv.conv3d, X, W3, match="input")
    bad(nbconv.conv3d, X3, W, match="filters")
    bad(nbconv.conv2d_grad_wrt_inputs, DY[0], W, X.shape, match="output_grad")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W[0], X.shape, match="filters")
    bad(nbconv.conv3d_grad_wrt_inputs, DY, W3, X3.shape, match="output_grad")
    bad(nbconv.conv2d_grad_wrt_weights, X[0], DY, W.shape, match="input")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY[None], W.shape, match="output_grad")
    bad(nbconv.conv3d_grad_wrt_weights, X3, DY, W3.shape, match="output_grad")
    bad(nbconv.conv2d_transpose, DY[0], W, X.shape, match="input")
    bad(nbconv.causal_conv1d, X, W1, W1.shape, match="input")
    bad(nbconv.causal_conv1d, X1, W, W.shape, match="filters")
    bad(nbconv.separable_conv2d, X[0], DW, PW, 4, match="input")
    bad(nbconv.separable_conv2d, X, DW[0], PW, 4, match="depthwise_filters")
    bad(nbconv.separable_conv2d, X, DW, PW[0], 4, match="pointwise_filters")
    bad(nbconv.separable_conv3d, X, DW, PW, 4, match="input")


def test_channel_mismatch():
    chan = "(?i)channel|input|filters"
    bad(nbconv.conv2d, X, np.zeros((6, 3, 3, 3)), match=chan)
    bad(nbconv.conv2d, X, np.zeros((6, 3, 3, 3)), num_groups=2, match=chan)  # needs 2 per group
    bad(nbconv.conv2d, X, np.zeros((6, 5, 4, 3, 3, 3)), unshared=True, match=chan)
    bad(nbconv.conv3d, X3, np.zeros((3, 3, 2, 3, 3)), match=chan)
    # output_grad's channels must be the filters' output channels
    bad(nbconv.conv2d_grad_wrt_inputs, np.zeros((2, 5, 4, 5)), W, X.shape)
    bad(nbconv.conv2d_grad_wrt_weights, X, np.zeros((2, 5, 4, 5)), (5, 3, 3, 3))
    bad(nbconv.causal_conv1d, X1, np.zeros((3, 2, 3)), (3, 2, 3), match=chan)
    bad(nbconv.separable_conv2d, X, DW, PW, 3, match="num_channels|channel")
    bad(nbconv.separable_conv2d, X, np.zeros((8, 2, 3, 3)), PW, 4)
    bad(nbconv.separable_conv2d, X, DW, np.zeros((5, 7, 1, 1)), 4)


def test_num_groups_not_dividing():
    # O = 5 is not divisible by 2 although C = 4 = 2 * 2 matches
    bad(nbconv.conv2d, X, np.zeros((5, 2, 3, 3)), num_groups=2, match="num_groups")
    bad(nbconv.conv3d, X3, np.zeros((3, 1, 2, 3, 3)), num_groups=2, match="num_groups")
    bad(nbconv.conv2d_grad_wrt_inputs, np.zeros((2, 5, 4, 5)), np.zeros((5, 2, 3, 3)), X.shape,
        num_groups=2, match="num_groups")
    bad(nbconv.conv2d_grad_wrt_weights, X, np.zeros((2, 5, 4, 5)), (5, 2, 3, 3), num_groups=2,
        match="num_groups")
    bad(nbconv.causal_conv1d, X1, np.zeros((3, 2, 3)), (3, 2, 3), num_groups=2,
        match="num_groups")
    # C = 4 is not divisible by 3
    bad(nbconv.conv2d, X, np.zeros((6, 1, 3, 3)), num_groups=3, match="num_groups|channel")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, np.zeros((6, 1, 3, 3)), (2, 4, 6, 7), num_groups=3,
        match="num_groups|channel|input_shape")


@pytest.mark.parametrize("groups", [0, -1, 1.5, 2.0, "2", None])
def test_num_groups_invalid_value(groups):
    nbconv.conv2d(X, WG, num_groups=2)  # a valid call first: nothing cached may leak
    bad(nbconv.conv2d, X, WG, num_groups=groups, match="num_groups")
    bad(nbconv.conv3d, X3, W3, num_groups=groups, match="num_groups")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, WG, X.shape, num_groups=groups, match="num_groups")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, WG.shape, num_groups=groups, match="num_groups")
    bad(nbconv.causal_conv1d, X1, W1, W1.shape, num_groups=groups, match="num_groups")


def test_unshared_grid_mismatch():
    wrong = np.zeros((6, 4, 4, 4, 3, 3))  # grid (4, 4) but the output is (4, 5)
    bad(nbconv.conv2d, X, wrong, unshared=True, match="filters")
    bad(nbconv.conv2d, X, np.zeros((6, 5, 4, 4, 3, 3)), unshared=True, match="filters")
    # with a stride the grid is the subsampled one: (2, 3), not (4, 5)
    bad(nbconv.conv2d, X, WU, subsample=(2, 2), unshared=True, match="filters")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, wrong, X.shape, unshared=True)
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, wrong.shape, unshared=True, match="filter_shape")
    bad(nbconv.conv3d, X3, np.zeros((3, 3, 3, 3, 2, 2, 3, 3)), unshared=True, match="filters")
    bad(nbconv.causal_conv1d, X1, np.zeros((3, 8, 4, 3)), (3, 8, 4, 3), unshared=True,
        match="filters")


def test_unshared_filters_wrong_ndim():
    bad(nbconv.conv2d, X, W, unshared=True, match="filters")
    bad(nbconv.conv2d, X, WU, unshared=False, match="filters")
    bad(nbconv.conv3d, X3, W3, unshared=True, match="filters")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, unshared=True, match="filters")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, unshared=True, match="filter_shape")
    bad(nbconv.causal_conv1d, X1, W1, W1.shape, unshared=True, match="filters")


def test_output_size_not_positive():
    bad(nbconv.conv2d, np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 5, 5)))
    bad(nbconv.conv2d, np.zeros((1, 1, 3, 8)), np.zeros((1, 1, 5, 5)), border_mode=(0, 1))
    bad(nbconv.conv2d, np.zeros((1, 1, 3, 8)), np.zeros((1, 1, 5, 5)),
        border_mode=((0, 1), 0))
    bad(nbconv.conv2d, np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), filter_dilation=(3, 1))
    bad(nbconv.conv2d, np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), filter_dilation=(3, 1),
        subsample=(2, 2))
    bad(nbconv.conv3d, np.zeros((1, 1, 2, 5, 5)), np.zeros((1, 1, 3, 3, 3)))
    bad(nbconv.conv2d_grad_wrt_inputs, np.zeros((1, 1, 1, 1)), np.zeros((1, 1, 5, 5)),
        (1, 1, 3, 3))
    bad(nbconv.conv2d_grad_wrt_weights, np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 1, 1)),
        (1, 1, 5, 5))
    bad(nbconv.causal_conv1d, np.zeros((1, 1, 0)), np.zeros((1, 1, 2)), (1, 1, 2))


@pytest.mark.parametrize("bm", [-1, (-1, 0), (0, -2), ((0, -1), (0, 0)), ((-1, 2), 1)])
def test_negative_pads(bm):
    bad(nbconv.conv2d, X, W, border_mode=bm, match="border_mode")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, border_mode=bm, match="border_mode")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, border_mode=bm, match="border_mode")
    bad(nbconv.conv2d_transpose, DY, W, X.shape, border_mode=bm, match="border_mode")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, border_mode=bm, match="border_mode")


def test_negative_pads_3d():
    for bm in (-1, (0, -1, 0), ((0, 0), (0, 0), (-1, 0))):
        bad(nbconv.conv3d, X3, W3, border_mode=bm, match="border_mode")
        bad(nbconv.conv3d_grad_wrt_inputs, DY3, W3, X3.shape, border_mode=bm,
            match="border_mode")


@pytest.mark.parametrize(
    "bm",
    [
        "same", "halff", "",
        (1, 2, 3), (1,), (),  # wrong length for 2D
        ((1, 2, 3), 0), ((1,), 0), ((), 0),  # per-axis pairs of the wrong length
        1.5, 1.0, (1.5, 1), (1, 2.0), ((1.0, 2), 0), ((1, 2), (0, 0.5)),  # floats
        (((1, 2), 3), 0), ((1, (2, 3)), 0), (("valid", 1), 0), ("full", "full"),  # nested wrong
    ],
)
def test_malformed_border_mode(bm):
    bad(nbconv.conv2d, X, W, border_mode=bm, match="border_mode")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, border_mode=bm, match="border_mode")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, border_mode=bm, match="border_mode")


def test_malformed_border_mode_3d():
    for bm in ("same", (1, 1), (1, 1, 1, 1), ((1, 2, 3), 0, 0), (1.5, 0, 0), (0, ((1, 2), 0), 0)):
        bad(nbconv.conv3d, X3, W3, border_mode=bm, match="border_mode")
        bad(nbconv.conv3d_grad_wrt_weights, X3, DY3, W3.shape, border_mode=bm,
            match="border_mode")


BAD_STEPS = [0, -1, 1.5, True, (0, 1), (1, -2), (1.5, 1), (2.0, 1), (1,), (1, 1, 1), (True, 1),
             (True, True), (1, False), "ab", (None, 1)]


@pytest.mark.parametrize("value", BAD_STEPS, ids=repr)
def test_bad_subsample(value):
    nbconv.conv2d(X, W, subsample=(1, 1))  # valid first: (True, True) == (1, 1) as a dict key
    bad(nbconv.conv2d, X, W, subsample=value, match="subsample")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, subsample=value, match="subsample")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, subsample=value, match="subsample")
    bad(nbconv.conv2d_transpose, DY, W, X.shape, input_dilation=value,
        match="input_dilation|subsample")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, subsample=value, match="subsample")


@pytest.mark.parametrize("value", BAD_STEPS, ids=repr)
def test_bad_filter_dilation(value):
    nbconv.conv2d(X, W, filter_dilation=(1, 1))
    bad(nbconv.conv2d, X, W, filter_dilation=value, match="filter_dilation")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, filter_dilation=value,
        match="filter_dilation")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, filter_dilation=value,
        match="filter_dilation")
    bad(nbconv.conv2d_transpose, DY, W, X.shape, filter_dilation=value, match="filter_dilation")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, filter_dilation=value, match="filter_dilation")


def test_bad_steps_3d_and_1d():
    for value in (0, (1, 1), (1, 0, 1), (1, 1.5, 1), (True, 1, 1), (1, 1, 1, 1)):
        bad(nbconv.conv3d, X3, W3, subsample=value, match="subsample")
        bad(nbconv.conv3d, X3, W3, filter_dilation=value, match="filter_dilation")
        bad(nbconv.conv3d_grad_wrt_inputs, DY3, W3, X3.shape, subsample=value,
            match="subsample")
        bad(nbconv.separable_conv3d, X3, np.zeros((2, 1, 2, 2, 2)), np.zeros((1, 2, 1, 1, 1)),
            2, subsample=value, match="subsample")
    nbconv.causal_conv1d(X1, W1, W1.shape, subsample=1, filter_dilation=1)
    for value in (0, -1, 1.5, True, False, "2"):
        bad(nbconv.causal_conv1d, X1, W1, W1.shape, subsample=value, match="subsample")
        bad(nbconv.causal_conv1d, X1, W1, W1.shape, filter_dilation=value,
            match="filter_dilation")


def test_shape_hints_contradicting_arrays():
    bad(nbconv.conv2d, X, W, input_shape=(2, 4, 6, 8), match="input_shape")
    bad(nbconv.conv2d, X, W, input_shape=(3, 4, 6, 7), match="input_shape")
    bad(nbconv.conv2d, X, W, input_shape=(2, 5, 6, 7), match="input_shape")
    bad(nbconv.conv2d, X, W, input_shape=(None, None, 7, None), match="input_shape")
    bad(nbconv.conv2d, X, W, filter_shape=(6, 4, 3, 2), match="filter_shape")
    bad(nbconv.conv2d, X, W, filter_shape=(5, None, None, None), match="filter_shape")
    bad(nbconv.conv2d, X, WU, filter_shape=(6, 4, 5, 4, 3, 2), unshared=True,
        match="filter_shape")
    bad(nbconv.conv3d, X3, W3, input_shape=(1, 2, 4, 5, 7), match="input_shape")
    bad(nbconv.conv3d, X3, W3, filter_shape=(3, 2, 2, 3, 2), match="filter_shape")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, filter_shape=(6, 4, 3, 2),
        match="filter_shape")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, input_shape=(2, 4, 6, 8),
        match="input_shape")
    bad(nbconv.causal_conv1d, X1, W1, (3, 4, 2), match="filter_shape")
    bad(nbconv.causal_conv1d, X1, W1, W1.shape, input_shape=(2, 4, 8), match="input_shape")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, input_shape=(2, 4, 6, 8), match="input_shape")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, depthwise_filter_shape=(8, 1, 3, 2),
        match="depthwise_filter_shape")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, pointwise_filter_shape=(4, 8, 1, 1),
        match="pointwise_filter_shape")


def test_shape_hints_wrong_length():
    bad(nbconv.conv2d, X, W, input_shape=(2, 4, 6), match="input_shape")
    bad(nbconv.conv2d, X, W, input_shape=(2, 4, 6, 7, 1), match="input_shape")
    bad(nbconv.conv2d, X, W, filter_shape=(6, 4, 3), match="filter_shape")
    bad(nbconv.conv2d, X, WU, filter_shape=(6, 4, 3, 3), unshared=True, match="filter_shape")
    bad(nbconv.conv3d, X3, W3, input_shape=(1, 2, 4, 5), match="input_shape")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, (2, 4, 6), match="input_shape")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, filter_shape=(6, 4, 3),
        match="filter_shape")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, (6, 4, 3), match="filter_shape")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, input_shape=(2, 4, 6, 7, 1),
        match="input_shape")
    bad(nbconv.causal_conv1d, X1, W1, (3, 4, 3, 1), match="filter_shape")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, depthwise_filter_shape=(8, 1, 3),
        match="depthwise_filter_shape")


def test_shape_hints_with_none_entries_are_accepted():
    """Sanity check for the tests above: None for batch/channel entries is fine."""
    assert nbconv.conv2d(X, W, input_shape=(None, None, 6, 7),
                         filter_shape=(None, None, 3, 3)).shape == (2, 6, 4, 5)
    assert nbconv.conv2d_grad_wrt_inputs(DY, W, (None, None, 6, 7)).shape == X.shape
    assert nbconv.conv2d_grad_wrt_weights(X, DY, (None, None, 3, 3)).shape == W.shape
    assert nbconv.conv2d_grad_wrt_weights(X, DY, (None, 4, 5, None, 3, 3),
                                          unshared=True).shape == WU.shape


def test_grad_inputs_input_shape_cannot_produce_output_grad():
    gin = nbconv.conv2d_grad_wrt_inputs
    shp = "input_shape|output_grad"
    bad(gin, DY, W, (2, 4, 7, 7), match=shp)  # spatial: 7 -> 5 rows, not 4
    bad(gin, DY, W, (2, 4, 5, 7), match=shp)
    bad(gin, DY, W, (2, 4, 6, 8), match=shp)
    bad(gin, DY, W, (2, 3, 6, 7), match=shp + "|channel")  # channel
    bad(gin, DY, W, (2, 8, 6, 7), match=shp + "|channel")
    bad(gin, DY, WG, (2, 2, 6, 7), num_groups=2, match=shp + "|channel")
    bad(gin, DY, W, (3, 4, 6, 7), match=shp + "|batch")  # batch
    bad(gin, DY, W, (1, 4, 6, 7), match=shp + "|batch")
    bad(gin, DY, W, (2, 4, 0, 7), match=shp)
    bad(gin, DY, W, (-1, 4, 6, 7), match=shp)
    bad(gin, DY, W, None, match="input_shape")  # required
    # with a stride, exactly the sizes 7 and 8 produce 3 outputs from a 3-tap kernel
    dy = np.zeros((1, 1, 3, 3))
    w = np.zeros((1, 1, 3, 3))
    for ok in (7, 8):
        assert gin(dy, w, (1, 1, ok, ok), subsample=(2, 2)).shape == (1, 1, ok, ok)
    for wrong in (5, 6, 9, 10):
        bad(gin, dy, w, (1, 1, wrong, 7), subsample=(2, 2), match=shp)
        bad(nbconv.conv2d_transpose, dy, w, (1, 1, 7, wrong), input_dilation=(2, 2),
            match="output_shape|input")
    bad(nbconv.conv3d_grad_wrt_inputs, DY3, W3, (1, 2, 4, 5, 7), match=shp)
    bad(nbconv.conv3d_grad_wrt_inputs, DY3, W3, (1, 3, 4, 5, 6), match=shp + "|channel")
    bad(nbconv.conv3d_transpose, DY3, W3, (2, 2, 4, 5, 6), match="output_shape|input|batch")


def test_grad_weights_filter_shape_inconsistent():
    gw = nbconv.conv2d_grad_wrt_weights
    shp = "filter_shape|output_grad"
    bad(gw, X, DY, (6, 4, 2, 3), match=shp)  # kernel size gives a 5x5 output, not 4x5
    bad(gw, X, DY, (6, 4, 3, 4), match=shp)
    bad(gw, X, DY, (5, 4, 3, 3), match=shp + "|channel")  # output channels
    bad(gw, X, DY, (6, 3, 3, 3), match=shp + "|channel")  # input channels
    bad(gw, X, DY, (6, 4, 3, 3), num_groups=2, match=shp + "|channel|num_groups")
    bad(gw, X, DY, (6, 4, 0, 3), match=shp)
    bad(gw, X, DY, (6, 4, 5, 5, 3, 3), unshared=True, match=shp)  # grid (5, 5) != (4, 5)
    bad(gw, X, DY, None, match="filter_shape")  # required
    bad(gw, X, np.zeros((3, 6, 4, 5)), W.shape, match="output_grad|input|batch")  # batch
    bad(gw, X, np.zeros((2, 6, 4, 6)), W.shape, match=shp)  # spatial
    bad(nbconv.conv3d_grad_wrt_weights, X3, DY3, (3, 2, 2, 3, 2), match=shp)
    bad(nbconv.conv3d_grad_wrt_weights, X3, DY3, (3, 2, 2, 3, 3), num_groups=2,
        match=shp + "|channel|num_groups")


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.complex64, np.complex128, np.bool_, object,
              np.float16], ids=lambda d: np.dtype(d).name)
def test_bad_dtypes(dtype):
    def cast(a):
        return a.astype(dtype)

    arr = "input|filters|output_grad|dtype"
    bad(nbconv.conv2d, cast(X), W, exc=TypeError, match=arr)
    bad(nbconv.conv2d, X, cast(W), exc=TypeError, match=arr)
    bad(nbconv.conv2d, cast(X), cast(W), exc=TypeError, match=arr)
    bad(nbconv.conv3d, cast(X3), W3, exc=TypeError, match=arr)
    bad(nbconv.conv2d_grad_wrt_inputs, cast(DY), W, X.shape, exc=TypeError, match=arr)
    bad(nbconv.conv2d_grad_wrt_inputs, DY, cast(W), X.shape, exc=TypeError, match=arr)
    bad(nbconv.conv2d_grad_wrt_weights, cast(X), DY, W.shape, exc=TypeError, match=arr)
    bad(nbconv.conv2d_grad_wrt_weights, X, cast(DY), W.shape, exc=TypeError, match=arr)
    bad(nbconv.conv2d_transpose, cast(DY), W, X.shape, exc=TypeError)
    bad(nbconv.causal_conv1d, cast(X1), W1, W1.shape, exc=TypeError)
    bad(nbconv.causal_conv1d, X1, cast(W1), W1.shape, exc=TypeError)
    bad(nbconv.separable_conv2d, cast(X), DW, PW, 4, exc=TypeError)
    bad(nbconv.separable_conv2d, X, cast(DW), PW, 4, exc=TypeError)
    bad(nbconv.separable_conv2d, X, DW, cast(PW), 4, exc=TypeError)


def test_unknown_keyword_arguments():
    def kw_bad(fn, *args, **kw):
        with pytest.raises(TypeError):
            fn(*args, **kw)

    kw_bad(nbconv.conv2d, X, W, stride=(1, 1))
    kw_bad(nbconv.conv2d, X, W, padding=1)
    kw_bad(nbconv.conv2d, X, W, border_mode="valid", groups=1)
    kw_bad(nbconv.conv3d, X3, W3, dilation=(1, 1, 1))
    kw_bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, subsampling=(1, 1))
    kw_bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, filter_dilations=(1, 1))
    kw_bad(nbconv.conv2d_transpose, DY, W, X.shape, subsample=(1, 1))
    kw_bad(nbconv.causal_conv1d, X1, W1, W1.shape, dilation=1)
    kw_bad(nbconv.separable_conv2d, X, DW, PW, 4, num_groups=4)
    kw_bad(nbconv.bilinear_upsampling, X, ratio=2, mode="bilinear")
    kw_bad(nbconv.conv2d, X, W, algorithm="direct")


@pytest.mark.parametrize("flip", [1, 0, "True", None, 1.0, "no"], ids=repr)
def test_filter_flip_not_bool(flip):
    nbconv.conv2d(X, W, filter_flip=True)  # valid first: 1 == True as a dict key
    nbconv.conv2d(X, W, filter_flip=False)
    bad(nbconv.conv2d, X, W, filter_flip=flip, match="filter_flip")
    bad(nbconv.conv3d, X3, W3, filter_flip=flip, match="filter_flip")
    bad(nbconv.conv2d_grad_wrt_inputs, DY, W, X.shape, filter_flip=flip, match="filter_flip")
    bad(nbconv.conv2d_grad_wrt_weights, X, DY, W.shape, filter_flip=flip, match="filter_flip")
    bad(nbconv.conv2d_transpose, DY, W, X.shape, filter_flip=flip, match="filter_flip")
    bad(nbconv.causal_conv1d, X1, W1, W1.shape, filter_flip=flip, match="filter_flip")
    bad(nbconv.separable_conv2d, X, DW, PW, 4, filter_flip=flip, match="filter_flip")


def test_unknown_algorithm_name():
    for fn, args in (
        (nbconv.conv2d, (X, W)),
        (nbconv.conv2d_grad_wrt_inputs, (DY, W, X.shape)),
        (nbconv.conv2d_grad_wrt_weights, (X, DY, W.shape)),
        (nbconv.conv3d, (X3, W3)),
        (nbconv.causal_conv1d, (X1, W1, W1.shape)),
    ):
        bad(fn, *args, algo="no_such_algo", exc=ValueError, match="no_such_algo")


# ---------------------------------------------------------------------------------------------
# batch size 0
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_zero(dtype):
    x = np.zeros((0, 4, 6, 7), dtype)
    w = W.astype(dtype)
    y = nbconv.conv2d(x, w, border_mode="half", subsample=(2, 1))
    assert y.shape == (0, 6, 3, 7) and y.dtype == dtype
    dy = np.zeros((0, 6, 4, 5), dtype)
    dx = nbconv.conv2d_grad_wrt_inputs(dy, w, (0, 4, 6, 7))
    assert dx.shape == (0, 4, 6, 7) and dx.dtype == dtype
    dx = nbconv.conv2d_transpose(dy, w, (None, None, 6, 7))
    assert dx.shape == (0, 4, 6, 7) and dx.dtype == dtype
    # the weight gradient sums over an empty batch: zeros of the filter shape
    dw = nbconv.conv2d_grad_wrt_weights(np.zeros((0, 4, 6, 7), dtype), dy, W.shape)
    assert dw.shape == W.shape and dw.dtype == dtype
    np.testing.assert_array_equal(dw, 0)
    dwu = nbconv.conv2d_grad_wrt_weights(np.zeros((0, 4, 6, 7), dtype), dy, WU.shape,
                                         unshared=True)
    assert dwu.shape == WU.shape and dwu.dtype == dtype
    np.testing.assert_array_equal(dwu, 0)
    yu = nbconv.conv2d(x, WU.astype(dtype), unshared=True)
    assert yu.shape == (0, 6, 4, 5) and yu.dtype == dtype
    y3 = nbconv.conv3d(np.zeros((0, 2, 4, 5, 6), dtype), W3.astype(dtype), num_groups=1)
    assert y3.shape == (0, 3, 3, 3, 4) and y3.dtype == dtype
    dw3 = nbconv.conv3d_grad_wrt_weights(np.zeros((0, 2, 4, 5, 6), dtype),
                                         np.zeros((0, 3, 3, 3, 4), dtype), W3.shape)
    assert dw3.shape == W3.shape
    np.testing.assert_array_equal(dw3, 0)
    yc = nbconv.causal_conv1d(np.zeros((0, 4, 9), dtype), W1.astype(dtype), W1.shape)
    assert yc.shape == (0, 3, 9) and yc.dtype == dtype
    ys = nbconv.separable_conv2d(x, DW.astype(dtype), PW.astype(dtype), 4)
    assert ys.shape == (0, 5, 4, 5) and ys.dtype == dtype


# ---------------------------------------------------------------------------------------------
# NaN / Inf propagation
# ---------------------------------------------------------------------------------------------

ALGOS = algo_params()
PROP_KW = dict(border_mode=((1, 2), 1), subsample=(2, 1), filter_dilation=(1, 2), num_groups=2)


def _nonzero(rng, shape):
    """Random values bounded away from 0 (so that a product with inf is inf, never nan)."""
    return rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def _check_propagation(out, depends, bad_value, algo):
    assert depends.any() and (~depends).any()  # the test must be meaningful
    if np.isnan(bad_value):
        assert np.isnan(out[depends]).all(), "NaN did not reach every dependent output"
    else:
        assert (~np.isfinite(out[depends])).all(), "Inf did not reach every dependent output"
    if algo == "direct":
        assert np.isfinite(out[~depends]).all(), "non-finite values in independent outputs"


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("unshared", [False, True])
def test_nan_inf_propagation(algo, bad_value, dtype, unshared):
    rng = np.random.default_rng(17)
    x_shape = (2, 4, 8, 9)
    w_shape = (4, 2, 3, 2)
    y_shape = R.conv2d(np.zeros(x_shape), np.zeros(w_shape), **PROP_KW).shape
    if unshared:
        w_shape = (4,) + y_shape[2:] + (2, 3, 2)
    kw = dict(PROP_KW, unshared=unshared)
    x = _nonzero(rng, x_shape)
    w = _nonzero(rng, w_shape).astype(dtype)
    dy = _nonzero(rng, y_shape).astype(dtype)
    ind_x = np.zeros(x_shape)
    ind_x[1, 1, 3, 4] = 1.0
    x[1, 1, 3, 4] = bad_value
    x = x.astype(dtype)

    def run(thunk):
        try:
            return thunk()
        except nbconv.AlgorithmNotApplicable:
            assert algo not in ("direct", None)
            return None

    # forward: NaN/Inf in the input reaches the outputs whose window covers it
    y = run(lambda: nbconv.conv2d(x, w, algo=algo, **kw))
    if y is not None:
        _check_propagation(y, R.conv2d(ind_x, np.abs(w), **kw) > 0, bad_value, algo)
    # grad-weights: NaN/Inf in the input reaches the weights that touch it
    dw = run(lambda: nbconv.conv2d_grad_wrt_weights(x, dy, w_shape, algo=algo, **kw))
    if dw is not None:
        _check_propagation(dw, R.conv2d_grad_wrt_weights(ind_x, np.abs(dy), w_shape, **kw) > 0,
                           bad_value, algo)
    # grad-input: NaN/Inf in output_grad reaches the inputs it is scattered to
    ind_dy = np.zeros(y_shape)
    ind_dy[0, 2, 1, 3] = 1.0
    dy_bad = dy.copy()
    dy_bad[0, 2, 1, 3] = bad_value
    dx = run(lambda: nbconv.conv2d_grad_wrt_inputs(dy_bad, w, x_shape, algo=algo, **kw))
    if dx is not None:
        _check_propagation(dx, R.conv2d_grad_wrt_inputs(ind_dy, np.abs(w), x_shape, **kw) > 0,
                           bad_value, algo)


@pytest.mark.parametrize("algo", ALGOS, ids=algo_id)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_inf_in_filters_and_3d(algo, bad_value):
    rng = np.random.default_rng(18)
    # valid mode, so every tap of the bad weight meets real input (no padding question)
    x = _nonzero(rng, (2, 4, 7, 8))
    w = _nonzero(rng, (6, 2, 3, 3))
    w[4, 1, 0, 2] = bad_value
    try:
        y = nbconv.conv2d(x, w, num_groups=2, subsample=(2, 1), algo=algo)
    except nbconv.AlgorithmNotApplicable:
        assert algo not in ("direct", None)
    else:
        depends = np.zeros(y.shape, bool)
        depends[:, 4] = True
        _check_propagation(y, depends, bad_value, algo)
    # 3D forward with padding
    x3 = _nonzero(rng, (1, 2, 5, 6, 5))
    w3 = _nonzero(rng, (2, 2, 2, 3, 2))
    ind = np.zeros(x3.shape)
    ind[0, 1, 2, 3, 1] = 1
    x3[0, 1, 2, 3, 1] = bad_value
    kw = dict(border_mode=(1, (0, 2), 1), subsample=(1, 2, 1), filter_dilation=(2, 1, 1))
    try:
        y3 = nbconv.conv3d(x3, w3, algo=algo, **kw)
    except nbconv.AlgorithmNotApplicable:
        assert algo not in ("direct", None)
    else:
        _check_propagation(y3, R.conv3d(ind, np.abs(w3), **kw) > 0, bad_value, algo)


# ---------------------------------------------------------------------------------------------
# fuzzing random bad argument combinations in a subprocess
# ---------------------------------------------------------------------------------------------

FUZZ_SCRIPT = textwrap.dedent(
    r'''
    import faulthandler, json, random, sys
    import numpy as np
    import nbconv

    faulthandler.enable()
    rnd = random.Random(int(sys.argv[1]))
    nrng = np.random.default_rng(int(sys.argv[1]))
    N_ITER = int(sys.argv[2])

    DTYPES = [np.float64, np.float32, np.float64, np.float32, np.int32, np.int64, np.complex128,
              np.bool_, np.float16, object]
    BORDERS = ["valid", "full", "half", "same", "", 0, 1, 2, -1, -3, 1.5, 1.0, True, None,
               (1, 1), (0, 2), (1,), (1, 2, 3), (1, 1, 1), ((1, 2), 0), ((1, 2, 3), 0),
               ((-1, 0), 1), (((1, 2), 3), 0), (1.0, 1), ("valid", 0), (), [1, 1], {}]
    STEPS = [1, 2, 3, 0, -1, 1.5, True, None, "a", (1, 1), (2, 1), (1, 3), (1, 1, 1), (2, 2, 2),
             (0, 1), (-1, 1), (1.5, 1), (True, 1), (1,), (), [1, 1], (None, 1)]
    GROUPS = [1, 1, 1, 2, 3, 4, 0, -1, 1.5, 2.0, "2", None, True]
    FLIPS = [True, False, True, False, 1, 0, None, "yes"]
    UNSHARED = [False, False, False, True, 1, None]
    ALGOS = [None, None, None, "direct", "no_such_algo", 3]

    def rand_array(ndims):
        nd = rnd.choice(ndims)
        shape = tuple(rnd.choice([0, 1, 1, 2, 2, 3, 4, 5, 6]) for _ in range(nd))
        dt = rnd.choice(DTYPES)
        a = nrng.standard_normal(shape)
        a = a.astype(object) if dt is object else a.astype(dt)
        r = rnd.random()
        if r < 0.2:
            a = np.asfortranarray(a)
        elif r < 0.3 and a.ndim:
            a = a[..., ::-1]
        elif r < 0.35:
            a = a.tolist()
        return a

    def rand_shape(like):
        r = rnd.random()
        if r < 0.3:
            return None
        shape = list(np.shape(like))
        if r < 0.5:
            return tuple(shape)
        if r < 0.6:
            return tuple(shape[:-1])
        if r < 0.7:
            return tuple(shape) + (1,)
        for i in range(len(shape)):
            if rnd.random() < 0.3:
                shape[i] = rnd.choice([None, 0, -1, 1, 2, 3, 7, 1.5, "x"])
        return tuple(shape)

    def conv_kwargs():
        kw = {}
        for name, pool in (("border_mode", BORDERS), ("subsample", STEPS),
                           ("filter_dilation", STEPS), ("num_groups", GROUPS),
                           ("filter_flip", FLIPS), ("unshared", UNSHARED), ("algo", ALGOS)):
            if rnd.random() < 0.5:
                kw[name] = rnd.choice(pool)
        return kw

    def case():
        kind = rnd.choice(["fwd2", "fwd3", "gin2", "gin3", "gw2", "gw3", "tr2", "causal",
                           "sep2", "up", "shape"])
        kw = conv_kwargs()
        if kind in ("fwd2", "fwd3"):
            nd = 2 if kind == "fwd2" else 3
            f = nbconv.conv2d if nd == 2 else nbconv.conv3d
            x, w = rand_array([nd + 1, nd + 2, nd + 2, nd + 2]), rand_array(
                [nd + 2, nd + 2, 2 * nd + 2, nd + 1])
            if rnd.random() < 0.3:
                kw["input_shape"] = rand_shape(x)
            if rnd.random() < 0.3:
                kw["filter_shape"] = rand_shape(w)
            return f, (x, w), kw
        if kind in ("gin2", "gin3", "tr2"):
            nd = 3 if kind == "gin3" else 2
            f = {"gin2": nbconv.conv2d_grad_wrt_inputs, "gin3": nbconv.conv3d_grad_wrt_inputs,
                 "tr2": nbconv.conv2d_transpose}[kind]
            dy, w = rand_array([nd + 2, nd + 2, nd + 1]), rand_array([nd + 2, 2 * nd + 2])
            shape = rand_shape(np.zeros([rnd.randint(0, 7) for _ in range(nd + 2)]))
            if kind == "tr2" and "subsample" in kw:
                kw["input_dilation"] = kw.pop("subsample")
            return f, (dy, w, shape), kw
        if kind in ("gw2", "gw3"):
            nd = 2 if kind == "gw2" else 3
            f = nbconv.conv2d_grad_wrt_weights if nd == 2 else nbconv.conv3d_grad_wrt_weights
            x, dy = rand_array([nd + 2, nd + 2, nd + 1]), rand_array([nd + 2, nd + 2, nd + 3])
            shape = rand_shape(np.zeros([rnd.randint(0, 4) for _ in range(
                rnd.choice([nd + 2, 2 * nd + 2]))]))
            return f, (x, dy, shape), kw
        if kind == "causal":
            kw.pop("border_mode", None)
            if "subsample" in kw:
                kw["subsample"] = rnd.choice([1, 2, 0, -1, 1.5, True, (1,), None])
            if "filter_dilation" in kw:
                kw["filter_dilation"] = rnd.choice([1, 2, 0, -1, 1.5, True, (1,), None])
            x, w = rand_array([3, 3, 4]), rand_array([3, 3, 4, 2])
            return nbconv.causal_conv1d, (x, w, rand_shape(w)), kw
        if kind == "sep2":
            for k in ("num_groups", "unshared"):
                kw.pop(k, None)
            x = rand_array([4, 4, 3])
            c = np.shape(x)[1] if np.ndim(x) > 1 else 1
            dw, pw = rand_array([4, 4, 3]), rand_array([4, 4, 5])
            return nbconv.separable_conv2d, (x, dw, pw, rnd.choice([c, c, 0, -1, 2, 1.5])), kw
        if kind == "up":
            x = rand_array([4, 4, 3])
            ukw = {}
            if rnd.random() < 0.7:
                ukw["ratio"] = rnd.choice([1, 2, 3, 0, -1, 1.5, None, True, (2, 2)])
            if rnd.random() < 0.4:
                ukw["frac_ratio"] = rnd.choice([(3, 2), ((3, 2), (2, 1)), (0, 1), (1, 0),
                                               (2,), 2, None, ((1, 2, 3), 1), (-3, 2)])
            if rnd.random() < 0.5:
                ukw["use_1D_kernel"] = rnd.choice([True, False, 1, None])
            return nbconv.bilinear_upsampling, (x,), ukw
        f = rnd.choice([nbconv.get_conv_output_shape, nbconv.get_conv_gradinputs_shape,
                        nbconv.get_conv_gradweights_shape])
        a = rand_shape(np.zeros([rnd.randint(0, 5) for _ in range(4)])) or (1, 1, 3, 3)
        b = rand_shape(np.zeros([rnd.randint(0, 5) for _ in range(4)])) or (1, 1, 3, 3)
        return f, (a, b, rnd.choice(BORDERS), rnd.choice(STEPS)), {}

    def near_valid():
        """A valid problem with one thing changed slightly (an off-by-one shape, a kwarg, a
        dtype): the mismatches most likely to slip past validation into a kernel."""
        nd = rnd.choice([1, 2, 3])
        G, Cg, Og, N = rnd.choice([1, 2]), rnd.randint(1, 2), rnd.randint(1, 2), rnd.randint(0, 2)
        k = [rnd.randint(1, 3) for _ in range(nd)]
        i = [rnd.randint(ka, ka + 3) for ka in k]
        o = [ia - ka + 1 for ia, ka in zip(i, k)]
        unshared = rnd.random() < 0.3
        x_shape = [N, Cg * G] + i
        w_shape = [Og * G] + (o if unshared else []) + [Cg] + k
        y_shape = [N, Og * G] + (o if nd > 1 else [i[0]])
        if nd == 1:  # causal: output length = input length
            w_shape = [Og * G] + ([i[0]] if unshared else []) + [Cg] + k
        direction = rnd.choice(["fwd", "gin", "gw"]) if nd > 1 else "fwd"
        shapes = {"x": x_shape, "w": w_shape, "y": y_shape}
        hints = {"x": list(x_shape), "w": list(w_shape)}
        kw = {"num_groups": G, "unshared": unshared}
        m = rnd.choice(["x", "w", "y", "hint_x", "hint_w", "kw", "dtype"])
        if m in ("x", "w", "y"):
            shp = shapes[m]
            j = rnd.randrange(len(shp))
            shp[j] = max(0, shp[j] + rnd.choice([-1, 1, 2]))
        elif m in ("hint_x", "hint_w"):
            h = hints[m[-1]]
            j = rnd.randrange(len(h))
            h[j] = max(0, h[j] + rnd.choice([-1, 1]))
        elif m == "kw":
            name, pool = rnd.choice([("border_mode", BORDERS), ("subsample", STEPS),
                                     ("filter_dilation", STEPS), ("num_groups", GROUPS),
                                     ("unshared", UNSHARED), ("filter_flip", FLIPS)])
            kw[name] = rnd.choice(pool)
        dts = {"x": np.float64, "w": np.float64, "y": np.float64}
        if m == "dtype":
            dts[rnd.choice("xwy")] = rnd.choice(DTYPES)
        arr = {a: nrng.standard_normal(shapes[a]).astype(dts[a]) for a in "xwy"}
        if nd == 1:
            if "border_mode" in kw:
                kw.pop("border_mode")
            for key in ("subsample", "filter_dilation"):
                if key in kw and isinstance(kw[key], tuple):
                    kw[key] = kw[key][0] if kw[key] else 0
            return nbconv.causal_conv1d, (arr["x"], arr["w"], tuple(hints["w"])), dict(
                kw, input_shape=tuple(hints["x"]))
        suffix = "2d" if nd == 2 else "3d"
        if direction == "fwd":
            f = getattr(nbconv, "conv" + suffix)
            return f, (arr["x"], arr["w"]), dict(kw, input_shape=tuple(hints["x"]),
                                                 filter_shape=tuple(hints["w"]))
        if direction == "gin":
            f = getattr(nbconv, "conv" + suffix + "_grad_wrt_inputs")
            return f, (arr["y"], arr["w"], tuple(hints["x"])), dict(
                kw, filter_shape=tuple(hints["w"]))
        f = getattr(nbconv, "conv" + suffix + "_grad_wrt_weights")
        return f, (arr["x"], arr["y"], tuple(hints["w"])), dict(kw, input_shape=tuple(hints["x"]))

    HELPERS = (nbconv.get_conv_output_shape, nbconv.get_conv_gradinputs_shape,
               nbconv.get_conv_gradweights_shape)
    counts = {"ok": 0, "rejected": 0, "helper_other": 0}
    unexpected = []
    for it in range(N_ITER):
        f, args, kw = near_valid() if rnd.random() < 0.5 else case()
        try:
            f(*args, **kw)
        except (ValueError, TypeError):
            counts["rejected"] += 1
        except Exception as exc:
            if f in HELPERS:  # Theano's shape helpers only promise not to crash the interpreter
                counts["helper_other"] += 1
                continue
            # the conv functions must reject bad arguments with ValueError / TypeError
            unexpected.append(f"{f.__name__} {kw!r}: {type(exc).__name__}: {exc}"[:400])
        else:
            counts["ok"] += 1
    print("FUZZ-RESULT " + json.dumps(dict(counts, unexpected=unexpected[:10],
                                           n_unexpected=len(unexpected))))
    '''
)


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzz_bad_arguments_never_crash(seed):
    env = dict(os.environ)
    env.setdefault("NUMBA_NUM_THREADS", "2")
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ_SCRIPT, str(seed), "1500"], capture_output=True, text=True,
        timeout=600, env=env,
    )
    assert proc.returncode == 0, (
        f"fuzz subprocess died with return code {proc.returncode}\n"
        f"stdout tail: {proc.stdout[-2000:]}\nstderr tail: {proc.stderr[-4000:]}"
    )
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FUZZ-RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(line[-1][len("FUZZ-RESULT "):])
    assert result["rejected"] > 100, result  # the fuzz really exercised the validation
    assert result["ok"] > 10, result  # ... and some valid calls ran their kernels
    assert result["n_unexpected"] == 0, "\n".join(result["unexpected"])
