"""Unshared (locally connected) convolution as one small GEMM per output position.

At output position p the layer is a dense map: ``Y_p (N x O) = X_p (N x K) @ W_p^T (K x O)`` with
``K = C/G * kD * kH * kW``, where ``X_p`` is the input patch under p (zeros where it meets the
padding) and ``W_p = w[:, p]``. In the canonical layout (O, oD, oH, oW, C/G, kD, kH, kW) every
``w[o, p]`` is a contiguous K-vector, so once the patch is gathered into a contiguous (N, K) block
every product is a unit-stride dot product or axpy over K, which LLVM vectorises; the direct
kernel instead walks the 8-D weights tap by tap.

Parallel decomposition: forward and grad-weights over chunks of positions, one per thread (each
position owns its outputs and weights; a chunk reuses one patch buffer), grad-input over
(n, group) (patches of neighbouring positions overlap in the input).
"""
import numpy as np
from numba import get_num_threads, njit, prange

from .direct import _FASTMATH, _dot4, _params


@njit(inline="always")
def _gather_patch(x, n, c0, Cg, od, oh, ow, sd, sh, sw, dd, dh, dw, pd, ph, pw, out):
    """out[:] = the (Cg, kD, kH, kW) input patch of x[n, c0:c0+Cg] under output (od, oh, ow)."""
    D, H, W = x.shape[2], x.shape[3], x.shape[4]
    KD, KH, KW = out.shape[1], out.shape[2], out.shape[3]
    for c in range(Cg):
        for kd in range(KD):
            idd = od * sd - pd + kd * dd
            for kh in range(KH):
                ih = oh * sh - ph + kh * dh
                rows_ok = 0 <= idd < D and 0 <= ih < H
                for kw in range(KW):
                    iw = ow * sw - pw + kw * dw
                    if rows_ok and 0 <= iw < W:
                        out[c, kd, kh, kw] = x[n, c0 + c, idd, ih, iw]
                    else:
                        out[c, kd, kh, kw] = 0.0


