"""phase_direct: its blocked passes' edges (channel and tap remainders, segments, chunks, the
grad-weights ranges of each thread) and its stride-1 grad-input, against the reference.

The registry-parametrized sweeps run it with the default segment and chunk sizes, where small
problems are one segment of one chunk, and meet few stride-1 problems whose grad-input it takes;
here the sizes shrink so every boundary is crossed, and grad-input gets a sweep of its own.
"""
import numba
import numpy as np
import pytest
import reference as R
from helpers import Sweep, compare, plans_within_limit, rand, random_case, shared_spec

import nbconv
from nbconv.cpu import im2col, im2col_flat, phase_direct
from nbconv.spec import build
from nbconv.threads import threads

FWD = {2: nbconv.conv2d, 3: nbconv.conv3d}
GIN = {2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}
GW = {2: nbconv.conv2d_grad_wrt_weights, 3: nbconv.conv3d_grad_wrt_weights}


def _check(case, rng, directions):
    """None, or the first of ``directions`` whose phase_direct result differs from the reference."""
    nd = case.nd
    x = rand(rng, case.x_shape, case.dtype)
    w = rand(rng, case.w_shape, case.dtype)
    dy = rand(rng, case.y_shape, case.dtype)
    kw = dict(subsample=case.subsample, algo="phase_direct", **case.kwargs())
    rk = case.ref_kwargs()
    runs = {
        "forward": (lambda: FWD[nd](x, w, **kw), lambda a, b: R.conv_nd(a, b, **rk), (x, w),
                    case.y_shape),
        "grad_input": (lambda: GIN[nd](dy, w, case.x_shape, **kw),
                       lambda a, b: R.conv_nd_grad_input(a, b, case.x_shape, **rk), (dy, w),
                       case.x_shape),
        "grad_weights": (lambda: GW[nd](x, dy, case.w_shape, **kw),
                         lambda a, b: R.conv_nd_grad_weights(a, b, case.w_shape, **rk), (x, dy),
                         case.w_shape),
    }
    for d in directions:
        run, ref, (a, b), shape = runs[d]
        mag = ref(np.abs(a), np.abs(b))
        msg = compare(run(), ref(a, b), case.dtype, float(mag.max()) if mag.size else 1.0, shape)
        if msg:
            return f"{d}: {msg}"
    return None


@pytest.fixture
def small_blocks(monkeypatch):
    """Segments of a few grid rows, grad-weights blocks of 5 positions, chunks of ~1-2 images."""
    monkeypatch.setattr(phase_direct, "_SEG_FWD", 7)
    monkeypatch.setattr(phase_direct, "_SEG_GW", 5)
    monkeypatch.setattr(im2col, "_CHUNK_TARGET", 3000)


@pytest.mark.parametrize("nthreads", sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}))
@pytest.mark.parametrize("nd", [2, 3])
def test_blocked_passes_cross_every_boundary(small_blocks, nd, nthreads):
    """Output channels per group 1-9 (the 4-channel blocks and their remainder), (channel, tap)
    rows not a multiple of 8 or 4, several segments and chunks per problem, and grad-weights'
    per-thread ranges that start and end inside an image."""
    rng = np.random.default_rng(8800 + 10 * nd + nthreads)
    sweep = Sweep("phase_direct")
    for idx in range(24 if nd == 2 else 10):
        case = random_case(rng, nd, idx, unshared=False, batch=int(rng.integers(1, 5)),
                           og=int(rng.integers(1, 10)), cg=int(rng.integers(1, 4)),
                           max_spatial=10 if nd == 2 else 6, max_stride=3)
        if not phase_direct.supports(shared_spec(case, "forward")):
            continue
        with threads(nthreads):
            sweep.run(f"[{idx}] {case!r}", lambda case=case: _check(case, rng, ("forward", "grad_weights")))
    sweep.check()
    assert sweep.applicable >= (15 if nd == 2 else 6)


