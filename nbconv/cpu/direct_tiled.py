"""'Same' stride-1 convolutions with register-tiled accumulators, read and written in place.

phase_tiled's tile (:mod:`nbconv.cpu._vtile`: up to 6 output channels x 4 vectors of positions,
the accumulators in registers over a block of (channel, tap) rows) runs on a padded copy of the
input and writes a padded grid that is then cropped into y. When a layer keeps its width (unit
strides, ``pad_lo + pad_hi == (KW - 1) * dw`` along the width) neither copy is needed for most of
the output, as grouped_direct does it (2-D problems, and 3-D ones with 1-deep kernels one depth
slice at a time): with the input plane flattened, tap (kh, kw) of output position
p = oh * W + ow reads the flat element p + (kh * dh - ph) * W + kw * dw - pw, and y's flattened
plane has the same pitch, so the tiles read x and write y directly over the *interior*
(output rows whose taps all fall inside the input). Only two kinds of output are wrong there or
out of reach, and each gets a small exact pass of the same tiles on a zero-padded copy of just
the input it needs:

* the border rows (the first ``ph`` and the last ``ph_hi``, and a task's band of interior rows
  when it holds fewer positions than a vector): a padded copy of the rows they read, cropped
  into y;
* the edge columns of the interior rows (the first ``pw`` and the last ``pw_hi``, whose taps wrap
  to the neighbouring row): a *transposed* padded copy of the columns they read (row index
  contiguous), on which the same tap offsets with the roles of kh and kw swapped give the column
  as a vector of positions; scattered into y.

The interior computes the edge columns too (with wrapped taps) before their exact values
overwrite them, so a NaN or Inf in the input stays where the definition puts it.

Measured side by side (2 threads, ms, this against phase_tiled with its fused fill): ResNeXt's 3x3
layer with 4-channel groups at 56x56, forward 2.02 / 3.10 / 3.15 against 2.51 / 3.59 / 3.58 in
three processes (the machine's load moved both), grad-input 2.05 / 3.12 / 2.23 against 2.57 /
3.71 / 2.69. Its interior runs at phase_tiled's tile rate (~190 GFLOP/s when the machine is
quiet); what phase_tiled spends on the fill and the crop (~0.7 and ~0.5 ms there) drops to the
border passes' ~0.1-0.3. Even or a little behind elsewhere: ResNet's 3x3 at 56x56 11.2 vs 10.5,
WaveNet's causal layer 4.3 vs 4.1; far behind on small images, whose border passes round up to
whole vectors (ResNet's 3x3 at 7x7: 21.7 vs 11.6, 2.3x the useful work, which its estimate
counts).
"""
from functools import lru_cache

import numpy as np
from numba import get_num_threads, njit, prange

from ..spec import FORWARD, GRAD_INPUT
from . import im2col as _im2col
from . import phase_direct as _pd
from . import phase_tiled as _pt
from ._vtile import MAX_NV, vector_width
from .im2col import _copy, _fill_zero


def _eligible(spec):
    W, (KD, _, KW), dw = spec.in_size[2], spec.kernel, spec.dilation[2]
    ilo, ihi = spec.pad_lo[1], spec.out_size[1] - spec.pad_hi[1]
    # 3-D only with 1-deep kernels and no depth padding: each depth slice a 2-D problem
    return (not spec.unshared and spec.stride == (1, 1, 1) and KD == 1
            and spec.pad_lo[0] == 0 and spec.pad_hi[0] == 0
            and min(spec.pad_lo[1:]) >= 0 and min(spec.pad_hi[1:]) >= 0
            and spec.pad_lo[2] + spec.pad_hi[2] == (KW - 1) * dw
            # an interior to tile: rows whose taps are inside the input, and columns between
            # the edges
            and ihi > ilo and W > spec.pad_lo[2] + spec.pad_hi[2] and spec.batch > 0)


