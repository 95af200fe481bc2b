"""im2col + GEMM on the GPU (Caffe's CorrMM): forward, grad-input and grad-weights.

The CUDA twin of :mod:`nbconv.cpu.im2col`, with the same column matrix: one row per
(input channel, kD, kH, kW) tap and one column per (image, output position) of a chunk::

    col[(c, kd, kh, kw), b * L + q] = x[n0 + b, c, od*sd - pd + kd*dd, oh*sh - ph + kh*dh, ...]

for the L output positions p0 + q (0 in the padding). Rows of group g are the block
[g * Cg*K, (g+1) * Cg*K), so the GEMMs of all groups and images of a chunk are one batched launch
of the tiled GEMM of :mod:`nbconv.cuda.gemm`:

    forward       y[n, g] (Og, L)   = W_g (Og, CgK) @ col_g[:, n] (CgK, L)
    grad_input    dcol_g[:, n]      = W_g^T (CgK, Og) @ dy[n, g] (Og, L),  then col2im into dx
    grad_weights  dW_g (Og, CgK)   += dy_g (Og, nb*L) @ col_g^T (nb*L, CgK)   (split-K, partials)

col2im gathers per input element (each thread owns one element of dx: no atomics). A chunk is
several whole images when their columns fit the workspace limit
(:attr:`nbconv.cuda.launch.LaunchConfig.workspace_limit`), else part of one image's positions.
"""
from __future__ import annotations

from numba import cuda

from . import gemm, launch
from .gemm import Operand
from .index import fed, unravel5
from .launch import empty, grid1d, zero, zeros