@pytest.mark.parametrize("nd", [2, 3])
def test_stride_one_grad_input_sweep(nd):
    """Grad-input as the adjoint's forward: every border form whose pads the dilated kernel
    covers, dilations, groups, both dtypes and flips, with and without the small blocks."""
    rng = np.random.default_rng(8900 + nd)
    sweep = Sweep("phase_direct")
    for idx in range(60 if nd == 2 else 24):
        case = random_case(rng, nd, idx, unshared=False, max_stride=1,
                           og=int(rng.integers(1, 7)), batch=int(rng.integers(1, 4)))
        spec = shared_spec(case, "grad_input")
        if not phase_direct.supports(spec):
            # only low pads beyond the dilated kernel's extent less one are refused
            assert any(lo > (k - 1) * d for lo, k, d in
                       zip(spec.pad_lo, spec.kernel, spec.dilation)), case
            continue
        if idx % 2:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(phase_direct, "_SEG_FWD", 5)
                mp.setattr(im2col, "_CHUNK_TARGET", 2000)
                sweep.run(f"[{idx}] {case!r}", lambda case=case: _check(case, rng, ("grad_input",)))
        else:
            sweep.run(f"[{idx}] {case!r}", lambda case=case: _check(case, rng, ("grad_input",)))
    sweep.check()
    assert sweep.applicable >= (30 if nd == 2 else 12)


def test_adjoint_is_a_forward_problem_with_the_input_shape():
    rng = np.random.default_rng(9000)
    seen = 0
    for idx in range(80):
        nd = int(rng.integers(1, 4))
        case = random_case(rng, nd, idx, unshared=False, max_stride=1)
        spec = shared_spec(case, "grad_input")
        adj = phase_direct._adjoint(spec)
        assert adj.direction == "forward" and adj.flip == (not spec.flip)
        assert (adj.batch, adj.in_channels, adj.out_channels) == (spec.batch, spec.out_channels,
                                                                  spec.in_channels)
        assert adj.x_shape == spec.y_shape and adj.y_shape == spec.x_shape
        if phase_direct.supports(spec):
            # a negative high pad leaves unread the last dy rows, which saw only padding
            assert min(adj.pad_lo) >= 0
            seen += 1
    assert seen > 20


