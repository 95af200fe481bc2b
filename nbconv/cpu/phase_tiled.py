"""phase_direct's problems with register-tiled accumulators (an implicit GEMM without packing).

The rows are phase_direct's: on im2col_flat's stride-phase planes, (channel, tap) pair r of an
image reads the contiguous row ``planes[off[r] + p]``, so

    Y[o, p] = sum_r w[o, r] * planes[off[r] + p]

is a GEMM whose right operand is never built. phase_direct streams it one pass of 8 rows at a time
with the accumulators in memory; here a tile of up to 6 output channels x 4 vectors of positions
keeps its accumulators in registers over a block of rows (:mod:`nbconv.cpu._vtile`), so each
input vector load feeds up to 6 multiply-adds and the accumulators are loaded and stored once per
block of rows, not once per 8.

A task owns one image's segment of grid positions in one group and runs every output channel of
the group over it, block of rows by block of rows: the rows of a block (a few channels' taps) are
re-read from L2 by every output-channel tile. Segments are rounded up to whole vectors; the
positions past the segment read the planes of the next channel or image (or the zeroed slack after
the last one) into accumulators that are never copied out. When a group's planes are small
enough (``_FUSE_BYTES``) and the (image, group) pairs many enough, a task owns a whole image of a
group and fills that group's planes itself, into a buffer of its own (``_fwd_fused_kernel``).

Measured on 2 cores in the tuner's interleaved rounds (`nbconv.autotune.evaluate regret`, ms,
load 0.9-1.5; this against phase_direct and the best other): DCGAN's 4x4 stride-2 layer 12.6 vs
20.0 / 14.8 (im2col_flat), the strided 3x3 13.3 vs 17.1 / 16.0, ResNet's stem 12.7 vs 14.1,
WaveNet's layer 3.7 vs 4.9 (grad-input 4.1 vs 5.3), ResNeXt's 4-channel groups 2.6 vs 3.1
(grad-input 2.7 vs 2.8). It loses to Winograd on stride-1 3x3 layers (ResNet's at 56x56 10.7 vs
10.1, at 7x7 12.8 vs 7.5, where 63-position planes make tiles short) and to the 1x1 GEMM (6.4 vs
5.5). Grad-input of a stride-1 problem is its adjoint's forward, as there; a strided one is one
stride-1 forward problem per phase of dx (:func:`_phases`), each writing its strided view of dx.
Measured side by side (ms, this against im2col_flat, the best before it): DCGAN's 4x4 stride-2
13.3 vs 13.9, the strided 3x3 11.5 vs 13.1 (each phase's kernel ~173 GFLOP/s; the rest is the
phases' weights, dy's planes four times over and dx's first touch).

Grad-weights swaps the tile's roles (:func:`grad_weights`): accumulators of 6 input channels x 4
vectors of output channels, dy transposed onto the grid as the vector operand. Measured side by
side (2 threads, ms, this against phase_direct): DCGAN 12.6 vs 15.7, the strided 3x3 13.7 vs 14.7
(kernel alone 195-198 GFLOP/s); the dilated 3x3 61.5 vs 68.6; it loses where the transposes cost
more than the tiles gain (WaveNet 5.0 vs 3.8), with few input channels (the stem's 3: 24 vs 12)
and with few output channels per group (ResNeXt's 4: one vector, 4 of its 16 lanes used).
"""
from dataclasses import replace
from functools import lru_cache
from itertools import product
from math import gcd, prod

import numpy as np
from numba import get_num_threads, njit, prange

from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import im2col as _im2col
from . import im2col_flat as _flat
from . import phase_direct as _pd
from ._vtile import MAX_NV, _tile, vector_width
from .im2col import _fill_zero, _scratch_arrays