@njit(inline="always")
def _gather_group(x, c0, Cg, p, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch):
    """patch[n] = the patch of every image n under output position p (flat index)."""
    od = p // (OH * OW)
    oh = (p // OW) % OH
    ow = p % OW
    for n in range(x.shape[0]):
        _gather_patch(x, n, c0, Cg, od, oh, ow, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch[n])


@njit(inline="always")
def _reverse_taps(flat, Cg, KK):
    """Reverse each channel's KK taps of a flat (Cg * KK) patch: all three kernel axes at once.
    This is filter_flip applied to the (small) patch instead of to the (large) weights."""
    for c in range(Cg):
        lo = c * KK
        hi = lo + KK - 1
        for t in range(KK // 2):
            v = flat[lo + t]
            flat[lo + t] = flat[hi - t]
            flat[hi - t] = v


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _fwd_unshared_gemm_kernel(x, w, y, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups, nchunks, flip):
    N = x.shape[0]
    O, OD, OH, OW, Cg, KD, KH, KW = w.shape
    K = Cg * KD * KH * KW
    P = OD * OH * OW
    Og = O // groups
    w2 = w.reshape((O, P, K))
    y2 = y.reshape((N, O, P))
    # one patch buffer per chunk of positions (a chunk per thread), not one per position
    for chunk in prange(nchunks):
        patch = np.empty((N, Cg, KD, KH, KW), dtype=x.dtype)
        flat = patch.reshape((N, K))
        for p in range(chunk * P // nchunks, (chunk + 1) * P // nchunks):
            for g in range(groups):
                _gather_group(x, g * Cg, Cg, p, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch)
                if flip:
                    for n in range(N):
                        _reverse_taps(flat[n], Cg, KD * KH * KW)
                # four output channels per pass over a patch row: one patch load feeds four
                # multiply-adds (unshared_lc forward, side by side in one process: 0.94x the time
                # with two per pass, 0.84x with four)
                o = g * Og
                while o + 3 < (g + 1) * Og:
                    wrow0 = w2[o, p]
                    wrow1 = w2[o + 1, p]
                    wrow2 = w2[o + 2, p]
                    wrow3 = w2[o + 3, p]
                    for n in range(N):
                        y2[n, o, p] = 0.0
                        zero = y2[n, o, p]
                        acc0, acc1, acc2, acc3 = _dot4(flat[n], wrow0, wrow1, wrow2, wrow3, K,
                                                       zero, zero, zero, zero)
                        y2[n, o, p] = acc0
                        y2[n, o + 1, p] = acc1
                        y2[n, o + 2, p] = acc2
                        y2[n, o + 3, p] = acc3
                    o += 4
                while o < (g + 1) * Og:
                    wrow = w2[o, p]
                    for n in range(N):
                        prow = flat[n]
                        y2[n, o, p] = 0.0
                        acc = y2[n, o, p]
                        for k in range(K):
                            acc += prow[k] * wrow[k]
                        y2[n, o, p] = acc
                    o += 1


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _bwd_data_unshared_gemm_kernel(dy, w, dx, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups, flip):
    N, C, D, H, W = dx.shape
    O, OD, OH, OW, Cg, KD, KH, KW = w.shape
    K = Cg * KD * KH * KW
    P = OD * OH * OW
    Og = O // groups
    w2 = w.reshape((O, P, K))
    dy2 = dy.reshape((N, O, P))
    for t in prange(N * groups):
        n = t // groups
        g = t % groups
        c0 = g * Cg
        dx[n, c0:c0 + Cg] = 0.0
        dpatch = np.empty((Cg, KD, KH, KW), dtype=dx.dtype)
        flat = dpatch.reshape(K)
        for p in range(P):
            od = p // (OH * OW)
            oh = (p // OW) % OH
            ow = p % OW
            flat[:] = 0.0
            # four output channels per pass: one load and store of the patch feeds four
            # multiply-adds
            o = g * Og
            while o + 3 < (g + 1) * Og:
                g0, g1, g2, g3 = dy2[n, o, p], dy2[n, o + 1, p], dy2[n, o + 2, p], dy2[n, o + 3, p]
                wr0, wr1, wr2, wr3 = w2[o, p], w2[o + 1, p], w2[o + 2, p], w2[o + 3, p]
                for k in range(K):
                    flat[k] += g0 * wr0[k] + g1 * wr1[k] + g2 * wr2[k] + g3 * wr3[k]
                o += 4
            while o < (g + 1) * Og:
                gv = dy2[n, o, p]
                wrow = w2[o, p]
                for k in range(K):
                    flat[k] += gv * wrow[k]
                o += 1
            if flip:
                _reverse_taps(flat, Cg, KD * KH * KW)
            d0, h0, w0 = od * sd - pd, oh * sh - ph, ow * sw - pw
            interior = (d0 >= 0 and d0 + (KD - 1) * dd < D and h0 >= 0 and h0 + (KH - 1) * dh < H
                        and w0 >= 0 and w0 + (KW - 1) * dw < W)
            for c in range(Cg):
                for kd in range(KD):
                    idd = d0 + kd * dd
                    if idd < 0 or idd >= D:
                        continue
                    for kh in range(KH):
                        ih = h0 + kh * dh
                        if ih < 0 or ih >= H:
                            continue
                        dxrow = dx[n, c0 + c, idd, ih]
                        if interior:  # the common case: no per-tap column test
                            for kw in range(KW):
                                dxrow[w0 + kw * dw] += dpatch[c, kd, kh, kw]
                        else:
                            for kw in range(KW):
                                iw = w0 + kw * dw
                                if 0 <= iw < W:
                                    dxrow[iw] += dpatch[c, kd, kh, kw]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _bwd_filter_unshared_gemm_kernel(x, dy, dwt, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups, nchunks,
                                     flip):
    N = x.shape[0]
    O, OD, OH, OW, Cg, KD, KH, KW = dwt.shape
    K = Cg * KD * KH * KW
    P = OD * OH * OW
    Og = O // groups
    dw2 = dwt.reshape((O, P, K))
    dy2 = dy.reshape((N, O, P))
    for chunk in prange(nchunks):
        patch = np.empty((N, Cg, KD, KH, KW), dtype=x.dtype)
        flat = patch.reshape((N, K))
        for p in range(chunk * P // nchunks, (chunk + 1) * P // nchunks):
            for g in range(groups):
                _gather_group(x, g * Cg, Cg, p, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch)
                if flip:
                    for n in range(N):
                        _reverse_taps(flat[n], Cg, KD * KH * KW)
                for o in range(g * Og, (g + 1) * Og):
                    drow = dw2[o, p]
                    drow[:] = 0.0
                    # four images per pass: one load and store of the weight row feeds four
                    # multiply-adds
                    n = 0
                    while n + 3 < N:
                        g0, g1, g2, g3 = dy2[n, o, p], dy2[n + 1, o, p], dy2[n + 2, o, p], dy2[n + 3, o, p]
                        p0, p1, p2, p3 = flat[n], flat[n + 1], flat[n + 2], flat[n + 3]
                        for k in range(K):
                            drow[k] += g0 * p0[k] + g1 * p1[k] + g2 * p2[k] + g3 * p3[k]
                        n += 4
                    while n < N:
                        gv = dy2[n, o, p]
                        prow = flat[n]
                        for k in range(K):
                            drow[k] += gv * prow[k]
                        n += 1


def _chunks(spec):
    return max(1, min(get_num_threads(), spec.out_size[0] * spec.out_size[1] * spec.out_size[2]))


def supports(spec):
    return spec.unshared


def workspace(spec):
    """Patch buffers: an (N, K) one per chunk for forward/grad-weights, a (K,) one per task for
    grad-input."""
    k = spec.group_in * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    if spec.direction == "grad_input":
        return k * spec.np_dtype.itemsize * spec.batch * spec.groups
    return spec.batch * k * spec.np_dtype.itemsize * _chunks(spec)


def forward(spec, x, w):
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    _fwd_unshared_gemm_kernel(x, w, y, *_params(spec), _chunks(spec), spec.flip)
    return y


def grad_input(spec, dy, w):
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    _bwd_data_unshared_gemm_kernel(dy, w, dx, *_params(spec), spec.flip)
    return dx


def grad_weights(spec, x, dy):
    dwt = np.empty(spec.w_shape, dtype=spec.np_dtype)
    _bwd_filter_unshared_gemm_kernel(x, dy, dwt, *_params(spec), _chunks(spec), spec.flip)
    return dwt
