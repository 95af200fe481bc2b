"""Depthwise convolution on the GPU: one input channel per group (``C/G == 1``), any multiplier.

The CUDA twin of :mod:`nbconv.cpu.depthwise` (same layout and cross-correlation contract); output
channel ``o`` reads only input channel ``o // (O // C)``.

* forward: one block per (image, output channel, output plane, TH x TW output tile). For each
  kernel plane the block stages the input patch its tile reads,
  ``((TH-1)*sh + (kH-1)*dh + 1) x ((TW-1)*sw + (kW-1)*dw + 1)`` with the padding as zeros, in
  shared memory, then every thread sums its output's kH x kW taps from there: each input element
  is read from global memory once per tile instead of once per tap. Problems whose patch does not
  fit the shared buffer (huge strides or dilations) use the per-output kernel of
  :mod:`nbconv.cuda.direct`.
* grad-input: one thread per input element gathering over the channel's multiplier outputs and
  the taps (no atomics).
* grad-weights: few weights, long sums: the block reduction of :mod:`nbconv.cuda.direct`, the sum
  over (batch x output positions) split into slices until the GPU is full, partials added in order.
"""
from __future__ import annotations

import functools

from numba import cuda

from . import direct, launch
from .index import fed, unravel5
from .launch import ceil_div, empty, grid1d, nb_type, zero


@functools.cache
def _fwd_kernel(dtype, TH, TW, SMEM):
    T = nb_type(dtype)
    ZERO = zero(dtype)
    NT = TH * TW

    @cuda.jit
    def _fwd_depthwise_kernel(x, w, y, sd, sh, sw, dd, dh, dw, pd, ph, pw, PH, PW, tiles_w, ntiles):
        patch = cuda.shared.array(SMEM, T)
        D, H, W = x.shape[2], x.shape[3], x.shape[4]
        C = x.shape[1]
        O, KD, KH, KW = w.shape[0], w.shape[2], w.shape[3], w.shape[4]
        N, OD, OH, OW = y.shape[0], y.shape[2], y.shape[3], y.shape[4]
        Og = O // C
        t = cuda.threadIdx.x
        ty = t // TW
        tx = t - ty * TW
        for blk in range(cuda.blockIdx.x, N * O * OD * ntiles, cuda.gridDim.x):
            tile = blk % ntiles
            r = blk // ntiles
            od = r % OD
            r //= OD
            o = r % O
            n = r // O
            c = o // Og
            oh0 = (tile // tiles_w) * TH
            ow0 = (tile % tiles_w) * TW
            ih0 = oh0 * sh - ph
            iw0 = ow0 * sw - pw
            oh = oh0 + ty
            ow = ow0 + tx
            acc = ZERO
            for kd in range(KD):
                idd = od * sd - pd + kd * dd
                if idd < 0 or idd >= D:  # uniform over the block
                    continue
                for e in range(t, PH * PW, NT):
                    a = e // PW
                    ih = ih0 + a
                    iw = iw0 + e - a * PW
                    v = ZERO
                    if ih >= 0 and ih < H and iw >= 0 and iw < W:
                        v = x[n, c, idd, ih, iw]
                    patch[e] = v
                cuda.syncthreads()
                if oh < OH and ow < OW:
                    base = ty * sh * PW + tx * sw
                    for kh in range(KH):
                        for kw in range(KW):
                            acc += patch[base + kh * dh * PW + kw * dw] * w[o, 0, kd, kh, kw]
                cuda.syncthreads()
            if oh < OH and ow < OW:
                y[n, o, od, oh, ow] = acc

    return _fwd_depthwise_kernel


@cuda.jit
def _bwd_data_depthwise_kernel(dy, w, dx, zero, sd, sh, sw, dd, dh, dw, pd, ph, pw):
    C, D, H, W = dx.shape[1], dx.shape[2], dx.shape[3], dx.shape[4]
    O, KD, KH, KW = w.shape[0], w.shape[2], w.shape[3], w.shape[4]
    OD, OH, OW = dy.shape[2], dy.shape[3], dy.shape[4]
    Og = O // C
    for t in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        n, c, idd, ih, iw = unravel5(t, C, D, H, W)
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
                    for o in range(c * Og, (c + 1) * Og):
                        acc += dy[n, o, od, oh, ow] * w[o, 0, kd, kh, kw]
        dx[n, c, idd, ih, iw] = acc


# --------------------------------------------------------------------------------------------
# Thin wrappers
# --------------------------------------------------------------------------------------------


def supports(spec):
    return not spec.unshared and spec.group_in == 1


def _patch(spec):
    TH, TW = launch.config().dw_tile
    PH = (TH - 1) * spec.stride[1] + (spec.kernel[1] - 1) * spec.dilation[1] + 1
    PW = (TW - 1) * spec.stride[2] + (spec.kernel[2] - 1) * spec.dilation[2] + 1
    return TH, TW, PH, PW


def forward(spec, x, w):
    TH, TW, PH, PW = _patch(spec)
    smem = launch.config().dw_smem
    if PH * PW > smem:
        return direct.forward(spec, x, w)
    y = empty(spec.y_shape, spec.np_dtype)
    N, O, OD, OH, OW = spec.y_shape
    tiles_w = ceil_div(OW, TW)
    ntiles = ceil_div(OH, TH) * tiles_w
    kern = _fwd_kernel(spec.np_dtype.name, TH, TW, smem)
    blocks = min(N * O * OD * ntiles, launch.config().max_blocks)
    kern[blocks, TH * TW](x, w, y, *spec.stride, *spec.dilation, *spec.pad_lo, PH, PW, tiles_w, ntiles)
    return y


def grad_input(spec, dy, w):
    dx = empty(spec.x_shape, spec.np_dtype)
    blocks, threads = grid1d(dx.size)
    _bwd_data_depthwise_kernel[blocks, threads](dy, w, dx, zero(spec.np_dtype), *spec.stride,
                                                *spec.dilation, *spec.pad_lo)
    return dx


def grad_weights(spec, x, dy):
    return direct.shared_grad_weights(spec, x, dy)


def workspace(spec):
    return direct.workspace(spec)
