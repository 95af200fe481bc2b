"""Winograd F(4x4, 3x3) convolution: forward, grad-input and grad-weights.

A 4x4 output tile of a 3x3 correlation is ``Y = A^T [(G g G^T) . (B^T d B)] A`` for the 6x6 input
tile ``d`` under it (Lavin & Gray, points 0, +-1, +-2, inf): 36 multiplications instead of 144.
Summed over input channels, the element-wise products become 36 independent GEMMs, one per
transform-domain position ``xi``::

    U[xi, g] (A x R)   weights, transformed per call (per block of rows when large)
    V[xi, g] (R x T)   input tiles, transformed per chunk of tiles
    M[xi, g] (A x T) = U[xi, g] @ V[xi, g]       (one per Numba thread, _gemm_rows)

then ``A^T M A`` scatters each tile back, clipped at ragged edges. The reduction index R is
(input channel, kd): a 3D problem is a sum over kd of 2D Winograd convolutions, stacked into the
GEMM's inner dimension (the input plane of each kd is transformed once per kd that reads it).

Geometry: only stride 1 (else not applicable). Dilation d splits every axis into d residue
classes; a tile is the outputs o0 + d*t (t < 4) of one class and reads the inputs o0 + d*s - pad
(s < 6), so dilation is index arithmetic only. Inputs outside the array are zero, whatever the
pads (negative effective pads included). Kernels with 1 or 2 taps along H or W are embedded in
3 taps with zero weights, so 1D problems (a singleton H axis) are applicable too (slower than
im2col there; the estimate says so).

grad-input is the stride-1 correlation of dy with the spatially reversed, per-group transposed
weights and pads (K-1)*d - pad_lo (the transposition and reversal happen in the weight transform).
grad-weights is the adjoint of the forward: dU[xi] = (A dY A^T)[xi] @ V[xi]^T summed over tiles,
and dw = G^T dU G, accumulated chunk by chunk.

Measured float32 accuracy against a float64 reference on ResNet-50's 3x3 layers (56x56, 7x7), a
dilated 3x3 and C3D's 3x3x3: max |error| / (sum of |terms|) <= 2e-6 in all three directions,
the worst element at 20% of the tests' tolerance (1e-4 relative + 1e-5 x that sum); im2col's
float32 is ~10x closer. Accurate enough, so F(4x4) throughout rather than F(2x2), which does
1.8x the GEMM work.

The 36 x G GEMMs of a chunk run one per Numba thread, BLAS held to one thread meanwhile (see
_gemm_rows and :func:`nbconv.threads.blas_one_thread`). Tiles are processed in chunks of whole
tile rows whose V and M buffers stay cache-sized and within
:func:`nbconv.cpu.im2col.get_workspace_limit`.
"""
from functools import lru_cache
from math import prod
from types import SimpleNamespace

import numpy as np
from numba import get_num_threads, njit, prange

from .. import threads as _threads
from ..spec import GRAD_INPUT, GRAD_WEIGHTS
from . import im2col
from .direct import _FASTMATH

_M = 4  # output tile
_ALPHA = 6  # input tile
_NX = _ALPHA * _ALPHA
# G's entries as multiplications: without fastmath's 'arcp' LLVM keeps x / 6 a division
_R6, _R12, _R24 = 1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0

