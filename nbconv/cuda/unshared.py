"""Unshared (locally connected) convolution on the GPU as a batch of small GEMMs, one per output
position and group.

The CUDA twin of :mod:`nbconv.cpu.unshared`. At output position p the layer is a dense map
``Y_p (N x Og) = X_p (N x CgK) @ W_p^T (CgK x Og)`` per group, with ``X_p`` the input patches
under p (zeros in the padding) and ``W_p = w[g*Og:(g+1)*Og, p]``, a contiguous (Og, CgK) block of
the canonical (O, oD, oH, oW, C/G, kD, kH, kW) weights. All of them are one launch of the tiled
GEMM of :mod:`nbconv.cuda.gemm` over z = (position, group), gathering the patches while loading
the tiles (no patch buffer):

    forward       Y_p  (N, Og)    = X_p (N, CgK) @ W_p^T (CgK, Og)
    grad_weights  dW_p (Og, CgK)  = dY_p^T (Og, N) @ X_p (N, CgK)
    grad_input    dX_p (N, CgK)   = dY_p (N, Og) @ W_p (Og, CgK), into a patch buffer (chunked
                                    over positions to the workspace limit), then summed back into
                                    dx per input element (patches of neighbouring positions overlap)

Every result element is written by one thread: deterministic, no atomics.
"""
from __future__ import annotations

from numba import cuda

from . import gemm, launch
from .implicit_gemm import geometry, x_tap
from .index import fed, unravel5
from .launch import empty, grid1d, zero, zeros

# geo (see nbconv.cuda.implicit_gemm.geometry): 0 N 1 C 5 O 21 G 22 Cg 23 Og 24 P 25 KK 26 CgKK 28 p0
# z = q * G + group, output position p = p0 + q


@cuda.jit(device=True)
def _fwd_a(g, z, m, k):
    q = z // g[21]
    return x_tap(g, m, (z - q * g[21]) * g[22], g[28] + q, k)


@cuda.jit(device=True)
def _fwd_b(g, z, k, n):
    q = z // g[21]
    return (((z - q * g[21]) * g[23] + n) * g[24] + g[28] + q) * g[26] + k


@cuda.jit(device=True)
def _fwd_c(g, z, s, m, n):
    q = z // g[21]
    return (m * g[5] + (z - q * g[21]) * g[23] + n) * g[24] + g[28] + q


@cuda.jit(device=True)
def _bwd_data_a(g, z, m, k):
    q = z // g[21]
    return (m * g[5] + (z - q * g[21]) * g[23] + k) * g[24] + g[28] + q


@cuda.jit(device=True)
def _bwd_data_b(g, z, k, n):
    q = z // g[21]
    return (((z - q * g[21]) * g[23] + k) * g[24] + g[28] + q) * g[26] + n


@cuda.jit(device=True)
def _bwd_data_c(g, z, s, m, n):
    # the patch buffer (L, N, C*K)
    q = z // g[21]
    return (q * g[0] + m) * g[1] * g[25] + (z - q * g[21]) * g[26] + n


@cuda.jit(device=True)
def _bwd_filter_a(g, z, m, k):
    q = z // g[21]
    return (k * g[5] + (z - q * g[21]) * g[23] + m) * g[24] + g[28] + q


@cuda.jit(device=True)
def _bwd_filter_b(g, z, k, n):
    q = z // g[21]
    return x_tap(g, k, (z - q * g[21]) * g[22], g[28] + q, n)


@cuda.jit(device=True)
def _bwd_filter_c(g, z, s, m, n):
    q = z // g[21]
    return (((z - q * g[21]) * g[23] + m) * g[24] + g[28] + q) * g[26] + n


_FWD = (_fwd_a, _fwd_b, _fwd_c)
_BWD_DATA = (_bwd_data_a, _bwd_data_b, _bwd_data_c)
_BWD_FILTER = (_bwd_filter_a, _bwd_filter_b, _bwd_filter_c)


@cuda.jit
def _col2im_unshared_kernel(dpatch, dx, zero, p0, L, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw,
                            pd, ph, pw):
    """dx += the patch gradients of positions p0..p0+L (dpatch (L, N, C*K), flat), per element."""
    N, C, D, H, W = dx.shape
    KK = KD * KH * KW
    for e in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, idd, ih, iw = unravel5(e, C, D, H, W)
        acc = zero
        for kd in range(KD):
            od = fed(idd, kd, pd, dd, sd, OD)
            if od < 0:
                continue
            for kh in range(KH):
                oh = fed(ih, kh, ph, dh, sh, OH)
                if oh < 0:
                    continue
                for kw in range(KW):
                    ow = fed(iw, kw, pw, dw, sw, OW)
                    if ow < 0:
                        continue
                    q = (od * OH + oh) * OW + ow - p0
                    if q >= 0 and q < L:
                        acc += dpatch[((q * N + n) * C + c) * KK + (kd * KH + kh) * KW + kw]
        dx[n, c, idd, ih, iw] += acc


def _flat(a):
    return a.reshape(a.size)


def supports(spec):
    return spec.unshared


def _positions(spec):
    return spec.out_size[0] * spec.out_size[1] * spec.out_size[2]


def _chunk(spec):
    """Positions per grad-input chunk: their (N, C*K) patch gradients fit the workspace limit."""
    per = spec.batch * spec.in_channels * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    per *= spec.np_dtype.itemsize
    return max(1, min(_positions(spec), launch.config().workspace_limit // max(1, per)))


def workspace(spec):
    if spec.direction != "grad_input":
        return 0
    k = spec.in_channels * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    return _chunk(spec) * spec.batch * k * spec.np_dtype.itemsize


def forward(spec, x, w):
    g = geometry(spec)
    y = empty(spec.y_shape, spec.np_dtype)
    gemm.launch_tiled(_FWD, _flat(x), _flat(w), _flat(y), g, spec.batch, g[23], g[26],
                      g[24] * spec.groups, dtype=spec.np_dtype, b_nfast=False)
    return y


def grad_input(spec, dy, w):
    dx = zeros(spec.x_shape, spec.np_dtype)
    P, L = _positions(spec), _chunk(spec)
    k = spec.in_channels * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    buf = empty(L * spec.batch * k, spec.np_dtype)
    blocks, threads = grid1d(dx.size)
    for p0 in range(0, P, L):
        l = min(L, P - p0)
        g = geometry(spec, p0)
        gemm.launch_tiled(_BWD_DATA, _flat(dy), _flat(w), buf, g, spec.batch, g[26], g[23],
                          l * spec.groups, dtype=spec.np_dtype)
        _col2im_unshared_kernel[blocks, threads](
            buf, dx, zero(spec.np_dtype), p0, l, *spec.kernel, *spec.out_size, *spec.stride,
            *spec.dilation, *spec.pad_lo)
    return dx


def grad_weights(spec, x, dy):
    g = geometry(spec)
    dwt = empty(spec.w_shape, spec.np_dtype)
    gemm.launch_tiled(_BWD_FILTER, _flat(dy), _flat(x), _flat(dwt), g, g[23], g[26], spec.batch,
                      g[24] * spec.groups, dtype=spec.np_dtype)
    return dwt
