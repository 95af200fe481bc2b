"""direct_tiled: the interior read and written in place, the border rows and edge columns redone
on padded copies, against the reference, with sizes shrunk so that every boundary is crossed
(several bands of rows per image, bands too short for a vector, output channels left over after
the 6-channel tiles, more (channel, tap) rows than a block, asymmetric pads, dilations, 3-D
slices); the wrapped taps of the interior's edge columns leave no trace (a NaN in the input
reaches exactly the outputs that depend on it); a scratch too small raises instead of being
written past.

The registry-parametrized sweeps run it at its default sizes on random 'same' problems.
"""
import numpy as np
import pytest
import reference as R

from nbconv.cpu import direct_tiled as DT
from nbconv.cpu import phase_direct
from nbconv.spec import build


def _same_case(rng, nd, *, kmax=4, max_spatial=13, groups=None, cg=None, og=None):
    """A random problem that keeps its size along the width (unit strides; for 3-D a 1-deep
    kernel): pads (lo, hi) adding up to each axis's dilated kernel extent less one, except the
    height, padded at random (any output height)."""
    k = [int(rng.integers(1, kmax + 1)) for _ in range(nd)]
    d = [int(rng.choice([1, 1, 2, 3])) for _ in range(nd)]
    if nd == 3:
        k[0], d[0] = 1, 1
    pads = []
    for a in range(nd):
        tot = (k[a] - 1) * d[a]
        if a == nd - 2:  # the height: any non-negative pads
            pads.append((int(rng.integers(0, tot + 2)), int(rng.integers(0, tot + 2))))
        else:
            lo = int(rng.integers(0, tot + 1))
            pads.append((lo, tot - lo))
    # an interior: rows whose taps are all inside the input, and columns between the edges
    size = [int(rng.integers((k[a] - 1) * d[a] + 1, max(max_spatial, (k[a] - 1) * d[a] + 1) + 1))
            for a in range(nd)]
    if nd == 3:
        size[0] = int(rng.integers(1, 4))
    G = groups or int(rng.choice([1, 2, 3]))
    Cg = cg or int(rng.integers(1, 5))
    Og = og or int(rng.integers(1, 9))
    N = int(rng.integers(1, 3))
    return dict(nd=nd, x_shape=(N, Cg * G, *size), w_shape=(Og * G, Cg, *k),
                border_mode=tuple(pads), dilation=tuple(d), groups=G)


def _spec(c, direction, dtype, flip):
    return build(direction, c["nd"], c["x_shape"], c["w_shape"], border_mode=c["border_mode"],
                 subsample=(1,) * c["nd"], filter_dilation=c["dilation"], num_groups=c["groups"],
                 unshared=False, filter_flip=flip, dtype=dtype, names={"x": "x", "w": "w"})


def _check(c, rng, direction, dtype, flip):
    """Failure message or None; the problem must be one direct_tiled takes."""
    spec = _spec(c, direction, dtype, flip)
    assert DT.supports(spec), c
    kw = dict(border_mode=c["border_mode"], subsample=(1,) * c["nd"], filter_flip=flip,
              filter_dilation=c["dilation"], num_groups=c["groups"])
    w = rng.standard_normal(c["w_shape"]).astype(dtype)
    # direct_tiled computes the correlation (flips=True: it takes the user's weights and
    # reverses the taps itself)
    if direction == "forward":
        a = rng.standard_normal(c["x_shape"]).astype(dtype)
        want = R.conv_nd(a, w, **kw)
        got = DT.forward(spec, a.reshape(spec.x_shape), w.reshape(spec.w_shape))
    else:
        y_shape = R.conv_nd(np.zeros(c["x_shape"]), w, **kw).shape
        a = rng.standard_normal(y_shape).astype(dtype)
        want = R.conv_nd_grad_input(a, w, c["x_shape"], **kw)
        got = DT.grad_input(spec, a.reshape(spec.y_shape), w.reshape(spec.w_shape))
    got = np.asarray(got).reshape(want.shape)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    scale = max(1.0, float(np.abs(want).max()))
    if not np.allclose(got, want, rtol=0, atol=tol * scale * 10):
        bad = np.argwhere(~np.isclose(got, want, rtol=0, atol=tol * scale * 10))
        return (f"{direction} {dtype.__name__} flip={flip} {c}: {len(bad)} differ, first at "
                f"{tuple(bad[0])}")
    return None


