"""im2col + GEMM (Caffe's CorrMM, Theano's CPU path): forward, grad-input and grad-weights.

The column matrix of a chunk of the problem has one row per (input channel, kD, kH, kW) tap and
one column per (image, output position)::

    col[(c, kd, kh, kw), b * L + q] = x[n0 + b, c, od*sd - pd + kd*dd, oh*sh - ph + kh*dh, ...]

for the L output positions p0 + q of the chunk (0 where the tap falls in the padding). Rows of
group g are the block [g * Cg*K, (g+1) * Cg*K), so one kernel launch serves every group and the
GEMMs of all groups and images are one stacked ``np.matmul`` on 4-D views:

    forward       y[n, g]  (Og, L)    = W_g (Og, CgK) @ col_g[:, n] (CgK, L)
    grad_input    dcol_g[:, n]        = W_g^T (CgK, Og) @ dy[n, g] (Og, L),  then col2im into dx
    grad_weights  dW_g (Og, CgK)     += dy_g (Og, nb*L) @ col_g^T (nb*L, CgK)

A chunk is several whole images when one image's columns fit the workspace limit, else part of
one image's output positions, so the workspace never exceeds the limit (unless a single output
position does not fit, when the chunk is that one position). BLAS is called from Python between
the Numba kernels, never inside a ``prange`` region (see :mod:`nbconv.threads`).
"""
import os

import numpy as np
from numba import njit, prange

from .. import threads as _threads  # noqa: F401  (sizes the BLAS pool to nbconv's thread count)
from ..spec import GRAD_WEIGHTS
from .direct import _FASTMATH, _col_range

_workspace_limit = 512 * 2**20


# Images per chunk are chosen so the columns stay near this size: the GEMM then reads them from the
# 32 MiB L3 cache right after the kernel wrote them. Measured on 2 cores (forward, ms): ResNet 3x3
# at 56x56 15.6 with 8 MiB chunks (one image) vs 16.6 at 32 MiB and 23.9 for the whole batch; the
# dilated 3x3 at 33x33 63.7 / 68.3 / 75.8; ResNet's 7x7 conv1 21.4 / 27.2 / 33.3.
_CHUNK_TARGET = 8 * 2**20


def get_workspace_limit():
    """Bytes of scratch memory one im2col call may allocate (default 512 MiB)."""
    return _workspace_limit


def set_workspace_limit(nbytes):
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
        raise ValueError(f"workspace limit must be a positive number of bytes, got {nbytes!r}")
    _workspace_limit = int(nbytes)