@cuda.jit
def _im2col_kernel(x, col, zero, n0, p0, L, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    """Fill ``col`` (C*K, nb*L) for images n0.., output positions p0..p0+L."""
    D, H, W = x.shape[2], x.shape[3], x.shape[4]
    cols = col.shape[1]
    for e in range(cuda.grid(1), col.size, cuda.gridsize(1)):
        r = e // cols
        j = e - r * cols
        b = j // L
        p = p0 + j - b * L
        ow = p % OW
        p //= OW
        oh = p % OH
        od = p // OH
        kw = r % KW
        r2 = r // KW
        kh = r2 % KH
        r2 //= KH
        kd = r2 % KD
        c = r2 // KD
        idd = od * sd - pd + kd * dd
        ih = oh * sh - ph + kh * dh
        iw = ow * sw - pw + kw * dw
        v = zero
        if idd >= 0 and idd < D and ih >= 0 and ih < H and iw >= 0 and iw < W:
            v = x[n0 + b, c, idd, ih, iw]
        col[r, j] = v


@cuda.jit
def _col2im_kernel(dcol, dx, zero, n0, nb, p0, L, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw,
                   pd, ph, pw):
    """dx[n0 + b] += the columns ``dcol`` (C*K, nb*L) summed back per input element."""
    C, D, H, W = dx.shape[1], dx.shape[2], dx.shape[3], dx.shape[4]
    for e in range(cuda.grid(1), nb * C * D * H * W, cuda.gridsize(1)):
        b, c, idd, ih, iw = unravel5(e, C, D, H, W)
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
                        acc += dcol[((c * KD + kd) * KH + kh) * KW + kw, b * L + q]
        dx[n0 + b, c, idd, ih, iw] += acc


# --------------------------------------------------------------------------------------------
# Chunking and workspace
# --------------------------------------------------------------------------------------------


def _taps(spec):
    return spec.kernel[0] * spec.kernel[1] * spec.kernel[2]


def _positions(spec):
    return spec.out_size[0] * spec.out_size[1] * spec.out_size[2]


def _plan(spec):
    """(images per chunk, positions per chunk L, column buffer elements)."""
    item = spec.np_dtype.itemsize
    P, ck = _positions(spec), spec.in_channels * _taps(spec)
    limit = launch.config().workspace_limit
    if ck * P * item <= limit:
        nb = max(1, min(spec.batch, limit // (ck * P * item)))
        return nb, P, ck * nb * P
    L = max(1, min(P, limit // (ck * item)))
    return 1, L, ck * L


def _chunks(spec, nb, L):
    P = _positions(spec)
    for n0 in range(0, spec.batch, nb):
        for p0 in range(0, P, L):
            yield n0, min(nb, spec.batch - n0), p0, min(L, P - p0)


def _weights_split(spec, K):
    return gemm.split_k(spec.group_out, spec.group_in * _taps(spec), K, spec.groups, spec.np_dtype)


def supports(spec):
    return not spec.unshared


def workspace(spec):
    nb, L, cols = _plan(spec)
    extra = 0
    if spec.direction == "grad_weights":
        S, _ = _weights_split(spec, nb * L)
        if S > 1:
            extra = S * spec.out_channels * spec.group_in * _taps(spec)
    return (cols + extra) * spec.np_dtype.itemsize


def _geometry(spec):
    return spec.kernel + spec.out_size + spec.stride + spec.dilation + spec.pad_lo


def _im2col(spec, x, col, n0, m, p0, l):
    blocks, threads = grid1d(col.size)
    _im2col_kernel[blocks, threads](x, col, zero(spec.np_dtype), n0, p0, l, *_geometry(spec))


# --------------------------------------------------------------------------------------------
# Thin wrappers: allocate, then im2col / GEMM / col2im per chunk.
# --------------------------------------------------------------------------------------------


def forward(spec, x, w):
    G, O, Og, P = spec.groups, spec.out_channels, spec.group_out, _positions(spec)
    ck = spec.in_channels * _taps(spec)
    cgk = ck // G
    nb, L, size = _plan(spec)
    y = empty(spec.y_shape, spec.np_dtype)
    yf, wf = y.reshape(y.size), w.reshape(w.size)
    buf = empty(size, spec.np_dtype)
    for n0, m, p0, l in _chunks(spec, nb, L):
        col = buf[:ck * m * l]
        _im2col(spec, x, col.reshape(ck, m * l), n0, m, p0, l)
        gemm.strided(
            wf, col, yf, Og, l, cgk, m, G,
            Operand(z2=Og * cgk, row=cgk, col=1),
            Operand(z1=l, z2=cgk * m * l, row=m * l, col=1),
            Operand(off=n0 * O * P + p0, z1=O * P, z2=Og * P, row=P, col=1),
            dtype=spec.np_dtype,
        )
    return y


def grad_input(spec, dy, w):
    G, O, Og, P = spec.groups, spec.out_channels, spec.group_out, _positions(spec)
    ck = spec.in_channels * _taps(spec)
    cgk = ck // G
    nb, L, size = _plan(spec)
    dx = zeros(spec.x_shape, spec.np_dtype)  # col2im accumulates
    dyf, wf = dy.reshape(dy.size), w.reshape(w.size)
    buf = empty(size, spec.np_dtype)
    for n0, m, p0, l in _chunks(spec, nb, L):
        dcol = buf[:ck * m * l]
        gemm.strided(
            wf, dyf, dcol, cgk, l, Og, m, G,
            Operand(z2=Og * cgk, row=1, col=cgk),
            Operand(off=n0 * O * P + p0, z1=O * P, z2=Og * P, row=P, col=1),
            Operand(z1=l, z2=cgk * m * l, row=m * l, col=1),
            dtype=spec.np_dtype,
        )
        n = m * spec.in_channels * spec.in_size[0] * spec.in_size[1] * spec.in_size[2]
        blocks, threads = grid1d(n)
        _col2im_kernel[blocks, threads](dcol.reshape(ck, m * l), dx, zero(spec.np_dtype), n0, m, p0,
                                        l, *_geometry(spec))
    return dx


def grad_weights(spec, x, dy):
    G, O, Og, P = spec.groups, spec.out_channels, spec.group_out, _positions(spec)
    ck = spec.in_channels * _taps(spec)
    cgk = ck // G
    nb, L, size = _plan(spec)
    dwt = empty(spec.w_shape, spec.np_dtype)
    nw = dwt.size
    dwf, dyf = dwt.reshape(nw), dy.reshape(dy.size)
    S0, _ = _weights_split(spec, nb * L)
    part = empty(S0 * nw, spec.np_dtype) if S0 > 1 else None
    buf = empty(size, spec.np_dtype)
    for i, (n0, m, p0, l) in enumerate(_chunks(spec, nb, L)):
        col = buf[:ck * m * l]
        _im2col(spec, x, col.reshape(ck, m * l), n0, m, p0, l)
        S, Kc = _weights_split(spec, m * l)
        gemm.strided(
            dyf, col, dwf if S == 1 else part, Og, cgk, m * l, 1, G,
            Operand(off=n0 * O * P + p0, z2=Og * P, row=P, col=O * P, k2=1, kl=l),
            Operand(z2=cgk * m * l, row=1, col=m * l),
            Operand(z2=Og * cgk, row=cgk, col=1),
            dtype=spec.np_dtype, accumulate=S == 1 and i > 0, split=(S, Kc), split_stride=nw,
        )
        if S > 1:
            launch.sum_splits(part[:S * nw].reshape(S, nw), dwt, accumulate=i > 0)
    return dwt
