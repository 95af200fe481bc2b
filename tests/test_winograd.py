"""Winograd F(4x4, 3x3): seeded sweeps over the problems it supports, chunking and weight blocks,
and the boundary of what it supports.

The registry sweeps in test_sweep.py rarely draw a stride-1 problem with 3-tap kernels, so this
file draws only those: 2D and 3D, float32 and float64, groups, dilations 1-3, symmetric,
asymmetric, 'full', 'half' and large pads, sizes that are not multiples of the 4x4 tile or are
smaller than one, batches of 0, 1 and 3; all three directions against the float64 reference.
"""
import numpy as np
import pytest
import reference as R
from helpers import compare

import nbconv
from nbconv.cpu import im2col
from nbconv.cpu import winograd as W
from nbconv.spec import build

FWD = {2: nbconv.conv2d, 3: nbconv.conv3d}
GIN = {2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}
GW = {2: nbconv.conv2d_grad_wrt_weights, 3: nbconv.conv3d_grad_wrt_weights}
ALGO = "winograd"


def _border(rng, nd):
    form = rng.choice(["valid", "full", "half", "int", "pairs", "large"])
    if form in ("valid", "full", "half"):
        return str(form)
    if form == "int":
        return int(rng.integers(0, 3))
    hi = 3 if form == "pairs" else 7  # 'large': pads beyond the dilated kernel
    return tuple((int(rng.integers(0, hi)), int(rng.integers(0, hi))) for _ in range(nd))


def _case(rng, nd, dtype):
    """A random problem winograd supports: stride 1, kernel extents <= 3 along H and W."""
    while True:
        G = int(rng.choice([1, 1, 2, 3]))
        Cg, Og = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        N = int(rng.choice([0, 1, 1, 3]))
        # mostly the 3x3 kernels winograd is for; some 1- and 2-tap extents (embedded in 3)
        hw = (3, 3) if rng.random() < 0.75 else tuple(int(v) for v in rng.integers(1, 4, 2))
        k = ((int(rng.integers(1, 4)),) if nd == 3 else ()) + hw
        d = tuple(int(rng.integers(1, 4)) for _ in range(nd))
        bm = _border(rng, nd)
        pads = R.pads_from_border_mode(bm, k, d)
        smax = 6 if nd == 3 else 13
        size = []
        for a in range(nd):
            lo = max(1, (k[a] - 1) * d[a] + 1 - pads[a][0] - pads[a][1])
            if lo > smax:
                break
            size.append(int(rng.integers(lo, smax + 1)))
        if len(size) < nd:
            continue
        x_shape = (N, G * Cg) + tuple(size)
        w_shape = (G * Og, Cg) + k
        flip = bool(rng.random() < 0.5)
        kw = {"border_mode": bm, "filter_dilation": d, "num_groups": G, "filter_flip": flip}
        return x_shape, w_shape, kw, dtype


def _scale(a):
    return float(np.abs(a).max()) if a.size else 1.0


def _check_all_directions(rng, x_shape, w_shape, kw, dtype):
    """Forward, grad-input and grad-weights of one problem against the reference; the list of
    mismatch messages (empty when all three match)."""
    nd = len(x_shape) - 2
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    ref = R.conv_nd(x, w, **kw)
    dy = rng.standard_normal(ref.shape).astype(dtype)
    out = []
    got = FWD[nd](x, w, algo=ALGO, **kw)
    out.append(("fwd", compare(got, ref, dtype, _scale(R.conv_nd(abs(x), abs(w), **kw)))))
    got = GIN[nd](dy, w, x_shape, algo=ALGO, **kw)
    want = R.conv_nd_grad_input(dy, w, x_shape, **kw)
    out.append(("gin", compare(got, want, dtype,
                               _scale(R.conv_nd_grad_input(abs(dy), abs(w), x_shape, **kw)))))
    got = GW[nd](x, dy, w_shape, algo=ALGO, **kw)
    want = R.conv_nd_grad_weights(x, dy, w_shape, **kw)
    out.append(("gw", compare(got, want, dtype,
                              _scale(R.conv_nd_grad_weights(abs(x), abs(dy), w_shape, **kw)))))
    return [f"{d}: {m}" for d, m in out if m]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("nd", [2, 3])
