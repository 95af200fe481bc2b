"""Direct convolution over flattened stride-phase planes: im2col_flat without the column matrix.

On the phase planes of :mod:`nbconv.cpu.im2col_flat`, tap k of input channel c reads, for grid
position p of an image, plane element ``off[c, k] + p``: every (channel, tap) pair is one
contiguous, constant-offset row. So the forward pass is, per output channel o,

    Y[o, p] = sum_{c, k} w[o, c, k] * planes[off[c, k] + p]

a long unit-stride multiply-add per (channel, tap) that LLVM vectorises along p. A pass over a
segment of positions does four output channels times eight (channel, tap) rows: each load of an
input vector feeds four multiply-adds and each load and store of the four accumulator rows is
shared by 32. Grad-weights is the same pairing reduced over p instead:

    dW[o, c, k] = sum_p D[o, p] * planes[off[c, k] + p]

with dy laid on the grid (zeros in the junk columns), four output channels times four rows per
pass: 16 vector accumulators, all in registers, eight loads per 16 multiply-adds.

There is no GEMM, so no BLAS call and no column matrix. Measured side by side on 2 cores (ms,
this algorithm against the better of im2col and im2col_flat): ResNet's 7x7 stem, where im2col's
GEMM has K = 147 and OpenBLAS reaches ~125 GFLOP/s, forward 11.5-12.8 vs 14.8-17.8 (147-165
GFLOP/s), grad-weights 13.6 vs 20.7; the strided 3x3 12.1 vs 14.3 and 13.3 vs 14.4; WaveNet's
dilated causal layer grad-weights 3.7 vs 5.4; ResNeXt's 4-channel groups forward 2.4 vs 2.7
(grouped_direct). It loses where the planes are small (ResNet's 3x3 at 7x7: 32 vs 12 ms, a pass's
setup over 63 positions), where the channels are many (the 1x1 at 14x14 with 1024 channels:
7.6 vs 5.7), and to Winograd on stride-1 3x3 layers.

Grad-input of a stride-1 problem is the forward pass of its adjoint (dy correlated with the
flipped, transposed weights); a strided one is left to the others (dx's points would pair with
taps of different phases).

``filter_flip`` is applied in the offset table (weight tap k reads the row of tap K-1-k), so the
algorithm takes the user's weights as they are (registered ``flips=True``): no flipped copy of
the weights by dispatch, and none for the adjoint, whose flip is the opposite of the problem's.
"""
from dataclasses import replace
from functools import lru_cache

import numpy as np
from numba import get_num_threads, njit, prange

from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import im2col as _im2col
from . import im2col_flat as _flat
from .direct import _FASTMATH
from .im2col import _copy, _fill_zero, _scratch_arrays

# Positions per forward task (whole grid rows): long, so a pass's setup (32 weights, 8 row
# offsets) is amortised. Measured, 2 threads, ms at 1024 / 4096 / 16384 positions: ResNet's stem
# 14.0 / 14.6 / 12.3, the strided 3x3 13.7 / 13.1 / 13.2; shorter is slower still (the 3x3 at
# 56x56: 31.4 at 64, 13.1 at 512, 11.7 at 16384).
_SEG_FWD = 16384

# Positions per grad-weights block: each block ends in 16 horizontal sums. Measured, 2 threads,
# ms at 128 / 256 / 512 / 1024 / 2048: the strided 3x3 17.7 / 16.4 / 13.7 / 12.5 / 12.8, ResNet's
# stem 19.0 / 15.5 / 14.9 / 13.2 / 13.5, WaveNet's layer 5.0 / 4.5 / 3.9 / 3.6 / 3.6.
_SEG_GW = 1024


@lru_cache(maxsize=256)
def _adjoint(spec):
    """Grad-input of a stride-1 problem as a forward problem: dy correlated with the flipped
    weights (the opposite flip), input and output channels swapped per group, padded by
    (k - 1) * d - pad on each side (the full correlation's padding less the forward's), so its
    output is dx's shape."""
    lo = tuple((k - 1) * d - p for k, d, p in zip(spec.kernel, spec.dilation, spec.pad_lo))
    hi = tuple((k - 1) * d - p for k, d, p in zip(spec.kernel, spec.dilation, spec.pad_hi))
    return replace(spec, direction=FORWARD, in_channels=spec.out_channels,
                   out_channels=spec.in_channels, in_size=spec.out_size, out_size=spec.in_size,
                   pad_lo=lo, pad_hi=hi, flip=not spec.flip)