# Chunk and block sizes. V + M of a chunk: 8 MiB for forward and grad-input, 32 MiB for
# grad-weights (whose chunks only add into dU). Measured on 2 threads, wall ms, medians of 3
# interleaved rounds, chunks of 2 / 8 / 32 MiB: forward ResNet 3x3 at 56x56 11.9 / 10.6 / 11.4,
# at 7x7 11.1 / 9.5 / 10.6, dilated 33.1 / 32.7 / 33.9, C3D 4.6 / 4.6 / 4.1; grad-input 10.2 / 9.5
# / 9.4, 12.7 / 11.1 / 12.4, 33.6 / 31.1 / 29.3, 4.9 / 4.6 / 5.6; grad-weights 17.0 / 14.7 / 10.1,
# 18.0 / 18.3 / 15.8, 39.9 / 38.5 / 32.3, 7.3 / 5.3 / 4.4. (Measured single-threaded before the
# BLAS pool's idle spinning was cut (nbconv.threads), 1-2 MiB had been best: ResNet's 3x3 at
# 56x56 forward 12.7-13.4 ms CPU time, 14.5 with 3.6 MiB, 20.8 with 7 MiB.) Forward and
# grad-input chunks are also at most the size of the operands (input + output), at least 2 MiB:
# C3D's forward (3.2 MB of operands, PyTorch's peak 3.1 MiB) peaked at 8.9 MiB with 8 MiB chunks.
# Besides:
# - at least as many tiles as channels: the GEMMs' efficiency drops with few columns, (256 x
#   256) @ (256 x T) ran at 63 GFLOP/s with T = 54 and 88 with T = 216, and the dilated 33x33 case
#   (256 channels) took 79 ms with 36-tile chunks, 65 with 99, 51 with 162 or 324;
# - transformed weights of more than half the L3 cache are made per block of output rows just
#   before their GEMMs, and again for every chunk: ResNet's 3x3 at 7x7 (512 channels, 36 MiB of U)
#   took 21 ms unblocked (U written to and read back from DRAM), 11.5 with 2-4 MiB blocks and one
#   chunk, 18-20 with three chunks; the dilated case's 9 MiB U was faster unblocked (52 ms) than
#   in 4 MiB blocks (61).
_CHUNK_BYTES = 8 * 2**20
_MIN_CHUNK_BYTES = 2 * 2**20
_GW_CHUNK_BYTES = 32 * 2**20
_U_BLOCK = 4 * 2**20
_U_UNBLOCKED = 16 * 2**20
_BLOCKED_CHUNK_BYTES = 16 * 2**20
_SLICE_MIN_TILES = 16


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _g_rows(s0, s1, s2, o0, o1, o2, o3, o4, o5, r6, r12, r24):
    """(o0..o5) = G (6x3) @ (s0, s1, s2), element-wise over rows; one loop per output row (a
    single loop writing all six stayed scalar: too many runtime alias checks for LLVM)."""
    n = s0.shape[0]
    for r in range(n):
        o0[r] = s0[r] * 0.25
    for r in range(n):
        o1[r] = -(s0[r] + s1[r] + s2[r]) * r6
    for r in range(n):
        o2[r] = (s1[r] - s0[r] - s2[r]) * r6
    for r in range(n):
        o3[r] = s0[r] * r24 + s1[r] * r12 + s2[r] * r6
    for r in range(n):
        o4[r] = s0[r] * r24 - s1[r] * r12 + s2[r] * r6
    for r in range(n):
        o5[r] = s2[r]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _weight_transform(w, U, transposed, a0, flip):
    """U[xi, g, a - a0, b*KD + kd] = (G f G^T)[xi] for the 3x3 filter f of (a, b, kd) in group g,
    for the U.shape[2] rows a0 <= a < a0 + U.shape[2] of every group.

    Forward: f = w[g*Og + a, b, kd]. Transposed (grad-input): f = w[g*Og + b, a, KD-1-kd]
    reversed in both spatial axes. ``flip`` (filter_flip, applied here rather than to a copy of
    the weights) reverses f in all three axes once more. Vectorised over all (b, kd) of a row at once, in the dtype of
    U (float64 intermediates changed float32 results by < 1e-7 relative and took 1.8x longer).
    """
    O, Cg, KD = w.shape[0], w.shape[1], w.shape[2]
    G, Ab, R = U.shape[1], U.shape[2], U.shape[3]
    Og = O // G
    r6, r12, r24 = U.dtype.type(_R6), U.dtype.type(_R12), U.dtype.type(_R24)
    w6 = w.reshape((G, Og, Cg, KD, 9))
    for t in prange(G * Ab):
        g = t // Ab
        al = t % Ab
        a = a0 + al
        f = np.empty((9, R), dtype=U.dtype)
        c = np.empty((18, R), dtype=U.dtype)
        if transposed:
            src = w6[g, :, a]  # (Og, KD, 9), b's blocks Cg*KD*9 apart: read block by block
            for b in range(Og):
                for kd in range(KD):
                    r = b * KD + kd
                    if flip:
                        s9 = src[b, kd]
                        for k in range(9):
                            f[k, r] = s9[k]
                    else:
                        s9 = src[b, KD - 1 - kd]
                        for k in range(9):
                            f[k, r] = s9[8 - k]
        elif flip:
            src = w6[g, a]  # (Cg, KD, 9)
            for b in range(Cg):
                for kd in range(KD):
                    s9 = src[b, KD - 1 - kd]
                    r = b * KD + kd
                    for k in range(9):
                        f[k, r] = s9[8 - k]
        else:
            src = w6[g, a].reshape((R, 9))
            for k in range(9):
                fk = f[k]
                for r in range(R):
                    fk[r] = src[r, k]
        # c[i*3 + kw] = sum_kh G[i, kh] f[kh*3 + kw], then U[i*6 + j] = sum_kw G[j, kw] c[i*3 + kw]
        for kw in range(3):
            _g_rows(f[kw], f[3 + kw], f[6 + kw], c[kw], c[3 + kw], c[6 + kw], c[9 + kw],
                    c[12 + kw], c[15 + kw], r6, r12, r24)
        for i in range(6):
            _g_rows(c[3 * i], c[3 * i + 1], c[3 * i + 2], U[6 * i, g, al], U[6 * i + 1, g, al],
                    U[6 * i + 2, g, al], U[6 * i + 3, g, al], U[6 * i + 4, g, al],
                    U[6 * i + 5, g, al], r6, r12, r24)


@njit(inline="always")
def _gt_rows(s0, s1, s2, s3, s4, s5, o0, o1, o2, r6, r12, r24):
    """(o0, o1, o2) = G^T (3x6) @ (s0..s5), element-wise over rows, one loop per output row."""
    n = s0.shape[0]
    for r in range(n):
        o0[r] = s0[r] * 0.25 - (s1[r] + s2[r]) * r6 + (s3[r] + s4[r]) * r24
    for r in range(n):
        o1[r] = (s2[r] - s1[r]) * r6 + (s3[r] - s4[r]) * r12
    for r in range(n):
        o2[r] = (s3[r] + s4[r] - s1[r] - s2[r]) * r6 + s5[r]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _weight_adjoint(dU, dw, a0, accumulate):
    """dw[g*Og + a, b, kd] (+)= G^T dU[:, g, a - a0, b*KD + kd] G for the dU.shape[2] rows
    a0 <= a < a0 + dU.shape[2] of every group: the adjoint of _weight_transform, vectorised the
    same way (grad-weights of ResNet's 3x3 at 7x7, 512 channels: 32 ms single-threaded with a
    scalar 6x6 -> 3x3 per filter, 22 ms vectorised)."""
    G, Ab, R = dU.shape[1], dU.shape[2], dU.shape[3]
    Og = dw.shape[0] // G
    r6, r12, r24 = dU.dtype.type(_R6), dU.dtype.type(_R12), dU.dtype.type(_R24)
    for t in prange(G * Ab):
        g, al = t // Ab, t % Ab
        h = np.empty((18, R), dtype=dU.dtype)  # h[kh*6 + j] = sum_i G[i, kh] du[i*6 + j]
        q = np.empty((9, R), dtype=dU.dtype)  # q[kh*3 + kw] = sum_j G[j, kw] h[kh*6 + j]
        for j in range(6):
            # rows indexed whole (dU[i, g, al]): as rows of a dU[:, g, al] view they were typed
            # non-contiguous and the loops ran 2.4x slower (ResNet's 512-channel block of 57
            # rows: 0.31-0.41 ms per call, now 0.13-0.15, like the forward transform's)
            _gt_rows(dU[j, g, al], dU[6 + j, g, al], dU[12 + j, g, al], dU[18 + j, g, al],
                     dU[24 + j, g, al], dU[30 + j, g, al], h[j], h[6 + j], h[12 + j], r6, r12, r24)
        for kh in range(3):
            _gt_rows(h[6 * kh], h[6 * kh + 1], h[6 * kh + 2], h[6 * kh + 3], h[6 * kh + 4],
                     h[6 * kh + 5], q[3 * kh], q[3 * kh + 1], q[3 * kh + 2], r6, r12, r24)
        dst = dw[g * Og + a0 + al].reshape((R, 9))
        for k in range(9):
            qk = q[k]
            if accumulate:
                for r in range(R):
                    dst[r, k] += qk[r]
            else:
                for r in range(R):
                    dst[r, k] = qk[r]