# Rows per block: each tile sums a block's rows in registers, then its accumulators go back to
# memory. Measured (2 threads, ms, strided 3x3 / DCGAN / stem): 32 rows 18.9 / 15.7 / 13.8,
# 64 rows 13.9 / 14.2 / 12.4, 128 rows 15.2 / 14.7 / 14.3, 256 rows 12.6 / 14.6 / 12.9 (noisy; 64
# is never the worst).
_ROWS = 64
# Grid positions per task (whole grid rows): the rows of a block over a segment must stay in L2
# while every output-channel tile reads them, and so must the task's accumulators (output
# channels x positions), so the segment shrinks from _SEG_MAX to _SEG as the group's output
# channels grow past _ACC / _SEG_MAX. Measured at 64 rows per block, ms at 256 / 512 / 1024
# positions: strided 3x3 13.4 / 15.5 / 12.0, DCGAN 14.6 / 15.6 / 15.0, stem 13.2 / 13.3 / 12.3;
# at 1024 / 2048 / 4096 / 8192: ResNeXt (4 output channels per group) 2.42 / 2.25 / 1.98 / 2.03,
# stem (64) 11.85 / 11.62 / 11.47 / 11.75, WaveNet (64) 3.51 / 3.44 / 3.43 / 3.35.
_SEG = 1024
_SEG_MAX = 4096
_ACC = 1 << 16
# A forward task fills its group's planes itself when they take at most this: its own buffer
# instead of the chunk's planes, written and read back. Side by side (2 threads, ms, fused /
# separate; the group's planes in brackets): ResNeXt 2.23-2.61 / 2.60-2.98 (54 KiB), its
# grad-input 2.74 / 3.23, WaveNet 3.90 / 4.27 (2.1 MiB), ResNet's 3x3 at 56x56 10.3 / 10.7
# (0.9 MiB), C3D 3.94 / 3.95, the dilated 3x3 57.9 / 59.0; strided: the 3x3 10.1 / 11.0 (1.8
# MiB), DCGAN 12.3 / 13.0, ResNet's stem 11.4-12.3 / 11.7-13.4. The cap keeps a thread's buffer
# (counted in the workspace) from growing with the image.
_FUSE_BYTES = 4 << 20
_FUSE_TASKS = 4  # (image, group) tasks per thread at least, for balance