def supports(spec):
    if spec.direction == GRAD_INPUT:
        # stride 1 only (a strided problem's adjoint reads dy with holes), and low pads no
        # larger than the dilated kernel's extent less one (the planes start at the adjoint's
        # first padded point; a negative high pad leaves dy's last rows, which saw only
        # padding, unread)
        return spec.stride == (1, 1, 1) and not spec.unshared and supports(_adjoint(spec))
    # the planes start at the first padded point: a negative low pad (a crop) has no plane
    return (not spec.unshared and min(spec.pad_lo) >= 0
            and _plan_one(spec) <= _im2col.get_workspace_limit())


def _per_image(spec):
    """Scratch elements per image: its phase planes, and for grad-weights dy on the grid."""
    g = _flat._grid(spec)
    return spec.in_channels * len(g.phases) * g.PS + (
        spec.out_channels * g.Lb if spec.direction == GRAD_WEIGHTS else 0)


def _segment(g):
    """Forward positions per task: whole grid rows, about _SEG_FWD."""
    return max(1, _SEG_FWD // g.Wq) * g.Wq


def _plan(spec):
    """(images per chunk, workspace bytes): the per-thread scratch (a forward task's four
    accumulator rows, grad-weights' partial sums) plus as many whole images as fit the
    cache-sized chunk of im2col and the workspace limit (at least one image)."""
    if spec.direction == GRAD_INPUT:
        return _plan(_adjoint(spec))
    return _chunk_plan(spec, _per_thread(spec))


def _chunk_plan(spec, fixed):
    """(images per chunk, workspace bytes) for ``fixed`` elements of scratch that do not grow
    with the chunk (per-thread buffers, slack): they first, then as many whole images as fit the
    cache-sized chunk of im2col and the workspace limit (at least one image)."""
    item = spec.np_dtype.itemsize
    per, fixed = _per_image(spec) * item, fixed * item
    budget = min(_im2col._CHUNK_TARGET, _im2col.get_workspace_limit()) - fixed
    nb = min(spec.batch, max(1, budget // per))
    return nb, nb * per + fixed


def _per_thread(spec):
    if spec.direction == GRAD_WEIGHTS:
        return get_num_threads() * spec.out_channels * spec.group_in * _taps(spec)
    g = _flat._grid(spec)
    return get_num_threads() * 4 * min(_segment(g), g.Lb)


def _plan_one(spec):
    """Workspace bytes with one image per chunk: what must fit the limit."""
    return (_per_image(spec) + _per_thread(spec)) * spec.np_dtype.itemsize


def workspace(spec):
    return _plan(spec)[1]


def _taps(spec):
    return spec.kernel[0] * spec.kernel[1] * spec.kernel[2]


def cost(spec):
    """(work on the grid / the definition's work, vector passes) for the `guess` estimate: forward
    passes of 4 output channels x 8 (channel, tap) rows over a segment, grad-weights reduction
    blocks of 4 x 4 over a block of positions."""
    if spec.direction == GRAD_INPUT:
        return cost(_adjoint(spec))
    g = _flat._grid(spec)
    P = spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    R = spec.group_in * _taps(spec)
    if spec.direction == FORWARD:
        S = _segment(g)
        passes = spec.batch * -(-g.Lb // S) * spec.groups * -(-spec.group_out // 4) * -(-R // 8)
    else:
        passes = -(-spec.batch * g.Lb // _SEG_GW) * spec.groups * -(-spec.group_out // 4) * -(-R // 4)
    return g.Lb / max(P, 1), passes


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _planes_kernel(x, planes, n0, nph, phase_index, Dq, Hq, Wq, PS, sd, sh, sw, pd, ph, pw):
    """planes[b, c] = the nph phase planes of image n0 + b, channel c (zero-padded)."""
    nb, C = planes.shape[0], planes.shape[1]
    for t in prange(nb * C):
        b = t // C
        c = t % C
        pl = planes[b, c]
        _fill_zero(pl)
        _flat._fill_planes(x[n0 + b, c], pl, phase_index, Dq, Hq, Wq, PS, sd, sh, sw, pd, ph, pw)


@njit(parallel=True, cache=True)
def _planes_s1_kernel(x, planes, n0, Dq, Hq, Wq, pd, ph, pw):
    """_planes_kernel at stride 1 (one plane per channel): the input rows copied in plane order,
    only the gaps between them zeroed, each gap (a row's right padding and the next row's left
    one) in one pass. Measured side by side (2 threads, ms): ResNeXt's 8 x 128 channels at 56x56
    0.45-0.50 vs 1.12-1.16 for _planes_kernel, which zeroes each plane first and divides by the
    strides per row; ResNet's 3x3 at 56x56 0.22 vs 0.40-0.43; WaveNet's layer 0.28-0.35 vs
    0.42-0.48."""
    nb, C = planes.shape[0], planes.shape[1]
    for t in prange(nb * C):
        b = t // C
        c = t % C
        _fill_plane_s1(planes[b, c], x[n0 + b, c], Dq, Hq, Wq, pd, ph, pw)


@njit(inline="always")
def _fill_plane_s1(pl, xc, Dq, Hq, Wq, pd, ph, pw):
    """pl = channel xc's stride-1 plane: its rows copied in plane order, the gaps zeroed."""
    D, H, W = xc.shape
    n = max(0, min(W, Wq - pw))  # input columns that land in the plane (a negative high pad crops)
    pos = 0
    for idd in range(min(D, Dq - pd)):
        for ih in range(min(H, Hq - ph)):
            start = ((idd + pd) * Hq + ih + ph) * Wq + pw
            _fill_zero(pl[pos:start])
            _copy(pl[start:start + n], xc[idd, ih])
            pos = start + n
    _fill_zero(pl[pos:])


@njit(inline="always")
def _crop_rows(Y, yb, o0, no, r0, nr, Hq, Wq):
    """yb[o0 + i, od, oh] = Y[i, (r - r0)*Wq:][:OW] for the grid rows r = od*Hq + oh in
    [r0, r0 + nr) that are output rows (oh < OH)."""
    OH = yb.shape[2]
    for i in range(no):
        for r in range(r0, r0 + nr):
            oh = r % Hq
            if oh < OH:
                _copy(yb[o0 + i, r // Hq, oh], Y[i, (r - r0) * Wq:])


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _fwd_kernel(planes, offs, w, y, n0, Lb, S, Hq, Wq):
    """y[n0 + b, o] = the grid Y[o, p] = sum_r w[o, r] * planes[b, off[g, r] + p], p < Lb, r over
    the (channel, tap) pairs of o's group g, without its junk columns and rows.

    A task accumulates a segment of S grid positions (whole grid rows) of four output channels in
    a buffer of its own, then copies the segment's output rows into y while they are in cache (a
    grid-sized scratch cropped by a separate pass measured slower, ms: ResNeXt's 3x3 2.67 vs 2.36,
    ResNet's stem 12.8 vs 11.5, the strided 3x3 15.2 vs 12.1)."""
    nb = planes.shape[0]
    G, R = offs.shape
    O = w.shape[0]
    Og = O // G
    nob = (Og + 3) // 4
    nseg = (Lb + S - 1) // S
    for t in prange(nb * nseg * G * nob):
        # output-channel blocks innermost: consecutive tasks read the same stretch of the planes
        b = t // (nseg * G * nob)
        a = ((t // (G * nob)) % nseg) * S
        L = min(S, Lb - a)
        g = (t // nob) % G
        o0 = g * Og + (t % nob) * 4
        oe = (g + 1) * Og
        pl = planes[b]
        off = offs[g]
        Y = np.empty((4, L), dtype=y.dtype)
        if o0 + 4 <= oe:
            y0, y1, y2, y3 = Y[0], Y[1], Y[2], Y[3]
            _fill_zero(y0)
            _fill_zero(y1)
            _fill_zero(y2)
            _fill_zero(y3)
            w0, w1, w2, w3 = w[o0], w[o0 + 1], w[o0 + 2], w[o0 + 3]
            r = 0
            while r + 8 <= R:
                x0, x1 = pl[off[r] + a:], pl[off[r + 1] + a:]
                x2, x3 = pl[off[r + 2] + a:], pl[off[r + 3] + a:]
                x4, x5 = pl[off[r + 4] + a:], pl[off[r + 5] + a:]
                x6, x7 = pl[off[r + 6] + a:], pl[off[r + 7] + a:]
                a0, a1, a2, a3, a4, a5, a6, a7 = (w0[r], w0[r + 1], w0[r + 2], w0[r + 3],
                                                  w0[r + 4], w0[r + 5], w0[r + 6], w0[r + 7])
                b0, b1, b2, b3, b4, b5, b6, b7 = (w1[r], w1[r + 1], w1[r + 2], w1[r + 3],
                                                  w1[r + 4], w1[r + 5], w1[r + 6], w1[r + 7])
                c0, c1, c2, c3, c4, c5, c6, c7 = (w2[r], w2[r + 1], w2[r + 2], w2[r + 3],
                                                  w2[r + 4], w2[r + 5], w2[r + 6], w2[r + 7])
                d0, d1, d2, d3, d4, d5, d6, d7 = (w3[r], w3[r + 1], w3[r + 2], w3[r + 3],
                                                  w3[r + 4], w3[r + 5], w3[r + 6], w3[r + 7])
                for p in range(L):
                    v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                    v4, v5, v6, v7 = x4[p], x5[p], x6[p], x7[p]
                    y0[p] += ((a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)) + ((a4 * v4 + a5 * v5) + (a6 * v6 + a7 * v7))
                    y1[p] += ((b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)) + ((b4 * v4 + b5 * v5) + (b6 * v6 + b7 * v7))
                    y2[p] += ((c0 * v0 + c1 * v1) + (c2 * v2 + c3 * v3)) + ((c4 * v4 + c5 * v5) + (c6 * v6 + c7 * v7))
                    y3[p] += ((d0 * v0 + d1 * v1) + (d2 * v2 + d3 * v3)) + ((d4 * v4 + d5 * v5) + (d6 * v6 + d7 * v7))
                r += 8
            if r + 4 <= R:
                x0, x1 = pl[off[r] + a:], pl[off[r + 1] + a:]
                x2, x3 = pl[off[r + 2] + a:], pl[off[r + 3] + a:]
                a0, a1, a2, a3 = w0[r], w0[r + 1], w0[r + 2], w0[r + 3]
                b0, b1, b2, b3 = w1[r], w1[r + 1], w1[r + 2], w1[r + 3]
                c0, c1, c2, c3 = w2[r], w2[r + 1], w2[r + 2], w2[r + 3]
                d0, d1, d2, d3 = w3[r], w3[r + 1], w3[r + 2], w3[r + 3]
                for p in range(L):
                    v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                    y0[p] += (a0 * v0 + a1 * v1) + (a2 * v2 + a3 * v3)
                    y1[p] += (b0 * v0 + b1 * v1) + (b2 * v2 + b3 * v3)
                    y2[p] += (c0 * v0 + c1 * v1) + (c2 * v2 + c3 * v3)
                    y3[p] += (d0 * v0 + d1 * v1) + (d2 * v2 + d3 * v3)
                r += 4
            while r < R:
                x0 = pl[off[r] + a:]
                a0, b0, c0, d0 = w0[r], w1[r], w2[r], w3[r]
                for p in range(L):
                    v0 = x0[p]
                    y0[p] += a0 * v0
                    y1[p] += b0 * v0
                    y2[p] += c0 * v0
                    y3[p] += d0 * v0
                r += 1
        else:
            for o in range(o0, oe):
                yo = Y[o - o0]
                _fill_zero(yo)
                wo = w[o]
                r = 0
                while r + 4 <= R:
                    x0, x1 = pl[off[r] + a:], pl[off[r + 1] + a:]
                    x2, x3 = pl[off[r + 2] + a:], pl[off[r + 3] + a:]
                    a0, a1, a2, a3 = wo[r], wo[r + 1], wo[r + 2], wo[r + 3]
                    for p in range(L):
                        yo[p] += (a0 * x0[p] + a1 * x1[p]) + (a2 * x2[p] + a3 * x3[p])
                    r += 4
                while r < R:
                    x0 = pl[off[r] + a:]
                    a0 = wo[r]
                    for p in range(L):
                        yo[p] += a0 * x0[p]
                    r += 1
        _crop_rows(Y, y[n0 + b], o0, min(4, oe - o0), a // Wq, L // Wq, Hq, Wq)


@njit(inline="always")
def _gw_block(pl, off, D, acc, q, a, L, o, oe, R):
    """acc[o, r] += sum_{p < L} D[o, q + p] * pl[off[r] + a + p] for o in [o, oe), all r."""
    while o + 4 <= oe:
        d0, d1, d2, d3 = D[o, q:q + L], D[o + 1, q:q + L], D[o + 2, q:q + L], D[o + 3, q:q + L]
        r = 0
        while r + 4 <= R:
            x0, x1 = pl[off[r] + a:], pl[off[r + 1] + a:]
            x2, x3 = pl[off[r + 2] + a:], pl[off[r + 3] + a:]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = acc.dtype.type(0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = acc.dtype.type(0)
            for p in range(L):
                v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                e0, e1, e2, e3 = d0[p], d1[p], d2[p], d3[p]
                s00 += e0 * v0
                s01 += e0 * v1
                s02 += e0 * v2
                s03 += e0 * v3
                s10 += e1 * v0
                s11 += e1 * v1
                s12 += e1 * v2
                s13 += e1 * v3
                s20 += e2 * v0
                s21 += e2 * v1
                s22 += e2 * v2
                s23 += e2 * v3
                s30 += e3 * v0
                s31 += e3 * v1
                s32 += e3 * v2
                s33 += e3 * v3
            acc[o, r] += s00
            acc[o, r + 1] += s01
            acc[o, r + 2] += s02
            acc[o, r + 3] += s03
            acc[o + 1, r] += s10
            acc[o + 1, r + 1] += s11
            acc[o + 1, r + 2] += s12
            acc[o + 1, r + 3] += s13
            acc[o + 2, r] += s20
            acc[o + 2, r + 1] += s21
            acc[o + 2, r + 2] += s22
            acc[o + 2, r + 3] += s23
            acc[o + 3, r] += s30
            acc[o + 3, r + 1] += s31
            acc[o + 3, r + 2] += s32
            acc[o + 3, r + 3] += s33
            r += 4
        while r < R:
            x0 = pl[off[r] + a:]
            s00 = s10 = s20 = s30 = acc.dtype.type(0)
            for p in range(L):
                v0 = x0[p]
                s00 += d0[p] * v0
                s10 += d1[p] * v0
                s20 += d2[p] * v0
                s30 += d3[p] * v0
            acc[o, r] += s00
            acc[o + 1, r] += s10
            acc[o + 2, r] += s20
            acc[o + 3, r] += s30
            r += 1
        o += 4
    while o < oe:
        d0 = D[o, q:q + L]
        for r in range(R):
            x0 = pl[off[r] + a:]
            s00 = acc.dtype.type(0)
            for p in range(L):
                s00 += d0[p] * x0[p]
            acc[o, r] += s00
        o += 1


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _gw_kernel(planes, offs, D, part, Lb, S, first):
    """part[t] (+)= thread t's share of dW[o, r] = sum_{b, p} D[o, b*Lb + p] * planes[b, off[g, r] + p]
    (g: o's group): the chunk's nb*Lb positions in nt = part.shape[0] equal ranges, one per task."""
    nb = planes.shape[0]
    nt, O, R = part.shape
    G = offs.shape[0]
    Og = O // G
    total = nb * Lb
    for t in prange(nt):
        acc = part[t]
        if first:
            acc[:] = 0.0
        pos = t * total // nt
        end = (t + 1) * total // nt
        while pos < end:
            b = pos // Lb
            a = pos % Lb
            L = min(S, Lb - a, end - pos)
            for g in range(G):
                _gw_block(planes[b], offs[g], D, acc, pos, a, L, g * Og, (g + 1) * Og, R)
            pos += L


# --------------------------------------------------------------------------------------------
# Thin wrappers
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _offsets(spec):
    """off[grp, c*K + k]: where channel c of group grp, weight tap k reads in an image's planes
    (C, nph, PS) flattened; with ``spec.flip`` weight tap k reads tap K-1-k's row. Cached with
    the spec: never written to."""
    g = _flat._grid(spec)
    step = -1 if spec.flip else 1
    c = np.arange(spec.in_channels, dtype=np.int64)[:, None] * (len(g.phases) * g.PS)
    tap = g.tap_phase[::step] * g.PS + g.tap_off[::step]
    return (c + tap[None, :]).reshape(spec.groups, -1)


def _fill(spec, g, x, planes, n0):
    if spec.stride == (1, 1, 1):
        _planes_s1_kernel(x, planes, n0, g.Dq, g.Hq, g.Wq, *spec.pad_lo)
        return
    _planes_kernel(x, planes, n0, len(g.phases), g.phase_index, g.Dq, g.Hq, g.Wq, g.PS,
                   *spec.stride, *spec.pad_lo)


def forward(spec, x, w):
    g = _flat._grid(spec)
    nb, _ = _plan(spec)
    C, O = spec.in_channels, spec.out_channels
    nph = len(g.phases)
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    wr = w.reshape(O, spec.group_in * _taps(spec))
    off = _offsets(spec)
    (pbuf,) = _scratch_arrays(spec.np_dtype, nb * C * nph * g.PS)
    S = _segment(g)
    for n0, m in _flat._chunks(spec, nb):
        planes = pbuf[:m * C * nph * g.PS].reshape(m, C, nph * g.PS)
        _fill(spec, g, x, planes, n0)
        _fwd_kernel(planes.reshape(m, C * nph * g.PS), off, wr, y, n0, g.Lb, S, g.Hq, g.Wq)
    return y


def _adjoint_weights(spec, w):
    """The adjoint's weights: input and output channels swapped per group (its flip reverses the
    taps, so they are not copied reversed)."""
    G, Og, Cg = spec.groups, spec.group_out, spec.group_in
    wa = w.reshape((G, Og, Cg) + spec.kernel).transpose(0, 2, 1, 3, 4, 5)
    return np.ascontiguousarray(wa).reshape((spec.in_channels, Og) + spec.kernel)


def grad_input(spec, dy, w):
    return forward(_adjoint(spec), dy, _adjoint_weights(spec, w))


def grad_weights(spec, x, dy):
    C, O = spec.in_channels, spec.out_channels
    if spec.batch == 0:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    g = _flat._grid(spec)
    nb, _ = _plan(spec)
    nph = len(g.phases)
    R = spec.group_in * _taps(spec)
    nt = get_num_threads()
    off = _offsets(spec)
    pbuf, dbuf, pt = _scratch_arrays(spec.np_dtype, nb * C * nph * g.PS, O * nb * g.Lb, nt * O * R)
    part = pt.reshape(nt, O, R)
    for i, (n0, m) in enumerate(_flat._chunks(spec, nb)):
        planes = pbuf[:m * C * nph * g.PS].reshape(m, C, nph * g.PS)
        _fill(spec, g, x, planes, n0)
        D = dbuf[:O * m * g.Lb].reshape(O, m * g.Lb)
        _flat._expand_kernel(dy, D, n0, m, g.Lb, g.Hq, g.Wq)
        _gw_kernel(planes.reshape(m, C * nph * g.PS), off, D, part, g.Lb, _SEG_GW, i == 0)
    return part.sum(axis=0).reshape(spec.w_shape)