@njit(inline="always")
def _row_task(task, nrows, r0, OD, nth):
    """(channel-like index, local tile row, n, od, th) of a task; tasks run channel-major so a
    thread fills one channel's rows of V / M (and reads or writes one plane) contiguously."""
    ch = task // nrows
    rt = task % nrows
    rg = r0 + rt
    return ch, rt, rg // (OD * nth), (rg // nth) % OD, rg % nth


@njit(inline="always")
def _tile_row_in(plane, ih, dh, zrow, tmp, qa, qb, cmin, V, row, tt0, cls, dw):
    """V[:, row, tt0 + t] = B^T d B for the 6x6 input tile d of every tile t of one tile row: the
    rows ih + s*dh (s < 6) of ``plane`` (zeros outside it), columns per ``cls``.

    B^T runs over rows first, on whole (zero-padded) input rows, then over columns per tile."""
    Hi = plane.shape[0]
    d0 = plane[ih] if 0 <= ih < Hi else zrow
    d1 = plane[ih + dh] if 0 <= ih + dh < Hi else zrow
    d2 = plane[ih + 2 * dh] if 0 <= ih + 2 * dh < Hi else zrow
    d3 = plane[ih + 3 * dh] if 0 <= ih + 3 * dh < Hi else zrow
    d4 = plane[ih + 4 * dh] if 0 <= ih + 4 * dh < Hi else zrow
    d5 = plane[ih + 5 * dh] if 0 <= ih + 5 * dh < Hi else zrow
    # one loop per output row: a single loop writing all six needed more runtime alias
    # checks than LLVM allows and stayed scalar (ResNet's 3x3 at 56x56: 5.6 ms instead
    # of 4.2 single-threaded)
    e = qb - qa
    i0 = qa + cmin
    d0, d1, d2 = d0[i0:i0 + e], d1[i0:i0 + e], d2[i0:i0 + e]
    d3, d4, d5 = d3[i0:i0 + e], d4[i0:i0 + e], d5[i0:i0 + e]
    s0, s1, s2 = tmp[0, qa:qb], tmp[1, qa:qb], tmp[2, qa:qb]
    s3, s4, s5 = tmp[3, qa:qb], tmp[4, qa:qb], tmp[5, qa:qb]
    for q in range(e):
        s0[q] = 4.0 * d0[q] - 5.0 * d2[q] + d4[q]
    for q in range(e):
        s1[q] = d3[q] + d4[q] - 4.0 * (d1[q] + d2[q])
    for q in range(e):
        s2[q] = 4.0 * (d1[q] - d2[q]) - d3[q] + d4[q]
    for q in range(e):
        s3[q] = 2.0 * (d3[q] - d1[q]) - d2[q] + d4[q]
    for q in range(e):
        s4[q] = 2.0 * (d1[q] - d3[q]) - d2[q] + d4[q]
    for q in range(e):
        s5[q] = 4.0 * d1[q] - 5.0 * d3[q] + d5[q]
    for i in range(6):
        ti = tmp[i]
        v0, v1, v2 = V[6 * i, row], V[6 * i + 1, row], V[6 * i + 2, row]
        v3, v4, v5 = V[6 * i + 3, row], V[6 * i + 4, row], V[6 * i + 5, row]
        for k in range(cls.shape[0]):
            j0, nj, base = cls[k, 0], cls[k, 1], cls[k, 2] - cmin
            step = 4 * dw
            for u in range(nj):
                b = base + step * u
                a0, a1, a2 = ti[b], ti[b + dw], ti[b + 2 * dw]
                a3, a4, a5 = ti[b + 3 * dw], ti[b + 4 * dw], ti[b + 5 * dw]
                tt = tt0 + j0 + u
                v0[tt] = 4.0 * a0 - 5.0 * a2 + a4
                v1[tt] = -4.0 * (a1 + a2) + a3 + a4
                v2[tt] = 4.0 * (a1 - a2) - a3 + a4
                v3[tt] = 2.0 * (a3 - a1) - a2 + a4
                v4[tt] = 2.0 * (a1 - a3) - a2 + a4
                v5[tt] = 4.0 * a1 - 5.0 * a3 + a5


