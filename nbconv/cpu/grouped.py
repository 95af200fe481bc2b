"""Grouped convolution with few channels per group (ResNeXt, depthwise, tiny layers), direct.

Same canonical layout and cross-correlation contract as :mod:`nbconv.cpu.direct`. With a handful
of channels per group a GEMM is tiny and im2col's column matrix costs more than the arithmetic, so
these kernels compute straight from the input planes, organised around one idea: **a tap is a flat
offset**. Output (r, m) of the plane of one (image, output channel, depth) reads

    xg[r*sh*W + m*sw + pos[t]],  pos[t] = ((c*D + id)*H + kh*dh - ph)*W + kw*dw - pw

in the flattened input channels of its group ``xg``, for every tap t = (c, kd, kh, kw) of the
group. Nothing is copied or padded:

* forward, unit strides and as many output as input columns (the usual 'same' layer): the output
  rows whose taps are all inside the input form one flat range, computed by long vector loops of
  up to 9 fused taps (the first pass storing, the others accumulating), two output channels per
  pass (each load of the input feeds both). The range's edge columns read taps wrapped from the
  neighbouring rows, so they are computed again afterwards from the taps inside the input; rows
  with taps outside the input get per-row passes. MobileNetV2's 3x3 depthwise layer at 56x56
  (float32, one thread, CPU ms): 2.2, against 3.6 for the previous zero-padded plane (copy in,
  three 3-tap passes into a scratch plane at the padded pitch, copy out) and 3.0 for per-row
  passes (per-row setup dominates rows of 56, three and a half AVX-512 vectors);
* forward otherwise (strides, fewer output columns): the same fused passes per row over its
  interior columns, edge columns apart;
* grad-input is this forward correlation of ``output_grad`` (with strides: zero-inserted) with
  the kernel reversed, its (O, Cg) axes swapped per group, and the padding mirrored
  (``(k-1)*d - p``, negative pads being crops);
* grad-weights runs the taps as fused dot products (up to 9 share each load of ``output_grad``);
  in the flat case over bands of rows, with ``output_grad`` taken as zero where a tap's column is
  wrapped (see :func:`_bwd_filter_flat`), so a NaN or Inf in the input can reach weight gradients
  that do not depend on it (0 * Inf in a wrapped column); finite inputs give exact results.

Parallel decomposition: tasks are (image, group, slab of output rows); a task writes only its own
rows (of every output channel of its group; for grad-input, of every input channel). The
weight gradient sums each task's contribution into its own slice of a partial array, reduced in a
fixed order afterwards, so results do not depend on the thread count or the schedule.
"""
import numba
import numpy as np
from numba import njit, prange

from .direct import _FASTMATH, _col_range

#: Output elements per task and channel. Fewer, larger tasks measured faster, down to whole planes:
#: on the depthwise layer (one thread, forward) 2.2 ms with 56 rows per task, 2.5 with 28, 3.1
#: with 16 (per-task setup: tap lists, edge columns, border rows).
BLOCK = 4096

#: A task never has fewer rows than this (per-task setup amortised over the rows).
MIN_ROWS = 2


# --------------------------------------------------------------------------------------------
# Fused passes. ``st`` holds, per tap, the index of ``src`` read for out[0]; out[m] reads
# src[st[t] + m * step]; a literal step of 1 gives unit-stride vector loads. Helpers are inlined
# into per-task functions, which the parallel loops call: inlined into the parallel loop itself
# they took Numba ~20 s of CPU per kernel and dtype to compile, and left as calls the depthwise
# forward measured 2.8 ms instead of 2.4 (array arguments and reference counts per call).
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _pass9(out, src, st, ws, t, first, step):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    s3, s4, s5 = src[st[t + 3]:], src[st[t + 4]:], src[st[t + 5]:]
    s6, s7, s8 = src[st[t + 6]:], src[st[t + 7]:], src[st[t + 8]:]
    w0, w1, w2, w3, w4, w5 = ws[t], ws[t + 1], ws[t + 2], ws[t + 3], ws[t + 4], ws[t + 5]
    w6, w7, w8 = ws[t + 6], ws[t + 7], ws[t + 8]
    if first:
        for m in range(out.shape[0]):
            i = m * step
            out[m] = (w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i]
                      + w5 * s5[i] + w6 * s6[i] + w7 * s7[i] + w8 * s8[i])
    else:
        for m in range(out.shape[0]):
            i = m * step
            out[m] += (w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i]
                       + w5 * s5[i] + w6 * s6[i] + w7 * s7[i] + w8 * s8[i])


@njit(inline="always")
def _pass3(out, src, st, ws, t, first, step):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    w0, w1, w2 = ws[t], ws[t + 1], ws[t + 2]
    if first:
        for m in range(out.shape[0]):
            i = m * step
            out[m] = w0 * s0[i] + w1 * s1[i] + w2 * s2[i]
    else:
        for m in range(out.shape[0]):
            i = m * step
            out[m] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i]


@njit(inline="always")
def _pass1(out, src, st, ws, t, first, step):
    s0 = src[st[t]:]
    w0 = ws[t]
    if first:
        for m in range(out.shape[0]):
            out[m] = w0 * s0[m * step]
    else:
        for m in range(out.shape[0]):
            out[m] += w0 * s0[m * step]