def test_random_supported_problems(nd, dtype):
    rng = np.random.default_rng(900 + nd + (10 if dtype == np.float64 else 0))
    failures = []
    for idx in range(60 if nd == 2 else 25):
        case = _case(rng, nd, dtype)
        for msg in _check_all_directions(rng, *case):
            failures.append(f"[{idx}] x{case[0]} w{case[1]} {case[2]}: {msg}")
    assert not failures, "\n".join(failures[:8])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "x_shape, w_shape, kw",
    [
        # ragged: neither H nor W a multiple of 4, and a plane smaller than one tile
        ((3, 4, 10, 7), (6, 4, 3, 3), {"border_mode": 1}),
        ((1, 2, 2, 3), (3, 2, 3, 3), {"border_mode": "full"}),
        ((2, 3, 1, 1), (2, 3, 3, 3), {"border_mode": "half"}),
        # asymmetric pads, and pads larger than the kernel: grad-input then correlates with a
        # negative effective pad (K-1)*d - pad_lo
        ((2, 4, 9, 11), (4, 2, 3, 3), {"border_mode": ((0, 2), (5, 1)), "num_groups": 2}),
        ((1, 3, 6, 5), (2, 3, 3, 3), {"border_mode": ((6, 0), (0, 6))}),
        # dilation: each residue class tiled on its own
        ((2, 3, 13, 12), (4, 3, 3, 3), {"border_mode": "half", "filter_dilation": (2, 3)}),
        ((1, 2, 9, 9), (2, 2, 3, 3), {"border_mode": (1, 4), "filter_dilation": (3, 1)}),
        # 3D: kd stacked into the GEMMs' inner dimension, with depth dilation and pads
        ((2, 4, 5, 6, 7), (6, 2, 3, 3, 3),
         {"border_mode": ((1, 2), 1, (0, 3)), "filter_dilation": (2, 1, 2), "num_groups": 2}),
        ((1, 2, 3, 5, 5), (3, 2, 2, 3, 3), {"border_mode": "full"}),
        # 1- and 2-tap extents embedded in 3 taps; a 1D-like singleton row axis
        ((2, 3, 8, 9), (4, 3, 2, 3), {"border_mode": 1}),
        ((2, 3, 1, 17), (4, 3, 1, 3), {"border_mode": (0, 1), "filter_dilation": (1, 2)}),
        ((1, 2, 5, 6), (2, 2, 3, 1), {"border_mode": "valid", "filter_flip": False}),
    ],
)
def test_named_problems(x_shape, w_shape, kw, dtype):
    rng = np.random.default_rng(7)
    msgs = _check_all_directions(rng, x_shape, w_shape, kw, dtype)
    assert not msgs, "\n".join(msgs)


@pytest.mark.parametrize("batch", [0, 1, 3])
def test_batches(batch):
    rng = np.random.default_rng(batch)
    msgs = _check_all_directions(rng, (batch, 4, 9, 6), (5, 4, 3, 3),
                                 {"border_mode": (1, (0, 2))}, np.float32)
    assert not msgs, "\n".join(msgs)


