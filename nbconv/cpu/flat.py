"""Stride-1 convolution on flattened planes, single-threaded: the small-problem algorithm.

With stride 1, output position p = (od, oh, ow) reads input position p + (kd*dd, kh*dh, kw*dw).
On the (padded) input grid of shape (Dp, Hp, Wp) flattened to one axis, that is a constant offset
per tap, so every tap is one long unit-stride multiply-add over a "wide" output that also covers
the Wp - OW (and Hp - OH) columns a row of the padded grid has beyond the output; those are
computed and dropped. For LeNet's 28x28 images a tap is one 668-long loop instead of 24 loops of
24, which is what made the row-wise direct kernel cost ~15 cycles per 24-element tap (3.3 us per
output channel, against ~0.5 us here).

The kernels are compiled without ``parallel``: this algorithm is for problems whose whole run is
shorter than waking Numba's worker pool (see :mod:`nbconv.cpu.direct_serial`).
"""
from functools import lru_cache

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


def workspace(spec):
    Dp, Hp, Wp, L = _grid(spec)
    plane = spec.in_channels * Dp * Hp * Wp
    extra = {"forward": plane + L, "grad_input": plane + spec.out_channels * Dp * Hp * Wp,
             "grad_weights": plane + spec.out_channels * Dp * Hp * Wp}[spec.direction]
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


