"""phase_direct's forward pass with register-tiled accumulators (an implicit GEMM without packing).

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
the last one) into accumulators that are never copied out.

Measured on 2 cores in the tuner's interleaved rounds (`nbconv.autotune.evaluate regret`, ms,
load 0.9-1.5; this against phase_direct and the best other): DCGAN's 4x4 stride-2 layer 12.6 vs
20.0 / 14.8 (im2col_flat), the strided 3x3 13.3 vs 17.1 / 16.0, ResNet's stem 12.7 vs 14.1,
WaveNet's layer 3.7 vs 4.9 (grad-input 4.1 vs 5.3), ResNeXt's 4-channel groups 2.6 vs 3.1
(grad-input 2.7 vs 2.8). It loses to Winograd on stride-1 3x3 layers (ResNet's at 56x56 10.7 vs
10.1, at 7x7 12.8 vs 7.5, where 63-position planes make tiles short) and to the 1x1 GEMM (6.4 vs
5.5). Grad-input of a stride-1 problem is its adjoint's forward, as there.
"""
import numpy as np
from numba import get_num_threads, njit, prange

from ..spec import GRAD_INPUT
from . import im2col as _im2col
from . import im2col_flat as _flat
from . import phase_direct as _pd
from ._vtile import MAX_NV, _tile, vector_width
from .im2col import _scratch_arrays

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


def _segment(g, og):
    n = max(_SEG, min(_SEG_MAX, _ACC // max(og, 1)))
    return max(1, n // g.Wq) * g.Wq


def _vw(spec):
    return vector_width(spec.np_dtype.itemsize)


def _round(n, m):
    return -(-n // m) * m


def supports(spec):
    if spec.direction == GRAD_INPUT:
        return spec.stride == (1, 1, 1) and not spec.unshared and supports(_pd._adjoint(spec))
    return (not spec.unshared and min(spec.pad_lo) >= 0
            and _plan_one(spec) <= _im2col.get_workspace_limit())


def _per_thread(spec):
    """A task's accumulators: every output channel of a group over a rounded segment."""
    g = _flat._grid(spec)
    seg = min(_segment(g, spec.group_out), g.Lb)
    return get_num_threads() * spec.group_out * _round(seg, _vw(spec))


def _plan(spec):
    """(images per chunk, workspace bytes), as phase_direct's: the per-thread accumulators and the
    slack after the planes first, then as many whole images as fit."""
    if spec.direction == GRAD_INPUT:
        return _plan(_pd._adjoint(spec))
    return _pd._chunk_plan(spec, _per_thread(spec) + _slack(spec))


def _slack(spec):
    """Elements after the last image's planes that a rounded-up tile may read."""
    return MAX_NV * _vw(spec)


def _plan_one(spec):
    return (_pd._per_image(spec) + _per_thread(spec) + _slack(spec)) * spec.np_dtype.itemsize


def workspace(spec):
    return _plan(spec)[1]


def cost(spec):
    """(rounded grid work / the definition's work, tiles) for the `guess` estimate."""
    if spec.direction == GRAD_INPUT:
        return cost(_pd._adjoint(spec))
    g = _flat._grid(spec)
    P = spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    S = min(_segment(g, spec.group_out), g.Lb)
    nseg = -(-g.Lb // S)
    Lr = _round(S, _vw(spec))
    R = spec.group_in * _pd._taps(spec)
    tiles = (spec.batch * nseg * spec.groups * -(-spec.group_out // 6) * -(-R // _ROWS)
             * -(-Lr // (MAX_NV * _vw(spec))))
    return nseg * Lr / max(P, 1), tiles


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
        for r0 in range(0, R, RB):
            r1 = min(R, r0 + RB)
            o = 0
            while o < Og:
                n = Og - o
                no = 6 if n >= 6 else (4 if n >= 4 else (2 if n >= 2 else 1))
                q = 0
                while q < Lr:
                    nv = min(MAX_NV, (Lr - q) // VW)
                    _tile(no, nv, r0 > 0, pl, off, wf, Y, r0, r1, a + q, (g * Og + o) * R, o * Lr + q, R)
                    q += nv * VW
                o += no
        _pd._crop_rows(Y, y[n0 + b], g * Og, Og, a // Wq, L // Wq, Hq, Wq)


def forward(spec, x, w):
    g = _flat._grid(spec)
    nb, _ = _plan(spec)
    C = spec.in_channels
    size = C * len(g.phases) * g.PS
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    wf = np.ascontiguousarray(w).reshape(-1)
    off = _pd._offsets(spec)
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


def grad_input(spec, dy, w):
    return forward(_pd._adjoint(spec), dy, _pd._adjoint_weights(spec, w))
