"""Stride-1 convolution on flattened planes, single-threaded: the small-problem algorithm.

With stride 1, output position p = (od, oh, ow) reads input position p + (kd*dd, kh*dh, kw*dw).
On the (padded) input grid of shape (Dp, Hp, Wp) flattened to one axis, that is a constant offset
per tap, so every tap is one long unit-stride multiply-add over a "wide" output that also covers
the Wp - OW (and Hp - OH) columns a row of the padded grid has beyond the output; those are
computed and dropped. For LeNet's 28x28 images a tap is one 668-long loop instead of 24 loops of
24, which is what made the row-wise direct kernel cost ~15 cycles per 24-element tap (3.3 us per
output channel, against ~0.5 us here).

Grad-input is the same correlation run backwards: dx's padded plane gathers dy's wide plane at
the negated offsets, so it reuses the forward's blocked passes (three channels, four taps per
pass) instead of scattering one tap at a time (LeNet: 11.0 -> 9.7 us side by side).

The kernels are compiled without ``parallel``: this algorithm is for problems whose whole run is
shorter than waking Numba's worker pool (see :mod:`nbconv.cpu.direct_serial`).
"""
from functools import lru_cache
from math import prod

import numpy as np
from numba import njit

from .direct import _FASTMATH, _dot4


def supports(spec):
    return not spec.unshared and spec.stride == (1, 1, 1)


@lru_cache(maxsize=256)
def _grid(spec):
    """Padded input grid (Dp, Hp, Wp) and the wide output length L."""
    Dp, Hp, Wp = (i + lo + hi for i, lo, hi in zip(spec.in_size, spec.pad_lo, spec.pad_hi))
    OD, OH, OW = spec.out_size
    return Dp, Hp, Wp, (OD - 1) * Hp * Wp + (OH - 1) * Wp + OW


@lru_cache(maxsize=256)
def _adjoint_grid(spec):
    """Grad-input's margin m (the largest tap offset: dy is laid from there on) and its wide
    length Lq (from dx's first point on the padded grid to its last)."""
    Dp, Hp, Wp, _ = _grid(spec)
    (KD, KH, KW), (dd, dh, dw) = spec.kernel, spec.dilation
    D, H, W = spec.in_size
    return ((KD - 1) * dd * Hp + (KH - 1) * dh) * Wp + (KW - 1) * dw, ((D - 1) * Hp + H - 1) * Wp + W


def workspace(spec):
    Dp, Hp, Wp, L = _grid(spec)
    plane = Dp * Hp * Wp
    if spec.direction == "forward":
        extra = spec.in_channels * plane + 3 * L
    elif spec.direction == "grad_input":
        m, Lq = _adjoint_grid(spec)
        extra = spec.out_channels * (m + plane) + 3 * Lq + spec.in_channels * spec.group_out * prod(spec.kernel)
    else:
        extra = (spec.in_channels + spec.out_channels) * plane
    return extra * spec.np_dtype.itemsize


@njit(cache=True)
def _pad_into(src, dst, pd, ph, pw):
    """dst (C, Dp, Hp, Wp) = src (C, D, H, W) placed at (pd, ph, pw), zeros around."""
    C, D, H, W = src.shape
    dst[:] = 0.0
    for c in range(C):
        for i in range(D):
            for j in range(H):
                dst[c, pd + i, ph + j, pw:pw + W] = src[c, i, j]


@njit(cache=True)
def _tap_offsets(KD, KH, KW, dd, dh, dw, Hp, Wp, flip):
    """Each tap's offset on the flattened padded grid, taps in the weights' (kd, kh, kw) order;
    with ``flip`` in the reverse order, which pairs each weight with the tap of the kernel
    reversed in all three axes (filter_flip without a flipped copy of the weights)."""
    KK = KD * KH * KW
    offs = np.empty(KK, dtype=np.int64)
    for kd in range(KD):
        for kh in range(KH):
            for kw in range(KW):
                t = (kd * KH + kh) * KW + kw
                offs[KK - 1 - t if flip else t] = (kd * dd * Hp + kh * dh) * Wp + kw * dw
    return offs