def _spec(x_shape, w_shape, direction="forward", **kw):
    nd = len(x_shape) - 2
    opts = {"border_mode": 0, "subsample": 1, "filter_dilation": 1, "num_groups": 1,
            "unshared": False, "filter_flip": True, "dtype": np.float32}
    opts.update(kw)
    return build(direction, nd, x_shape, w_shape, names={"x": "input", "w": "filters"}, **opts)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a tile row or two and weight blocks of a few rows, so that small problems take
    the paths large ones take (several chunks, weights and their gradients made per block, the
    weight gradient accumulated over chunks)."""
    monkeypatch.setattr(W, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(W, "_BLOCKED_CHUNK_BYTES", 1)
    monkeypatch.setattr(W, "_U_BLOCK", 36 * 3 * 8 * 4)
    monkeypatch.setattr(W, "_U_UNBLOCKED", 0)
    W._plan_for.cache_clear()
    yield
    W._plan_for.cache_clear()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_several_chunks_and_weight_blocks(small_chunks, dtype):
    spec = _spec((3, 8, 11, 10), (12, 4, 3, 3), border_mode=1, num_groups=2)
    plan = W._plan(spec)
    assert plan.rows == 9 and plan.nr <= 2 and plan.Ab < plan.A
    rng = np.random.default_rng(11)
    for x_shape, w_shape, kw in [
        ((3, 8, 11, 10), (12, 4, 3, 3), {"border_mode": 1, "num_groups": 2}),
        ((2, 3, 4, 7, 9), (5, 3, 3, 3, 3), {"border_mode": (1, 2, (0, 1)), "filter_dilation": 2}),
    ]:
        msgs = _check_all_directions(rng, x_shape, w_shape, kw, dtype)
        assert not msgs, "\n".join(msgs)


def test_workspace_respects_the_limit(monkeypatch):
    spec = _spec((8, 64, 56, 56), (64, 64, 3, 3), border_mode=1)
    assert 0 < W.workspace(spec) <= im2col.get_workspace_limit()
    # a limit that holds one tile row's buffers (plus the weights): more, smaller chunks
    one_row = W.workspace(_spec((1, 64, 4, 56), (64, 64, 3, 3), border_mode=1))
    monkeypatch.setattr(im2col, "_workspace_limit", one_row + 1000)
    assert W.supports(spec) and W.workspace(spec) <= one_row + 1000
    assert W._plan(spec).nr == 1
    x = np.random.default_rng(0).standard_normal((1, 8, 9, 10)).astype(np.float32)
    w = np.ones((4, 8, 3, 3), np.float32)
    np.testing.assert_allclose(nbconv.conv2d(x, w, border_mode=1, algo=ALGO),
                               R.conv2d(x, w, border_mode=1), rtol=1e-4, atol=1e-4)
    # a limit below one tile row: not applicable
    monkeypatch.setattr(im2col, "_workspace_limit", 1000)
    assert not W.supports(spec)


@pytest.mark.parametrize(
    "x_shape, w_shape, kw",
    [
        ((1, 2, 9, 9), (2, 2, 3, 3), {"subsample": (2, 2)}),
        ((1, 2, 9, 9), (2, 2, 3, 3), {"subsample": (1, 2)}),
        ((1, 2, 9, 9), (2, 2, 5, 5), {}),
        ((1, 2, 9, 9), (2, 2, 3, 4), {}),
        ((1, 2, 5, 9, 9), (2, 2, 3, 3, 3), {"subsample": (2, 1, 1)}),
        ((1, 2, 9, 9), (2, 7, 7, 2, 3, 3), {"unshared": True}),
    ],
)
def test_unsupported_problems_are_not_applicable(x_shape, w_shape, kw):
    nd = len(x_shape) - 2
    x = np.zeros(x_shape, np.float32)
    w = np.zeros(w_shape, np.float32)
    y = FWD[nd](x, w, algo="direct", **kw)
    with pytest.raises(nbconv.AlgorithmNotApplicable, match="winograd"):
        FWD[nd](x, w, algo=ALGO, **kw)
    with pytest.raises(nbconv.AlgorithmNotApplicable, match="winograd"):
        GIN[nd](y, w, x_shape, algo=ALGO, **kw)
    with pytest.raises(nbconv.AlgorithmNotApplicable, match="winograd"):
        GW[nd](x, y, w_shape, algo=ALGO, **kw)


def test_supports_boundary():
    assert W.supports(_spec((1, 2, 9, 9), (2, 2, 3, 3)))
    assert W.supports(_spec((1, 2, 9, 9), (2, 2, 3, 3), filter_dilation=(3, 2)))
    assert W.supports(_spec((1, 2, 5, 9, 9), (2, 2, 4, 3, 3)))  # any depth extent
    assert not W.supports(_spec((1, 2, 9, 9), (2, 2, 3, 3), subsample=(2, 1)))
    assert not W.supports(_spec((1, 2, 9, 9), (2, 2, 5, 5)))
    assert not W.supports(_spec((1, 2, 9, 9), (2, 2, 4, 3)))


def _slice_case(rng, dtype):
    """A random 3D problem of the depth-slice path: one group, depth dilation 1, 2-3 depth taps."""
    while True:
        x_shape, w_shape, kw, _ = _case(rng, 3, dtype)
        if kw["num_groups"] == 1 and w_shape[2] > 1 and kw["filter_dilation"][0] == 1 and x_shape[0]:
            return x_shape, w_shape, kw


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_depth_slices(monkeypatch, dtype):
    """The 3D path that transforms every input depth slice once (_correlate_slices and
    _grad_weights_slices), all three directions against the reference: chunks of one, two and all
    output slices (a shorter last chunk; forward and grad-input start every chunk after the first
    from the previous one's last KD - 1 slices), pads that put whole slices outside the input."""
    monkeypatch.setattr(W, "_SLICE_MIN_TILES", 1)  # planes of any size take the path
    W._plan_for.cache_clear()
    rng = np.random.default_rng(31 + (dtype == np.float64))
    failures = []
    try:
        for idx in range(14):
            x_shape, w_shape, kw = _slice_case(rng, dtype)
            x = rng.standard_normal(x_shape).astype(dtype)
            w = rng.standard_normal(w_shape).astype(dtype)
            y = R.conv_nd(x, w, **kw)
            dy = rng.standard_normal(y.shape).astype(dtype)
            cases = {
                "forward": (x, w, y, _scale(R.conv_nd(abs(x), abs(w), **kw))),
                "grad_input": (dy, w, R.conv_nd_grad_input(dy, w, x_shape, **kw),
                               _scale(R.conv_nd_grad_input(abs(dy), abs(w), x_shape, **kw))),
                "grad_weights": (x, dy, R.conv_nd_grad_weights(x, dy, w_shape, **kw),
                                 _scale(R.conv_nd_grad_weights(abs(x), abs(dy), w_shape, **kw))),
            }
            for direction, (a, b, want, scale) in cases.items():
                spec = _spec(x_shape, w_shape, direction, dtype=dtype, **kw)
                plan = W._plan(spec)
                assert plan.nod > 0, (x_shape, w_shape, kw, direction)
                OD = plan.out_size[0]
                for nod in sorted({1, min(2, OD), OD}):
                    plan.nod = nod
                    msg = compare(getattr(W, direction)(spec, a, b), want, dtype, scale)
                    if msg:
                        failures.append(f"[{idx}] x{x_shape} w{w_shape} {kw} {direction} nod={nod}: {msg}")
    finally:
        W._plan_for.cache_clear()
    assert not failures, "\n".join(failures[:8])


def test_depth_slices_where_they_apply():
    c3d = _spec((2, 32, 8, 28, 28), (32, 32, 3, 3, 3), border_mode=1)
    for direction in ("forward", "grad_input", "grad_weights"):
        assert W._plan(_spec((2, 32, 8, 28, 28), (32, 32, 3, 3, 3), direction, border_mode=1)).nod > 0
    assert W._plan(c3d).bytes == W.workspace(c3d)
    # not along a dilated depth axis, with groups, with one depth tap, or on planes of few tiles
    assert W._plan(_spec((2, 4, 8, 28, 28), (4, 4, 3, 3, 3), filter_dilation=(2, 1, 1))).nod == 0
    assert W._plan(_spec((2, 4, 8, 28, 28), (4, 2, 3, 3, 3), num_groups=2)).nod == 0
    assert W._plan(_spec((2, 4, 8, 28, 28), (4, 4, 1, 3, 3))).nod == 0
    assert W._plan(_spec((2, 4, 8, 8, 8), (4, 4, 3, 3, 3))).nod == 0

