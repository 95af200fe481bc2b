"""Implicit GEMM on the GPU: the im2col GEMMs with the gather done while loading the tiles.

The tiled GEMM of :mod:`nbconv.cuda.gemm` with index functions that read the convolution's arrays
directly, so there is no column buffer (no workspace but the split-K partials of grad-weights).
Per group g (the batch index z of the GEMM):

    forward       y_g (Og, N*P)        = W_g (Og, CgK) @ cols_g (CgK, N*P)
                  cols_g[(c, tap), (n, p)] = x[n, g*Cg + c, p*s - pad + tap*dil]  (0 in the padding)
    grad_input    dx_g (Cg, N*DHW)     = W_g' (Cg, Og*K) @ douts_g (Og*K, N*DHW)
                  W_g'[c, (o, tap)] = w[g*Og + o, c, tap];
                  douts_g[(o, tap), (n, i)] = dy[n, g*Og + o, (i + pad - tap*dil) / s] where that
                  divides and lies inside dy, else 0 (a transposed convolution as one GEMM)
    grad_weights dW_g (Og, CgK)       = dy_g (Og, N*P) @ cols_g^T (N*P, CgK), split-K over N*P

Every element of every result is written by one thread (no atomics); the split-K partials are
added in a fixed order, so all three directions are deterministic.
"""
from __future__ import annotations

from numba import cuda

from . import gemm, launch
from .launch import empty

# geo: the convolution's geometry as one int64 tuple, shared with nbconv.cuda.unshared
#  0 N  1 C  2 D  3 H  4 W  5 O  6 OD  7 OH  8 OW  9 KD  10 KH  11 KW  12 sd  13 sh  14 sw
# 15 dd 16 dh 17 dw 18 pd 19 ph 20 pw 21 G 22 Cg 23 Og 24 P 25 KK 26 CgKK 27 DHW 28 p0


def geometry(spec, p0=0):
    N, C, O, G = spec.batch, spec.in_channels, spec.out_channels, spec.groups
    D, H, W = spec.in_size
    OD, OH, OW = spec.out_size
    KD, KH, KW = spec.kernel
    KK = KD * KH * KW
    return tuple(int(v) for v in (
        N, C, D, H, W, O, OD, OH, OW, KD, KH, KW, *spec.stride, *spec.dilation, *spec.pad_lo,
        G, C // G, O // G, OD * OH * OW, KK, (C // G) * KK, D * H * W, p0,
    ))


@cuda.jit(device=True)
def x_tap(g, n, c0, p, k):
    """Flat index into x of tap k = (c, kd, kh, kw) (c counted from channel c0) of output
    position p (flat) of image n, or -1 where the tap falls in the padding."""
    c = k // g[25]
    tap = k - c * g[25]
    kw = tap % g[11]
    tap //= g[11]
    kh = tap % g[10]
    kd = tap // g[10]
    ow = p % g[8]
    p //= g[8]
    oh = p % g[7]
    od = p // g[7]
    idd = od * g[12] - g[18] + kd * g[15]
    ih = oh * g[13] - g[19] + kh * g[16]
    iw = ow * g[14] - g[20] + kw * g[17]
    if idd < 0 or idd >= g[2] or ih < 0 or ih >= g[3] or iw < 0 or iw >= g[4]:
        return -1
    return (((n * g[1] + c0 + c) * g[2] + idd) * g[3] + ih) * g[4] + iw


# forward: M = Og, N = N*P, K = CgK, z = group -------------------------------------------------


@cuda.jit(device=True)
def _fwd_a(g, z, m, k):
    return (z * g[23] + m) * g[26] + k


@cuda.jit(device=True)
def _fwd_b(g, z, k, n):
    b = n // g[24]
    return x_tap(g, b, z * g[22], n - b * g[24], k)


@cuda.jit(device=True)
def _fwd_c(g, z, s, m, n):
    b = n // g[24]
    return (b * g[5] + z * g[23] + m) * g[24] + n - b * g[24]


# grad-input: M = Cg, N = N*DHW, K = Og*K, z = group ----------------------------------------


