"""im2col + GEMM over flattened phase planes: every column row is one contiguous copy.

Split the padded input into its stride phases: phase (rd, rh, rw) is the plane of padded input
points (i*sd + rd, j*sh + rh, k*sw + rw), of shape (Dq, Hq, Wq) = out_size + the largest tap
shift. Tap (kd, kh, kw) reads, for output (od, oh, ow), the point (od + qd, oh + qh, ow + qw) of
phase ((kd*dd) % sd, ...), where q = (k * dilation) // stride. Numbered on the flattened plane,
output position p = (od*Hq + oh)*Wq + ow reads element p + offset(tap): one constant offset per
tap. So the column row of a tap, for one image, is a single copy of Lb = ((OD-1)*Hq + OH)*Wq
consecutive plane elements, where :mod:`nbconv.cpu.im2col` copies OD*OH rows of OW elements, one
output row at a time (on the strided 3x3 at 56x56, rows of 28: its column kernel took a fifth of
the forward pass; see the module's measurements in ``docs``).

The price is the Wq - OW (and in 3D the Hq - OH) "junk" columns per row of the output grid, which
the GEMMs compute too: 3.6 % more work on ResNet's 3x3 at 56x56 (58 / 56), 29 % at 7x7, nothing
in 1D. Forward crops them away when it copies the product into y. Grad-input and grad-weights
multiply dy laid out on the same grid with zeros in the junk columns, so the junk adds exact
zeros to the column gradient (col2im then adds whole rows back, also one contiguous pass per tap)
and nothing to dW.

A chunk is always whole images; a problem one image of which does not fit the workspace limit is
left to :mod:`nbconv.cpu.im2col`.
"""
from collections import namedtuple
from functools import lru_cache

import numpy as np
from numba import njit, prange

from ..spec import GRAD_WEIGHTS
from . import im2col as _im2col
from .direct import _FASTMATH
from .im2col import _copy, _fill_zero, _gw_product, _scratch_arrays, _transpose_kernel

Grid = namedtuple("Grid", "Dq Hq Wq Lb PS phases phase_index tap_phase tap_off")


