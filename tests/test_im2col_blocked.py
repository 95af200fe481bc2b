"""im2col's chunked paths against the reference: every chunking, GEMM arrangement and stride phase.

The sweeps in test_sweep.py run with the default workspace limit, where every small problem is one
chunk. Here the limit is shrunk so that problems split into several multi-image chunks (with a
short last one) or into partial images (several chunks per image, down to one output position),
and the module's GEMM switches (one GEMM per chunk vs per image, dW vs dW^T) are forced both
ways.
"""
import itertools

import numba
import numpy as np
import pytest
import reference as R
from helpers import DTYPES, Sweep, check_directions, compare, rand, random_case

import nbconv
from nbconv.cpu import im2col
from nbconv.spec import build
from nbconv.threads import threads

# bytes: one output position per chunk, a few positions, part of an image, a few images, all
LIMITS = (1, 700, 6000, 60000, None)


@pytest.fixture
def knobs(monkeypatch):
    """Set im2col's workspace limit and GEMM switches for one test; restored afterwards."""
    saved = im2col.get_workspace_limit()

    def apply(limit, batch_p, transpose_max):
        im2col.set_workspace_limit(limit or saved)
        monkeypatch.setattr(im2col, "_BATCH_P", batch_p)
        monkeypatch.setattr(im2col, "_GW_TRANSPOSE_MAX", transpose_max)

    yield apply
    im2col.set_workspace_limit(saved)


def _scale(a):
    return float(np.abs(a).max()) if a.size else 1.0


@pytest.mark.parametrize("limit", LIMITS, ids=lambda v: f"limit{v}")
@pytest.mark.parametrize("nd", [2, 3])
def test_chunked_sweep(knobs, nd, limit):
    rng = np.random.default_rng(7000 + 10 * nd + LIMITS.index(limit))
    sweep = Sweep("im2col")
    for idx in range(24 if nd == 2 else 10):
        # alternate the GEMM switches so each chunking meets both arrangements
        knobs(limit, (0, 1 << 30)[idx % 2], (0, 1 << 30)[(idx // 2) % 2])
        case = random_case(rng, nd, idx, unshared=False, batch=int(rng.integers(1, 6)),
                           max_spatial=11 if nd == 2 else 6, kmax=5 if nd == 2 else 3, max_stride=4)
        sweep.run(f"[{idx}] {case!r}", lambda case=case: check_directions(case, rng, "im2col"))
    sweep.check()


# Scaled-down shapes of the benchmark cases whose kernels take the strided phase-split path
# (stride 2 with kernels wider than, equal to and narrower than the stride), the batched small-P
# GEMMs, and groups; each with the default limit and with a limit that splits images.
SHAPES = [
    # (x shape, w shape, border_mode, subsample, dilation, groups)
    ((3, 3, 30, 30), (8, 3, 7, 7), 3, (2, 2), (1, 1), 1),  # ResNet's conv1
    ((3, 6, 16, 16), (10, 6, 4, 4), 1, (2, 2), (1, 1), 1),  # DCGAN's transposed conv
    ((2, 8, 15, 13), (8, 8, 3, 3), 1, (2, 2), (1, 1), 1),  # strided 3x3, odd sizes
    ((4, 8, 7, 7), (16, 8, 3, 3), 1, (1, 1), (1, 1), 1),  # ResNet's 3x3 at 7x7 (batched GEMMs)
    ((2, 4, 17, 19), (6, 2, 2, 3), (0, 2), (3, 3), (1, 2), 2),  # stride 3, groups, dilation
    ((2, 4, 9, 20), (4, 4, 1, 2), 0, (1, 4), (1, 1), 1),  # kernel narrower than the stride
]


def shape_check(shape, dtype, seed):
    """A function running the three directions of ``shape`` (a SHAPES entry) under an algorithm
    and returning the first mismatch with the reference, or None."""
    xs, ws, bm, s, d, g = shape
    rng = np.random.default_rng(seed)
    x, w = rand(rng, xs, dtype), rand(rng, ws, dtype)
    kw = {"border_mode": bm, "subsample": s, "filter_dilation": d, "num_groups": g}
    y_ref = R.conv_nd(x, w, **kw)
    dy = rand(rng, y_ref.shape, dtype)
    refs = (
        (y_ref, R.conv_nd(np.abs(x), np.abs(w), **kw)),
        (R.conv_nd_grad_input(dy, w, xs, **kw), R.conv_nd_grad_input(np.abs(dy), np.abs(w), xs, **kw)),
        (R.conv_nd_grad_weights(x, dy, ws, **kw), R.conv_nd_grad_weights(np.abs(x), np.abs(dy), ws, **kw)),
    )

    def check(algo):
        got = (
            nbconv.conv2d(x, w, algo=algo, **kw),
            nbconv.conv2d_grad_wrt_inputs(dy, w, xs, algo=algo, **kw),
            nbconv.conv2d_grad_wrt_weights(x, dy, ws, algo=algo, **kw),
        )
        for out, (ref, mag) in zip(got, refs):
            msg = compare(out, ref, dtype, _scale(mag), ref.shape)
            if msg:
                return msg
        return None

    return check


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("limit", (4000, None), ids=("split", "default"))
@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_strided_and_batched_shapes(knobs, shape, limit, dtype):
    check = shape_check(shape, dtype, 8000)
    # with every thread count: the kernels divide the columns in one block per thread
    most = numba.config.NUMBA_NUM_THREADS
    counts = sorted({1, min(2, most), most})
    for batch_p, transpose_max, n in itertools.product((1 << 30, 0), (1 << 30, 0), counts):
        knobs(limit, batch_p, transpose_max)
        with threads(n):
            msg = check("im2col")
        assert msg is None, (batch_p, transpose_max, n, msg)


def test_workspace_is_honest(knobs):
    """The declared workspace never exceeds the limit when one output position fits it."""
    case_rng = np.random.default_rng(9000)
    for idx in range(40):
        case = random_case(case_rng, 2, idx, unshared=False, batch=int(case_rng.integers(1, 6)))
        for limit in (700, 6000, 60000):
            knobs(limit, 1024, 1 << 18)
            for direction in ("forward", "grad_input", "grad_weights"):
                spec = build(
                    direction, 2, case.x_shape, case.w_shape, border_mode=case.border_mode,
                    subsample=case.subsample, filter_dilation=case.dilation,
                    num_groups=case.groups, unshared=False, filter_flip=case.flip,
                    dtype=case.dtype, names={"x": "x", "w": "w"},
                )
                nb, L, ws = im2col._plan(spec)
                one = (spec.in_channels * im2col._taps(spec) + 2 * spec.out_channels
                       * spec.group_in * im2col._taps(spec)) * spec.np_dtype.itemsize
                if one <= limit:
                    assert ws <= limit, (case, limit, direction, nb, L, ws)