@cuda.jit(device=True)
def _bwd_data_a(g, z, m, k):
    o = k // g[25]
    return ((z * g[23] + o) * g[22] + m) * g[25] + k - o * g[25]


@cuda.jit(device=True)
def _bwd_data_b(g, z, k, n):
    o = k // g[25]
    tap = k - o * g[25]
    kw = tap % g[11]
    tap //= g[11]
    kh = tap % g[10]
    kd = tap // g[10]
    b = n // g[27]
    i = n - b * g[27]
    iw = i % g[4]
    i //= g[4]
    ih = i % g[3]
    idd = i // g[3]
    td = idd + g[18] - kd * g[15]
    th = ih + g[19] - kh * g[16]
    tw = iw + g[20] - kw * g[17]
    if td < 0 or th < 0 or tw < 0 or td % g[12] != 0 or th % g[13] != 0 or tw % g[14] != 0:
        return -1
    od = td // g[12]
    oh = th // g[13]
    ow = tw // g[14]
    if od >= g[6] or oh >= g[7] or ow >= g[8]:
        return -1
    return (((b * g[5] + z * g[23] + o) * g[6] + od) * g[7] + oh) * g[8] + ow


@cuda.jit(device=True)
def _bwd_data_c(g, z, s, m, n):
    b = n // g[27]
    return (b * g[1] + z * g[22] + m) * g[27] + n - b * g[27]


# grad-weights: M = Og, N = CgK, K = N*P, z = group, split-K -------------------------------


@cuda.jit(device=True)
def _bwd_filter_a(g, z, m, k):
    b = k // g[24]
    return (b * g[5] + z * g[23] + m) * g[24] + k - b * g[24]


@cuda.jit(device=True)
def _bwd_filter_b(g, z, k, n):
    b = k // g[24]
    return x_tap(g, b, z * g[22], k - b * g[24], n)


@cuda.jit(device=True)
def _bwd_filter_c(g, z, s, m, n):
    return s * g[5] * g[26] + (z * g[23] + m) * g[26] + n


_FWD = (_fwd_a, _fwd_b, _fwd_c)
_BWD_DATA = (_bwd_data_a, _bwd_data_b, _bwd_data_c)
_BWD_FILTER = (_bwd_filter_a, _bwd_filter_b, _bwd_filter_c)


def _flat(a):
    return a.reshape(a.size)


def supports(spec):
    return not spec.unshared


def _split(spec):
    P = spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    cgk = spec.group_in * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    return gemm.split_k(spec.group_out, cgk, spec.batch * P, spec.groups, spec.np_dtype)


def workspace(spec):
    if spec.direction != "grad_weights":
        return 0
    S, _ = _split(spec)
    nw = spec.out_channels * spec.group_in * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    return (S * nw if S > 1 else 0) * spec.np_dtype.itemsize


def forward(spec, x, w):
    g = geometry(spec)
    y = empty(spec.y_shape, spec.np_dtype)
    gemm.launch_tiled(_FWD, _flat(w), _flat(x), _flat(y), g, g[23], spec.batch * g[24], g[26],
                      spec.groups, dtype=spec.np_dtype)
    return y


def grad_input(spec, dy, w):
    g = geometry(spec)
    dx = empty(spec.x_shape, spec.np_dtype)
    gemm.launch_tiled(_BWD_DATA, _flat(w), _flat(dy), _flat(dx), g, g[22], spec.batch * g[27],
                      g[23] * g[25], spec.groups, dtype=spec.np_dtype)
    return dx


def grad_weights(spec, x, dy):
    g = geometry(spec)
    dwt = empty(spec.w_shape, spec.np_dtype)
    S, Kc = _split(spec)
    nw = dwt.size
    out = _flat(dwt) if S == 1 else empty(S * nw, spec.np_dtype)
    gemm.launch_tiled(_BWD_FILTER, _flat(dy), _flat(x), out, g, g[23], g[26], spec.batch * g[24],
                      spec.groups, S, Kc, dtype=spec.np_dtype, b_nfast=False)
    if S > 1:
        launch.sum_splits(out.reshape(S, nw), dwt)
    return dwt
