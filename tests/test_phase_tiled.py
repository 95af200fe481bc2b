"""phase_tiled: its LLVM micro-kernel for every tile shape, and the tiling's edges (output
channels left over after the 6-channel tiles, rows not a multiple of the block, segments rounded
up to whole vectors, several segments and chunks; for grad-weights input channels left over after
the 6-channel tiles, output channels in several blocks of vectors and across groups) against the
reference.

The registry-parametrized sweeps run it at its default sizes, where small problems are one block
of rows in one segment of one chunk; here the sizes shrink so every boundary is crossed.
"""
import numba
import numpy as np
import pytest
import reference as R
from helpers import Sweep, compare, plans_within_limit, rand, random_case, shared_spec
from numba import njit

import nbconv
from nbconv.cpu import im2col, phase_direct, phase_tiled
from nbconv.cpu._vtile import MAX_NV, NOS, _tile, vector_width
from nbconv.spec import build
from nbconv.threads import threads

@njit
def _run_tile(no, nv, ld, pl, off, w, y, r0, r1, a, wo, yo, ldw):
    _tile(no, nv, ld, pl, off, w, y, r0, r1, a, wo, yo, ldw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("no", NOS)
def test_micro_kernel_every_tile_shape(no, dtype):
    """y[yo + o*ldy + i] = (y if ld else 0) + sum_{r0<=r<r1} w[wo + o*ldw + r] * pl[off[r] + a + i],
    and nothing else of y changes."""
    rng = np.random.default_rng(77 + no)
    VW = vector_width(np.dtype(dtype).itemsize)
    for nv in range(1, MAX_NV + 1):
        for ld in (False, True):
            pl = rng.standard_normal(600).astype(dtype)
            off = rng.integers(0, 600 - nv * VW - 9, 11).astype(np.int64)
            ldw = 13
            w = rng.standard_normal(ldw * (no + 2)).astype(dtype)
            y = rng.standard_normal((no + 1, nv * VW + 7)).astype(dtype)
            y0 = y.copy()
            r0, r1, a, wo, yo = 2, 9, 5, ldw + 1, 3
            _run_tile(no, nv, ld, pl, off, w, y, r0, r1, a, wo, yo, ldw)
            want = y0.copy().reshape(-1)
            ldy = y.shape[1]
            for o in range(no):
                for i in range(nv * VW):
                    s = sum(np.float64(w[wo + o * ldw + r]) * pl[off[r] + a + i] for r in range(r0, r1))
                    k = yo + o * ldy + i
                    want[k] = s + (want[k] if ld else 0)
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(y.reshape(-1), want, rtol=tol, atol=tol * 10,
                                       err_msg=f"no={no} nv={nv} ld={ld}")


def _check(case, rng, direction):
    nd = max(case.nd, 2)
    x = rand(rng, case.x_shape, case.dtype)
    w = rand(rng, case.w_shape, case.dtype)
    dy = rand(rng, case.y_shape, case.dtype)
    rk = case.ref_kwargs()
    kw = dict(subsample=case.subsample, algo="phase_tiled", **case.kwargs())
    if direction == "forward":
        fn = {2: nbconv.conv2d, 3: nbconv.conv3d}[nd]
        out, a, b = fn(x, w, **kw), x, w
        ref = lambda a, b: R.conv_nd(a, b, **rk)  # noqa: E731
    elif direction == "grad_weights":
        fn = {2: nbconv.conv2d_grad_wrt_weights, 3: nbconv.conv3d_grad_wrt_weights}[nd]
        out, a, b = fn(x, dy, case.w_shape, **kw), x, dy
        ref = lambda a, b: R.conv_nd_grad_weights(a, b, case.w_shape, **rk)  # noqa: E731
    else:
        fn = {2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}[nd]
        out, a, b = fn(dy, w, case.x_shape, **kw), dy, w
        ref = lambda a, b: R.conv_nd_grad_input(a, b, case.x_shape, **rk)  # noqa: E731
    mag = ref(np.abs(a), np.abs(b))
    return compare(out, ref(a, b), case.dtype, float(mag.max()) if mag.size else 1.0, out.shape)


@pytest.fixture
def small_tiles(monkeypatch):
    """Blocks of 5 rows, segments of about 7 positions (whole grid rows) whatever the channel
    count, chunks of ~1-2 images."""
    monkeypatch.setattr(phase_tiled, "_ROWS", 5)
    monkeypatch.setattr(phase_tiled, "_SEG", 7)
    monkeypatch.setattr(phase_tiled, "_SEG_MAX", 7)
    monkeypatch.setattr(im2col, "_CHUNK_TARGET", 3000)


@pytest.mark.parametrize("fuse", [False, True])
@pytest.mark.parametrize("nthreads", sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}))
@pytest.mark.parametrize("nd", [2, 3])
def test_tiles_cross_every_boundary(small_tiles, monkeypatch, nd, nthreads, fuse):
    """Output channels per group 1-15 (6-channel tiles and every remainder), rows not a multiple
    of the block, several segments and chunks, strides, groups, dilations, both dtypes and
    flips; grad-input, strided included; grad-weights (input channels 1-15 per group: every
    remainder of the 6-channel tiles; several chunks). ``fuse``: every forward (and
    grad-input) fills its planes in its tasks, or none does."""
    monkeypatch.setattr(phase_tiled, "_FUSE_BYTES", 1 << 40 if fuse else -1)
    monkeypatch.setattr(phase_tiled, "_FUSE_TASKS", 0)
    rng = np.random.default_rng(9300 + 10 * nd + nthreads)
    sweep = Sweep("phase_tiled")
    for idx in range(24 if nd == 2 else 10):
        case = random_case(rng, nd, idx, unshared=False, batch=int(rng.integers(1, 5)),
                           og=int(rng.integers(1, 16)), cg=int(rng.integers(1, 4 if idx % 2 else 16)),
                           max_spatial=12 if nd == 2 else 6, max_stride=3)
        for direction in ("forward", "grad_input", "grad_weights"):
            if not phase_tiled.supports(shared_spec(case, direction)):
                continue
            with threads(nthreads):
                sweep.run(f"[{idx}] {direction} {case!r}",
                          lambda case=case, d=direction: _check(case, rng, d))
    sweep.check()
    assert sweep.applicable >= (15 if nd == 2 else 6)