def test_strided_grad_input_and_oversized_pads_are_not_applicable():
    x = np.ones((1, 2, 9, 9), dtype=np.float32)
    w = np.ones((3, 2, 3, 3), dtype=np.float32)
    dy_strided = np.ones((1, 3, 4, 4), dtype=np.float32)
    with pytest.raises(nbconv.AlgorithmNotApplicable):
        nbconv.conv2d_grad_wrt_inputs(dy_strided, w, x.shape, subsample=2, algo="phase_direct")
    # pad 3 > (3 - 1) * 1: the adjoint would crop, which the phase planes do not do
    dy_wide = np.ones((1, 3, 13, 13), dtype=np.float32)
    with pytest.raises(nbconv.AlgorithmNotApplicable):
        nbconv.conv2d_grad_wrt_inputs(dy_wide, w, x.shape, border_mode=3, algo="phase_direct")
    # the forward and grad-weights of those problems are taken
    np.testing.assert_allclose(nbconv.conv2d(x, w, subsample=2, algo="phase_direct"),
                               R.conv_nd(x, w, subsample=(2, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        nbconv.conv2d_grad_wrt_weights(x, dy_wide, w.shape, border_mode=3, algo="phase_direct"),
        R.conv_nd_grad_weights(x, dy_wide, w.shape, border_mode=3), rtol=1e-5)


def test_workspace_is_the_planes_of_a_chunk_plus_the_per_thread_sums(monkeypatch):
    monkeypatch.setattr(im2col, "_CHUNK_TARGET", 8 * 2**20)
    spec = build("grad_weights", 2, (8, 3, 224, 224), (64, 3, 7, 7), border_mode=3, subsample=2,
                 filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "x", "w": "w"})
    g = im2col_flat._grid(spec)
    nb, ws = phase_direct._plan(spec)
    per = (3 * len(g.phases) * g.PS + 64 * g.Lb) * 4
    assert nb == max(1, min(8, 8 * 2**20 // per))
    assert ws == nb * per + numba.get_num_threads() * 64 * 147 * 4
    assert phase_direct.workspace(spec) == ws


def test_workspace_never_exceeds_the_limit(workspace_limit):
    """For random problems and limits: whenever the algorithm applies, its planned workspace
    (what it allocates) fits the limit, and a chunk holds at least one image."""
    fitted, refused = plans_within_limit(phase_direct, np.random.default_rng(9100),
                                         ("forward", "grad_input", "grad_weights"), workspace_limit, 20000)
    assert fitted > 20 and refused > 20


@pytest.mark.parametrize("direction", ["forward", "grad_input", "grad_weights"])
def test_an_image_over_the_workspace_limit_is_not_applicable(workspace_limit, direction):
    x = np.ones((2, 3, 10, 10), dtype=np.float32)
    w = np.ones((5, 3, 3, 3), dtype=np.float32)
    spec = build(direction, 2, x.shape, w.shape, border_mode=1, subsample=(1, 1),
                 filter_dilation=(1, 1), num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "x", "w": "w"})
    one = phase_direct._plan_one(spec if direction != "grad_input" else phase_direct._adjoint(spec))
    calls = {
        "forward": (lambda: nbconv.conv2d(x, w, border_mode=1, algo="phase_direct"),
                    lambda: R.conv_nd(x, w, border_mode=1)),
        "grad_input": (lambda: nbconv.conv2d_grad_wrt_inputs(x[:, :1].repeat(5, 1), w, x.shape,
                                                              border_mode=1, algo="phase_direct"),
                       lambda: R.conv_nd_grad_input(x[:, :1].repeat(5, 1), w, x.shape, border_mode=1)),
        "grad_weights": (lambda: nbconv.conv2d_grad_wrt_weights(x, x[:, :1].repeat(5, 1), w.shape,
                                                                border_mode=1, algo="phase_direct"),
                         lambda: R.conv_nd_grad_weights(x, x[:, :1].repeat(5, 1), w.shape,
                                                        border_mode=1)),
    }
    run, ref = calls[direction]
    workspace_limit(one)
    assert phase_direct.supports(spec) and phase_direct.workspace(spec) <= 2 * one
    np.testing.assert_allclose(run(), ref(), rtol=1e-5)
    workspace_limit(one - 1)
    assert not phase_direct.supports(spec)
    with pytest.raises(nbconv.AlgorithmNotApplicable):
        run()


def test_stride_one_fill_writes_every_plane_element_as_the_general_fill():
    """_planes_s1_kernel (copies rows, zeroes only the gaps) against _planes_kernel (zeroes the
    planes, then copies) on stride-1 problems, the adjoints of grad-input included (their high
    pads may be negative: the plane crops the input); planes start as NaN, so an element the
    stride-1 fill skips shows."""
    rng = np.random.default_rng(9200)
    seen = 0
    for idx in range(60):
        case = random_case(rng, int(rng.integers(1, 4)), idx, unshared=False, max_stride=1,
                           batch=int(rng.integers(1, 4)))
        spec = shared_spec(case, ("forward", "grad_input")[idx % 2])
        if not phase_direct.supports(spec):
            continue
        spec = phase_direct._adjoint(spec) if spec.direction == "grad_input" else spec
        g = im2col_flat._grid(spec)
        x = rand(rng, spec.x_shape, case.dtype)
        shape = (spec.batch, spec.in_channels, len(g.phases) * g.PS)
        want = np.empty(shape, dtype=case.dtype)
        phase_direct._planes_kernel(x, want, 0, len(g.phases), g.phase_index, g.Dq, g.Hq, g.Wq,
                                    g.PS, *spec.stride, *spec.pad_lo)
        got = np.full(shape, np.nan, dtype=case.dtype)
        phase_direct._fill(spec, g, x, got, 0)
        np.testing.assert_array_equal(got, want, err_msg=repr(case))
        seen += 1
    assert seen > 25