@pytest.mark.parametrize("rows", [None, 1, 2, 5])
def test_boundaries_against_the_reference(rows, monkeypatch):
    """Random 'same' problems, forward and grad-input, float32/64, both flips; ``rows`` shrinks
    the bands of interior rows per task (several bands per image, bands shorter than a vector,
    whose rows the row path takes)."""
    if rows is not None:
        monkeypatch.setattr(DT, "_rows_per_task", lambda spec: rows)
    rng = np.random.default_rng(400 + (rows or 0))
    failures, ran = [], 0
    for i in range(40):
        nd = (1, 2, 2, 3)[i % 4]
        c = _same_case(rng, nd)
        dtype = (np.float32, np.float64)[(i // 4) % 2]
        for direction in ("forward", "grad_input"):
            spec = _spec(c, direction, dtype, i % 2 == 0)
            if not DT.supports(spec):
                continue
            msg = _check(c, rng, direction, dtype, i % 2 == 0)
            ran += 1
            if msg:
                failures.append(msg)
    assert ran >= 40, ran
    assert not failures, "\n".join(failures[:6])


def test_many_rows_per_block_and_leftover_channels():
    """More (channel, tap) rows than a block (the accumulators reloaded: in y for the interior,
    in the border passes' buffers), output channels 6 + 4 + 2 + 1 per group."""
    rng = np.random.default_rng(9)
    for cg, og, k in ((8, 13, 3), (3, 7, 5), (17, 6, 4)):
        c = _same_case(rng, 2, groups=2, cg=cg, og=og, kmax=k)
        c["w_shape"] = c["w_shape"][:2] + (k, k)
        c["dilation"] = (1, 1)
        c["border_mode"] = ((k // 2, k - 1 - k // 2), (k // 2, k - 1 - k // 2))
        c["x_shape"] = c["x_shape"][:2] + (11, 19)
        assert cg * k * k > 64 or og == 7
        for direction in ("forward", "grad_input"):
            for dtype in (np.float32, np.float64):
                assert _check(c, rng, direction, dtype, True) is None


def test_border_layout_cases():
    """Pads only on one side of the width (one edge's column pass empty), only below or above
    (one band of border rows), none (no border pass: the 1x1 and the 1 x k 'valid' row), and
    rows shorter than a vector."""
    rng = np.random.default_rng(3)
    cases = [
        ((1, 3, 9, 20), (5, 3, 3, 3), ((2, 0), (2, 0)), (1, 1)),   # causal in both axes
        ((2, 2, 7, 17), (3, 2, 2, 3), ((0, 1), (0, 2)), (1, 1)),
        ((1, 4, 6, 5), (6, 4, 1, 1), ((0, 0), (0, 0)), (1, 1)),
        ((2, 3, 4, 3), (2, 3, 3, 1), ((0, 0), (0, 0)), (1, 1)),    # no pads, 3-wide rows
        ((1, 2, 10, 9), (4, 2, 3, 3), ((3, 3), (2, 2)), (2, 2)),   # taller output than input
    ]
    for x_shape, w_shape, bm, dil in cases:
        c = dict(nd=2, x_shape=x_shape, w_shape=w_shape, border_mode=bm, dilation=dil, groups=1)
        for direction in ("forward", "grad_input"):
            for dtype in (np.float32, np.float64):
                spec = _spec(c, direction, dtype, False)
                if DT.supports(spec):
                    assert _check(c, rng, direction, dtype, False) is None


def test_wrapped_taps_leave_no_trace():
    """The interior's edge columns are first computed with taps that wrap to the neighbouring
    row, then redone exactly: a NaN in the input's first or last column must reach exactly the
    outputs that depend on it (finite weights: padding contributes nothing)."""
    rng = np.random.default_rng(1)
    c = dict(nd=2, x_shape=(1, 2, 12, 24), w_shape=(3, 2, 3, 3), border_mode=((1, 1), (1, 1)),
             dilation=(1, 1), groups=1)
    spec = _spec(c, "forward", np.float32, False)
    for col in (0, 23):
        for row in (0, 5, 11):
            x = rng.standard_normal(c["x_shape"]).astype(np.float32)
            x[0, 1, row, col] = np.nan
            w = rng.standard_normal(c["w_shape"]).astype(np.float32)
            ind = np.zeros(c["x_shape"])
            ind[0, 1, row, col] = 1
            depends = R.conv_nd(ind, np.ones(c["w_shape"]), border_mode=c["border_mode"]) > 0
            got = DT.forward(spec, x.reshape(spec.x_shape), w.reshape(spec.w_shape))
            bad = ~np.isfinite(got.reshape(depends.shape))
            np.testing.assert_array_equal(bad, depends, err_msg=f"NaN at row {row}, column {col}")


def test_scratch_too_small_raises():
    """A scratch too short for a border pass's copy and output is an error before any write
    (Numba's slices clamp silently: the copy would otherwise write past it)."""
    c = dict(nd=2, x_shape=(1, 2, 9, 20), w_shape=(3, 2, 3, 3), border_mode=((1, 1), (1, 1)),
             dilation=(1, 1), groups=1)
    spec = _spec(c, "forward", np.float64, False)
    x = np.ones(spec.x_shape)
    w = np.ones(spec.w_shape)
    N, C, D, H, W = spec.x_shape
    y = np.zeros((N, 3, D * spec.out_size[1] * W))
    args = (x.reshape(N, -1), DT._flat_offsets(spec), w.reshape(-1), y, D, H, W, 3, 3, 1, 1, 1, 1,
            1, 1, False, DT._rows_per_task(spec), DT._chunk(spec), 8, 64)
    DT._fwd_kernel(*args, DT._scratch(spec))
    np.testing.assert_allclose(y.reshape(spec.y_shape), DT.forward(spec, x, w))
    with pytest.raises(ValueError, match="scratch is too small"):
        DT._fwd_kernel(*args, 40)


def test_declines_what_it_cannot_take():
    rng = np.random.default_rng(2)
    c = _same_case(rng, 2)
    ok = _spec(c, "forward", np.float32, True)
    assert DT.supports(ok)
    from dataclasses import replace

    lo, hi = ok.pad_lo, ok.pad_hi
    assert not DT.supports(replace(ok, stride=(1, 1, 2)))
    assert not DT.supports(replace(ok, pad_hi=(hi[0], hi[1], hi[2] + 1),
                                   out_size=(1, ok.out_size[1], ok.out_size[2] + 1)))
    assert not DT.supports(replace(ok, kernel=(2,) + ok.kernel[1:]))
    assert not DT.supports(replace(ok, pad_lo=(lo[0], -1, lo[2]),
                                   out_size=(1, ok.out_size[1] - 1, ok.out_size[2])))
    assert not DT.supports(replace(ok, direction="grad_weights"))
    # grad-input is its adjoint's forward
    gi = _spec(c, "grad_input", np.float32, True)
    assert DT.supports(gi) == DT.supports(phase_direct._adjoint(gi))