def test_default_sizes_long_rows_and_many_channels():
    """One problem at the default sizes with more rows than a block and a segment longer than
    the default, 13 output channels (two 6-channel tiles and a single one), float64."""
    rng = np.random.default_rng(9400)
    x = rng.standard_normal((2, 9, 40, 37))
    w = rng.standard_normal((13, 9, 3, 4))
    y = nbconv.conv2d(x, w, border_mode=(1, 2), subsample=(1, 2), algo="phase_tiled")
    np.testing.assert_allclose(y, R.conv_nd(x, w, border_mode=(1, 2), subsample=(1, 2)),
                               rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_weights_output_channels_in_several_vector_blocks(dtype):
    """Grad-weights with 70 output channels per group (5 vectors of float32, 9 of float64: a
    block of 4 vectors and a shorter one), 13 input channels per group (6 + 6 + 1), 2 groups whose
    vectors overlap the next group's channels, stride 2 and a dilation, both flips, several
    chunks."""
    rng = np.random.default_rng(9450)
    x = rng.standard_normal((3, 26, 11, 10)).astype(dtype)
    w_shape = (140, 13, 3, 2)
    kw = dict(border_mode=(1, 2), subsample=(2, 1), filter_dilation=(1, 2), num_groups=2)
    dy = rng.standard_normal(nbconv.conv2d(x, np.zeros(w_shape, dtype), **kw).shape).astype(dtype)
    tol = 2e-4 if dtype == np.float32 else 1e-11
    for flip in (True, False):
        got = nbconv.conv2d_grad_wrt_weights(x, dy, w_shape, filter_flip=flip, algo="phase_tiled", **kw)
        want = R.conv_nd_grad_weights(x, dy, w_shape, filter_flip=flip, **kw)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_grad_input_phases(dtype):
    """Strided grad-input, one forward problem per phase of dx, on the phases' edge cases: taps
    reaching no phase (a 1-tap axis at stride 3 leaves two of three phases zero), a dilation
    sharing a factor with the stride (only even phases have taps), high padding whose phases read
    dy from an offset (a cropped dy), an input shorter than the stride, 3-D with groups, both
    flips."""
    rng = np.random.default_rng(9470)
    cases = [  # x shape, w shape, border_mode, subsample, dilation, groups
        ((2, 3, 10, 11), (4, 3, 1, 3), (0, 1), (3, 2), (1, 1), 1),
        ((1, 4, 12, 9), (6, 2, 3, 2), (2, 1), (2, 2), (2, 1), 2),
        ((2, 2, 9, 8), (3, 2, 3, 4), "full", (2, 3), (1, 1), 1),
        ((1, 2, 2, 7), (3, 2, 2, 3), (1, 2), (3, 2), (1, 2), 1),
        ((2, 4, 5, 6, 7), (4, 2, 2, 3, 2), (1, 1, 0), (2, 2, 3), (1, 1, 2), 2),
    ]
    tol = 2e-4 if dtype == np.float32 else 1e-11
    for x_shape, w_shape, bm, sub, dil, G in cases:
        nd = len(x_shape) - 2
        w = rng.standard_normal(w_shape).astype(dtype)
        kw = dict(border_mode=bm, subsample=sub, filter_dilation=dil, num_groups=G)
        fn = {2: nbconv.conv2d, 3: nbconv.conv3d}[nd]
        grad = {2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}[nd]
        dy = rng.standard_normal(fn(np.zeros(x_shape, dtype), w, **kw).shape).astype(dtype)
        for flip in (True, False):
            got = grad(dy, w, x_shape, filter_flip=flip, algo="phase_tiled", **kw)
            want = R.conv_nd_grad_input(dy, w, x_shape, filter_flip=flip, **kw)
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(),
                                       err_msg=f"{x_shape} {w_shape} {kw} flip={flip}")
    assert nbconv.registry.get("phase_tiled").directions == {"forward", "grad_input", "grad_weights"}