@njit(inline="always")
def _taps1(a, xc, wr, offs, L):
    """a[:L] += sum_k wr[k] * xc[offs[k]:][:L], eight taps per pass over a: a pass costs a load and
    a store of a besides its multiply-adds (LeNet's 5x5, one output channel per pass: 9.3 us with
    one tap per pass, 6.9 with four, 6.5 with eight)."""
    KK = offs.shape[0]
    t = 0
    while t + 7 < KK:
        w0, w1, w2, w3 = wr[t], wr[t + 1], wr[t + 2], wr[t + 3]
        w4, w5, w6, w7 = wr[t + 4], wr[t + 5], wr[t + 6], wr[t + 7]
        x0, x1, x2, x3 = xc[offs[t]:], xc[offs[t + 1]:], xc[offs[t + 2]:], xc[offs[t + 3]:]
        x4, x5, x6, x7 = xc[offs[t + 4]:], xc[offs[t + 5]:], xc[offs[t + 6]:], xc[offs[t + 7]:]
        for p in range(L):
            a[p] += ((w0 * x0[p] + w1 * x1[p]) + (w2 * x2[p] + w3 * x3[p])) + (
                (w4 * x4[p] + w5 * x5[p]) + (w6 * x6[p] + w7 * x7[p]))
        t += 8
    while t < KK:
        wv = wr[t]
        xs = xc[offs[t]:]
        for p in range(L):
            a[p] += wv * xs[p]
        t += 1


@njit(inline="always")
def _taps3(a0, a1, a2, xc, w0, w1, w2, offs, L):
    """Three output rows at once, four taps per pass: each (unaligned, so on AVX-512 line-split)
    load of the input feeds three multiply-adds instead of one. LeNet's forward, side by side in
    one process: 12.5 us with _taps1 over each output channel, 6.6 us with this."""
    KK = offs.shape[0]
    t = 0
    while t + 3 < KK:
        u0, u1, u2, u3 = w0[t], w0[t + 1], w0[t + 2], w0[t + 3]
        v0, v1, v2, v3 = w1[t], w1[t + 1], w1[t + 2], w1[t + 3]
        s0, s1, s2, s3 = w2[t], w2[t + 1], w2[t + 2], w2[t + 3]
        x0, x1, x2, x3 = xc[offs[t]:], xc[offs[t + 1]:], xc[offs[t + 2]:], xc[offs[t + 3]:]
        for p in range(L):
            e0, e1, e2, e3 = x0[p], x1[p], x2[p], x3[p]
            a0[p] += (u0 * e0 + u1 * e1) + (u2 * e2 + u3 * e3)
            a1[p] += (v0 * e0 + v1 * e1) + (v2 * e2 + v3 * e3)
            a2[p] += (s0 * e0 + s1 * e1) + (s2 * e2 + s3 * e3)
        t += 4
    while t < KK:
        u0, v0, s0 = w0[t], w1[t], w2[t]
        x0 = xc[offs[t]:]
        for p in range(L):
            e0 = x0[p]
            a0[p] += u0 * e0
            a1[p] += v0 * e0
            a2[p] += s0 * e0
        t += 1


@njit(inline="always")
def _correlate_block(src, wts, offs, acc, t0, nb, s0, q0):
    """acc[i, q] = sum_{s, k} wts[t0 + i, s, k] * src[s0 + s, q0 + q + offs[k]] for i < nb <= 3:
    the rows t0 .. t0+nb of a correlation over flattened planes (forward: x's padded planes and
    the weights; grad-input: dy's and the weights transposed)."""
    S = wts.shape[1]
    L = acc.shape[1]
    acc[:nb] = 0.0
    for s in range(S):
        xc = src[s0 + s, q0:]
        if nb == 3:
            _taps3(acc[0], acc[1], acc[2], xc, wts[t0, s], wts[t0 + 1, s], wts[t0 + 2, s], offs, L)
        else:
            for i in range(nb):
                _taps1(acc[i], xc, wts[t0 + i, s], offs, L)


@njit(inline="always")
def _correlate_planes(src, wts, offs, acc, out, groups, q0, Hp, Wp):
    """out (T, D, H, W) = the correlation of ``src``'s planes with ``wts`` (T, S, KK), group by
    group (target t reads sources g*S .. g*S+S of its group g), three targets per block, each
    block's wide rows cropped to out's: the forward (x's planes) and grad-input (dy's)."""
    T, S = wts.shape[0], wts.shape[1]
    D, H, W = out.shape[1], out.shape[2], out.shape[3]
    Tg = T // groups
    for g in range(groups):
        t = g * Tg
        while t < (g + 1) * Tg:
            nb = min(3, (g + 1) * Tg - t)
            _correlate_block(src, wts, offs, acc, t, nb, g * S, q0)
            for i in range(nb):
                for d in range(D):
                    for h in range(H):
                        b = (d * Hp + h) * Wp
                        out[t + i, d, h] = acc[i, b:b + W]
            t += nb