@njit(inline="always")
def _row_scratch(Wb, Wi, cmin, dtype):
    """A block's (6, Wb) row-phase buffer, its columns outside the input zeroed once, the range
    (qa, qb) of those inside, and a zero input row."""
    tmp = np.empty((6, Wb), dtype=dtype)
    qa = min(max(0, -cmin), Wb)
    qb = max(min(Wb, Wi - cmin), qa)
    tmp[:, :qa] = 0.0
    tmp[:, qb:] = 0.0
    return tmp, qa, qb, np.zeros(Wi, dtype=dtype)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _input_transform(x, V, r0, nrows, nblk, KD, dd, pd, th_in0, dh, cls, dw, cmin, Wb, OD):
    """V[:, c*KD + kd, t] = B^T d B for the 6x6 input tile d of channel c, depth kd, of every tile
    t of the tile rows r0 .. r0+nrows (row r = (n, od, th); its tiles are t = r*ntw + tw).

    ``cls`` holds per residue class of the columns (first tile, tiles, first input column).
    In 3D every input tile row is transformed once per kd that reads it; the depth-slice path
    (_slice_transform) transforms it once where the geometry allows.
    """
    Ci, Di, Wi = x.shape[1], x.shape[2], x.shape[4]
    nth = th_in0.shape[0]
    ntw = cls[-1, 0] + cls[-1, 1]
    ntask = nrows * Ci * KD
    for blk in prange(nblk):
        tmp, qa, qb, zrow = _row_scratch(Wb, Wi, cmin, V.dtype)
        for task in range(blk * ntask // nblk, (blk + 1) * ntask // nblk):
            row, rt, n, od, th = _row_task(task, nrows, r0, OD, nth)
            c = row // KD
            kd = row % KD
            tt0 = rt * ntw
            idd = od - pd + kd * dd
            if idd < 0 or idd >= Di:
                for xi in range(36):
                    V[xi, row, tt0:tt0 + ntw] = 0.0
                continue
            _tile_row_in(x[n, c, idd], th_in0[th], dh, zrow, tmp, qa, qb, cmin, V, row, tt0, cls,
                         dw)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _slice_transform(x, V, n, s0, first, nblk, pd, th_in0, dh, cls, dw, cmin, Wb):
    """V[:, s*Ci + c, th*ntw + tw] = B^T d B for every tile (th, tw) of input channel c, depth
    slice s0 + s - pd of image n (zeros outside the input), for the rows from ``first`` on: each
    depth slice once, for all the kd that read it (see _correlate_slices)."""
    Ci, Di, Wi = x.shape[1], x.shape[2], x.shape[4]
    nth = th_in0.shape[0]
    ntw = cls[-1, 0] + cls[-1, 1]
    ntask = (V.shape[1] - first) * nth
    for blk in prange(nblk):
        tmp, qa, qb, zrow = _row_scratch(Wb, Wi, cmin, V.dtype)
        for task in range(blk * ntask // nblk, (blk + 1) * ntask // nblk):
            row = first + task // nth
            th = task % nth
            idd = s0 + row // Ci - pd
            tt0 = th * ntw
            if idd < 0 or idd >= Di:
                for xi in range(36):
                    V[xi, row, tt0:tt0 + ntw] = 0.0
                continue
            _tile_row_in(x[n, row % Ci, idd], th_in0[th], dh, zrow, tmp, qa, qb, cmin, V, row,
                         tt0, cls, dw)


@njit(inline="always")
def _tile_row_out(M, row, tt0, z, cls, dw, yp, oh0, nv, dh):
    """The rows oh0 + t*dh (t < nv) of the output plane ``yp`` = A^T M[:, row, tt0 + j] A for the
    tiles j of one tile row, clipped to the plane (the tiles of a row cover each output column
    exactly once)."""
    OW = yp.shape[1]
    for i in range(6):
        zi = z[i]
        m0, m1, m2 = M[6 * i, row], M[6 * i + 1, row], M[6 * i + 2, row]
        m3, m4, m5 = M[6 * i + 3, row], M[6 * i + 4, row], M[6 * i + 5, row]
        for k in range(cls.shape[0]):
            j0, nj, base = cls[k, 0], cls[k, 1], cls[k, 2]
            step = 4 * dw
            for u in range(nj):
                tt = tt0 + j0 + u
                b = base + step * u
                p12, d12 = m1[tt] + m2[tt], m1[tt] - m2[tt]
                p34, d34 = m3[tt] + m4[tt], m3[tt] - m4[tt]
                zi[b] = m0[tt] + p12 + p34
                zi[b + dw] = d12 + 2.0 * d34
                zi[b + 2 * dw] = p12 + 4.0 * p34
                zi[b + 3 * dw] = d12 + 8.0 * d34 + m5[tt]
    z0, z1, z2, z3, z4, z5 = z[0], z[1], z[2], z[3], z[4], z[5]
    yr = yp[oh0]
    for q in range(OW):
        yr[q] = z0[q] + z1[q] + z2[q] + z3[q] + z4[q]
    if nv > 1:
        yr = yp[oh0 + dh]
        for q in range(OW):
            yr[q] = (z1[q] - z2[q]) + 2.0 * (z3[q] - z4[q])
    if nv > 2:
        yr = yp[oh0 + 2 * dh]
        for q in range(OW):
            yr[q] = (z1[q] + z2[q]) + 4.0 * (z3[q] + z4[q])
    if nv > 3:
        yr = yp[oh0 + 3 * dh]
        for q in range(OW):
            yr[q] = (z1[q] - z2[q]) + 8.0 * (z3[q] - z4[q]) + z5[q]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _output_transform(M, y, r0, nrows, nblk, th_out0, th_nv, dh, cls, dw, OWb):
    """y[n, o, od, rows of tile row th] = A^T M A for every tile of the tile rows r0 .. r0+nrows."""
    Co, OD = y.shape[1], y.shape[2]
    nth = th_out0.shape[0]
    ntw = cls[-1, 0] + cls[-1, 1]
    ntask = nrows * Co
    for blk in prange(nblk):
        z = np.empty((6, OWb), dtype=M.dtype)
        for task in range(blk * ntask // nblk, (blk + 1) * ntask // nblk):
            o, rt, n, od, th = _row_task(task, nrows, r0, OD, nth)
            _tile_row_out(M, o, rt * ntw, z, cls, dw, y[n, o, od], th_out0[th], th_nv[th], dh)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _slice_output(M, y, n, od0, nblk, th_out0, th_nv, dh, cls, dw, OWb):
    """y[n, o, od0 + s] = A^T M[:, s*Co + o] A, tile by tile: _output_transform for the layout
    of _correlate_slices."""
    Co = y.shape[1]
    nth = th_out0.shape[0]
    ntw = cls[-1, 0] + cls[-1, 1]
    ntask = M.shape[1] * nth
    for blk in prange(nblk):
        z = np.empty((6, OWb), dtype=M.dtype)
        for task in range(blk * ntask // nblk, (blk + 1) * ntask // nblk):
            row = task // nth
            th = task % nth
            _tile_row_out(M, row, th * ntw, z, cls, dw, y[n, row % Co, od0 + row // Co],
                          th_out0[th], th_nv[th], dh)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _dy_transform(dy, Md, r0, nrows, nblk, th_out0, th_nv, dh, cls, dw, OWb):
    """Md[:, o, t] = A dY A^T for the 4x4 tile dY of dy[n, o, od] (zero outside dy) of every tile
    of the tile rows r0 .. r0+nrows: the transpose of _output_transform."""
    Co, OD, OW = dy.shape[1], dy.shape[2], dy.shape[4]
    nth = th_out0.shape[0]
    ntw = cls[-1, 0] + cls[-1, 1]
    ntask = nrows * Co
    for blk in prange(nblk):
        z = np.zeros((6, OWb), dtype=Md.dtype)  # columns >= OW stay zero
        z0, z1, z2, z3, z4, z5 = z[0], z[1], z[2], z[3], z[4], z[5]
        for task in range(blk * ntask // nblk, (blk + 1) * ntask // nblk):
            o, rt, n, od, th = _row_task(task, nrows, r0, OD, nth)
            tt0 = rt * ntw
            oh0 = th_out0[th]
            nv = th_nv[th]
            y0 = dy[n, o, od, oh0]
            if nv == 4:
                y1 = dy[n, o, od, oh0 + dh]
                y2 = dy[n, o, od, oh0 + 2 * dh]
                y3 = dy[n, o, od, oh0 + 3 * dh]
                # one loop per output row (see _input_transform)
                for q in range(OW):
                    z0[q] = y0[q]
                for q in range(OW):
                    z1[q] = (y0[q] + y2[q]) + (y1[q] + y3[q])
                for q in range(OW):
                    z2[q] = (y0[q] + y2[q]) - (y1[q] + y3[q])
                for q in range(OW):
                    z3[q] = (y0[q] + 4.0 * y2[q]) + (2.0 * y1[q] + 8.0 * y3[q])
                for q in range(OW):
                    z4[q] = (y0[q] + 4.0 * y2[q]) - (2.0 * y1[q] + 8.0 * y3[q])
                for q in range(OW):
                    z5[q] = y3[q]
            else:
                for q in range(OW):
                    a0 = y0[q]
                    a1 = dy[n, o, od, oh0 + dh, q] if nv > 1 else 0.0
                    a2 = dy[n, o, od, oh0 + 2 * dh, q] if nv > 2 else 0.0
                    p02 = a0 + a2
                    s, u = a0 + 4.0 * a2, 2.0 * a1
                    z0[q] = a0
                    z1[q] = p02 + a1
                    z2[q] = p02 - a1
                    z3[q] = s + u
                    z4[q] = s - u
                    z5[q] = 0.0
            for i in range(6):
                zi = z[i]
                v0, v1, v2 = Md[6 * i, o], Md[6 * i + 1, o], Md[6 * i + 2, o]
                v3, v4, v5 = Md[6 * i + 3, o], Md[6 * i + 4, o], Md[6 * i + 5, o]
                for k in range(cls.shape[0]):
                    j0, nj, base = cls[k, 0], cls[k, 1], cls[k, 2]
                    step = 4 * dw
                    for u in range(nj):
                        b = base + step * u
                        a0, a1, a2, a3 = zi[b], zi[b + dw], zi[b + 2 * dw], zi[b + 3 * dw]
                        p02, p13 = a0 + a2, a1 + a3
                        s, w = a0 + 4.0 * a2, 2.0 * a1 + 8.0 * a3
                        tt = tt0 + j0 + u
                        v0[tt] = a0
                        v1[tt] = p02 + p13
                        v2[tt] = p02 - p13
                        v3[tt] = s + w
                        v4[tt] = s - w
                        v5[tt] = a3


# --------------------------------------------------------------------------------------------
# Geometry, chunking and workspace
# --------------------------------------------------------------------------------------------


def _axis_tiles(n_out, pad, dil):
    """(first input, first output, valid outputs) of every tile along one axis, and per residue
    class (first tile, tiles, first input, first output): tile j of class r holds the outputs
    r + dil*(4j + t), t < 4."""
    in0, out0, nv, cls = [], [], [], []
    for r in range(min(dil, n_out)):
        cnt = (n_out - r + dil - 1) // dil
        cls.append((len(in0), (cnt + _M - 1) // _M, r - pad, r))
        for j in range(0, cnt, _M):
            out0.append(r + dil * j)
            in0.append(r + dil * j - pad)
            nv.append(min(_M, cnt - j))
    arr = lambda v: np.array(v, dtype=np.int64)
    return arr(in0), arr(out0), arr(nv), arr(cls).reshape(-1, 4)


def supports(spec):
    return (
        not spec.unshared
        and spec.kernel[1] <= 3
        and spec.kernel[2] <= 3
        and spec.stride == (1, 1, 1)
        and _plan(spec) is not None
    )


def _nblk(ntask):
    return max(1, min(ntask, 4 * get_num_threads()))


@lru_cache(maxsize=256)
def _plan_for(spec, limit, threads):
    item = spec.np_dtype.itemsize
    N, G = spec.batch, spec.groups
    KD = spec.kernel[0]
    dd, dh, dw = spec.dilation
    if spec.direction == GRAD_INPUT:
        # the correlation of dy with the reversed weights; the embedded kernel has 3 taps
        ci, co = spec.out_channels, spec.in_channels
        in_size, out_size = spec.out_size, spec.in_size
        pads = ((KD - 1) * dd - spec.pad_lo[0], 2 * dh - spec.pad_lo[1], 2 * dw - spec.pad_lo[2])
    else:
        ci, co = spec.in_channels, spec.out_channels
        in_size, out_size = spec.in_size, spec.out_size
        pads = spec.pad_lo
    th_in0, th_out0, th_nv, _ = _axis_tiles(out_size[1], pads[1], dh)
    tw_in0, _, _, cls = _axis_tiles(out_size[2], pads[2], dw)
    nth, ntw = len(th_in0), len(tw_in0)
    cmin = int(tw_in0.min())
    Wb = int(tw_in0.max()) + 5 * dw + 1 - cmin
    OWb = out_size[2] + 3 * dw
    R = ci // G * KD
    A = co // G
    u_bytes = _NX * G * A * R * item
    # Large transformed weights (or weight gradients) are made and used in blocks of rows that
    # stay in the cache.
    nblocks = max(1, min(A, -(-u_bytes // _U_BLOCK))) if u_bytes > _U_UNBLOCKED else 1
    Ab = -(-A // nblocks)
    fixed = _NX * G * Ab * R * item
    if spec.kernel[1:] != (3, 3):  # the weights (or their gradient) embedded in 3x3 taps
        fixed += spec.out_channels * spec.group_in * KD * 9 * item
    fixed += 4 * threads * (6 * max(Wb, OWb) + in_size[2]) * item  # per-block scratch rows
    fixed += threads * 27 * R * item  # per-task rows of the weight (adjoint) transform
    per_tile = _NX * (ci * KD + co) * item
    rows = N * out_size[0] * nth
    if fixed + ntw * per_tile > limit:
        return None
    if spec.direction == GRAD_WEIGHTS:
        chunk = _GW_CHUNK_BYTES
    else:  # no more than the operands' own size: a forward pass's peak memory stays in proportion
        io = N * (ci * prod(in_size) + co * prod(out_size)) * item
        chunk = min(_CHUNK_BYTES, max(_MIN_CHUNK_BYTES, io))
    tiles = max(min(A, R), chunk // per_tile)
    if nblocks > 1:  # every chunk transforms the weights again
        tiles = max(tiles, _BLOCKED_CHUNK_BYTES // per_tile)
    cap = max(1, min(-(-tiles // ntw), (limit - fixed) // (ntw * per_tile)))
    nchunks = max(1, -(-rows // cap))
    nr = -(-rows // nchunks) if rows else 1  # chunks of equal size
    per_row = ntw * per_tile
    plan = SimpleNamespace(
        ci=ci, co=co, in_size=in_size, out_size=out_size, pads=pads, R=R, A=A, Ab=Ab,
        th_in0=th_in0, th_out0=th_out0, th_nv=th_nv, cls_in=cls[:, :3].copy(),
        cls_out=cls[:, [0, 1, 3]].copy(), ntw=ntw, cmin=cmin, Wb=Wb, OWb=OWb,
        rows=rows, nr=nr, bytes=fixed + nr * per_row, nod=0,
    )
    if KD > 1 and dd == 1 and G == 1 and nblocks == 1 and nth * ntw >= _SLICE_MIN_TILES:
        # depth slices (see _correlate_slices): nod output slices per chunk read nod + KD - 1
        # transformed input slices; chunks of equal size, within the same budget as above
        T2 = nth * ntw
        OD = out_size[0]
        per_od = _NX * (ci + co) * T2 * item
        nod = max(1, min(OD, (chunk - _NX * (KD - 1) * ci * T2 * item) // per_od))
        nod = -(-OD // -(-OD // nod))
        sfixed = fixed
        if spec.direction != GRAD_WEIGHTS:
            sfixed += _NX * A * R * item  # the weights again, reordered (kd, c)
        sbytes = sfixed + _NX * T2 * ((nod + KD - 1) * ci + nod * co) * item
        if sbytes <= limit:
            plan.nod, plan.bytes = nod, sbytes
    return plan


def _plan(spec):
    return _plan_for(spec, im2col.get_workspace_limit(), get_num_threads())


def workspace(spec):
    plan = _plan(spec)
    return 0 if plan is None else plan.bytes


def _weights3(spec, w):
    """The weights with H and W kernel extents embedded in 3 taps (zeros after the real ones)."""
    KH, KW = spec.kernel[1], spec.kernel[2]
    if (KH, KW) == (3, 3):
        return w
    w3 = np.zeros(w.shape[:3] + (3, 3), dtype=w.dtype)
    w3[..., :KH, :KW] = w
    return w3


def _chunks(plan):
    for r0 in range(0, plan.rows, plan.nr):
        yield r0, min(plan.nr, plan.rows - r0)


class _Chunk:
    """The V and M buffers of one call (sized for the largest chunk), viewed per chunk, and the
    transformed weights U (or their gradient dU).

    All three come from im2col's per-thread scratch block, kept between calls: allocated per
    call, they were unmapped and page-faulted in again whenever another algorithm ran in between
    (the tuner's alternating run-off measured winograd on ResNet's 3x3 layers 1.3-1.5x slower
    than back to back, so im2col won rows it loses in a network)."""

    def __init__(self, spec, plan, u_elements):
        self.spec, self.plan = spec, plan
        T = plan.nr * plan.ntw
        self.vb, self.mb, self.ub = im2col._scratch_arrays(
            spec.np_dtype, _NX * plan.ci * spec.kernel[0] * T, _NX * plan.co * T, u_elements)

    def views(self, nr):
        p, KD = self.plan, self.spec.kernel[0]
        T = nr * p.ntw
        V = self.vb[:_NX * p.ci * KD * T].reshape(_NX, p.ci * KD, T)
        M = self.mb[:_NX * p.co * T].reshape(_NX, p.co, T)
        return V, M, T

    def input_transform(self, inp, V, r0, nr):
        p, KD = self.plan, self.spec.kernel[0]
        dd, dh, dw = self.spec.dilation
        _input_transform(inp, V, r0, nr, _nblk(nr * p.ci * KD), KD, dd, p.pads[0], p.th_in0, dh,
                         p.cls_in, dw, p.cmin, p.Wb, p.out_size[0])


@njit(parallel=True, cache=True)
def _slice_gemm(U3, V, M, ci):
    """M[xi, s] = U3[xi] @ (the U3.shape[2] rows of V[xi] from row s*ci), one GEMM per task (see
    _gemm_rows): output slice s reads the KD input slices from s on."""
    nd, K = M.shape[1], U3.shape[2]
    for t in prange(U3.shape[0] * nd):
        xi, s = t // nd, t % nd
        np.dot(U3[xi], V[xi, s * ci:s * ci + K], M[xi, s])


@njit(parallel=True, cache=True)
def _gemm_rows(U, V, M, a0):
    """M[xi, g, a0 : a0 + U.shape[2]] = U[xi, g] @ V[xi, g] for every (xi, g), one per task (run
    under nbconv.threads.blas_one_thread, as every GEMM kernel below).

    The 36 x G GEMMs of a chunk are independent: they run one per Numba thread, each on one core,
    not one after another in numpy's stacked matmul with OpenBLAS splitting each across the cores.
    Measured side by side (2 threads, medians of 11 alternating rounds, one process, load 0.8-1.2),
    whole calls, per-thread / stacked: ResNet's 3x3 at 7x7 0.71 / 0.72 / 0.75 (forward /
    grad-input / grad-weights; its GEMMs are (57 x 512) @ (512 x 32)), at 56x56 0.88 / 0.90 /
    0.94, the dilated layer 1.00 / 0.95 / 0.92; C3D's depth-slice GEMMs (32 x 96) @ (96 x 49),
    which OpenBLAS runs on one core anyway, 0.69 in forward and grad-input, its grad-weights
    0.80-0.84. (Splitting one large GEMM in two the same way is slower than OpenBLAS's own
    threads: 90-162 against 140-183 GFLOP/s on im2col's shapes.)"""
    X, G, Ab = U.shape[0], U.shape[1], U.shape[2]
    for t in prange(X * G):
        xi, g = t // G, t % G
        np.dot(U[xi, g], V[xi, g], M[xi, g, a0:a0 + Ab])


@njit(parallel=True, cache=True)
def _gemm_dw(Md, V, dU, a0):
    """dU[xi, g] = Md[xi, g, a0 : a0 + dU.shape[2]] @ V[xi, g]^T for every (xi, g), one per task."""
    X, G, Ab = dU.shape[0], dU.shape[1], dU.shape[2]
    for t in prange(X * G):
        xi, g = t // G, t % G
        np.dot(Md[xi, g, a0:a0 + Ab], V[xi, g].T, dU[xi, g])


@njit(parallel=True, cache=True)
def _slice_gemm_w(Md, V, dU, T2):
    """dU[xi, :, :, kd] = Md[xi] @ V[xi][:, kd*T2 : kd*T2 + Md.shape[2]]^T for every (xi, kd),
    one per task (see _gemm_rows)."""
    KD, L = dU.shape[3], Md.shape[2]
    for t in prange(Md.shape[0] * KD):
        xi, kd = t // KD, t % KD
        vk = np.ascontiguousarray(V[xi, :, kd * T2:kd * T2 + L])
        dU[xi, :, :, kd] = np.dot(Md[xi], vk.T)


def _slice_chunks(N, OD, nod):
    """(image, first output slice) of every chunk of the depth-slice paths, in order."""
    for n in range(N):
        for od0 in range(0, OD, nod):
            yield n, od0


def _weights_flip(spec, w):
    """(weights embedded in 3x3 taps, whether the weight transform still has to flip them)."""
    flip = spec.flip
    if flip and spec.kernel[1:] != (3, 3):
        # smaller kernels sit at the start of the 3x3 window: reversing the window would move them
        w, flip = np.ascontiguousarray(w[..., ::-1, ::-1, ::-1]), False
    return _weights3(spec, w), flip


def _correlate_slices(spec, plan, inp, w, transposed, out):
    """_correlate for 3D, dilation 1 along depth, one group: every input depth slice is
    transformed once, for all the KD output slices that read it.

    V holds a chunk's transformed input slices as rows (slice, channel), tiles of one slice along
    its columns, so output slice od's operand, the rows (kd, c) of slices od .. od+KD-1, is the
    contiguous block of KD*Ci rows from row od*Ci: one GEMM per (xi, od) with the weights
    reordered (kd, c). The row-task layout of _correlate instead transforms each slice
    once per kd. C3D's 3x3x3 (2 threads, one process, old vs new side by side): forward 4.4 ->
    3.4 ms, grad-input 4.3 -> 3.3; its input transform 2.8 -> ~1.0 ms, its GEMMs, on 49 columns
    instead of ~160, 1.7 -> 1.8. Chunks of output slices stay within the forward's budget (C3D:
    two per image): whole images ran ~10% faster but held 1.8 MB more, past twice PyTorch's peak
    memory for that layer; each chunk starts from the previous one's last KD - 1 transformed
    slices, copied (forward 4.2 ms so, 4.7-5.1 re-transforming them)."""
    KD = spec.kernel[0]
    ci, co, A, R, nod = plan.ci, plan.co, plan.A, plan.R, plan.nod
    OD = plan.out_size[0]
    T2 = len(plan.th_in0) * plan.ntw
    dh, dw = spec.dilation[1], spec.dilation[2]
    w3, flip = _weights_flip(spec, w)
    vb, mb, ub = im2col._scratch_arrays(spec.np_dtype, _NX * (nod + KD - 1) * ci * T2,
                                        _NX * nod * co * T2, 2 * _NX * A * R)
    U = ub[:_NX * A * R].reshape(_NX, 1, A, R)
    _weight_transform(w3, U, transposed, 0, flip)
    U3 = ub[_NX * A * R:].reshape(_NX, A, KD, ci)
    U3[...] = U.reshape(_NX, A, ci, KD).transpose(0, 1, 3, 2)
    U3 = U3.reshape(_NX, A, KD * ci)
    halo = (KD - 1) * ci  # rows of the slices a chunk shares with the next
    with _threads.blas_one_thread():
        for n, od0 in _slice_chunks(spec.batch, OD, nod):
            nd = min(nod, OD - od0)
            V = vb[:_NX * (nd + KD - 1) * ci * T2].reshape(_NX, (nd + KD - 1) * ci, T2)
            first = 0
            if od0:  # the previous chunk's last KD - 1 slices are this one's first
                first = halo
                V[:, :halo] = vp[:, nod * ci:nod * ci + halo]
            _slice_transform(inp, V, n, od0, first, _nblk((V.shape[1] - first) * len(plan.th_in0)),
                             plan.pads[0], plan.th_in0, dh, plan.cls_in, dw, plan.cmin, plan.Wb)
            vp = V
            M = mb[:_NX * nd * co * T2].reshape(_NX, nd, co, T2)
            _slice_gemm(U3, V, M, ci)
            _slice_output(M.reshape(_NX, nd * co, T2), out, n, od0, _nblk(nd * co * len(plan.th_out0)),
                          plan.th_out0, plan.th_nv, dh, plan.cls_out, dw, plan.OWb)
    return out


def _correlate(spec, plan, inp, w, transposed, out):
    """out = the stride-1 correlation of inp with the weights (plan's geometry), flipped first
    when ``spec.flip`` (the algorithm is registered with ``flips=True``)."""
    if plan.nod:
        return _correlate_slices(spec, plan, inp, w, transposed, out)
    G, R, A, Ab = spec.groups, plan.R, plan.A, plan.Ab
    dh, dw = spec.dilation[1], spec.dilation[2]
    w3, flip = _weights_flip(spec, w)
    ch = _Chunk(spec, plan, _NX * G * Ab * R)
    ub = ch.ub
    if Ab == A:
        U = ub.reshape(_NX, G, A, R)
        _weight_transform(w3, U, transposed, 0, flip)
    with _threads.blas_one_thread():
        for r0, nr in _chunks(plan):
            V, M, T = ch.views(nr)
            ch.input_transform(inp, V, r0, nr)
            V4, M4 = V.reshape(_NX, G, R, T), M.reshape(_NX, G, A, T)
            if Ab == A:
                _gemm_rows(U, V4, M4, 0)
            else:
                for a0 in range(0, A, Ab):
                    ab = min(Ab, A - a0)
                    Ub = ub[:_NX * G * ab * R].reshape(_NX, G, ab, R)
                    _weight_transform(w3, Ub, transposed, a0, flip)
                    _gemm_rows(Ub, V4, M4, a0)
            _output_transform(M, out, r0, nr, _nblk(nr * plan.co), plan.th_out0, plan.th_nv, dh,
                              plan.cls_out, dw, plan.OWb)
    return out


# --------------------------------------------------------------------------------------------
# Thin wrappers
# --------------------------------------------------------------------------------------------


def forward(spec, x, w):
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    return _correlate(spec, _plan(spec), x, w, False, y)


def grad_input(spec, dy, w):
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    return _correlate(spec, _plan(spec), dy, w, True, dx)


def _grad_weights_slices(spec, plan, x, dy):
    """grad_weights for the geometry of _correlate_slices: each input depth slice of a chunk is
    transformed once. Channel-major (V[xi, c] holds slice after slice), the slices kd .. kd+nd
    that meet dy's nd output slices are one contiguous column range of V: per kd one stacked GEMM
    dU[:, :, :, kd] = Md @ V[:, :, kd-th range]^T, whose inner dimension runs over all the tiles
    of the chunk, one (xi, kd) per thread. C3D's 3x3x3 (2 threads, old vs new side by side in one
    process): 4.4 -> 3.2 ms with stacked matmuls, 0.80-0.84x that one per thread (25 rounds)."""
    KD = spec.kernel[0]
    ci, co, A, R, nod = plan.ci, plan.co, plan.A, plan.R, plan.nod
    OD = plan.out_size[0]
    nth = len(plan.th_in0)
    T2 = nth * plan.ntw
    S = OD + KD - 1  # input slices an image's output slices read (stride 1, dilation 1)
    dh, dw = spec.dilation[1], spec.dilation[2]
    vb, mb, ub = im2col._scratch_arrays(spec.np_dtype, _NX * ci * (nod + KD - 1) * T2,
                                        _NX * co * nod * T2, _NX * A * R)
    dU = ub.reshape(_NX, A, ci, KD)
    dw3 = np.empty(spec.w_shape[:3] + (3, 3), dtype=spec.np_dtype)
    with _threads.blas_one_thread():
        for i, (n, od0) in enumerate(_slice_chunks(spec.batch, OD, nod)):
            nd = min(nod, OD - od0)
            ns = nd + KD - 1
            V = vb[:_NX * ci * ns * T2].reshape(_NX, ci, ns * T2)
            # the row-task transform with one depth tap over the S slices of each image
            _input_transform(x, V, (n * S + od0) * nth, ns * nth, _nblk(ns * nth * ci), 1, 1,
                             plan.pads[0], plan.th_in0, dh, plan.cls_in, dw, plan.cmin, plan.Wb, S)
            Md = mb[:_NX * co * nd * T2].reshape(_NX, co, nd * T2)
            _dy_transform(dy, Md, (n * OD + od0) * nth, nd * nth, _nblk(nd * nth * co),
                          plan.th_out0, plan.th_nv, dh, plan.cls_out, dw, plan.OWb)
            _slice_gemm_w(Md, V, dU, T2)
            _weight_adjoint(dU.reshape(_NX, 1, A, R), dw3, 0, i > 0)
    return dw3


def grad_weights(spec, x, dy):
    plan = _plan(spec)
    if plan.rows == 0:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    if plan.nod:
        return _finish_dw(spec, _grad_weights_slices(spec, plan, x, dy))
    G, R, A, Ab = spec.groups, plan.R, plan.A, plan.Ab
    dh, dw = spec.dilation[1], spec.dilation[2]
    # each chunk's dU, a block of rows at a time, goes straight through the adjoint transform
    # into dw, so a large dU never leaves the cache (ResNet's 3x3 at 7x7, 512 channels: 39 ms
    # single-threaded with the whole 36 MiB dU summed over chunks, then one adjoint; 32 ms so)
    dw3 = np.empty(spec.w_shape[:3] + (3, 3), dtype=spec.np_dtype)
    ch = _Chunk(spec, plan, _NX * G * Ab * R)
    dub = ch.ub
    with _threads.blas_one_thread():
        for i, (r0, nr) in enumerate(_chunks(plan)):
            V, Md, T = ch.views(nr)
            ch.input_transform(x, V, r0, nr)
            _dy_transform(dy, Md, r0, nr, _nblk(nr * plan.co), plan.th_out0, plan.th_nv, dh,
                          plan.cls_out, dw, plan.OWb)
            md = Md.reshape(_NX, G, A, T)
            for a0 in range(0, A, Ab):
                ab = min(Ab, A - a0)
                dU = dub[:_NX * G * ab * R].reshape(_NX, G, ab, R)
                _gemm_dw(md, V.reshape(_NX, G, R, T), dU, a0)
                _weight_adjoint(dU, dw3, a0, i > 0)
    return _finish_dw(spec, dw3)


def _finish_dw(spec, dw3):
    """The gradient of the user's weights from that of the 3x3-embedded ones: cropped, and
    reversed back when the weights were flipped."""
    KH, KW = spec.kernel[1], spec.kernel[2]
    dw = dw3 if (KH, KW) == (3, 3) else dw3[..., :KH, :KW]
    return np.ascontiguousarray(dw[..., ::-1, ::-1, ::-1] if spec.flip else dw)


def cost(spec):
    """(GEMM flops, the GEMMs' smallest dimension, transformed elements) of this spec, for the
    dispatcher's estimate. The transformed elements are V's and M's, plus U's (dU's) once per
    call, or once per chunk when made in blocks (always for grad-weights)."""
    plan = _plan(spec)
    if plan is None:
        return 0.0, 1, 0.0
    T = plan.rows * plan.ntw
    G, R, A = spec.groups, plan.R, plan.A
    per_chunk = plan.Ab < A or spec.direction == GRAD_WEIGHTS
    u0 = _NX * G * A * R
    u = u0 * (-(-plan.rows // plan.nr) if per_chunk else 1)
    flops = 2.0 * _NX * T * G * A * R
    if plan.nod:  # depth slices: each input slice transformed once per image (forward and
        # grad-input, with the weights made twice) or once per chunk (grad-weights)
        T2 = len(plan.th_in0) * plan.ntw
        OD, KD = plan.out_size[0], spec.kernel[0]
        chunks = spec.batch * -(-OD // plan.nod)
        if spec.direction == GRAD_WEIGHTS:
            v, dim = chunks * (plan.nod + KD - 1) * plan.ci * T2, min(A, plan.ci, plan.nod * T2)
            return flops, dim, float(_NX * (v + T * plan.co) + chunks * u0)
        v = spec.batch * (OD + KD - 1) * plan.ci * T2
        return flops, min(A, R, T2), float(_NX * (v + T * plan.co) + 2 * u0)
    return flops, min(A, R, plan.nr * plan.ntw), float(_NX * T * (G * R + plan.co) + u)