@njit(inline="always")
def _gather_any(out, src, st, ws, nt, step):
    if nt == 0:
        for m in range(out.shape[0]):
            out[m] = 0.0
        return
    t = 0
    while nt - t >= 9:
        _pass9(out, src, st, ws, t, t == 0, step)
        t += 9
    while nt - t >= 3:
        _pass3(out, src, st, ws, t, t == 0, step)
        t += 3
    while t < nt:
        _pass1(out, src, st, ws, t, t == 0, step)
        t += 1


@njit(inline="always")
def _gather(out, src, st, ws, nt, step):
    """out[m] = sum_{t < nt} ws[t] * src[st[t] + m * step]: 9 taps per pass, then 3, then 1."""
    if step == 1:
        _gather_any(out, src, st, ws, nt, 1)
    else:
        _gather_any(out, src, st, ws, nt, step)


@njit(inline="always")
def _pass9x2(out0, out1, src, st, ws0, ws1, t, first):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    s3, s4, s5 = src[st[t + 3]:], src[st[t + 4]:], src[st[t + 5]:]
    s6, s7, s8 = src[st[t + 6]:], src[st[t + 7]:], src[st[t + 8]:]
    u0, u1, u2, u3, u4, u5 = ws0[t], ws0[t + 1], ws0[t + 2], ws0[t + 3], ws0[t + 4], ws0[t + 5]
    u6, u7, u8 = ws0[t + 6], ws0[t + 7], ws0[t + 8]
    v0, v1, v2, v3, v4, v5 = ws1[t], ws1[t + 1], ws1[t + 2], ws1[t + 3], ws1[t + 4], ws1[t + 5]
    v6, v7, v8 = ws1[t + 6], ws1[t + 7], ws1[t + 8]
    for m in range(out0.shape[0]):
        x0, x1, x2, x3, x4 = s0[m], s1[m], s2[m], s3[m], s4[m]
        x5, x6, x7, x8 = s5[m], s6[m], s7[m], s8[m]
        a = (u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3 + u4 * x4 + u5 * x5 + u6 * x6 + u7 * x7
             + u8 * x8)
        b = (v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3 + v4 * x4 + v5 * x5 + v6 * x6 + v7 * x7
             + v8 * x8)
        if first:
            out0[m] = a
            out1[m] = b
        else:
            out0[m] += a
            out1[m] += b


@njit(inline="always")
def _pass3x2(out0, out1, src, st, ws0, ws1, t, first):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    u0, u1, u2 = ws0[t], ws0[t + 1], ws0[t + 2]
    v0, v1, v2 = ws1[t], ws1[t + 1], ws1[t + 2]
    for m in range(out0.shape[0]):
        x0, x1, x2 = s0[m], s1[m], s2[m]
        if first:
            out0[m] = u0 * x0 + u1 * x1 + u2 * x2
            out1[m] = v0 * x0 + v1 * x1 + v2 * x2
        else:
            out0[m] += u0 * x0 + u1 * x1 + u2 * x2
            out1[m] += v0 * x0 + v1 * x1 + v2 * x2


@njit(inline="always")
def _pass1x2(out0, out1, src, st, ws0, ws1, t, first):
    s0 = src[st[t]:]
    u0, v0 = ws0[t], ws1[t]
    for m in range(out0.shape[0]):
        if first:
            out0[m] = u0 * s0[m]
            out1[m] = v0 * s0[m]
        else:
            out0[m] += u0 * s0[m]
            out1[m] += v0 * s0[m]


@njit(inline="always")
def _gather2(out0, out1, src, st, ws0, ws1, nt):
    """_gather (unit step) for two output channels with the same taps, sharing every load of
    ``src``: ResNeXt's grouped 3x3 forward (4 channels per group) 7.5 -> 6.1 ms on one thread."""
    if nt == 0:
        for m in range(out0.shape[0]):
            out0[m] = 0.0
            out1[m] = 0.0
        return
    t = 0
    while nt - t >= 9:
        if t == 0:
            _pass9x2(out0, out1, src, st, ws0, ws1, t, True)
        else:
            _pass9x2(out0, out1, src, st, ws0, ws1, t, False)
        t += 9
    while nt - t >= 3:
        if t == 0:
            _pass3x2(out0, out1, src, st, ws0, ws1, t, True)
        else:
            _pass3x2(out0, out1, src, st, ws0, ws1, t, False)
        t += 3
    while t < nt:
        if t == 0:
            _pass1x2(out0, out1, src, st, ws0, ws1, t, True)
        else:
            _pass1x2(out0, out1, src, st, ws0, ws1, t, False)
        t += 1


@njit(inline="always")
def _dot9(acc, ix, d, src, st, t, step):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    s3, s4, s5 = src[st[t + 3]:], src[st[t + 4]:], src[st[t + 5]:]
    s6, s7, s8 = src[st[t + 6]:], src[st[t + 7]:], src[st[t + 8]:]
    a0, a1, a2 = acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]]
    a3, a4, a5 = acc[ix[t + 3]], acc[ix[t + 4]], acc[ix[t + 5]]
    a6, a7, a8 = acc[ix[t + 6]], acc[ix[t + 7]], acc[ix[t + 8]]
    for m in range(d.shape[0]):
        v = d[m]
        i = m * step
        a0 += v * s0[i]
        a1 += v * s1[i]
        a2 += v * s2[i]
        a3 += v * s3[i]
        a4 += v * s4[i]
        a5 += v * s5[i]
        a6 += v * s6[i]
        a7 += v * s7[i]
        a8 += v * s8[i]
    acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]] = a0, a1, a2
    acc[ix[t + 3]], acc[ix[t + 4]], acc[ix[t + 5]] = a3, a4, a5
    acc[ix[t + 6]], acc[ix[t + 7]], acc[ix[t + 8]] = a6, a7, a8