@njit(cache=True, fastmath=_FASTMATH)
def _fwd_flat_kernel(x, w, y, xp, acc, dd, dh, dw, pd, ph, pw, groups, flip):
    O, Cg, KD, KH, KW = w.shape
    Hp, Wp = xp.shape[2], xp.shape[3]
    offs = _tap_offsets(KD, KH, KW, dd, dh, dw, Hp, Wp, flip)
    wf = w.reshape((O, Cg, KD * KH * KW))
    xf = xp.reshape(xp.shape[0], -1)
    for n in range(x.shape[0]):
        _pad_into(x[n], xp, pd, ph, pw)
        _correlate_planes(xf, wf, offs, acc, y[n], groups, 0, Hp, Wp)


@njit(cache=True)
def _wide(dy_n, dyw, m, Hp, Wp):
    """dyw (O, m + Dp*Hp*Wp) = dy_n (O, OD, OH, OW) laid on the padded grid from position m on,
    zeros beyond each row and before m."""
    O, OD, OH, OW = dy_n.shape
    dyw[:] = 0.0
    for o in range(O):
        for od in range(OD):
            for oh in range(OH):
                b = m + (od * Hp + oh) * Wp
                dyw[o, b:b + OW] = dy_n[o, od, oh]


@njit(cache=True, fastmath=_FASTMATH)
def _bwd_data_flat_kernel(dy, w, dx, dyw, acc, Hp, Wp, dd, dh, dw, pd, ph, pw, groups, flip):
    """The adjoint of the forward as a correlation of its own: dx's padded plane at q gathers
    dy's wide plane at q - offs[k] = (q + m - offs[k]) - m, so dy is laid from position m (the
    largest offset) on and read at the offsets m - offs[k] >= 0, with the weights transposed."""
    N, C = dx.shape[0], dx.shape[1]
    O, Cg, KD, KH, KW = w.shape
    Og = O // groups
    KK = KD * KH * KW
    offs = _tap_offsets(KD, KH, KW, dd, dh, dw, Hp, Wp, flip)
    m = offs.max()
    roffs = m - offs
    wt = np.empty((C, Og, KK), dtype=w.dtype)
    wf = w.reshape((O, Cg, KK))
    for ci in range(C):
        g, c = ci // Cg, ci % Cg
        for ol in range(Og):
            wt[ci, ol] = wf[g * Og + ol, c]
    q0 = (pd * Hp + ph) * Wp + pw
    for n in range(N):
        _wide(dy[n], dyw, m, Hp, Wp)
        _correlate_planes(dyw, wt, roffs, acc, dx[n], groups, q0, Hp, Wp)


@njit(inline="always")
def _dots3(d0, d1, d2, xc, r0, r1, r2, offs, L):
    """r_i[k] += d_i . xc[offs[k]:][:L] for three dy rows, four taps per pass: twelve dot products
    from seven loads (one dy row and _dot4's four taps: five loads per four). LeNet's
    grad-weights, side by side: 8.5 us with _dot4 per output channel, 7.0 with this."""
    KK = offs.shape[0]
    t = 0
    while t + 3 < KK:
        x0, x1, x2, x3 = xc[offs[t]:], xc[offs[t + 1]:], xc[offs[t + 2]:], xc[offs[t + 3]:]
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = xc.dtype.type(0.0)
        for p in range(L):
            e0, e1, e2, e3 = x0[p], x1[p], x2[p], x3[p]
            f, g, h = d0[p], d1[p], d2[p]
            a0 += f * e0
            a1 += f * e1
            a2 += f * e2
            a3 += f * e3
            b0 += g * e0
            b1 += g * e1
            b2 += g * e2
            b3 += g * e3
            c0 += h * e0
            c1 += h * e1
            c2 += h * e2
            c3 += h * e3
        r0[t], r0[t + 1], r0[t + 2], r0[t + 3] = r0[t] + a0, r0[t + 1] + a1, r0[t + 2] + a2, r0[t + 3] + a3
        r1[t], r1[t + 1], r1[t + 2], r1[t + 3] = r1[t] + b0, r1[t + 1] + b1, r1[t + 2] + b2, r1[t + 3] + b3
        r2[t], r2[t + 1], r2[t + 2], r2[t + 3] = r2[t] + c0, r2[t + 1] + c1, r2[t + 2] + c2, r2[t + 3] + c3
        t += 4
    while t < KK:
        xs = xc[offs[t]:]
        a0 = b0 = c0 = xc.dtype.type(0.0)
        for p in range(L):
            e0 = xs[p]
            a0 += d0[p] * e0
            b0 += d1[p] * e0
            c0 += d2[p] * e0
        r0[t] += a0
        r1[t] += b0
        r2[t] += c0
        t += 1