@lru_cache(maxsize=256)
def _grid(spec):
    """The phase planes, the per-image column length Lb, and each tap's phase and offset."""
    qmax = [((k - 1) * d) // s for k, d, s in zip(spec.kernel, spec.dilation, spec.stride)]
    Dq, Hq, Wq = (o + q for o, q in zip(spec.out_size, qmax))
    OD, OH, _ = spec.out_size
    Lb = ((OD - 1) * Hq + OH) * Wq
    # one row more than the plane: the last row's junk columns read up to qwmax past its end
    PS = Dq * Hq * Wq + Wq
    KD, KH, KW = spec.kernel
    (dd, dh, dw), (sd, sh, sw) = spec.dilation, spec.stride
    phase_index = np.full((sd, sh, sw), -1, dtype=np.int64)
    phases, tap_phase, tap_off = [], [], []
    for kd in range(KD):
        for kh in range(KH):
            for kw in range(KW):
                r = ((kd * dd) % sd, (kh * dh) % sh, (kw * dw) % sw)
                if phase_index[r] < 0:
                    phase_index[r] = len(phases)
                    phases.append(r)
                tap_phase.append(phase_index[r])
                tap_off.append((((kd * dd) // sd) * Hq + (kh * dh) // sh) * Wq + (kw * dw) // sw)
    return Grid(Dq, Hq, Wq, Lb, PS, np.array(phases, dtype=np.int64).reshape(-1, 3), phase_index,
                np.array(tap_phase, dtype=np.int64), np.array(tap_off, dtype=np.int64))


def _per_image(spec):
    """Elements of scratch one image needs: its columns and its product (or dy) on the grid."""
    return (spec.in_channels * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
            + spec.out_channels) * _grid(spec).Lb


def _weights_temp(spec):
    taps = spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    return 2 * spec.out_channels * spec.group_in * taps if spec.direction == GRAD_WEIGHTS else 0


def _plan(spec):
    """(images per chunk, workspace bytes)."""
    item = spec.np_dtype.itemsize
    per = _per_image(spec) * item
    limit = _im2col.get_workspace_limit()
    wtmp = _weights_temp(spec) * item
    nb = min(spec.batch, max(1, (min(_im2col._CHUNK_TARGET, limit) - wtmp) // per))
    return nb, nb * per + wtmp


def supports(spec):
    return (not spec.unshared and min(spec.pad_lo) >= 0
            and (_per_image(spec) + _weights_temp(spec)) * spec.np_dtype.itemsize
            <= _im2col.get_workspace_limit())


def workspace(spec):
    return _plan(spec)[1]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _fill_planes(xc, planes, phase_index, Dq, Hq, Wq, PS, sd, sh, sw, pd, ph, pw):
    """planes[f] = phase f of the zero-padded input channel xc (D, H, W); planes start zeroed.

    Input row by input row: a row goes to the sw planes of its (depth, row) phase, so with
    stride 2 one pass de-interleaves it into both (one plane at a time, the strided 3x3's fill
    took 4.5 cycles per element)."""
    D, H, W = xc.shape
    n = max(0, min(W, sw * Wq - pw))  # input columns that land in a plane
    # stride 2: input column 2q goes to phase a = pw % 2 at plane column k0 + q, column 2q + 1 to
    # phase 1 - a at k0 + q + a
    a, k0 = pw % 2, pw // 2
    for idd in range(D):
        i, rd = (idd + pd) // sd, (idd + pd) % sd
        if i >= Dq:
            continue
        for ih in range(H):
            j, rh = (ih + ph) // sh, (ih + ph) % sh
            if j >= Hq:
                continue
            base = (i * Hq + j) * Wq
            xrow = xc[idd, ih]
            if sw == 1:
                f = phase_index[rd, rh, 0]
                if f >= 0:
                    _copy(planes[f * PS + base + pw:f * PS + base + pw + n], xrow)
            elif sw == 2 and phase_index[rd, rh, 0] >= 0 and phase_index[rd, rh, 1] >= 0:
                # both phases in one loop, straight from the input row (through a zero-padded
                # copy of the row, allocated per channel: the strided 3x3's planes 1.70 vs 1.63
                # ms, DCGAN's 0.59 vs 0.55)
                pa = planes[phase_index[rd, rh, a] * PS + base + k0:]
                pb = planes[phase_index[rd, rh, 1 - a] * PS + base + k0 + a:]
                m = n // 2
                for q in range(m):
                    pa[q] = xrow[2 * q]
                    pb[q] = xrow[2 * q + 1]
                if n > 2 * m:
                    pa[m] = xrow[2 * m]
            else:
                for iw in range(n):
                    k, rw = (iw + pw) // sw, (iw + pw) % sw
                    f = phase_index[rd, rh, rw]
                    if f >= 0:
                        planes[f * PS + base + k] = xrow[iw]


@njit(inline="always")
def _read_planes(planes, dc, phase_index, Dq, Hq, Wq, PS, sd, sh, sw, pd, ph, pw):
    """dc (D, H, W) = the input points of the phase planes: the transpose of ``_fill_planes``
    (points no plane holds, or no tap reads, get 0)."""
    D, H, W = dc.shape
    prow = np.empty(sw * Wq if sw == 2 else 0, dtype=planes.dtype)
    n = max(0, min(W, sw * Wq - pw))
    for idd in range(D):
        i, rd = (idd + pd) // sd, (idd + pd) % sd
        for ih in range(H):
            j, rh = (ih + ph) // sh, (ih + ph) % sh
            row = dc[idd, ih]
            if i >= Dq or j >= Hq:
                _fill_zero(row)
                continue
            base = (i * Hq + j) * Wq
            if sw == 1:
                f = phase_index[rd, rh, 0]
                if f >= 0:
                    _copy(row[:n], planes[f * PS + base + pw:])
                    _fill_zero(row[n:])
                else:
                    _fill_zero(row)
            elif sw == 2 and phase_index[rd, rh, 0] >= 0 and phase_index[rd, rh, 1] >= 0:
                p0 = planes[phase_index[rd, rh, 0] * PS + base:]
                p1 = planes[phase_index[rd, rh, 1] * PS + base:]
                for k in range(Wq):
                    prow[2 * k] = p0[k]
                    prow[2 * k + 1] = p1[k]
                _copy(row[:n], prow[pw:])
                _fill_zero(row[n:])
            else:
                for iw in range(W):
                    k, rw = (iw + pw) // sw, (iw + pw) % sw
                    f = phase_index[rd, rh, rw]
                    row[iw] = planes[f * PS + base + k] if f >= 0 and k < Wq else 0.0


@njit(parallel=True, cache=True)
def _flat_im2col_kernel(x, col, n0, nb, Lb, nph, phase_index, tap_phase, tap_off, Dq, Hq, Wq, PS,
                        sd, sh, sw, pd, ph, pw):
    """col[c*K + k, b*Lb + p] = phase plane of (n0 + b, c) at tap k's offset + p."""
    C = x.shape[1]
    K = tap_phase.shape[0]
    for t in prange(C * nb):
        # images innermost: a thread fills a contiguous block of rows (see im2col's kernel)
        c = t // nb
        b = t % nb
        planes = np.zeros(nph * PS, dtype=x.dtype)
        _fill_planes(x[n0 + b, c], planes, phase_index, Dq, Hq, Wq, PS, sd, sh, sw, pd, ph, pw)
        for k in range(K):
            src = planes[tap_phase[k] * PS + tap_off[k]:]
            _copy(col[c * K + k, b * Lb:(b + 1) * Lb], src)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _flat_col2im_kernel(dcol, dx, n0, nb, Lb, nph, phase_index, tap_phase, tap_off, Dq, Hq, Wq,
                        PS, sd, sh, sw, pd, ph, pw):
    """dx[n0 + b, c] = the transpose of ``_flat_im2col_kernel``: each tap's column row added into
    its phase plane at its offset, then the planes read back at every input point."""
    C = dx.shape[1]
    K = tap_phase.shape[0]
    for t in prange(C * nb):
        c = t // nb
        b = t % nb
        acc = np.zeros(nph * PS, dtype=dx.dtype)
        for k in range(K):
            dst = acc[tap_phase[k] * PS + tap_off[k]:]
            src = dcol[c * K + k, b * Lb:(b + 1) * Lb]
            for j in range(Lb):
                dst[j] += src[j]
        _read_planes(acc, dx[n0 + b, c], phase_index, Dq, Hq, Wq, PS, sd, sh, sw, pd, ph, pw)


@njit(parallel=True, cache=True)
def _crop_kernel(Y, y, n0, nb, Lb, Hq, Wq):
    """y[n0 + b, o] = the grid Y[o, b*Lb:(b+1)*Lb] without its junk columns and rows."""
    O, OD, OH, OW = y.shape[1], y.shape[2], y.shape[3], y.shape[4]
    for t in prange(O * nb):
        o = t // nb
        b = t % nb
        for od in range(OD):
            for oh in range(OH):
                _copy(y[n0 + b, o, od, oh], Y[o, b * Lb + (od * Hq + oh) * Wq:])


@njit(parallel=True, cache=True)
def _expand_kernel(dy, Dg, n0, nb, Lb, Hq, Wq):
    """Dg[o, b*Lb:(b+1)*Lb] = dy[n0 + b, o] on the grid, zeros in the junk columns and rows."""
    O, OH, OW = dy.shape[1], dy.shape[3], dy.shape[4]
    for t in prange(O * nb):
        o = t // nb
        b = t % nb
        for r in range(Lb // Wq):
            od, oh = r // Hq, r % Hq
            dst = Dg[o, b * Lb + r * Wq:b * Lb + (r + 1) * Wq]
            if oh < OH:
                _copy(dst[:OW], dy[n0 + b, o, od, oh])
                _fill_zero(dst[OW:])
            else:
                _fill_zero(dst)


# --------------------------------------------------------------------------------------------
# Thin wrappers
# --------------------------------------------------------------------------------------------


def _planes_args(spec, g):
    return (len(g.phases), g.phase_index, g.tap_phase, g.tap_off, g.Dq, g.Hq, g.Wq, g.PS) + spec.stride + spec.pad_lo


def _chunks(spec, nb):
    for n0 in range(0, spec.batch, nb):
        yield n0, min(nb, spec.batch - n0)


def _dims(spec):
    taps = spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    return spec.groups, spec.group_out, spec.in_channels * taps


def forward(spec, x, w):
    G, Og, ck = _dims(spec)
    g = _grid(spec)
    nb, _ = _plan(spec)
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    wg = w.reshape(G, Og, ck // G)
    buf, tmp = _scratch_arrays(spec.np_dtype, ck * nb * g.Lb, spec.out_channels * nb * g.Lb)
    for n0, m in _chunks(spec, nb):
        n = m * g.Lb
        col = buf[:ck * n].reshape(ck, n)
        _flat_im2col_kernel(x, col, n0, m, g.Lb, *_planes_args(spec, g))
        Y = tmp[:spec.out_channels * n].reshape(G, Og, n)
        np.matmul(wg, col.reshape(G, ck // G, n), out=Y)
        _crop_kernel(Y.reshape(spec.out_channels, n), y, n0, m, g.Lb, g.Hq, g.Wq)
    return y


def grad_input(spec, dy, w):
    G, Og, ck = _dims(spec)
    g = _grid(spec)
    nb, _ = _plan(spec)
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    wt = w.reshape(G, Og, ck // G).transpose(0, 2, 1)
    buf, tmp = _scratch_arrays(spec.np_dtype, ck * nb * g.Lb, spec.out_channels * nb * g.Lb)
    for n0, m in _chunks(spec, nb):
        n = m * g.Lb
        D = tmp[:spec.out_channels * n].reshape(spec.out_channels, n)
        _expand_kernel(dy, D, n0, m, g.Lb, g.Hq, g.Wq)
        dcol = buf[:ck * n].reshape(ck, n)
        np.matmul(wt, D.reshape(G, Og, n), out=dcol.reshape(G, ck // G, n))
        _flat_col2im_kernel(dcol, dx, n0, m, g.Lb, *_planes_args(spec, g))
    return dx


def grad_weights(spec, x, dy):
    G, Og, ck = _dims(spec)
    if spec.batch == 0:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    g = _grid(spec)
    nb, _ = _plan(spec)
    wsize = spec.out_channels * (ck // G)
    # dW^T = col @ dy^T and a transpose for small weights, dW = dy @ col^T for large ones: the
    # same choice, for the same measured reasons, as im2col.grad_weights
    transposed = wsize <= _im2col._GW_TRANSPOSE_MAX
    buf, tmp, acc, part = _scratch_arrays(spec.np_dtype, ck * nb * g.Lb, spec.out_channels * nb * g.Lb,
                                          wsize if transposed else 0, wsize)
    dw = np.empty(spec.w_shape, dtype=spec.np_dtype)
    dwg = dw.reshape(G, Og, ck // G)
    shape = (G, ck // G, Og) if transposed else (G, Og, ck // G)
    out, part = (acc.reshape(shape) if transposed else dwg), part.reshape(shape)
    for i, (n0, m) in enumerate(_chunks(spec, nb)):
        n = m * g.Lb
        col = buf[:ck * n].reshape(ck, n)
        _flat_im2col_kernel(x, col, n0, m, g.Lb, *_planes_args(spec, g))
        D = tmp[:spec.out_channels * n].reshape(spec.out_channels, n)
        _expand_kernel(dy, D, n0, m, g.Lb, g.Hq, g.Wq)
        _gw_product(col.reshape(G, ck // G, n), D.reshape(G, Og, n), transposed, i == 0, out, part)
    if transposed:
        _transpose_kernel(out, dwg)
    return dw