@njit(cache=True, fastmath=_FASTMATH)
def _fwd_flat_kernel(x, w, y, xp, acc, dd, dh, dw, pd, ph, pw, groups, flip):
    N = x.shape[0]
    O, Cg, KD, KH, KW = w.shape
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    Hp, Wp = xp.shape[2], xp.shape[3]
    L = acc.shape[0]
    Og = O // groups
    KK = KD * KH * KW
    offs = _tap_offsets(KD, KH, KW, dd, dh, dw, Hp, Wp, flip)
    wf = w.reshape((O, Cg, KK))
    for n in range(N):
        _pad_into(x[n], xp, pd, ph, pw)
        xf = xp.reshape(xp.shape[0], -1)
        for o in range(O):
            c0 = (o // Og) * Cg
            acc[:] = 0.0
            for c in range(Cg):
                xc = xf[c0 + c]
                wr = wf[o, c]
                # eight taps per pass over acc, whatever kernel row they are on: a pass costs a
                # load and a store of acc besides its multiply-adds (LeNet's 5x5, kernel alone:
                # 9.3 us with one tap per pass, 6.9 with four, 6.5 with eight)
                t = 0
                while t + 7 < KK:
                    w0, w1, w2, w3 = wr[t], wr[t + 1], wr[t + 2], wr[t + 3]
                    w4, w5, w6, w7 = wr[t + 4], wr[t + 5], wr[t + 6], wr[t + 7]
                    x0, x1, x2, x3 = xc[offs[t]:], xc[offs[t + 1]:], xc[offs[t + 2]:], xc[offs[t + 3]:]
                    x4, x5, x6, x7 = xc[offs[t + 4]:], xc[offs[t + 5]:], xc[offs[t + 6]:], xc[offs[t + 7]:]
                    for p in range(L):
                        acc[p] += ((w0 * x0[p] + w1 * x1[p]) + (w2 * x2[p] + w3 * x3[p])) + (
                            (w4 * x4[p] + w5 * x5[p]) + (w6 * x6[p] + w7 * x7[p]))
                    t += 8
                while t + 3 < KK:
                    w0, w1, w2, w3 = wr[t], wr[t + 1], wr[t + 2], wr[t + 3]
                    x0, x1, x2, x3 = xc[offs[t]:], xc[offs[t + 1]:], xc[offs[t + 2]:], xc[offs[t + 3]:]
                    for p in range(L):
                        acc[p] += (w0 * x0[p] + w1 * x1[p]) + (w2 * x2[p] + w3 * x3[p])
                    t += 4
                while t < KK:
                    wv = wr[t]
                    xs = xc[offs[t]:]
                    for p in range(L):
                        acc[p] += wv * xs[p]
                    t += 1
            for od in range(OD):
                for oh in range(OH):
                    b = (od * Hp + oh) * Wp
                    y[n, o, od, oh] = acc[b:b + OW]


@njit(cache=True)
def _wide(dy_n, dyw):
    """dyw (O, L') = dy_n (O, OD, OH, OW) laid on the padded grid, zeros beyond each row."""
    O, OD, OH, OW = dy_n.shape
    dyw[:] = 0.0
    for o in range(O):
        for od in range(OD):
            for oh in range(OH):
                dyw[o, od, oh, :OW] = dy_n[o, od, oh]


@njit(cache=True, fastmath=_FASTMATH)
def _bwd_data_flat_kernel(dy, w, dx, dxp, dyw, dd, dh, dw, pd, ph, pw, groups, flip):
    N, C, D, H, W = dx.shape
    O, Cg, KD, KH, KW = w.shape
    Hp, Wp = dxp.shape[2], dxp.shape[3]
    OD, OH, OW = dy.shape[2], dy.shape[3], dy.shape[4]
    L = (OD - 1) * Hp * Wp + (OH - 1) * Wp + OW
    Og = O // groups
    for n in range(N):
        _wide(dy[n], dyw)
        dyf = dyw.reshape(O, -1)
        dxp[:] = 0.0
        dxf = dxp.reshape(C, -1)
        for ci in range(C):
            g = ci // Cg
            c = ci % Cg
            dxc = dxf[ci]
            for o in range(g * Og, (g + 1) * Og):
                d = dyf[o]
                for kd in range(KD):
                    for kh in range(KH):
                        for kw in range(KW):
                            wv = (w[o, c, KD - 1 - kd, KH - 1 - kh, KW - 1 - kw] if flip
                                  else w[o, c, kd, kh, kw])
                            ds = dxc[(kd * dd * Hp + kh * dh) * Wp + kw * dw:]
                            for p in range(L):
                                ds[p] += wv * d[p]
        for ci in range(C):
            for i in range(D):
                for j in range(H):
                    dx[n, ci, i, j] = dxp[ci, pd + i, ph + j, pw:pw + W]


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
    for n in range(N):
        _pad_into(x[n], xp, pd, ph, pw)
        xf = xp.reshape(C, -1)
        _wide(dy[n], dyw)
        dyf = dyw.reshape(O, -1)
        for o in range(O):
            c0 = (o // Og) * Cg
            d = dyf[o]
            for c in range(Cg):
                xc = xf[c0 + c]
                dr = dwf[o, c]
                # four taps per pass: one load of dy feeds four multiply-adds
                t = 0
                while t + 3 < KK:
                    dr[t], dr[t + 1], dr[t + 2], dr[t + 3] = _dot4(
                        d, xc[offs[t]:], xc[offs[t + 1]:], xc[offs[t + 2]:], xc[offs[t + 3]:], L,
                        dr[t], dr[t + 1], dr[t + 2], dr[t + 3])
                    t += 4
                while t < KK:
                    xs = xc[offs[t]:]
                    acc = dr[t]
                    for p in range(L):
                        acc += d[p] * xs[p]
                    dr[t] = acc
                    t += 1


@lru_cache(maxsize=256)
def _args(spec):
    return spec.dilation + spec.pad_lo + (spec.groups, spec.flip)


def forward(spec, x, w):
    Dp, Hp, Wp, L = _grid(spec)
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    xp = np.empty((spec.in_channels, Dp, Hp, Wp), dtype=spec.np_dtype)
    _fwd_flat_kernel(x, w, y, xp, np.empty(L, dtype=spec.np_dtype), *_args(spec))
    return y


def grad_input(spec, dy, w):
    Dp, Hp, Wp, _ = _grid(spec)
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    dxp = np.empty((spec.in_channels, Dp, Hp, Wp), dtype=spec.np_dtype)
    dyw = np.empty((spec.out_channels, Dp, Hp, Wp), dtype=spec.np_dtype)
    _bwd_data_flat_kernel(dy, w, dx, dxp, dyw, *_args(spec))
    return dx


def grad_weights(spec, x, dy):
    Dp, Hp, Wp, _ = _grid(spec)
    dwt = np.empty(spec.w_shape, dtype=spec.np_dtype)
    xp = np.empty((spec.in_channels, Dp, Hp, Wp), dtype=spec.np_dtype)
    dyw = np.empty((spec.out_channels, Dp, Hp, Wp), dtype=spec.np_dtype)
    _bwd_filter_flat_kernel(x, dy, dwt, xp, dyw, *_args(spec))
    return dwt
