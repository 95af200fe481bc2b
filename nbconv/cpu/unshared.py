"""Unshared (locally connected) convolution as one small GEMM per output position.

At output position p the layer is a dense map: ``Y_p (N x O) = X_p (N x K) @ W_p^T (K x O)`` with
``K = C/G * kD * kH * kW``, where ``X_p`` is the input patch under p (zeros where it meets the
padding) and ``W_p = w[:, p]``. In the canonical layout (O, oD, oH, oW, C/G, kD, kH, kW) every
``w[o, p]`` is a contiguous K-vector, so once the patch is gathered into a contiguous (N, K) block
every product is a unit-stride dot product or axpy over K, which LLVM vectorises; the direct
kernel instead walks the 8-D weights tap by tap.

Parallel decomposition: every direction over chunks of positions, one per thread, so each
position's weights are read once for all images (each position owns its outputs and weights; a
chunk reuses one patch buffer). Grad-input's patches of neighbouring positions overlap in dx: every
chunk but the first adds into its own copy of dx, summed at the end.

Patches inside the input are gathered (and grad-input's scattered) through a table of tap
offsets into the flattened image, filter_flip folded in; the row-by-row loops with bounds tests
remain for the patches that meet the padding.
"""
from functools import lru_cache
from math import prod

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
def _gather_group(x, c0, Cg, p, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch, offs, flip):
    """patch[n] = the patch of every image n under output position p (flat index), its taps
    reversed when ``flip``.

    A patch that lies inside the input is read through ``offs``, each tap's offset from the
    patch's first element in a flattened image (``flip`` folded in): one indexed load per element.
    The row-by-row gather with its bounds tests, kept for patches that meet the padding, cost
    ~11 cycles per element and made up three quarters of unshared_lc's forward pass (1.93 of
    2.51 ms with the products skipped; 0.58 with the gather skipped)."""
    N, C, D, H, W = x.shape
    od = p // (OH * OW)
    oh = (p // OW) % OH
    ow = p % OW
    d0, h0, w0 = od * sd - pd, oh * sh - ph, ow * sw - pw
    KD, KH, KW = patch.shape[2], patch.shape[3], patch.shape[4]
    if (d0 >= 0 and d0 + (KD - 1) * dd < D and h0 >= 0 and h0 + (KH - 1) * dh < H
            and w0 >= 0 and w0 + (KW - 1) * dw < W):
        K = offs.shape[0]
        x2 = x.reshape((N, C * D * H * W))
        flat = patch.reshape((N, K))
        base = ((c0 * D + d0) * H + h0) * W + w0
        for n in range(N):
            src = x2[n, base:]
            dst = flat[n]
            for k in range(K):
                dst[k] = src[offs[k]]
        return
    for n in range(N):
        _gather_patch(x, n, c0, Cg, od, oh, ow, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch[n])
        if flip:
            _reverse_taps(patch[n].reshape(Cg * KD * KH * KW), Cg, KD * KH * KW)


@lru_cache(maxsize=256)
def _offsets(spec):
    """Each tap's offset from a patch's first element in a flattened image, in the weights'
    (c, kd, kh, kw) order; reversed per channel when the spec flips. Cached per spec: the
    kernels only read it."""
    D, H, W = spec.x_shape[2:]
    c, kd, kh, kw = np.meshgrid(*(np.arange(n) for n in (spec.group_in,) + spec.kernel), indexing="ij")
    dd, dh, dw = spec.dilation
    if spec.flip:
        kd, kh, kw = (k - 1 - a for k, a in zip(spec.kernel, (kd, kh, kw)))
    return (((c * D + kd * dd) * H + kh * dh) * W + kw * dw).astype(np.int64).reshape(-1)


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
def _fwd_unshared_gemm_kernel(x, w, y, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups, nchunks, flip, offs):
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
                _gather_group(x, g * Cg, Cg, p, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch, offs,
                              flip)
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


@njit(inline="always")
def _sum_into(dst, parts):
    """dst += parts[0] + parts[1] + ..., in blocks divided among the threads."""
    n = dst.shape[0]
    if parts.shape[0] == 0:
        return
    nblk = (n + 4095) // 4096
    for blk in prange(nblk):
        lo, hi = blk * 4096, min(n, blk * 4096 + 4096)
        for i in range(parts.shape[0]):
            part = parts[i]
            for e in range(lo, hi):
                dst[e] += part[e]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _bwd_data_unshared_gemm_kernel(dy, w, dx, priv, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups, nchunks,
                                   flip, offs):
    """dx = the sum over positions of each position's dy (N x O) @ W_p (O x K), scattered back
    under its patch. Positions are split among the threads like forward's, so each weight row is
    read once for all images (split by image, every thread streamed all 8 MiB of unshared_lc's
    weights once per image: 2.23 ms, now ~1); patches of neighbouring positions overlap, so chunk
    i > 0 adds into its own zeroed copy priv[i - 1], summed into dx at the end."""
    N, C, D, H, W = dx.shape
    O, OD, OH, OW, Cg, KD, KH, KW = w.shape
    K = Cg * KD * KH * KW
    P = OD * OH * OW
    Og = O // groups
    w2 = w.reshape((O, P, K))
    dy2 = dy.reshape((N, O, P))
    S = C * D * H * W
    for chunk in prange(nchunks):
        acc = dx if chunk == 0 else priv[chunk - 1]
        acc2 = acc.reshape((N, S))
        for n in range(N):
            for e in range(S):
                acc2[n, e] = 0.0
        dpatch = np.empty((N, K), dtype=dx.dtype)
        for p in range(chunk * P // nchunks, (chunk + 1) * P // nchunks):
            od = p // (OH * OW)
            oh = (p // OW) % OH
            ow = p % OW
            d0, h0, w0 = od * sd - pd, oh * sh - ph, ow * sw - pw
            interior = (d0 >= 0 and d0 + (KD - 1) * dd < D and h0 >= 0 and h0 + (KH - 1) * dh < H
                        and w0 >= 0 and w0 + (KW - 1) * dw < W)
            for g in range(groups):
                c0 = g * Cg
                dpatch[:] = 0.0
                # four output channels per pass over a patch row: one load and store of the
                # patch feeds four multiply-adds; the four weight rows stay in L1 for all images
                o = g * Og
                while o < (g + 1) * Og:
                    if o + 3 < (g + 1) * Og:
                        wr0, wr1, wr2, wr3 = w2[o, p], w2[o + 1, p], w2[o + 2, p], w2[o + 3, p]
                        for n in range(N):
                            g0, g1, g2, g3 = dy2[n, o, p], dy2[n, o + 1, p], dy2[n, o + 2, p], dy2[n, o + 3, p]
                            dp = dpatch[n]
                            for k in range(K):
                                dp[k] += g0 * wr0[k] + g1 * wr1[k] + g2 * wr2[k] + g3 * wr3[k]
                        o += 4
                    else:
                        wrow = w2[o, p]
                        for n in range(N):
                            gv = dy2[n, o, p]
                            dp = dpatch[n]
                            for k in range(K):
                                dp[k] += gv * wrow[k]
                        o += 1
                if interior:  # through the tap offsets, flip folded in (see _gather_group)
                    base = ((c0 * D + d0) * H + h0) * W + w0
                    for n in range(N):
                        dst = acc2[n, base:]
                        dp = dpatch[n]
                        for k in range(K):
                            dst[offs[k]] += dp[k]
                    continue
                for n in range(N):
                    if flip:
                        _reverse_taps(dpatch[n], Cg, KD * KH * KW)
                    dp4 = dpatch[n].reshape((Cg, KD, KH, KW))
                    for c in range(Cg):
                        for kd in range(KD):
                            idd = d0 + kd * dd
                            if idd < 0 or idd >= D:
                                continue
                            for kh in range(KH):
                                ih = h0 + kh * dh
                                if ih < 0 or ih >= H:
                                    continue
                                dxrow = acc[n, c0 + c, idd, ih]
                                for kw in range(KW):
                                    iw = w0 + kw * dw
                                    if 0 <= iw < W:
                                        dxrow[iw] += dp4[c, kd, kh, kw]
    _sum_into(dx.reshape(dx.size), priv.reshape((priv.shape[0], dx.size)))


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _bwd_filter_unshared_gemm_kernel(x, dy, dwt, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups, nchunks,
                                     flip, offs):
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
                _gather_group(x, g * Cg, Cg, p, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw, patch, offs,
                              flip)
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
    """Patch buffers: an (N, K) one per chunk of positions; grad-input adds a private copy of dx
    for every chunk but the first."""
    k = spec.group_in * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    patches = spec.batch * k * spec.np_dtype.itemsize * _chunks(spec)
    if spec.direction == "grad_input":
        return patches + (_chunks(spec) - 1) * prod(spec.x_shape) * spec.np_dtype.itemsize
    return patches


def forward(spec, x, w):
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    _fwd_unshared_gemm_kernel(x, w, y, *_params(spec), _chunks(spec), spec.flip, _offsets(spec))
    return y


def grad_input(spec, dy, w):
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    nchunks = _chunks(spec)
    priv = np.empty((nchunks - 1,) + spec.x_shape, dtype=spec.np_dtype)
    _bwd_data_unshared_gemm_kernel(dy, w, dx, priv, *_params(spec), nchunks, spec.flip, _offsets(spec))
    return dx


def grad_weights(spec, x, dy):
    dwt = np.empty(spec.w_shape, dtype=spec.np_dtype)
    _bwd_filter_unshared_gemm_kernel(x, dy, dwt, *_params(spec), _chunks(spec), spec.flip, _offsets(spec))
    return dwt