@njit(inline="always")
def _dot3(acc, ix, d, src, st, t, step):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    a0, a1, a2 = acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]]
    for m in range(d.shape[0]):
        v = d[m]
        i = m * step
        a0 += v * s0[i]
        a1 += v * s1[i]
        a2 += v * s2[i]
    acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]] = a0, a1, a2


@njit(inline="always")
def _dot2(acc, ix, d, src, st, t, step):
    s0, s1 = src[st[t]:], src[st[t + 1]:]
    a0, a1 = acc[ix[t]], acc[ix[t + 1]]
    for m in range(d.shape[0]):
        v = d[m]
        a0 += v * s0[m * step]
        a1 += v * s1[m * step]
    acc[ix[t]], acc[ix[t + 1]] = a0, a1


@njit(inline="always")
def _dot1(acc, ix, d, src, st, t, step):
    s0 = src[st[t]:]
    a0 = acc[ix[t]]
    for m in range(d.shape[0]):
        a0 += d[m] * s0[m * step]
    acc[ix[t]] = a0


@njit(inline="always")
def _dots_any(acc, ix, d, src, st, nt, step):
    t = 0
    while nt - t >= 9:
        _dot9(acc, ix, d, src, st, t, step)
        t += 9
    while nt - t >= 3:
        _dot3(acc, ix, d, src, st, t, step)
        t += 3
    if nt - t == 2:
        _dot2(acc, ix, d, src, st, t, step)
    elif nt - t == 1:
        _dot1(acc, ix, d, src, st, t, step)


@njit(inline="always")
def _dots(acc, ix, d, src, st, nt, step):
    """acc[ix[t]] += sum_m d[m] * src[st[t] + m * step] for t < nt: 9 dot products per pass,
    then 3, then 2 or 1."""
    if step == 1:
        _dots_any(acc, ix, d, src, st, nt, 1)
    else:
        _dots_any(acc, ix, d, src, st, nt, step)


@njit(inline="always")
def _mdot9(acc, ix, d, mk, src, st, t, zero):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    s3, s4, s5 = src[st[t + 3]:], src[st[t + 4]:], src[st[t + 5]:]
    s6, s7, s8 = src[st[t + 6]:], src[st[t + 7]:], src[st[t + 8]:]
    a0, a1, a2 = acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]]
    a3, a4, a5 = acc[ix[t + 3]], acc[ix[t + 4]], acc[ix[t + 5]]
    a6, a7, a8 = acc[ix[t + 6]], acc[ix[t + 7]], acc[ix[t + 8]]
    for m in range(d.shape[0]):
        v = d[m] if mk[m] else zero
        a0 += v * s0[m]
        a1 += v * s1[m]
        a2 += v * s2[m]
        a3 += v * s3[m]
        a4 += v * s4[m]
        a5 += v * s5[m]
        a6 += v * s6[m]
        a7 += v * s7[m]
        a8 += v * s8[m]
    acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]] = a0, a1, a2
    acc[ix[t + 3]], acc[ix[t + 4]], acc[ix[t + 5]] = a3, a4, a5
    acc[ix[t + 6]], acc[ix[t + 7]], acc[ix[t + 8]] = a6, a7, a8


@njit(inline="always")
def _mdot3(acc, ix, d, mk, src, st, t, zero):
    s0, s1, s2 = src[st[t]:], src[st[t + 1]:], src[st[t + 2]:]
    a0, a1, a2 = acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]]
    for m in range(d.shape[0]):
        v = d[m] if mk[m] else zero
        a0 += v * s0[m]
        a1 += v * s1[m]
        a2 += v * s2[m]
    acc[ix[t]], acc[ix[t + 1]], acc[ix[t + 2]] = a0, a1, a2


@njit(inline="always")
def _mdot2(acc, ix, d, mk, src, st, t, zero):
    s0, s1 = src[st[t]:], src[st[t + 1]:]
    a0, a1 = acc[ix[t]], acc[ix[t + 1]]
    for m in range(d.shape[0]):
        v = d[m] if mk[m] else zero
        a0 += v * s0[m]
        a1 += v * s1[m]
    acc[ix[t]], acc[ix[t + 1]] = a0, a1


@njit(inline="always")
def _mdot1(acc, ix, d, mk, src, st, t, zero):
    s0 = src[st[t]:]
    a0 = acc[ix[t]]
    for m in range(d.shape[0]):
        a0 += (d[m] if mk[m] else zero) * s0[m]
    acc[ix[t]] = a0


@njit(inline="always")
def _mdots(acc, ix, d, mk, src, st, nt, zero):
    """_dots with unit step and ``d[m]`` taken as zero where ``mk[m]`` is 0 (a select, so a NaN
    there does not leak either)."""
    t = 0
    while nt - t >= 9:
        _mdot9(acc, ix, d, mk, src, st, t, zero)
        t += 9
    while nt - t >= 3:
        _mdot3(acc, ix, d, mk, src, st, t, zero)
        t += 3
    if nt - t == 2:
        _mdot2(acc, ix, d, mk, src, st, t, zero)
    elif nt - t == 1:
        _mdot1(acc, ix, d, mk, src, st, t, zero)