def supports(spec):
    if spec.direction == GRAD_INPUT:
        return spec.stride == (1, 1, 1) and not spec.unshared and supports(_pd._adjoint(spec))
    return (spec.direction == FORWARD and _eligible(spec)
            and workspace(spec) <= _im2col.get_workspace_limit())


def _chunk(spec):
    """Interior positions a task tiles at a time: phase_tiled's segment (the accumulators of the
    group's output channels over it stay in L2 while every block of rows runs over them)."""
    return max(_pt._SEG, min(_pt._SEG_MAX, _pt._ACC // max(spec.group_out, 1)))


def _rows_per_task(spec):
    """Interior rows per task: a chunk's worth (at least one row)."""
    return max(1, _chunk(spec) // spec.in_size[2])


def workspace(spec):
    if spec.direction == GRAD_INPUT:
        return workspace(_pd._adjoint(spec)) + int(np.prod(spec.w_shape)) * spec.np_dtype.itemsize
    if not _eligible(spec):
        return 0
    R = spec.group_in * _pd._taps(spec)
    return get_num_threads() * (_scratch(spec) * spec.np_dtype.itemsize + R * 8)


def cost(spec):
    """(vector work on every path / the definition's, tile calls, elements copied for the border
    passes) for the `guess` estimate, counted as the kernel runs them."""
    if spec.direction == GRAD_INPUT:
        return cost(_pd._adjoint(spec))
    D, H, W = spec.in_size
    OH = spec.out_size[1]
    KH1 = (spec.kernel[1] - 1) * spec.dilation[1]
    KW1 = (spec.kernel[2] - 1) * spec.dilation[2]
    ph, pw = spec.pad_lo[1:]
    ph_hi, pw_hi = spec.pad_hi[1:]
    VW = vector_width(spec.np_dtype.itemsize)
    rows, S = _rows_per_task(spec), _chunk(spec)
    Wq = W + pw + pw_hi
    ilo, ihi = ph, OH - ph_hi
    nseg = -(-(ihi - ilo) // rows)
    vecs = calls = copied = 0  # per (image, group, depth slice)
    for s in range(nseg):
        sa, sb = ilo + s * rows, min(ihi, ilo + (s + 1) * rows)
        L = (sb - sa) * W - pw - pw_hi
        tail = sa
        if L >= VW:
            tail = sb
            nch = -(-L // S)
            step = _pt._round(-(-L // nch), VW)
            for q in range(0, L, step):
                n = min(step, L - q)
                vecs += -(-n // VW)
                calls += -(-(n // VW) // MAX_NV) + (n % VW > 0)
            if pw + pw_hi:
                nrows = sb - sa + KH1
                n = -(-pw * nrows // VW) + -(-pw_hi * nrows // VW)
                vecs, calls = vecs + n, calls + 2
                copied += (pw + pw_hi + 2 * KW1) * nrows
        bands = [n for n in ((ilo if s == 0 else 0), (OH if s == nseg - 1 else sb) - tail) if n > 0]
        for n in bands:
            vecs += -(-n * Wq // VW)
            calls += -(-(-(-n * Wq // VW)) // MAX_NV)
            copied += (n + KH1) * Wq
    R = spec.group_in * _pd._taps(spec)
    per = spec.batch * spec.groups * D
    tiles = per * calls * -(-spec.group_out // 6) * -(-R // _pt._ROWS)
    return vecs * VW / max(OH * W, 1), tiles, per * spec.group_in * copied


@njit(inline="always")
def _tap_offsets(off, Cg, CS, KH, KW, dh, dw, rstep, cstep, flip):
    """off[c*K + k] = c*CS + kh*dh*rstep + kw*dw*cstep for weight tap k = (kh, kw) of channel c
    (flipped: the tap K-1-k's place)."""
    K = KH * KW
    for c in range(Cg):
        for k in range(K):
            t = K - 1 - k if flip else k
            off[c * K + k] = c * CS + (t // KW) * dh * rstep + (t % KW) * dw * cstep


@lru_cache(maxsize=256)
def _flat_offsets(spec):
    """off[g, c*K + k]: where weight tap k of channel c of group g reads, relative to the output
    position, in one image's input planes flattened (C, D, H, W): :func:`_tap_offsets` over all
    the channels, less the pads. Cached with the spec: never written to."""
    D, H, W = spec.in_size
    KH, KW = spec.kernel[1:]
    off = np.empty(spec.in_channels * KH * KW, dtype=np.int64)
    _tap_offsets.py_func(off, spec.in_channels, D * H * W, KH, KW, *spec.dilation[1:], W, 1,
                         spec.flip)
    return (off - (spec.pad_lo[1] * W + spec.pad_lo[2])).reshape(spec.groups, -1)


@njit(inline="always")
def _two_runs(pl, off, wf, at, n1, s2, n2, w0, Og, R, VW, RB):
    """The tiles over two runs of positions of a padded copy in ``pl``, [0, n1) and [s2, s2 + n2)
    (whole vectors), into an (Og, n1 + n2) output carved from ``pl`` at ``at``, after the copy
    and its slack (the caller has checked that ``pl`` holds them)."""
    Yb = pl[at:at + Og * (n1 + n2)].reshape(Og, n1 + n2)
    if n1 > 0:
        _pt._tiles(pl, off, wf, Yb, 0, n1, 0, w0, 0, Og, R, VW, RB)
    if n2 > 0:
        _pt._tiles(pl, off, wf, Yb, s2, s2 + n2, n1 - s2, w0, 0, Og, R, VW, RB)
    return Yb


@njit(inline="always")
def _row_path(xf, Y2, wf, pl, off, c0, w0, o0, Og, Cg, CX, H, W, ra1, rb1, ra2, rb2, KH, KW, dh,
              dw, ph, pw, pw_hi, flip, VW, RB):
    """Output rows [ra1, rb1) and [ra2, rb2) exactly (either may be empty), on a zero-padded copy
    of the input rows they read (the two bands' rows stacked)."""
    KH1 = (KH - 1) * dh
    nr1 = rb1 - ra1 + KH1 if rb1 > ra1 else 0
    nr = nr1 + (rb2 - ra2 + KH1 if rb2 > ra2 else 0)
    Wq = W + pw + pw_hi
    CS = nr * Wq
    n1 = ((rb1 - ra1) * Wq + VW - 1) // VW * VW if rb1 > ra1 else 0
    n2 = ((rb2 - ra2) * Wq + VW - 1) // VW * VW if rb2 > ra2 else 0
    if pl.shape[0] < Cg * CS + Wq + VW + Og * (n1 + n2):
        return False  # see _fwd_kernel
    for c in range(Cg):
        xc = xf[(c0 + c) * CX:(c0 + c) * CX + H * W]
        for i in range(nr):
            ih = (ra1 + i if i < nr1 else ra2 + i - nr1) - ph
            row = pl[c * CS + i * Wq:c * CS + (i + 1) * Wq]
            if 0 <= ih < H:
                _fill_zero(row[:pw])
                _copy(row[pw:pw + W], xc[ih * W:(ih + 1) * W])
                _fill_zero(row[pw + W:])
            else:
                _fill_zero(row)
    _fill_zero(pl[Cg * CS:Cg * CS + Wq + VW])
    _tap_offsets(off, Cg, CS, KH, KW, dh, dw, Wq, 1, flip)
    # a band's tiles past its last row read the next band's rows or the slack
    Yb = _two_runs(pl, off, wf, Cg * CS + Wq + VW, n1, nr1 * Wq, n2, w0, Og, Cg * KH * KW, VW, RB)
    for o in range(Og):
        for oh in range(ra1, rb1):
            _copy(Y2[o0 + o, oh * W:(oh + 1) * W], Yb[o, (oh - ra1) * Wq:])
        for oh in range(ra2, rb2):
            _copy(Y2[o0 + o, oh * W:(oh + 1) * W], Yb[o, n1 + (oh - ra2) * Wq:])
    return True


@njit(inline="always")
def _col_path(xf, Y2, wf, pl, off, c0, w0, o0, Og, Cg, CX, H, W, ra, rb, KH, KW, dh, dw, ph, pw,
              pw_hi, flip, VW, RB):
    """The edge columns (the first pw and the last pw_hi) of rows [ra, rb) exactly, on a
    transposed zero-padded copy of the input columns they read (rows contiguous): tap (kh, kw)
    then reads kw*dw columns and kh*dh rows further, and a column of outputs is a run of
    positions. Both edges' input columns are stacked in one copy."""
    KW1 = (KW - 1) * dw
    nrows = rb - ra + (KH - 1) * dh
    nc1 = pw + KW1 if pw > 0 else 0
    ncols = nc1 + (pw_hi + KW1 if pw_hi > 0 else 0)
    CS = ncols * nrows
    n1 = (pw * nrows + VW - 1) // VW * VW
    n2 = (pw_hi * nrows + VW - 1) // VW * VW
    if pl.shape[0] < Cg * CS + nrows + VW + Og * (n1 + n2):
        return False  # see _fwd_kernel
    i0 = max(0, ph - ra)  # the copy's rows that are inside the input
    i1 = min(nrows, H + ph - ra)
    _fill_zero(pl[:Cg * CS + nrows + VW])
    for c in range(Cg):
        base = (c0 + c) * CX + (ra + i0 - ph) * W
        for j in range(ncols):
            iw = j - pw if j < nc1 else W - pw_hi + j - nc1 - pw
            if 0 <= iw < W:
                dst = pl[c * CS + j * nrows + i0:c * CS + j * nrows + i1]
                src = xf[base + iw:]
                for i in range(i1 - i0):
                    dst[i] = src[i * W]
    _tap_offsets(off, Cg, CS, KH, KW, dh, dw, 1, nrows, flip)
    Yb = _two_runs(pl, off, wf, Cg * CS + nrows + VW, n1, nc1 * nrows, n2, w0, Og, Cg * KH * KW,
                   VW, RB)
    for o in range(Og):
        for j in range(pw + pw_hi):
            src = Yb[o, j * nrows:] if j < pw else Yb[o, n1 + (j - pw) * nrows:]
            ow = j if j < pw else W - pw_hi + j - pw
            for oh in range(ra, rb):
                Y2[o0 + o, oh * W + ow] = src[oh - ra]
    return True


@njit(parallel=True, cache=True)
def _fwd_kernel(xf, offs, wf, y2, D, H, W, KH, KW, dh, dw, ph, pw, ph_hi, pw_hi, flip, rows, S, VW,
                RB, scratch):
    """y2[b] (O, D*OH*W) from xf[b] (C*D*H*W): one task per (image, group, depth slice, band of
    interior rows). ``scratch``: elements a task's border passes need (:func:`_scratch`)."""
    N = xf.shape[0]
    G, R = offs.shape
    O = y2.shape[1]
    Og = O // G
    Cg = R // (KH * KW)
    OH = y2.shape[2] // (D * W)
    CX = D * H * W
    ilo, ihi = ph, OH - ph_hi
    nseg = (ihi - ilo + rows - 1) // rows
    # Numba clamps slices silently and indexes without bounds checks, so a border pass given
    # less scratch than its copy and output need writes nothing and reports it here (raising
    # inside the loop would make Numba run it serially)
    short = np.zeros(1, dtype=np.int64)
    for t in prange(N * G * D * nseg):
        b = t // (G * D * nseg)
        g = (t // (D * nseg)) % G
        d = (t // nseg) % D
        s = t % nseg
        sa = ilo + s * rows
        sb = min(ihi, sa + rows)
        xb = xf[b]
        Y2 = y2[b]
        w0 = g * Og * R
        xs, ys = d * H * W, d * OH * W
        p0 = sa * W + pw
        p1 = sb * W - pw_hi
        tail = sa  # fewer positions than a vector: the row path takes the band's rows
        if p1 - p0 >= VW:
            # interior: taps read x in place (the edge columns' taps wrap; redone below), in
            # chunks of about S positions, whose accumulators stay in L2 over all the blocks (a
            # last chunk shorter than a vector ends with one reaching back into the one before)
            nch = (p1 - p0 + S - 1) // S
            step = ((p1 - p0 + nch - 1) // nch + VW - 1) // VW * VW
            for q0 in range(p0, p1, step):
                _pt._tiles(xb, offs[g], wf, Y2, xs + q0, xs + min(p1, q0 + step), ys - xs, w0,
                           g * Og, Og, R, VW, RB)
            tail = sb
        # the edge columns of the interior rows, the rows above and below the interior
        cols = tail > sa and pw + pw_hi > 0
        top = ilo if s == 0 else 0
        end = OH if s == nseg - 1 else sb
        if not cols and top == 0 and tail == end:
            continue
        pl = np.empty(scratch, dtype=Y2.dtype)
        off = np.empty(R, dtype=np.int64)
        xv = xb[xs:]
        Yv = Y2[:, ys:ys + OH * W]
        ok = True
        if cols:
            ok = _col_path(xv, Yv, wf, pl, off, g * Cg, w0, g * Og, Og, Cg, CX, H, W, sa, tail, KH,
                           KW, dh, dw, ph, pw, pw_hi, flip, VW, RB)
        if top > 0 or tail < end:
            ok &= _row_path(xv, Yv, wf, pl, off, g * Cg, w0, g * Og, Og, Cg, CX, H, W, 0, top, tail,
                            end, KH, KW, dh, dw, ph, pw, pw_hi, flip, VW, RB)
        if not ok:
            short[0] = 1
    if short[0]:
        raise ValueError("direct_tiled: the border scratch is too small")


@lru_cache(maxsize=256)
def _scratch(spec):
    """Elements of a task's border scratch: the larger of the row path's (the rows above and
    below the interior, or a band too short for a vector, with the rows their taps read, a row
    and a vector of slack, the tiles' output rounded to vectors per band) and the column
    path's."""
    H, W = spec.in_size[1:]
    KH, KW = spec.kernel[1:]
    dh, dw = spec.dilation[1:]
    ph, pw = spec.pad_lo[1:]
    ph_hi, pw_hi = spec.pad_hi[1:]
    VW = vector_width(spec.np_dtype.itemsize)
    Cg, Og = spec.group_in, spec.group_out
    KH1, KW1 = (KH - 1) * dh, (KW - 1) * dw
    Wq = W + pw + pw_hi
    # a band too short for a vector has fewer than VW + pw + pw_hi < VW + W positions
    out_rows = ph + ph_hi + VW // W + 2
    row = Cg * (out_rows + 2 * KH1) * Wq + Wq + VW + Og * (out_rows * Wq + 2 * VW)
    nrows = _rows_per_task(spec) + KH1
    col = Cg * (pw + pw_hi + 2 * KW1) * nrows + nrows + VW + Og * ((pw + pw_hi) * nrows + 2 * VW)
    return max(row, col)


def forward(spec, x, w):
    N, C = spec.batch, spec.in_channels
    D, H, W = spec.in_size
    OH = spec.out_size[1]
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    xf = np.ascontiguousarray(x).reshape(N, C * D * H * W)
    wf = np.ascontiguousarray(w).reshape(-1)
    _fwd_kernel(xf, _flat_offsets(spec), wf, y.reshape(N, spec.out_channels, D * OH * W), D, H, W,
                *spec.kernel[1:], *spec.dilation[1:], *spec.pad_lo[1:], *spec.pad_hi[1:],
                spec.flip, _rows_per_task(spec), _chunk(spec), vector_width(spec.np_dtype.itemsize),
                _pt._ROWS, _scratch(spec))
    return y


def grad_input(spec, dy, w):
    return forward(_pd._adjoint(spec), dy, _pd._adjoint_weights(spec, w))