def _segment(g, og):
    n = max(_SEG, min(_SEG_MAX, _ACC // max(og, 1)))
    return max(1, n // g.Wq) * g.Wq


def _vw(spec):
    return vector_width(spec.np_dtype.itemsize)


def _round(n, m):
    return -(-n // m) * m


def supports(spec):
    if spec.direction == GRAD_INPUT:
        if spec.unshared:
            return False
        if spec.stride == (1, 1, 1):
            return supports(_pd._adjoint(spec))
        return (all(supports(sub) for _, sub, _, _ in _phases(spec) if sub is not None)
                and _plan(spec)[1] <= _im2col.get_workspace_limit())
    return (not spec.unshared and min(spec.pad_lo) >= 0
            and _plan_one(spec) <= _im2col.get_workspace_limit())


def _per_thread(spec):
    """A task's accumulators: every output channel of a group over a rounded segment."""
    g = _flat._grid(spec)
    seg = min(_segment(g, spec.group_out), g.Lb)
    return get_num_threads() * spec.group_out * _round(seg, _vw(spec))


def _plan(spec):
    """(images per chunk, workspace bytes), as phase_direct's: the per-thread accumulators and the
    slack after the planes first (grad-weights: dW's accumulators and the grid's row offsets),
    then as many whole images as fit. A strided grad-input runs its phases one after another:
    the most any of them holds (its forward's workspace, its weights and the cropped dy it
    reads), with the fewest images per chunk."""
    if spec.direction == GRAD_INPUT:
        if spec.stride == (1, 1, 1):
            return _plan(_pd._adjoint(spec))
        plans = [(_plan(sub), _phase_bytes(sub, crop))
                 for _, sub, crop, _ in _phases(spec) if sub is not None]
        if not plans:
            return spec.batch, 0
        return min(p[0] for p, _ in plans), max(p[1] + extra for p, extra in plans)
    if spec.direction == GRAD_WEIGHTS:
        # dW's accumulators are not part of the cache-sized chunk: they are the same for any
        # number of images, and reloaded by every chunk (ResNet's 3x3 at 7x7, 9 MiB of them,
        # in 8 one-image chunks: 14.8 ms of kernel, 11.5 in one chunk of 8)
        item = spec.np_dtype.itemsize
        per, fixed = _gw_per_image(spec) * item, _gw_fixed(spec) * item
        budget = min(_im2col._CHUNK_TARGET, _im2col.get_workspace_limit() - fixed)
        nb = min(spec.batch, max(1, budget // per))
        return nb, nb * per + fixed
    if _fused(spec):
        return spec.batch, _fused_bytes(spec)
    return _pd._chunk_plan(spec, _per_thread(spec) + _slack(spec))


def _fused_bytes(spec):
    """The fused fill's workspace (no chunk): each thread's group planes, slack, accumulators."""
    g = _flat._grid(spec)
    nt = get_num_threads()
    return (nt * (spec.group_in * len(g.phases) * g.PS + _slack(spec))
            + _per_thread(spec)) * spec.np_dtype.itemsize


def _ldo(spec):
    """Row length of dy transposed onto the grid: the last group's output channels, rounded up to
    whole vectors, must fit in it."""
    VW = _vw(spec)
    return _round((spec.groups - 1) * spec.group_out + _round(spec.group_out, VW), VW)


def _gw_per_image(spec):
    """An image's phase planes and dy transposed onto its grid (positions x _ldo)."""
    g = _flat._grid(spec)
    return spec.in_channels * len(g.phases) * g.PS + g.Lb * _ldo(spec)


def _gw_fixed(spec):
    """dW's accumulators (taps x input channels x _ldo) and the grid's int64 row offsets."""
    item = spec.np_dtype.itemsize
    return _pd._taps(spec) * spec.in_channels * _ldo(spec) + -(-_flat._grid(spec).Lb * 8 // item)


def _slack(spec):
    """Elements after the last image's planes that a rounded-up tile may read."""
    return MAX_NV * _vw(spec)


def _plan_one(spec):
    if spec.direction == GRAD_WEIGHTS:
        return (_gw_per_image(spec) + _gw_fixed(spec)) * spec.np_dtype.itemsize
    if _fused(spec):
        return _plan(spec)[1]
    return (_pd._per_image(spec) + _per_thread(spec) + _slack(spec)) * spec.np_dtype.itemsize


def workspace(spec):
    return _plan(spec)[1]


def _subtiles(n):
    """Tiles that n channels split into, as the kernels split them (_tile_channels)."""
    k = 0
    while n > 0:
        n -= _tile_channels.py_func(n)
        k += 1
    return k


def _full(n):
    """The share of n channels in tiles of 6 or 4 (the rest go to tiles of 2 and 1)."""
    rest = n % 6 if n % 6 < 4 else n % 6 - 4
    return (n - rest) / max(n, 1)


def cost(spec):
    """(rounded work / the definition's work, tiles, share of the work in 6- and 4-channel tiles)
    for the `guess` estimate."""
    if spec.direction == GRAD_INPUT:
        return cost(_pd._adjoint(spec))
    g = _flat._grid(spec)
    P = spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    VW = _vw(spec)
    if spec.direction == GRAD_WEIGHTS:
        nvt = -(-spec.group_out // VW)
        tiles = (spec.batch * spec.groups * _pd._taps(spec) * _subtiles(spec.group_in)
                 * -(-nvt // MAX_NV))
        return g.Lb * nvt * VW / max(P * spec.group_out, 1), tiles, _full(spec.group_in)
    S = min(_segment(g, spec.group_out), g.Lb)
    nseg = -(-g.Lb // S)
    Lr = _round(S, VW)
    R = spec.group_in * _pd._taps(spec)
    tiles = (spec.batch * nseg * spec.groups * -(-spec.group_out // 6) * -(-R // _ROWS)
             * -(-Lr // (MAX_NV * VW)))
    return nseg * Lr / max(P, 1), tiles, _full(spec.group_out)


def gw_extra(spec):
    """(vectors of output channels per tile on average, elements moved outside the tiles: dy
    transposed onto the grid and dW out of the accumulators) for grad-weights' estimate."""
    nvt = -(-spec.group_out // _vw(spec))
    moved = spec.batch * _flat._grid(spec).Lb * _ldo(spec) + spec.out_channels * spec.group_in * _pd._taps(spec)
    return nvt / -(-nvt // MAX_NV), moved


@njit(parallel=True, cache=True)
def _fwd_tiled_kernel(planes, offs, wf, y, n0, Lb, S, Hq, Wq, VW, RB):
    """y[n0 + b, o] = the grid Y[o, p] = sum_r w[o, r] * planes[b, off[g, r] + p] cropped, one task
    per (image, segment, group). ``planes`` must be followed in memory by MAX_NV * VW readable
    elements (the rounded-up tiles of the last segment read them)."""
    nb = planes.shape[0]
    G, R = offs.shape
    Og = y.shape[1] // G
    nseg = (Lb + S - 1) // S
    for t in prange(nb * nseg * G):
        b = t // (nseg * G)
        a = ((t // G) % nseg) * S
        g = t % G
        L = min(S, Lb - a)
        Lr = (L + VW - 1) // VW * VW
        pl = planes[b]
        off = offs[g]
        Y = np.empty((Og, Lr), dtype=y.dtype)
        _tiles(pl, off, wf, Y, a, a + Lr, -a, g * Og * R, 0, Og, R, VW, RB)
        _pd._crop_rows(Y, y[n0 + b], g * Og, Og, a // Wq, L // Wq, Hq, Wq)


@njit(inline="always")
def _tile_channels(n):
    """Channels in the next tile when n remain: 6, then 4, 2, 1 for the rest."""
    return 6 if n >= 6 else (4 if n >= 4 else (2 if n >= 2 else 1))


@njit(inline="always")
def _tiles(pl, off, wf, Y, p0, p1, ys, w0, yrow0, Og, R, VW, RB):
    """Y[yrow0 + o, p + ys] = sum_r wf[w0 + o*R + r] * pl[off[r] + p] for o < Og and p0 <= p < p1:
    blocks of RB rows, tiles of 6/4/2/1 channels x up to MAX_NV vectors. A partial last vector is
    one ending at p1, run after all the others: it computes again up to VW - 1 positions before
    it (from its first block of rows on, so those sums are not added twice), and nothing is read
    or written past p1. The caller guarantees that positions from p1 - VW on may be computed
    (p1 - p0 >= VW, or a range that continues one computed before)."""
    ldy = Y.shape[1]
    pe = p0 + (p1 - p0) // VW * VW
    for r0 in range(0, R, RB):
        r1 = min(R, r0 + RB)
        o = 0
        while o < Og:
            no = _tile_channels(Og - o)
            q = p0
            while q < pe:
                nv = min(MAX_NV, (pe - q) // VW)
                _tile(no, nv, r0 > 0, pl, off, wf, Y, r0, r1, q, w0 + o * R,
                      (yrow0 + o) * ldy + q + ys, R)
                q += nv * VW
            o += no
    if pe < p1:
        q = p1 - VW
        for r0 in range(0, R, RB):
            r1 = min(R, r0 + RB)
            o = 0
            while o < Og:
                no = _tile_channels(Og - o)
                _tile(no, 1, r0 > 0, pl, off, wf, Y, r0, r1, q, w0 + o * R,
                      (yrow0 + o) * ldy + q + ys, R)
                o += no


@njit(parallel=True, cache=True)
def _fwd_fused_kernel(x, offs, wf, y, Lb, S, phase_index, Dq, Hq, Wq, sd, sh, sw, pd, ph, pw, PS,
                      CS, VW, RB, slack):
    """_fwd_tiled_kernel with the plane fill fused in: one task per (image, group) fills the
    group's planes into a buffer of its own, which stays in cache while the task's segments are
    tiled, instead of the chunk's planes going out to memory and back."""
    N, C = x.shape[0], x.shape[1]
    G, R = offs.shape
    Cg = C // G
    Og = y.shape[1] // G
    s1 = sd == 1 and sh == 1 and sw == 1
    for t in prange(N * G):
        b = t // G
        g = t % G
        pl = np.empty(Cg * CS + slack, dtype=y.dtype)
        for cl in range(Cg):
            dst = pl[cl * CS:(cl + 1) * CS]
            if s1:
                _pd._fill_plane_s1(dst, x[b, g * Cg + cl], Dq, Hq, Wq, pd, ph, pw)
            else:
                _fill_zero(dst)
                _flat._fill_planes(x[b, g * Cg + cl], dst, phase_index, Dq, Hq, Wq, PS, sd, sh,
                                   sw, pd, ph, pw)
        _fill_zero(pl[Cg * CS:])
        off = offs[g]
        base = g * Cg * CS  # off holds offsets into all C channels' planes; pl has the group's
        for a in range(0, Lb, S):
            L = min(S, Lb - a)
            Lr = (L + VW - 1) // VW * VW
            Y = np.empty((Og, Lr), dtype=y.dtype)
            _tiles(pl, off, wf, Y, a - base, a - base + Lr, base - a, g * Og * R, 0, Og, R, VW,
                   RB)
            _pd._crop_rows(Y, y[b], g * Og, Og, a // Wq, L // Wq, Hq, Wq)


def _fused(spec):
    """Fill fused into the tiles: a forward problem, a group's planes no larger than the cap,
    tasks enough for every thread, and its workspace within the limit (else the chunked fill,
    which may fit)."""
    if spec.direction != FORWARD:
        return False
    g = _flat._grid(spec)
    return (spec.group_in * len(g.phases) * g.PS * spec.np_dtype.itemsize <= _FUSE_BYTES
            and spec.batch * spec.groups >= _FUSE_TASKS * get_num_threads()
            and _fused_bytes(spec) <= _im2col.get_workspace_limit())


def forward(spec, x, w, y=None):
    """``y``: where to write the result (any strides; a fresh array when None)."""
    g = _flat._grid(spec)
    if y is None:
        y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    wf = np.ascontiguousarray(w).reshape(-1)
    off = _pd._offsets(spec)
    if _fused(spec):
        _fwd_fused_kernel(x, off, wf, y, g.Lb, _segment(g, spec.group_out), g.phase_index, g.Dq,
                          g.Hq, g.Wq, *spec.stride, *spec.pad_lo, g.PS, len(g.phases) * g.PS,
                          _vw(spec), _ROWS, _slack(spec))
        return y
    nb, _ = _plan(spec)
    C = spec.in_channels
    size = C * len(g.phases) * g.PS
    slack = _slack(spec)
    (pbuf,) = _scratch_arrays(spec.np_dtype, nb * size + slack)
    pbuf[nb * size:] = 0
    for n0, m in _flat._chunks(spec, nb):
        # the last chunk may be shorter: its tiles then over-read the previous chunk's planes
        planes = pbuf[:m * size].reshape(m, C, len(g.phases) * g.PS)
        _pd._fill(spec, g, x, planes, n0)
        _fwd_tiled_kernel(planes.reshape(m, size), off, wf, y, n0, g.Lb,
                          _segment(g, spec.group_out), g.Hq, g.Wq, _vw(spec), _ROWS)
    return y


@lru_cache(maxsize=256)
def _phases(spec):
    """A strided grad-input as one stride-1 forward problem per phase of dx.

    Along an axis, dx[i0 + s*t] (phase i0 < s) gathers dy[t + q_k] * w[k] over the taps k with
    k*d = i0 + lo (mod s), q_k = (i0 + lo - k*d) / s: in descending k the offsets q_k grow by
    d / gcd(s, d), so the phase is a correlation of dy (cropped by the smallest offset when that
    is positive, padded by minus it otherwise) with those taps reversed, dilated by d / gcd(s, d),
    whose output has the phase's length. Returns ((i0 per axis), forward spec or None when no tap
    reaches the phase or every tap reads past dy, (dy crop per axis), (taps per axis, descending))
    for every phase."""
    axes = []
    for I, K, lo, s, d, OY in zip(spec.in_size, spec.kernel, spec.pad_lo, spec.stride,
                                  spec.dilation, spec.out_size):
        per = []
        for i0 in range(min(s, I)):
            T = -(-(I - i0) // s)
            taps = tuple(k for k in reversed(range(K)) if (i0 + lo - k * d) % s == 0)
            if not taps:
                per.append((i0, T, None))
                continue
            qmin = (i0 + lo - taps[0] * d) // s
            crop = max(0, qmin)
            dq = d // gcd(s, d)
            lo_ = crop - qmin
            Y = OY - crop
            hi_ = T - Y - lo_ + (len(taps) - 1) * dq
            per.append((i0, T, (taps, crop, Y, lo_, hi_, dq) if Y > 0 else None))
        axes.append(per)
    out = []
    for ph in product(*axes):
        start = tuple(a[0] for a in ph)
        if any(a[2] is None for a in ph):
            out.append((start, None, None, None))
            continue
        taps, crop, Y, lo_, hi_, dq = zip(*(a[2] for a in ph))
        sub = replace(spec, direction=FORWARD, in_channels=spec.out_channels,
                      out_channels=spec.in_channels, in_size=Y, out_size=tuple(a[1] for a in ph),
                      kernel=tuple(len(t) for t in taps), stride=(1, 1, 1), dilation=dq,
                      pad_lo=lo_, pad_hi=hi_, flip=False)
        out.append((start, sub, crop, taps))
    return tuple(out)


def _phase_bytes(sub, crop):
    """What a phase holds besides its forward's workspace: its weights, and dy's cropped copy
    when it crops (its output is dx's strided view)."""
    n = prod(sub.w_shape) + (prod(sub.x_shape) if any(crop) else 0)
    return n * sub.np_dtype.itemsize


def grad_input(spec, dy, w):
    if spec.stride == (1, 1, 1):
        return forward(_pd._adjoint(spec), dy, _pd._adjoint_weights(spec, w))
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    sd, sh, sw = spec.stride
    KD, KH, KW = spec.kernel
    for (a, b, c), sub, crop, taps in _phases(spec):
        view = dx[:, :, a::sd, b::sh, c::sw]
        if sub is None:
            view[...] = 0
            continue
        td, th, tw = (np.array(t if not spec.flip else [K - 1 - k for k in t], dtype=np.int64)
                      for t, K in zip(taps, (KD, KH, KW)))
        ws = np.empty(sub.w_shape, dtype=spec.np_dtype)
        _phase_weights_kernel(w, ws, td, th, tw, spec.groups)
        src = dy
        if any(crop):
            src = np.ascontiguousarray(dy[:, :, crop[0]:, crop[1]:, crop[2]:])
        # the phase's output goes straight into dx's strided view (a copy of a separate output
        # measured 0.1-0.4 ms per phase)
        forward(sub, src, ws, view)
    return dx


@njit(parallel=True, cache=True)
def _phase_weights_kernel(w, ws, td, th, tw, G):
    """ws[g*Cg + cl, ol, i, j, k] = w[g*Og + ol, cl, td[i], th[j], tw[k]]: a phase's taps of the
    weights, input and output channels swapped per group (the adjoint's weights, as
    phase_direct._adjoint_weights, without copying the taps the phase does not use)."""
    O, Cg = w.shape[0], w.shape[1]
    Og = O // G
    for t in prange(O):
        g = t // Og
        ol = t % Og
        for cl in range(Cg):
            for i in range(td.shape[0]):
                for j in range(th.shape[0]):
                    for k in range(tw.shape[0]):
                        ws[g * Cg + cl, ol, i, j, k] = w[t, cl, td[i], th[j], tw[k]]


@njit(parallel=True, cache=True)
def _dy_rows_kernel(dy, DT, n0, nb, Lb, Hq, Wq):
    """DT[b*Lb + p, o] = dy[n0 + b, o] at grid position p = (od*Hq + oh)*Wq + ow, zeros at the
    junk positions and in the columns past the output channels."""
    O, OH, OW = dy.shape[1], dy.shape[3], dy.shape[4]
    nr = Lb // Wq
    for t in prange(nb * nr):
        b = t // nr
        r = t % nr
        od, oh = r // Hq, r % Hq
        blk = DT[b * Lb + r * Wq:b * Lb + (r + 1) * Wq]
        if oh >= OH:
            for i in range(Wq):
                _fill_zero(blk[i])
            continue
        src = dy[n0 + b, :, od, oh]
        # blocks of 16 positions (a cache line of each channel's row), channels in the middle:
        # the block's 16 destination rows stay in L1. Channels innermost instead read lines a
        # row of dy apart, which alias in L1 when the rows are long (WaveNet's 4096 positions,
        # two images: 0.80 ms against 0.26-0.33)
        for ow0 in range(0, OW, 16):
            ow1 = min(OW, ow0 + 16)
            for o in range(O):
                for ow in range(ow0, ow1):
                    blk[ow, o] = src[o, ow]
        for ow in range(OW):
            _fill_zero(blk[ow, O:])
        for i in range(OW, Wq):
            _fill_zero(blk[i])


@njit(parallel=True, cache=True)
def _gw_tiled_kernel(planes, offs, dt, poff, acc, first, Lb, K, Og, ldw, VW):
    """acc[c, k*ldo + g*Og + j] (+)= sum_{b, p < Lb} planes[b, off[g, cl*K + k] + p]
    * dt[(b*Lb + p)*ldo + g*Og + j] for input channel c = g*Cg + cl, tap k, j < Og rounded up to
    whole vectors. One task per (block of output vectors, group, tap, tile of 6 input channels),
    the channel tiles innermost: consecutive tasks read the same dy columns, which stay in L2."""
    nb = planes.shape[0]
    G, R = offs.shape
    Cg = R // K
    ldo = acc.shape[1] // K
    nct = (Cg + 5) // 6
    nvt = (Og + VW - 1) // VW
    nvb = (nvt + MAX_NV - 1) // MAX_NV
    for t in prange(nvb * G * K * nct):
        v0 = (t // (G * K * nct)) * MAX_NV
        g = (t // (K * nct)) % G
        k = (t // nct) % K
        c0 = (t % nct) * 6
        ce = min(Cg, c0 + 6)
        nv = min(MAX_NV, nvt - v0)
        o0 = g * Og + v0 * VW
        while c0 < ce:
            no = _tile_channels(ce - c0)
            wo = offs[g, c0 * K + k]
            yo = ((g * Cg + c0) * K + k) * ldo + o0
            for b in range(nb):
                _tile(no, nv, b > 0 or not first, dt, poff, planes[b], acc, 0, Lb, b * Lb * ldo + o0,
                      wo, yo, ldw)
            c0 += no


@njit(parallel=True, cache=True)
def _gw_out_kernel(acc, out, K, first_row):
    """out[o, cl*K + k] = acc[first_row[o] + cl, k*ldo + o] (first_row[o]: the first input
    channel of o's group). A task per 16 output channels (a cache line of each accumulator row)
    walks the input channels in order, so its reads and its 16 output rows advance steadily.
    Measured (ms; ResNet's 3x3 at 7x7, 512 x 512 x 9 / DCGAN's 256 x 128 x 16): 2.6 / 0.18; a
    task per 16 x 16 block gathered in a buffer 6.8 / 0.44, numpy's transposed copy 12.1 / 0.89.
    It loses only with one tap (the 1x1 at 14x14, 1024 x 256: 0.48 vs 0.23 for the blocks)."""
    O, CK = out.shape
    Cg = CK // K
    ldo = acc.shape[1] // K
    for t in prange((O + 15) // 16):
        o0 = t * 16
        for cl in range(Cg):
            for o in range(o0, min(O, o0 + 16)):
                r = first_row[o] + cl
                for k in range(K):
                    out[o, cl * K + k] = acc[r, k * ldo + o]


def grad_weights(spec, x, dy):
    """dW[o, c, k] = sum_{b, p} D[b, o, p] * planes[b, off[c, k] + p] (D: dy on the grid) with the
    roles of the forward tile swapped: the accumulators are 6 input channels (one tap) x 4 vectors
    of output channels, the reduction runs over grid positions, a position's dy values (one row
    of dy transposed, contiguous in o) are the vector operand and its 6 plane elements the
    broadcast ones (the same tap of consecutive channels: rows a plane apart)."""
    C, O = spec.in_channels, spec.out_channels
    if spec.batch == 0:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    g = _flat._grid(spec)
    nb, _ = _plan(spec)
    K = _pd._taps(spec)
    ldo = _ldo(spec)
    size = C * len(g.phases) * g.PS
    off = _pd._offsets(spec)
    pbuf, dbuf, abuf = _scratch_arrays(spec.np_dtype, nb * size, nb * g.Lb * ldo, K * C * ldo)
    poff = np.arange(g.Lb, dtype=np.int64) * ldo
    acc = abuf.reshape(C, K * ldo)
    for i, (n0, m) in enumerate(_flat._chunks(spec, nb)):
        planes = pbuf[:m * size].reshape(m, C, len(g.phases) * g.PS)
        _pd._fill(spec, g, x, planes, n0)
        DT = dbuf[:m * g.Lb * ldo].reshape(m * g.Lb, ldo)
        _dy_rows_kernel(dy, DT, n0, m, g.Lb, g.Hq, g.Wq)
        _gw_tiled_kernel(planes.reshape(m, size), off, DT.reshape(-1), poff, acc, i == 0, g.Lb, K,
                         spec.group_out, len(g.phases) * g.PS, _vw(spec))
    out = np.empty((O, spec.group_in * K), dtype=spec.np_dtype)
    _gw_out_kernel(acc, out, K, np.arange(O) // spec.group_out * spec.group_in)
    return out.reshape(spec.w_shape)