# --------------------------------------------------------------------------------------------
# Tap lists
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _taps(pos, ws, ix, tkh, tkw, wo, od, in_size, kernel, stride, dil, pad):
    """The taps of output channel ``wo`` (its weights, (Cg, KD, KH, KW)) at output depth ``od``
    whose input depth is inside the input; returns their number. ``ix`` is the tap's flat index in
    ``wo``."""
    D, H, W = in_size
    KD, KH, KW = kernel
    nt = 0
    for c in range(wo.shape[0]):
        for kd in range(KD):
            idd = od * stride[0] - pad[0] + kd * dil[0]
            if idd < 0 or idd >= D:
                continue
            for kh in range(KH):
                for kw in range(KW):
                    pos[nt] = ((c * D + idd) * H + kh * dil[1] - pad[1]) * W + kw * dil[2] - pad[2]
                    ws[nt] = wo[c, kd, kh, kw]
                    ix[nt] = ((c * KD + kd) * KH + kh) * KW + kw
                    tkh[nt] = kh
                    tkw[nt] = kw
                    nt += 1
    return nt


@njit(inline="always")
def _geometry(in_size, out_size, kernel, stride, dil, pad):
    """Output rows [r_lo, r_hi) and columns [m_lo, m_hi) whose every tap is inside the input; the
    edge columns [0, left) and [right, OW) are the others."""
    H, W = in_size[1], in_size[2]
    OH, OW = out_size[1], out_size[2]
    r_lo, r_hi = _col_range(-pad[1], stride[1], H, OH)
    r_hi = min(r_hi, _col_range((kernel[1] - 1) * dil[1] - pad[1], stride[1], H, OH)[1])
    m_lo, m_hi = _col_range(-pad[2], stride[2], W, OW)
    m_hi = min(m_hi, _col_range((kernel[2] - 1) * dil[2] - pad[2], stride[2], W, OW)[1])
    left = min(max(m_lo, 0), OW)
    right = max(m_hi, left)
    flat = stride[1] == 1 and stride[2] == 1 and OW == W
    return r_lo, r_hi, m_lo, m_hi, left, right, flat


@njit(inline="always")
def _edge_taps(epos, ews, eix, ecnt, pos, ws, ix, tkw, nt, left, right, OW, W, sw, pw, dw):
    """Per edge column e (columns [0, left), then [right, OW)), its taps whose input column is
    inside the input, with the column's offset added."""
    for e in range(left + OW - right):
        m = e if e < left else e - left + right
        k = 0
        for t in range(nt):
            iw = m * sw - pw + tkw[t] * dw
            if 0 <= iw < W:
                epos[e, k] = pos[t] + m * sw
                ews[e, k] = ws[t]
                eix[e, k] = ix[t]
                k += 1
        ecnt[e] = k


@njit(inline="always")
def _row_edge_taps(fpos, fws, fix, ftkw, pos, ws, ix, tkh, tkw, nt, r, H, sh, ph, dh):
    """The taps of output row ``r`` whose input row is inside the input, with their kw."""
    nf = 0
    for t in range(nt):
        ih = r * sh - ph + tkh[t] * dh
        if 0 <= ih < H:
            fpos[nf] = pos[t]
            fws[nf] = ws[t]
            fix[nf] = ix[t]
            ftkw[nf] = tkw[t]
            nf += 1
    return nf


# --------------------------------------------------------------------------------------------
# Forward (also the gradient w.r.t. the input with unit strides)
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _fwd_edges(yp, xg, epos, ews, ecnt, r0, r1, left, right, OW, W, sh, zero):
    """The edge columns of rows [r0, r1) (all of whose input rows are inside the input), two rows
    at a time: a sum per element is a chain of dependent multiply-adds, and two independent ones
    took the edges of the 3x3 depthwise layer from 0.4 to 0.25 ms (one thread; the flat pass
    costs 1.1). Fused passes down the columns of a transposed, zero-padded copy of the edge
    columns measured 0.5 ms: the copy's strided reads."""
    p = sh * W
    for e in range(left + OW - right):
        m = e if e < left else e - left + right
        ep = epos[e]
        ew = ews[e]
        cnt = ecnt[e]
        r = r0
        while r + 1 < r1:
            a0 = zero
            a1 = zero
            b0 = r * p
            for k in range(cnt):
                a0 += ew[k] * xg[b0 + ep[k]]
                a1 += ew[k] * xg[b0 + p + ep[k]]
            yp[r, m] = a0
            yp[r + 1, m] = a1
            r += 2
        if r < r1:
            a0 = zero
            for k in range(cnt):
                a0 += ew[k] * xg[r * p + ep[k]]
            yp[r, m] = a0