if os.environ.get("NBCONV_WORKSPACE_LIMIT", "").strip():
    set_workspace_limit(int(os.environ["NBCONV_WORKSPACE_LIMIT"]))


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _im2col_kernel(x, col, n0, nb, p0, L, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    """Fill ``col`` (C*K, nb*L) for images n0..n0+nb, output positions p0..p0+L; each task owns
    the KW rows of one (image, channel, kd, kh)."""
    C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    for t in prange(nb * C * KD * KH):
        b = t // (C * KD * KH)
        c = (t // (KD * KH)) % C
        kd = (t // KH) % KD
        kh = t % KH
        for kw in range(KW):
            row = col[((c * KD + kd) * KH + kh) * KW + kw, b * L:(b + 1) * L]
            off = kw * dw - pw
            lo, hi = _col_range(off, sw, W, OW)
            # output rows (od, oh) overlapping [p0, p0 + L); [a, e) is the part inside the chunk
            for r in range(p0 // OW, (p0 + L - 1) // OW + 1):
                base = r * OW - p0
                a = max(0, -base)
                e = min(OW, L - base)
                idd = (r // OH) * sd - pd + kd * dd
                ih = (r % OH) * sh - ph + kh * dh
                if idd < 0 or idd >= D or ih < 0 or ih >= H:
                    row[base + a:base + e] = 0.0
                    continue
                xrow = x[n0 + b, c, idd, ih]
                i0 = min(max(lo, a), e)
                i1 = max(min(hi, e), i0)
                row[base + a:base + i0] = 0.0
                row[base + i1:base + e] = 0.0
                if sw == 1:
                    row[base + i0:base + i1] = xrow[i0 + off:i1 + off]
                else:
                    for ow in range(i0, i1):
                        row[base + ow] = xrow[ow * sw + off]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _col2im_kernel(dcol, dx, n0, nb, p0, L, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    """Add the columns ``dcol`` (C*K, nb*L) back into ``dx``: the transpose of ``_im2col_kernel``.

    Gathered per input row (each task owns dx[n, c, id, ih], so no two tasks write one element),
    rather than Caffe's scatter per column row, which would race between taps.
    """
    C, D, H, W = dx.shape[1], dx.shape[2], dx.shape[3], dx.shape[4]
    for t in prange(nb * C * D * H):
        b = t // (C * D * H)
        c = (t // (D * H)) % C
        idd = (t // H) % D
        ih = t % H
        dxrow = dx[n0 + b, c, idd, ih]
        for kd in range(KD):
            td = idd + pd - kd * dd
            if td < 0 or td % sd != 0 or td // sd >= OD:
                continue
            for kh in range(KH):
                th = ih + ph - kh * dh
                if th < 0 or th % sh != 0 or th // sh >= OH:
                    continue
                # output row (od, oh) = (td // sd, th // sh); [a, e) is its part inside the chunk
                base = ((td // sd) * OH + th // sh) * OW - p0
                a = max(0, -base)
                e = min(OW, L - base)
                if a >= e:
                    continue
                for kw in range(KW):
                    off = kw * dw - pw
                    lo, hi = _col_range(off, sw, W, OW)
                    lo = max(lo, a)
                    hi = min(hi, e)
                    drow = dcol[((c * KD + kd) * KH + kh) * KW + kw, b * L:(b + 1) * L]
                    if sw == 1:
                        dxs = dxrow[lo + off:hi + off]
                        ds = drow[base + lo:base + hi]
                        for j in range(hi - lo):
                            dxs[j] += ds[j]
                    else:
                        for ow in range(lo, hi):
                            dxrow[ow * sw + off] += drow[base + ow]


# --------------------------------------------------------------------------------------------
# Chunking and workspace
# --------------------------------------------------------------------------------------------


def _taps(spec):
    return spec.kernel[0] * spec.kernel[1] * spec.kernel[2]


def _plan(spec):
    """(images per chunk nb, output positions per chunk L, workspace bytes) for ``spec``.

    Per (image, output position) the columns take C*K elements. Grad-weights also gathers the
    chunk's dy into (G, Og, nb*P) when a chunk holds several images, and, when there is more than
    one chunk, adds each chunk's dW into the result through a temporary of the weights' size.
    """
    item = spec.np_dtype.itemsize
    N, O = spec.batch, spec.out_channels
    P = spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    ck = spec.in_channels * _taps(spec)
    weights = spec.direction == GRAD_WEIGHTS
    if N == 0:
        return 0, P, 0
    gather = O if weights and N > 1 else 0
    wtmp = O * spec.group_in * _taps(spec) * item if weights else 0
    # whole images, as many as fit the cache-sized target: at least one
    nb = min(N, max(1, min(_CHUNK_TARGET, _workspace_limit) // ((ck + gather) * P * item)))
    chunks = -(-N // nb)
    total = (ck + (gather if nb > 1 else 0)) * nb * P * item + (wtmp if chunks > 1 else 0)
    if total <= _workspace_limit:
        return nb, P, total
    # one image does not fit the limit: part of its output positions per chunk
    L = max(1, min(P, (min(_CHUNK_TARGET, _workspace_limit - wtmp)) // (ck * item)))
    return 1, L, ck * L * item + wtmp


def workspace(spec):
    return _plan(spec)[2]


def _chunks(spec, nb, L):
    """(n0, images, p0, positions) of every chunk, in order."""
    P = spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    for n0 in range(0, spec.batch, nb):
        for p0 in range(0, P, L):
            yield n0, min(nb, spec.batch - n0), p0, min(L, P - p0)


def _geometry(spec):
    return spec.kernel + spec.out_size + spec.stride + spec.dilation + spec.pad_lo


def supports(spec):
    return not spec.unshared


# --------------------------------------------------------------------------------------------
# Thin wrappers: allocate, then im2col / GEMM / col2im per chunk.
# --------------------------------------------------------------------------------------------


def forward(spec, x, w):
    N, G, Og, ck = spec.batch, spec.groups, spec.group_out, spec.in_channels * _taps(spec)
    P = spec.y_shape[2] * spec.y_shape[3] * spec.y_shape[4]
    nb, L, _ = _plan(spec)
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    yv = y.reshape(N, G, Og, P)
    wg = w.reshape(G, Og, ck // G)
    buf = np.empty(ck * nb * L, dtype=spec.np_dtype)
    for n0, m, p0, l in _chunks(spec, nb, L):
        col = buf[:ck * m * l].reshape(ck, m * l)
        _im2col_kernel(x, col, n0, m, p0, l, *_geometry(spec))
        cols = col.reshape(G, ck // G, m, l).transpose(2, 0, 1, 3)  # (m, G, CgK, l)
        np.matmul(wg, cols, out=yv[n0:n0 + m, :, :, p0:p0 + l])
    return y


def grad_input(spec, dy, w):
    N, G, Og, ck = spec.batch, spec.groups, spec.group_out, spec.in_channels * _taps(spec)
    P = spec.y_shape[2] * spec.y_shape[3] * spec.y_shape[4]
    nb, L, _ = _plan(spec)
    dx = np.zeros(spec.x_shape, dtype=spec.np_dtype)  # col2im accumulates
    dyv = dy.reshape(N, G, Og, P)
    wt = w.reshape(G, Og, ck // G).transpose(0, 2, 1)
    buf = np.empty(ck * nb * L, dtype=spec.np_dtype)
    for n0, m, p0, l in _chunks(spec, nb, L):
        dcol = buf[:ck * m * l].reshape(ck, m * l)
        np.matmul(wt, dyv[n0:n0 + m, :, :, p0:p0 + l],
                  out=dcol.reshape(G, ck // G, m, l).transpose(2, 0, 1, 3))
        _col2im_kernel(dcol, dx, n0, m, p0, l, *_geometry(spec))
    return dx


def grad_weights(spec, x, dy):
    N, G, Og, ck = spec.batch, spec.groups, spec.group_out, spec.in_channels * _taps(spec)
    P = spec.y_shape[2] * spec.y_shape[3] * spec.y_shape[4]
    if N == 0:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    nb, L, _ = _plan(spec)
    dw = np.empty(spec.w_shape, dtype=spec.np_dtype)
    dwg = dw.reshape(G, Og, ck // G)
    dyv = dy.reshape(N, G, Og, P)
    buf = np.empty(ck * nb * L, dtype=spec.np_dtype)
    gather = np.empty(spec.out_channels * nb * L if nb > 1 else 0, dtype=spec.np_dtype)
    tmp = None
    for i, (n0, m, p0, l) in enumerate(_chunks(spec, nb, L)):
        col = buf[:ck * m * l].reshape(ck, m * l)
        _im2col_kernel(x, col, n0, m, p0, l, *_geometry(spec))
        colt = col.reshape(G, ck // G, m * l).transpose(0, 2, 1)  # (G, m*l, CgK)
        if m == 1:
            d = dyv[n0, :, :, p0:p0 + l]
        else:  # images side by side, matching the columns: dy (G, Og, m*P)
            d = gather[:G * Og * m * l].reshape(G, Og, m, l)
            np.copyto(d, dyv[n0:n0 + m].transpose(1, 2, 0, 3))
            d = d.reshape(G, Og, m * l)
        if i == 0:
            np.matmul(d, colt, out=dwg)
        else:
            if tmp is None:
                tmp = np.empty_like(dwg)
            np.matmul(d, colt, out=tmp)
            dwg += tmp
    return dw