def test_strided_grad_input_phase_problems():
    """The phases of a stride-2 4x4 layer (DCGAN's): four 2x2 stride-1 problems with dy's
    channels in and x's out, each as many flops as a quarter of the layer; a 1-tap axis at
    stride 3 leaves two of its three phases without a problem."""
    spec = build("grad_input", 2, (8, 128, 32, 32), (256, 128, 4, 4), border_mode=1, subsample=2,
                 filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "x", "w": "w"})
    subs = [sub for _, sub, _, _ in phase_tiled._phases(spec)]
    assert len(subs) == 4 and all(s.kernel == (1, 2, 2) and s.stride == (1, 1, 1) for s in subs)
    assert all(s.in_channels == 256 and s.out_channels == 128 and s.out_size == (1, 16, 16) for s in subs)
    assert sum(s.flops() for s in subs) == spec.flops()
    spec = build("grad_input", 2, (1, 2, 9, 9), (3, 2, 1, 3), border_mode=0, subsample=(3, 1),
                 filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "x", "w": "w"})
    assert sum(sub is None for _, sub, _, _ in phase_tiled._phases(spec)) == 2


def test_workspace_never_exceeds_the_limit(workspace_limit):
    """For random problems and limits: whenever it applies, the planned workspace (planes, slack
    and every thread's accumulators) fits the limit, with at least one image per chunk."""
    fitted, refused = plans_within_limit(phase_tiled, np.random.default_rng(9500),
                                         ("forward", "grad_input", "grad_weights"), workspace_limit,
                                         16000)
    assert fitted > 20 and refused > 20