@njit(cache=True, fastmath=_FASTMATH)
def _fwd_chunk(x, w, y, stride, dil, pad, groups, R, t0, t1):
    """Tasks [t0, t1): task (n, g, s) computes rows [s*R, (s+1)*R) of the flattened (depth, row)
    output planes of every output channel of group g of image n."""
    D, H, W = x.shape[2], x.shape[3], x.shape[4]
    O, Cg, KD, KH, KW = w.shape
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    Og = O // groups
    sh, sw = stride[1], stride[2]
    dh, dw = dil[1], dil[2]
    ph, pw = pad[1], pad[2]
    T = Cg * KD * KH * KW
    slabs = -(-(OD * OH) // R)
    r_lo, r_hi, m_lo, m_hi, left, right, flat = _geometry((D, H, W), (OD, OH, OW), (KD, KH, KW),
                                                          stride, dil, pad)
    ne = left + OW - right
    epos = np.empty((ne, T), np.int64)
    eix = np.empty((ne, T), np.int64)
    ews = np.empty((ne, T), y.dtype)
    ecnt = np.empty(ne, np.int64)
    pos = np.empty(T, np.int64)
    ix = np.empty(T, np.int64)
    tkh = np.empty(T, np.int64)
    tkw = np.empty(T, np.int64)
    ws = np.empty(T, y.dtype)
    fpos = np.empty(T, np.int64)
    fix = np.empty(T, np.int64)
    ftkw = np.empty(T, np.int64)
    fws = np.empty(T, y.dtype)
    ws2 = np.empty(T, y.dtype)
    st = np.empty(T, np.int64)
    zero = np.zeros(1, y.dtype)[0]
    cached = -1  # the depth whose taps pos, ix, tkh, tkw, epos, eix, ecnt hold
    nt = 0
    for task in range(t0, t1):
        s = task % slabs
        g = (task // slabs) % groups
        n = task // (slabs * groups)
        xg = x[n, g * Cg:(g + 1) * Cg].reshape(Cg * D * H * W)
        row = s * R
        end = min(row + R, OD * OH)
        while row < end:
            od = row // OH
            ra = row % OH
            rb = min(OH, ra + end - row)
            row += rb - ra
            ri0 = min(max(ra, r_lo), rb)  # rows whose every input row is inside the input
            ri1 = max(min(rb, r_hi), ri0)
            r0, r1 = (ri0, ri1) if flat and m_lo < m_hi else (ra, ra)
            if od != cached:
                # the taps' positions depend on the depth only (for depthwise layers of small
                # planes, rebuilding them per task cost as much as the arithmetic)
                nt = _taps(pos, ws, ix, tkh, tkw, w[0], od, (D, H, W), (KD, KH, KW), stride, dil,
                           pad)
                _edge_taps(epos, ews, eix, ecnt, pos, ws, ix, tkw, nt, left, right, OW, W, sw, pw,
                           dw)
                cached = od
            for o in range(g * Og, (g + 1) * Og):
                yp = y[n, o, od]
                wf = w[o].reshape(T)
                for t in range(nt):
                    ws[t] = wf[ix[t]]
                for e in range(ne):
                    for k in range(ecnt[e]):
                        ews[e, k] = wf[eix[e, k]]
                # rows in address order, so that the hardware prefetchers see one stream: the
                # first row done after the others cost a cache miss per line of every plane
                for r in range(ra, rb):
                    if r == r0 and r0 < r1 and (o - g * Og) % 2 == 0:
                        # rows [r0, r1) at once, of this channel and the next (which skips this);
                        # their edge columns, which this pass gets wrong (taps wrapped from the
                        # neighbouring rows), are redone below
                        q0 = r0 * OW + m_lo
                        q1 = (r1 - 1) * OW + m_hi
                        for t in range(nt):
                            st[t] = q0 + pos[t]
                        if o + 1 < (g + 1) * Og:
                            wn = w[o + 1].reshape(T)
                            for t in range(nt):
                                ws2[t] = wn[ix[t]]
                            _gather2(yp.reshape(OH * OW)[q0:q1],
                                     y[n, o + 1, od].reshape(OH * OW)[q0:q1], xg, st, ws, ws2, nt)
                        else:
                            _gather(yp.reshape(OH * OW)[q0:q1], xg, st, ws, nt, 1)
                    if r0 <= r < r1:
                        continue
                    base = r * sh * W
                    if ri0 <= r < ri1:
                        if m_lo < m_hi:
                            for t in range(nt):
                                st[t] = base + m_lo * sw + pos[t]
                            _gather(yp[r, m_lo:m_hi], xg, st, ws, nt, sw)
                        continue
                    # a row with taps outside the input: the edge columns tap by tap
                    nf = _row_edge_taps(fpos, fws, fix, ftkw, pos, ws, ix, tkh, tkw, nt, r, H, sh,
                                        ph, dh)
                    if m_lo < m_hi:
                        for t in range(nf):
                            st[t] = base + m_lo * sw + fpos[t]
                        _gather(yp[r, m_lo:m_hi], xg, st, fws, nf, sw)
                    for e in range(ne):
                        m = e if e < left else e - left + right
                        acc = zero
                        for t in range(nf):
                            iw = m * sw - pw + ftkw[t] * dw
                            if 0 <= iw < W:
                                acc += fws[t] * xg[base + fpos[t] + m * sw]
                        yp[r, m] = acc
                _fwd_edges(yp, xg, epos, ews, ecnt, ri0, ri1, left, right, OW, W, sh, zero)


@njit(parallel=True, cache=True)
def _fwd_kernel(x, w, y, stride, dil, pad, groups, R, nchunks):
    """y = x (*) w; ``pad`` may be negative (a crop), as the mirrored pads of grad-input are."""
    ntask = x.shape[0] * groups * (-(-(y.shape[2] * y.shape[3]) // R))
    nchunks = min(ntask, nchunks)
    for chunk in prange(nchunks):
        _fwd_chunk(x, w, y, stride, dil, pad, groups, R, chunk * ntask // nchunks,
                   (chunk + 1) * ntask // nchunks)


# --------------------------------------------------------------------------------------------
# Gradient w.r.t. the weights
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _bwd_filter_edges(acc, dyp, xg, dcol, epos, eix, ecnt, r0, r1, left, right, OW, W, sh, zero):
    """Add the edge columns of rows [r0, r1) (all of whose input rows are inside the input):
    per column and tap, a dot product down the rows in four independent partial sums."""
    p = sh * W
    nr = r1 - r0
    n4 = nr // 4 * 4
    d = dcol[:nr]
    for e in range(left + OW - right):
        m = e if e < left else e - left + right
        for i in range(nr):
            d[i] = dyp[r0 + i, m]
        for k in range(ecnt[e]):
            src = xg[r0 * p + epos[e, k]:]
            a0 = a1 = a2 = a3 = zero
            for i in range(0, n4, 4):
                a0 += d[i] * src[i * p]
                a1 += d[i + 1] * src[(i + 1) * p]
                a2 += d[i + 2] * src[(i + 2) * p]
                a3 += d[i + 3] * src[(i + 3) * p]
            for i in range(n4, nr):
                a0 += d[i] * src[i * p]
            acc[eix[e, k]] += (a0 + a1) + (a2 + a3)


@njit(inline="always")
def _bwd_filter_flat(acc, dyp, xg, masks, pos, ix, tkh, tkw, nt, st, gix, ra, rb, OH, OW, H, W,
                     KH, KW, ph, pw, dh, dw, zero):
    """Unit strides and OW == W: flat dot products over bands of rows [ra, rb) in which the same
    kernel rows are inside the input, one fused call per band and kernel column kw, with
    output_grad taken as zero (``masks[kw]``, periodic in the columns) where tap kw reads a
    wrapped column. Nothing is redone for edge columns or border rows. On the 3x3 depthwise layer
    (one thread): 2.8 ms, against 4.0 for a flat range plus edge columns and border rows apart,
    3.4 with a masked copy of output_grad per kw instead of the masks, 3.0 with a pass per kernel
    row over all its rows (a mask per tap, no one-row border bands), and no faster with nine taps
    of three columns (three masks) per pass."""
    dflat = dyp.reshape(OH * OW)[ra * OW:rb * OW]
    b0 = ra
    while b0 < rb:
        b1 = rb
        for kh in range(KH):
            lo, hi = _col_range(kh * dh - ph, 1, H, OH)
            if b0 < lo < b1:
                b1 = lo
            if b0 < hi < b1:
                b1 = hi
        for kw in range(KW):
            off = kw * dw - pw
            mlo = min(max(0, -off), OW)  # columns whose tap kw is inside the input
            mhi = max(min(OW, W - off), mlo)
            if mlo >= mhi:
                continue
            # the first and last row's columns left out are masked anyway
            qa = b0 * OW + mlo
            qb = (b1 - 1) * OW + mhi
            k = 0
            for t in range(nt):
                if tkw[t] == kw and 0 <= b0 - ph + tkh[t] * dh < H:
                    st[k] = qa + pos[t]
                    gix[k] = ix[t]
                    k += 1
            a, b = qa - ra * OW, qb - ra * OW
            if mlo > 0 or mhi < OW:
                _mdots(acc, gix, dflat[a:b], masks[kw, a:b], xg, st, k, zero)
            else:
                _dots(acc, gix, dflat[a:b], xg, st, k, 1)
        b0 = b1


@njit(cache=True, fastmath=_FASTMATH)
def _bwd_filter_chunk(x, dy, part, stride, dil, pad, groups, R, t0, t1):
    """part[task, o] = the weight gradient of the task's rows of output channel g*Og + o."""
    C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    OD, OH, OW = dy.shape[2], dy.shape[3], dy.shape[4]
    O = dy.shape[1]
    Cg = C // groups
    Og = O // groups
    KD, KH, KW = part.shape[3], part.shape[4], part.shape[5]
    sh, sw = stride[1], stride[2]
    dh, dw = dil[1], dil[2]
    ph, pw = pad[1], pad[2]
    T = Cg * KD * KH * KW
    slabs = -(-(OD * OH) // R)
    r_lo, r_hi, m_lo, m_hi, left, right, flat = _geometry((D, H, W), (OD, OH, OW), (KD, KH, KW),
                                                          stride, dil, pad)
    ne = left + OW - right
    epos = np.empty((ne, T), np.int64)
    eix = np.empty((ne, T), np.int64)
    ews = np.empty((ne, T), dy.dtype)
    ecnt = np.empty(ne, np.int64)
    pos = np.empty(T, np.int64)
    ix = np.empty(T, np.int64)
    tkh = np.empty(T, np.int64)
    tkw = np.empty(T, np.int64)
    ws = np.empty(T, dy.dtype)
    fpos = np.empty(T, np.int64)
    fix = np.empty(T, np.int64)
    ftkw = np.empty(T, np.int64)
    fws = np.empty(T, dy.dtype)
    st = np.empty(T, np.int64)
    dcol = np.empty(min(R, OH), dy.dtype)
    gix = np.empty(T, np.int64)
    # per kw, 1 where output_grad's column meets tap kw inside the input (flat case)
    masks = np.zeros((KW, min(R, OH) * OW), np.uint8)
    for kw in range(KW):
        for i in range(masks.shape[1]):
            masks[kw, i] = 0 <= i % OW + kw * dw - pw < W
    zero = np.zeros(1, dy.dtype)[0]
    # the taps' weights are not needed: zeros keep the tap lists shared with forward
    wzero = np.zeros((Cg, KD, KH, KW), dy.dtype)
    cached = -1  # the depth whose taps the tap lists hold
    nt = 0
    for task in range(t0, t1):
        s = task % slabs
        g = (task // slabs) % groups
        n = task // (slabs * groups)
        xg = x[n, g * Cg:(g + 1) * Cg].reshape(Cg * D * H * W)
        part[task] = 0.0
        row = s * R
        end = min(row + R, OD * OH)
        while row < end:
            od = row // OH
            ra = row % OH
            rb = min(OH, ra + end - row)
            row += rb - ra
            if od != cached:
                nt = _taps(pos, ws, ix, tkh, tkw, wzero, od, (D, H, W), (KD, KH, KW), stride, dil,
                           pad)
                _edge_taps(epos, ews, eix, ecnt, pos, ws, ix, tkw, nt, left, right, OW, W, sw, pw,
                           dw)
                cached = od
            if flat:
                for j in range(Og):
                    _bwd_filter_flat(part[task, j].reshape(T), dy[n, g * Og + j, od], xg, masks,
                                     pos, ix, tkh, tkw, nt, st, gix, ra, rb, OH, OW, H, W, KH, KW,
                                     ph, pw, dh, dw, zero)
                continue
            # per row: the interior columns in fused dot products, the edge columns apart
            ri0 = min(max(ra, r_lo), rb)  # rows whose every input row is inside the input
            ri1 = max(min(rb, r_hi), ri0)
            for j in range(Og):
                acc = part[task, j].reshape(T)
                dyp = dy[n, g * Og + j, od]
                for r in range(ra, rb):
                    base = r * sh * W
                    if ri0 <= r < ri1:
                        if m_lo < m_hi:
                            for t in range(nt):
                                st[t] = base + m_lo * sw + pos[t]
                            _dots(acc, ix, dyp[r, m_lo:m_hi], xg, st, nt, sw)
                        continue
                    nf = _row_edge_taps(fpos, fws, fix, ftkw, pos, ws, ix, tkh, tkw, nt, r, H, sh,
                                        ph, dh)
                    if m_lo < m_hi:
                        for t in range(nf):
                            st[t] = base + m_lo * sw + fpos[t]
                        _dots(acc, fix, dyp[r, m_lo:m_hi], xg, st, nf, sw)
                    for e in range(ne):
                        m = e if e < left else e - left + right
                        v = dyp[r, m]
                        for t in range(nf):
                            iw = m * sw - pw + ftkw[t] * dw
                            if 0 <= iw < W:
                                acc[fix[t]] += v * xg[base + fpos[t] + m * sw]
                _bwd_filter_edges(acc, dyp, xg, dcol, epos, eix, ecnt, ri0, ri1, left, right, OW, W,
                                  sh, zero)


@njit(parallel=True, cache=True)
def _bwd_filter_kernel(x, dy, part, stride, dil, pad, groups, R, nchunks):
    """part[task, o, :] = the weight gradient of output channel o (flat (Cg, KD, KH, KW)) from the
    rows of the task; the tasks' slices are summed by the caller."""
    ntask = part.shape[0]
    nchunks = min(ntask, nchunks)
    for chunk in prange(nchunks):
        _bwd_filter_chunk(x, dy, part, stride, dil, pad, groups, R, chunk * ntask // nchunks,
                          (chunk + 1) * ntask // nchunks)


# --------------------------------------------------------------------------------------------
# Thin wrappers: the spec has been validated; geometry, allocate and launch.
# --------------------------------------------------------------------------------------------


def supports(spec):
    """Few channels per group: up to 16 in and 16 out (larger groups are GEMM-shaped)."""
    return not spec.unshared and spec.group_in <= 16 and spec.group_out <= 16


def _rows_per_task(rows, width, planes):
    """Rows per task: about BLOCK outputs per channel (fewer tasks measured faster down to whole
    56x56 planes: per-task setup), but at least 8 tasks in all when the rows allow, whatever the
    thread count (the weight gradient's summation order follows the tasks)."""
    r = max(MIN_ROWS, min(rows, BLOCK // max(1, width)))
    if planes * -(-rows // r) < 8:
        r = max(1, -(-rows // -(-8 // planes)))
    return r


def _tasks(spec, rows, width):
    r = _rows_per_task(rows, width, spec.batch * spec.groups)
    return r, spec.batch * spec.groups * -(-rows // r)


def workspace(spec):
    """Scratch bytes: per thread the tap lists and one task's rows of masks; grad-weights adds
    its partial sums (one weight-sized slice per group and task), strided grad-input the
    zero-inserted output_grad."""
    taps = spec.group_in * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    width = spec.out_size[2] if spec.direction != "grad_input" else spec.in_size[2]
    rows = (spec.out_size if spec.direction != "grad_input" else spec.in_size)[1]
    r, ntask = _tasks(spec, rows, width)
    per_thread = taps * (2 * width + 16) * 8 + min(r, rows) * width * (8 + spec.kernel[2])
    total = numba.get_num_threads() * per_thread
    if spec.direction == "grad_weights":
        total += ntask * spec.group_out * taps * spec.np_dtype.itemsize
    if spec.direction == "grad_input" and spec.stride != (1, 1, 1):
        (OD, OH, OW), (sd, sh, sw) = spec.out_size, spec.stride
        total += (spec.batch * spec.out_channels * ((OD - 1) * sd + 1) * ((OH - 1) * sh + 1)
                  * max(spec.in_size[2], (OW - 1) * sw + 1) * spec.np_dtype.itemsize)
    return total


def forward(spec, x, w):
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    if y.size:
        r, _ = _tasks(spec, spec.out_size[0] * spec.out_size[1], spec.out_size[2])
        _fwd_kernel(x, w, y, spec.stride, spec.dilation, spec.pad_lo, spec.groups, r,
                    numba.get_num_threads())
    return y


def _zero_inserted(spec, dy):
    """dy with (stride - 1) zeros between its samples along each strided axis, as wide as the
    input at least: grad-input becomes a unit-stride correlation, whose flat passes apply when
    the widths match. Measured on MobileNetV2's stride-2 depthwise layers (2 threads): 1.1 ms
    on 112x112 against 2.8 for the gather per input row (scattered, strided stores)."""
    (OD, OH, OW), (sd, sh, sw) = spec.out_size, spec.stride
    shape = spec.y_shape[:2] + ((OD - 1) * sd + 1, (OH - 1) * sh + 1,
                                max(spec.in_size[2], (OW - 1) * sw + 1))
    dyz = np.zeros(shape, dtype=spec.np_dtype)
    dyz[:, :, ::sd, ::sh, :(OW - 1) * sw + 1:sw] = dy
    return dyz


def grad_input(spec, dy, w):
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    if not dx.size:
        return dx
    if spec.stride != (1, 1, 1):
        dy = _zero_inserted(spec, dy)
    # the unit-stride forward correlation of dy with the kernel reversed, its (O, Cg) axes swapped
    # per group, and the padding mirrored
    G, Og, Cg = spec.groups, spec.group_out, spec.group_in
    wt = w[:, :, ::-1, ::-1, ::-1].reshape((G, Og, Cg) + spec.kernel)
    wt = np.ascontiguousarray(wt.transpose(0, 2, 1, 3, 4, 5)).reshape((G * Cg, Og) + spec.kernel)
    pad = tuple((k - 1) * d - p for k, d, p in zip(spec.kernel, spec.dilation, spec.pad_lo))
    r, _ = _tasks(spec, spec.in_size[0] * spec.in_size[1], spec.in_size[2])
    _fwd_kernel(dy, wt, dx, (1, 1, 1), spec.dilation, pad, G, r, numba.get_num_threads())
    return dx


def grad_weights(spec, x, dy):
    if not spec.batch:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    r, ntask = _tasks(spec, spec.out_size[0] * spec.out_size[1], spec.out_size[2])
    part = np.empty((ntask, spec.group_out, spec.group_in) + spec.kernel, dtype=spec.np_dtype)
    _bwd_filter_kernel(x, dy, part, spec.stride, spec.dilation, spec.pad_lo, spec.groups, r,
                       numba.get_num_threads())
    # task = (n * G + g) * slabs + s: sum over images and slabs, in a fixed order
    slabs = ntask // (spec.batch * spec.groups)
    part = part.reshape((spec.batch, spec.groups, slabs) + part.shape[1:])
    return np.ascontiguousarray(part.sum(axis=(0, 2)).reshape(spec.w_shape))


# Sustained rates on 2 cores, float32 (float64: half), from the benchmark suite: the flat passes
# of MobileNetV2's depthwise and ResNeXt's grouped 3x3 layers, the per-row passes of strided
# layers; plus a setup cost per output plane (tap weights, edge columns, border rows), which is
# what the 7x7 depthwise layers of MobileNetV2 measured beyond these rates (0.31 ms for 7680
# planes against 0.26 for the padded-plane depthwise kernels).
_RATE_FLAT = {"forward": 60e9, "grad_input": 60e9, "grad_weights": 40e9}
_RATE_ROWS = 25e9
_BANDWIDTH = 25e9
_PER_PLANE = 25e-9
_LAUNCH = 20e-6


def estimate(spec):
    """Predicted seconds for the `guess` policy: the slower of the arithmetic (at the measured
    rate of the path the problem takes; strided grad-input multiplies by the zeros inserted) and
    moving the operands and result once, plus the per-plane setup."""
    flops = spec.flops()
    x = spec.batch * spec.in_channels * spec.in_size[0] * spec.in_size[1] * spec.in_size[2]
    y = spec.batch * spec.out_channels * spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    planes = spec.batch * spec.out_channels * spec.out_size[0]
    if spec.direction == "grad_input":
        zeros = spec.stride[0] * spec.stride[1] * spec.stride[2]
        flops *= zeros
        y *= zeros  # the zero-inserted copy of output_grad
        planes = spec.batch * spec.in_channels * spec.in_size[0]
        rate = _RATE_FLAT["grad_input"]
    elif spec.stride[1] == spec.stride[2] == 1 and spec.out_size[2] == spec.in_size[2]:
        rate = _RATE_FLAT[spec.direction]
    else:
        rate = _RATE_ROWS
    rate *= 4 / spec.np_dtype.itemsize
    moved = (x + y) * spec.np_dtype.itemsize
    return _LAUNCH + max(flops / rate, moved / _BANDWIDTH) + planes * _PER_PLANE
