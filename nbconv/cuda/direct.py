"""Direct convolution on the GPU: forward, grad-input and grad-weights, shared and unshared.

The CUDA twin of :mod:`nbconv.cpu.direct`: the same canonical layout and cross-correlation
contract (x (N, C, D, H, W); w (O, C/G, kD, kH, kW) or unshared (O, oD, oH, oW, C/G, kD, kH, kW);
y (N, O, oD, oH, oW); weights already flipped by the caller), every problem, every direction.

* forward: one thread per output element (grid-stride), summing its taps with the padding
  clipped per tap; consecutive threads take consecutive output columns, so reads of x and writes
  of y are coalesced.
* grad-input: one thread per input element gathering, for every tap, the output it fed
  (``(i + pad - k * dil) / stride`` when that divides), so no two threads write one element.
* grad-weights (shared): one block per weight element and slice of the (batch x output
  positions) sum; each thread adds a strided part of the slice, the block reduces in shared memory
  (a fixed tree), and when there is more than one slice a second kernel adds the slices' partials
  in order: deterministic, no atomics. Unshared weights sum over the batch only: one thread each.
"""
from __future__ import annotations

import functools

from numba import cuda

from . import launch
from .index import fed, unravel5
from .launch import empty, grid1d, nb_type, zero


@cuda.jit
def _fwd_direct_kernel(x, w, y, zero, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups):
    D, H, W = x.shape[2], x.shape[3], x.shape[4]
    O, Cg, KD, KH, KW = w.shape
    OD, OH, OW = y.shape[2], y.shape[3], y.shape[4]
    Og = O // groups
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, o, od, oh, ow = unravel5(t, O, OD, OH, OW)
        c0 = (o // Og) * Cg
        acc = zero
        for c in range(Cg):
            for kd in range(KD):
                idd = od * sd - pd + kd * dd
                if idd < 0 or idd >= D:
                    continue
                for kh in range(KH):
                    ih = oh * sh - ph + kh * dh
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * sw - pw + kw * dw
                        if iw >= 0 and iw < W:
                            acc += x[n, c0 + c, idd, ih, iw] * w[o, c, kd, kh, kw]
        y[n, o, od, oh, ow] = acc


@cuda.jit
def _bwd_data_direct_kernel(dy, w, dx, zero, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups):
    C, D, H, W = dx.shape[1], dx.shape[2], dx.shape[3], dx.shape[4]
    O, Cg, KD, KH, KW = w.shape
    OD, OH, OW = dy.shape[2], dy.shape[3], dy.shape[4]
    Og = O // groups
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, ci, idd, ih, iw = unravel5(t, C, D, H, W)
        g = ci // Cg
        c = ci - g * Cg
        acc = zero
        for o in range(g * Og, (g + 1) * Og):
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
                        if ow >= 0:
                            acc += dy[n, o, od, oh, ow] * w[o, c, kd, kh, kw]
        dx[n, ci, idd, ih, iw] = acc


@functools.cache
def _bwd_filter_kernel(dtype, threads):
    """The block-reduction grad-weights kernel for ``threads`` per block (a power of two)."""
    T = nb_type(dtype)
    ZERO = zero(dtype)

    @cuda.jit
    def _bwd_filter_direct_kernel(x, dy, part, KD, KH, KW, sd, sh, sw, dd, dh, dw, pd, ph, pw,
                                  groups, per):
        """part[s, b] = the sum for weight element b (flat (O, C/G, kD, kH, kW) index) over
        slice s, [s * per, (s + 1) * per), of the flat (n, od, oh, ow) range."""
        D, H, W = x.shape[2], x.shape[3], x.shape[4]
        N, O, OD, OH, OW = dy.shape
        S, nw = part.shape[0], part.shape[1]
        KK = KD * KH * KW
        Cg = nw // (O * KK)
        Og = O // groups
        R = N * OD * OH * OW
        red = cuda.shared.array(threads, T)
        t = cuda.threadIdx.x
        for b in range(cuda.blockIdx.x, nw, cuda.gridDim.x):
            o, c, kd, kh, kw = unravel5(b, Cg, KD, KH, KW)
            ci = (o // Og) * Cg + c
            for s in range(cuda.blockIdx.y, S, cuda.gridDim.y):
                acc = ZERO
                r_end = (s + 1) * per
                if r_end > R:  # noqa: PLR1730  (no min() in CUDA kernels: see gemm.py)
                    r_end = R
                for r in range(s * per + t, r_end, threads):
                    n, _, od, oh, ow = unravel5(r, 1, OD, OH, OW)
                    idd = od * sd - pd + kd * dd
                    ih = oh * sh - ph + kh * dh
                    iw = ow * sw - pw + kw * dw
                    if idd >= 0 and idd < D and ih >= 0 and ih < H and iw >= 0 and iw < W:
                        acc += dy[n, o, od, oh, ow] * x[n, ci, idd, ih, iw]
                red[t] = acc
                cuda.syncthreads()
                step = threads // 2
                while step > 0:
                    if t < step:
                        red[t] += red[t + step]
                    cuda.syncthreads()
                    step //= 2
                if t == 0:
                    part[s, b] = red[0]
                cuda.syncthreads()

    return _bwd_filter_direct_kernel


# --------------------------------------------------------------------------------------------
# Unshared (locally connected): a different filter at every output position.
# --------------------------------------------------------------------------------------------


@cuda.jit
def _fwd_unshared_direct_kernel(x, w, y, zero, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups):
    D, H, W = x.shape[2], x.shape[3], x.shape[4]
    O, OD, OH, OW, Cg, KD, KH, KW = w.shape
    Og = O // groups
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        n, o, od, oh, ow = unravel5(t, O, OD, OH, OW)
        c0 = (o // Og) * Cg
        acc = zero
        for c in range(Cg):
            for kd in range(KD):
                idd = od * sd - pd + kd * dd
                if idd < 0 or idd >= D:
                    continue
                for kh in range(KH):
                    ih = oh * sh - ph + kh * dh
                    if ih < 0 or ih >= H:
                        continue
                    for kw in range(KW):
                        iw = ow * sw - pw + kw * dw
                        if iw >= 0 and iw < W:
                            acc += x[n, c0 + c, idd, ih, iw] * w[o, od, oh, ow, c, kd, kh, kw]
        y[n, o, od, oh, ow] = acc


@cuda.jit
def _bwd_data_unshared_direct_kernel(dy, w, dx, zero, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups):
    C, D, H, W = dx.shape[1], dx.shape[2], dx.shape[3], dx.shape[4]
    O, OD, OH, OW, Cg, KD, KH, KW = w.shape
    Og = O // groups
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, ci, idd, ih, iw = unravel5(t, C, D, H, W)
        g = ci // Cg
        c = ci - g * Cg
        acc = zero
        for o in range(g * Og, (g + 1) * Og):
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
                        if ow >= 0:
                            acc += dy[n, o, od, oh, ow] * w[o, od, oh, ow, c, kd, kh, kw]
        dx[n, ci, idd, ih, iw] = acc


@cuda.jit
def _bwd_filter_unshared_direct_kernel(x, dy, dwt, zero, sd, sh, sw, dd, dh, dw, pd, ph, pw, groups):
    N, _C, D, H, W = x.shape
    O, OD, OH, OW, Cg, KD, KH, KW = dwt.shape
    Og = O // groups
    for t in range(cuda.grid(1), dwt.size, cuda.gridsize(1)):
        r, c, kd, kh, kw = unravel5(t, Cg, KD, KH, KW)
        o, _, od, oh, ow = unravel5(r, 1, OD, OH, OW)
        ci = (o // Og) * Cg + c
        idd = od * sd - pd + kd * dd
        ih = oh * sh - ph + kh * dh
        iw = ow * sw - pw + kw * dw
        acc = zero
        if idd >= 0 and idd < D and ih >= 0 and ih < H and iw >= 0 and iw < W:
            for n in range(N):
                acc += dy[n, o, od, oh, ow] * x[n, ci, idd, ih, iw]
        dwt[o, od, oh, ow, c, kd, kh, kw] = acc


# --------------------------------------------------------------------------------------------
# Thin wrappers: the spec has been validated; allocate and launch.
# --------------------------------------------------------------------------------------------


def _params(spec):
    return (zero(spec.np_dtype),) + spec.stride + spec.dilation + spec.pad_lo + (spec.groups,)


def _elementwise(kernel, n, *args):
    blocks, threads = grid1d(n)
    kernel[blocks, threads](*args)


def forward(spec, x, w):
    y = empty(spec.y_shape, spec.np_dtype)
    kernel = _fwd_unshared_direct_kernel if spec.unshared else _fwd_direct_kernel
    _elementwise(kernel, y.size, x, w, y, *_params(spec))
    return y


def grad_input(spec, dy, w):
    dx = empty(spec.x_shape, spec.np_dtype)
    kernel = _bwd_data_unshared_direct_kernel if spec.unshared else _bwd_data_direct_kernel
    _elementwise(kernel, dx.size, dy, w, dx, *_params(spec))
    return dx


def _reduction_plan(spec):
    """(slices S, elements per slice) of the (batch x output positions) sum per weight."""
    terms = spec.batch * spec.out_size[0] * spec.out_size[1] * spec.out_size[2]
    nw = spec.out_channels * spec.group_in * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    cfg = launch.config()
    return launch.split_count(terms, nw, cfg.min_split_work * cfg.reduce_threads)


def shared_grad_weights(spec, x, dy):
    """The block-reduction grad-weights of a shared problem (also used by depthwise)."""
    dwt = empty(spec.w_shape, spec.np_dtype)
    nw = dwt.size
    S, per = _reduction_plan(spec)
    part = dwt.reshape(1, nw) if S == 1 else empty((S, nw), spec.np_dtype)
    cfg = launch.config()
    threads = cfg.reduce_threads
    kern = _bwd_filter_kernel(spec.np_dtype.name, threads)
    grid = (min(nw, cfg.max_blocks), min(S, cfg.max_grid_yz))
    kern[grid, threads](x, dy, part, *spec.kernel, *spec.stride, *spec.dilation, *spec.pad_lo,
                        spec.groups, per)
    if S > 1:
        launch.sum_splits(part, dwt)
    return dwt


def grad_weights(spec, x, dy):
    if spec.unshared:
        dwt = empty(spec.w_shape, spec.np_dtype)
        _elementwise(_bwd_filter_unshared_direct_kernel, dwt.size, x, dy, dwt, *_params(spec))
        return dwt
    return shared_grad_weights(spec, x, dy)


def workspace(spec):
    """Bytes of the grad-weights slice partials (none for the other directions)."""
    if spec.direction != "grad_weights" or spec.unshared:
        return 0
    S, _ = _reduction_plan(spec)
    nw = spec.out_channels * spec.group_in * spec.kernel[0] * spec.kernel[1] * spec.kernel[2]
    return (S * nw if S > 1 else 0) * spec.np_dtype.itemsize