def test_workspace_counts_the_accumulators_of_every_thread(monkeypatch):
    """With the separate fill: a chunk's planes, every thread's accumulators, the slack."""
    monkeypatch.setattr(phase_tiled, "_FUSE_BYTES", -1)
    spec = build("forward", 2, (8, 128, 56, 56), (128, 128, 3, 3), border_mode=1, subsample=2,
                 filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "x", "w": "w"})
    nb, ws = phase_tiled._plan(spec)
    g = phase_tiled._flat._grid(spec)
    L = min(phase_tiled._segment(g, 128), g.Lb)
    acc = numba.get_num_threads() * 128 * (-(-L // 16) * 16)
    assert ws == (nb * phase_direct._per_image(spec) + acc + phase_tiled._slack(spec)) * 4


def test_fused_fill_workspace_and_rule():
    """ResNeXt's grouped layer and the strided 3x3 (four phase planes per channel) fill their
    planes in their tasks: the workspace is each thread's group planes, slack and accumulators.
    Grad-weights, a group's planes past the cap and too few (image, group) tasks keep the
    separate fill."""
    def spec_of(direction, x, w, stride=1, groups=32):
        return build(direction, 2, x, w, border_mode=1, subsample=stride, filter_dilation=1,
                     num_groups=groups, unshared=False, filter_flip=True, dtype=np.float32,
                     names={"x": "x", "w": "w"})

    spec = spec_of("forward", (8, 128, 56, 56), (128, 4, 3, 3))
    assert phase_tiled._fused(spec)
    nt = numba.get_num_threads()
    g = phase_tiled._flat._grid(spec)
    L = min(phase_tiled._segment(g, 4), g.Lb)
    nb, ws = phase_tiled._plan(spec)
    assert nb == 8
    assert ws == (nt * (4 * g.PS + phase_tiled._slack(spec)) + nt * 4 * (-(-L // 16) * 16)) * 4
    strided = spec_of("forward", (8, 128, 56, 56), (128, 128, 3, 3), stride=2, groups=1)
    assert phase_tiled._fused(strided)
    g = phase_tiled._flat._grid(strided)
    L = min(phase_tiled._segment(g, 128), g.Lb)
    assert phase_tiled._plan(strided)[1] == (nt * (128 * 4 * g.PS + phase_tiled._slack(strided))
                                             + nt * 128 * (-(-L // 16) * 16)) * 4
    assert not phase_tiled._fused(spec_of("grad_weights", (8, 128, 56, 56), (128, 4, 3, 3)))
    assert phase_tiled._fused(spec_of("forward", (8, 64, 56, 56), (64, 64, 3, 3), groups=1))
    assert not phase_tiled._fused(spec_of("forward", (8, 512, 56, 56), (64, 512, 3, 3), groups=1))
    assert not phase_tiled._fused(spec_of("forward", (1, 4, 9, 9), (4, 4, 3, 3), groups=1))


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two threads' planes")
def test_fused_fill_gives_way_to_the_chunked_fill_under_a_tight_limit(workspace_limit):
    """Every thread's planes of a whole group can exceed a limit that one image's chunked planes
    fit: the problem then takes the chunked fill instead of becoming inapplicable, and the result
    is still exact."""
    rng = np.random.default_rng(9480)
    x = rng.standard_normal((8, 6, 20, 21)).astype(np.float32)
    w = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    spec = build("forward", 2, x.shape, w.shape, border_mode=1, subsample=1, filter_dilation=1,
                 num_groups=1, unshared=False, filter_flip=True, dtype=np.float32,
                 names={"x": "x", "w": "w"})
    with threads(2):
        assert phase_tiled._fused(spec)
        fused = phase_tiled._fused_bytes(spec)
        one_image = (phase_direct._per_image(spec) + phase_tiled._per_thread(spec)
                     + phase_tiled._slack(spec)) * 4
        assert one_image < fused
        workspace_limit(fused - 1)
        assert not phase_tiled._fused(spec) and phase_tiled.supports(spec)
        assert phase_tiled.workspace(spec) <= fused - 1
        y = nbconv.conv2d(x, w, border_mode=1, algo="phase_tiled")
    np.testing.assert_allclose(y, R.conv_nd(x, w, border_mode=1), rtol=1e-4, atol=1e-4)


def test_grad_weights_allocates_what_its_workspace_declares(monkeypatch):
    """The scratch grad-weights carves (planes and dy on the grid for a chunk, dW's accumulators)
    plus its int64 row offsets is the declared workspace, for a chunk of 1 image and of several."""
    carved = []
    real = phase_tiled._scratch_arrays

    def recording(dtype, *counts):
        carved.append(sum(counts) * np.dtype(dtype).itemsize)
        return real(dtype, *counts)

    monkeypatch.setattr(phase_tiled, "_scratch_arrays", recording)
    rng = np.random.default_rng(9460)
    x = rng.standard_normal((5, 7, 12, 11)).astype(np.float32)
    dy = rng.standard_normal((5, 20, 6, 9)).astype(np.float32)
    for target in (1, 2**20):
        monkeypatch.setattr(im2col, "_CHUNK_TARGET", target)
        spec = build("grad_weights", 2, x.shape, (20, 7, 3, 3), border_mode=(1, 0), subsample=(2, 1),
                     filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                     dtype=np.float32, names={"x": "x", "w": "w"})
        nb, ws = phase_tiled._plan(spec)
        assert nb == (1 if target == 1 else 5)
        carved.clear()
        nbconv.conv2d_grad_wrt_weights(x, dy, (20, 7, 3, 3), border_mode=(1, 0), subsample=(2, 1),
                                       algo="phase_tiled")
        Lb = phase_tiled._flat._grid(spec).Lb
        assert carved and carved[0] + Lb * 8 <= ws < carved[0] + Lb * 8 + 64 * 3


def test_segments_shrink_as_output_channels_grow():
    """A task's accumulators (output channels x segment) stay about _ACC elements: the longest
    segment for few channels, the shortest for many, always whole grid rows."""
    spec = build("forward", 2, (2, 8, 300, 301), (8, 8, 3, 3), border_mode=1, subsample=1,
                 filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "x", "w": "w"})
    g = phase_tiled._flat._grid(spec)
    lengths = [phase_tiled._segment(g, og) for og in (1, 4, 16, 64, 1024)]
    assert all(n % g.Wq == 0 for n in lengths)
    assert lengths == sorted(lengths, reverse=True)
    assert lengths[0] <= phase_tiled._SEG_MAX and lengths[-1] >= phase_tiled._SEG - g.Wq
    assert all(og * n <= max(phase_tiled._ACC, og * phase_tiled._SEG)
               for og, n in zip((1, 4, 16, 64, 1024), lengths))