@njit(cache=True, fastmath=_FASTMATH)
def _bwd_filter_flat_kernel(x, dy, dwt, xp, dyw, dd, dh, dw, pd, ph, pw, groups, flip):
    N, C = x.shape[0], x.shape[1]
    O, Cg, KD, KH, KW = dwt.shape
    Hp, Wp = xp.shape[2], xp.shape[3]
    OD, OH, OW = dy.shape[2], dy.shape[3], dy.shape[4]
    L = (OD - 1) * Hp * Wp + (OH - 1) * Wp + OW
    Og = O // groups
    KK = KD * KH * KW
    offs = _tap_offsets(KD, KH, KW, dd, dh, dw, Hp, Wp, flip)
    dwf = dwt.reshape((O, Cg, KK))
    dwt[:] = 0.0
    xf = xp.reshape(C, -1)
    for n in range(N):
        _pad_into(x[n], xp, pd, ph, pw)
        _wide(dy[n], dyw, 0, Hp, Wp)
        for g in range(groups):
            o = g * Og
            while o < (g + 1) * Og:
                nb = min(3, (g + 1) * Og - o)
                for c in range(Cg):
                    xc = xf[g * Cg + c]
                    if nb == 3:
                        _dots3(dyw[o], dyw[o + 1], dyw[o + 2], xc, dwf[o, c], dwf[o + 1, c], dwf[o + 2, c], offs, L)
                        continue
                    for i in range(nb):
                        d = dyw[o + i]
                        dr = dwf[o + i, c]
                        t = 0
                        while t + 3 < KK:
                            dr[t], dr[t + 1], dr[t + 2], dr[t + 3] = _dot4(
                                d, xc[offs[t]:], xc[offs[t + 1]:], xc[offs[t + 2]:], xc[offs[t + 3]:], L,
                                dr[t], dr[t + 1], dr[t + 2], dr[t + 3])
                            t += 4
                        while t < KK:
                            xs = xc[offs[t]:]
                            a = dr[t]
                            for p in range(L):
                                a += d[p] * xs[p]
                            dr[t] = a
                            t += 1
                o += nb


@lru_cache(maxsize=256)
def _args(spec):
    return spec.dilation + spec.pad_lo + (spec.groups, spec.flip)


def forward(spec, x, w):
    Dp, Hp, Wp, L = _grid(spec)
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    xp = np.empty((spec.in_channels, Dp, Hp, Wp), dtype=spec.np_dtype)
    acc = np.empty((3, L), dtype=spec.np_dtype)
    _fwd_flat_kernel(x, w, y, xp, acc, *_args(spec))
    return y


def grad_input(spec, dy, w):
    Dp, Hp, Wp, _ = _grid(spec)
    m, Lq = _adjoint_grid(spec)
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    dyw = np.empty((spec.out_channels, m + Dp * Hp * Wp), dtype=spec.np_dtype)
    acc = np.empty((3, Lq), dtype=spec.np_dtype)
    _bwd_data_flat_kernel(dy, w, dx, dyw, acc, Hp, Wp, *_args(spec))
    return dx


def grad_weights(spec, x, dy):
    Dp, Hp, Wp, _ = _grid(spec)
    dwt = np.empty(spec.w_shape, dtype=spec.np_dtype)
    xp = np.empty((spec.in_channels, Dp, Hp, Wp), dtype=spec.np_dtype)
    dyw = np.empty((spec.out_channels, Dp * Hp * Wp), dtype=spec.np_dtype)
    _bwd_filter_flat_kernel(x, dy, dwt, xp, dyw, *_args(spec))
    return dwt
