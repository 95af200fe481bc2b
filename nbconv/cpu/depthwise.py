"""Depthwise convolution on the CPU: one input channel per group (``C/G == 1``), any channel multiplier.

Two implementations, chosen per problem by :func:`_flat_kernels`:

* large planes with unit strides: the kernels of :mod:`nbconv.cpu.grouped` (taps as flat offsets
  into the unpadded input planes, up to 9 fused per vector pass, edge columns redone apart), which
  with one input channel per group are depthwise kernels;
* small planes, and strided grad-input / grad-weights: the zero-padded plane per task described
  below, whose per-plane setup is lower.

Measured (2 threads, float32, ms, medians; MobileNetV2's layers at batch 8, load average ~1 for
the first, ~2-3 for the others), padded plane / grouped kernels: 56x56 stride 1 (the suite's
mbv2_dw): forward 1.87 / 1.13, grad-input 1.87 / 1.13, grad-weights 1.85 / 1.34; 28x28: 0.18 /
0.20, 0.21 / 0.22, 0.25 / 0.22; 7x7: 0.26 / 0.31, 0.27 / 0.35, 0.24 / 0.39; stride 2 on 56x56:
grad-input 0.38 / 0.41, grad-weights 0.62 / 0.68.

The padded-plane kernels
------------------------
Same canonical layout and cross-correlation contract as :mod:`nbconv.cpu.direct`; here output
channel ``o`` reads only input channel ``o // (O // C)``, so a task owns one (batch, channel) plane.

Why it beats the direct kernels here: a depthwise tap is one multiply-add per output element, so
direct.py's loop (one read-modify-write pass over an output row per tap, its column range clipped
per tap) is bound by loads, stores and loop overhead rather than arithmetic. Instead:

* each task copies its source plane once into a zeroed, thread-local buffer that already holds the
  padding (and, for the gradient w.r.t. the input, the zeros between strided output samples), so
  every tap of every output column is in bounds and no inner loop carries padding logic;
* ``CHUNK`` taps are fused into each vectorised pass, the first pass storing and the others
  accumulating: for a 3x3 kernel three passes instead of nine plus a zeroing pass. The tap list is
  padded to a multiple of ``CHUNK`` with zero-weight taps that read a zero strip at the end of the
  buffer (0 * 0, so a NaN or Inf elsewhere never leaks into them);
* with unit strides a pass covers a whole output plane at the buffer's row pitch (see
  :func:`_gather_plane`), so the vector loop is long instead of one short row with a remainder.

The gradient w.r.t. the input is the same gather on the buffer of ``output_grad`` with the kernel
reversed (a transposed convolution). The gradient w.r.t. the weights runs ``CHUNK`` dot products
per pass over a row of ``output_grad``, sharing its loads.

Parallel decomposition: forward and grad-input over (n, input channel); grad-weights over input
channels, each task summing over the batch. No two tasks write the same element.
"""
from math import prod

import numba
import numpy as np
from numba import njit, prange

from ..spec import GRAD_INPUT
from . import grouped

# direct.py's flags: 'reassoc' is what lets the dot products of _correlate_row vectorise
from .direct import _FASTMATH, _col_range

#: Taps fused per pass over an output row: a 3-wide kernel row, no padding for 3x3 and 3x3x3.
CHUNK = 3


@njit(inline="always")
def _round_up(n, m):
    return -(-n // m) * m


@njit(inline="always")
def _strip(n_taps, pass_len, kw_reach):
    """Length of the zero strip after the buffer: a whole pass for the padding taps when there are
    any, else the last plane pass's overrun past the buffer (its discarded columns)."""
    return pass_len if n_taps % CHUNK else kw_reach


@njit(inline="always")
def _fill(buf, src, shift, step):
    """buf[i * step + shift] = src[i] (per axis) wherever that lands inside ``buf``."""
    lo0, hi0 = _col_range(shift[0], step[0], buf.shape[0], src.shape[0])
    lo1, hi1 = _col_range(shift[1], step[1], buf.shape[1], src.shape[1])
    lo2, hi2 = _col_range(shift[2], step[2], buf.shape[2], src.shape[2])
    for a in range(lo0, hi0):
        for b in range(lo1, hi1):
            # views starting at the first element keep the indices non-negative, so the copy
            # loop has no wraparound selects and vectorises (indexing buf directly: ~5x slower)
            dst = buf[a * step[0] + shift[0], b * step[1] + shift[1], lo2 * step[2] + shift[2]:]
            srow = src[a, b, lo2:hi2]
            for c in range(srow.shape[0]):
                dst[c * step[2]] = srow[c]


@njit(inline="always")
def _tap_offsets(offs, start, plane, kernel, dil, bshape):
    """Flat offsets of the taps (kd, kh, kw), kw fastest, in buffer ``plane``, from ``offs[start]``."""
    t = start
    for kd in range(kernel[0]):
        for kh in range(kernel[1]):
            for kw in range(kernel[2]):
                offs[t] = plane + (kd * dil[0] * bshape[1] + kh * dil[1]) * bshape[2] + kw * dil[2]
                t += 1


@njit(inline="always")
def _gather_row(out, buf, pos, ws, step):
    """out[m] = sum_t ws[t] * buf[pos[t] + m * step], CHUNK taps per pass.

    Inlined, so a literal ``step`` of 1 gives the vectoriser unit-stride loads.
    """
    for t in range(0, pos.shape[0], CHUNK):
        s0, s1, s2 = buf[pos[t]:], buf[pos[t + 1]:], buf[pos[t + 2]:]
        w0, w1, w2 = ws[t], ws[t + 1], ws[t + 2]
        if t == 0:
            for m in range(out.shape[0]):
                out[m] = w0 * s0[m * step] + w1 * s1[m * step] + w2 * s2[m * step]
        else:
            for m in range(out.shape[0]):
                out[m] += w0 * s0[m * step] + w1 * s1[m * step] + w2 * s2[m * step]


@njit(inline="always")
def _gather_plane(out, scratch, flat, offs, pos, ws, base, row_step, pitch, step):
    """out[r, m] = sum_t ws[t] * flat[base + offs[t] + r * row_step * pitch + m * step].

    With unit strides the whole plane is one pass at the buffer's row pitch (into ``scratch``,
    whose rows are then copied out; the pitch - len(row) extra columns are discarded), so the
    vector loop runs over thousands of elements instead of one short row: 1.5x faster at 56x56.
    ``pos[:len(offs)]`` is overwritten; its tail holds the padding taps.
    """
    if row_step == 1 and step == 1:
        for t in range(offs.shape[0]):
            pos[t] = base + offs[t]
        _gather_row(scratch, flat, pos, ws, 1)
        for r in range(out.shape[0]):
            src = scratch[r * pitch:]
            dst = out[r]
            for m in range(dst.shape[0]):
                dst[m] = src[m]
    else:
        for r in range(out.shape[0]):
            for t in range(offs.shape[0]):
                pos[t] = base + r * row_step * pitch + offs[t]
            if step == 1:
                _gather_row(out[r], flat, pos, ws, 1)
            else:
                _gather_row(out[r], flat, pos, ws, step)


@njit(inline="always")
def _correlate_row(acc, d, buf, pos, step):
    """acc[t] += sum_m d[m] * buf[pos[t] + m * step], CHUNK dot products per pass over ``d``."""
    for t in range(0, pos.shape[0], CHUNK):
        s0, s1, s2 = buf[pos[t]:], buf[pos[t + 1]:], buf[pos[t + 2]:]
        a0, a1, a2 = acc[t], acc[t + 1], acc[t + 2]
        for m in range(d.shape[0]):
            v = d[m]
            a0 += v * s0[m * step]
            a1 += v * s1[m * step]
            a2 += v * s2[m * step]
        acc[t], acc[t + 1], acc[t + 2] = a0, a1, a2


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _fwd_depthwise_kernel(x, w, y, stride, dil, shift, bshape):
    N, C = x.shape[0], x.shape[1]
    O = w.shape[0]
    kernel = (w.shape[2], w.shape[3], w.shape[4])
    OD, OH = y.shape[2], y.shape[3]
    Og = O // C
    sd, sh, sw = stride
    nt = kernel[0] * kernel[1] * kernel[2]
    size = bshape[0] * bshape[1] * bshape[2]
    for task in prange(N * C):
        n = task // C
        c = task % C
        scratch = np.empty(OH * bshape[2], x.dtype)
        flat = np.zeros(size + _strip(nt, scratch.shape[0], (kernel[2] - 1) * dil[2]), x.dtype)
        _fill(flat[:size].reshape(bshape), x[n, c], shift, (1, 1, 1))
        offs = np.empty(nt, np.int64)
        _tap_offsets(offs, 0, 0, kernel, dil, bshape)
        pos = np.full(_round_up(nt, CHUNK), size, np.int64)
        ws = np.zeros(pos.shape[0], x.dtype)
        for o in range(c * Og, (c + 1) * Og):
            ws[:nt] = w[o, 0].reshape(nt)
            for od in range(OD):
                _gather_plane(y[n, o, od], scratch, flat, offs, pos, ws,
                              od * sd * bshape[1] * bshape[2], sh, bshape[2], sw)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _bwd_data_depthwise_kernel(dy, w, dx, stride, dil, shift, bshape):
    N, O = dy.shape[0], dy.shape[1]
    C, D, H = dx.shape[1], dx.shape[2], dx.shape[3]
    kernel = (w.shape[2], w.shape[3], w.shape[4])
    Og = O // C
    per = kernel[0] * kernel[1] * kernel[2]
    nt = Og * per
    size = bshape[0] * bshape[1] * bshape[2]
    unit_stride = stride[0] == 1 and stride[1] == 1 and stride[2] == 1
    for task in prange(N * C):
        n = task // C
        c = task % C
        # one zero-inserted, padded volume per output channel of the group, then the zero strip;
        # the taps of all of them are summed into each plane of dx
        scratch = np.empty(H * bshape[2], dy.dtype)
        flat = np.zeros(Og * size + _strip(nt, scratch.shape[0], (kernel[2] - 1) * dil[2]), dy.dtype)
        offs = np.empty(nt, np.int64)
        pos = np.full(_round_up(nt, CHUNK), Og * size, np.int64)
        ws = np.zeros(pos.shape[0], dy.dtype)
        for j in range(Og):
            plane = flat[j * size:(j + 1) * size].reshape(bshape)
            if unit_stride:  # a literal step lets the copy loop vectorise
                _fill(plane, dy[n, c * Og + j], shift, (1, 1, 1))
            else:
                _fill(plane, dy[n, c * Og + j], shift, stride)
            _tap_offsets(offs, j * per, j * size, kernel, dil, bshape)
            # the transposed convolution correlates with the kernel reversed on every axis, which
            # for a C-contiguous kernel is its flat order reversed
            wf = w[c * Og + j, 0].reshape(per)
            for t in range(per):
                ws[j * per + t] = wf[per - 1 - t]
        for i0 in range(D):
            _gather_plane(dx[n, c, i0], scratch, flat, offs, pos, ws,
                          i0 * bshape[1] * bshape[2], 1, bshape[2], 1)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _bwd_filter_depthwise_kernel(x, dy, dwt, stride, dil, shift, bshape):
    N, C = x.shape[0], x.shape[1]
    O = dwt.shape[0]
    kernel = (dwt.shape[2], dwt.shape[3], dwt.shape[4])
    OD, OH = dy.shape[2], dy.shape[3]
    Og = O // C
    sd, sh, sw = stride
    nt = kernel[0] * kernel[1] * kernel[2]
    for c in prange(C):
        buf = np.zeros(bshape, x.dtype)
        flat = buf.reshape(buf.size)
        offs = np.empty(nt, np.int64)
        _tap_offsets(offs, 0, 0, kernel, dil, bshape)
        # padding taps (position 0, always in bounds) accumulate into slots that are dropped
        pos = np.zeros(_round_up(nt, CHUNK), np.int64)
        acc = np.zeros((Og, pos.shape[0]), x.dtype)
        for n in range(N):
            _fill(buf, x[n, c], shift, (1, 1, 1))
            for j in range(Og):
                for od in range(OD):
                    for oh in range(OH):
                        base = (od * sd * bshape[1] + oh * sh) * bshape[2]
                        for t in range(nt):
                            pos[t] = base + offs[t]
                        if sw == 1:
                            _correlate_row(acc[j], dy[n, c * Og + j, od, oh], flat, pos, 1)
                        else:
                            _correlate_row(acc[j], dy[n, c * Og + j, od, oh], flat, pos, sw)
        for j in range(Og):
            dwt[c * Og + j, 0].reshape(nt)[:] = acc[j, :nt]


# --------------------------------------------------------------------------------------------
# Thin wrappers: the spec has been validated; buffer geometry, allocate and launch.
# --------------------------------------------------------------------------------------------


def supports(spec):
    return not spec.unshared and spec.group_in == 1


#: Output planes (grad-input: input planes) of at least this many elements, with unit strides, go
#: to the grouped kernels: at 28x28 the two measured alike, below it the padded plane won.
FLAT_MIN_PLANE = 1024


def _flat_kernels(spec):
    size = spec.in_size if spec.direction == GRAD_INPUT else spec.out_size
    return spec.stride == (1, 1, 1) and size[1] * size[2] >= FLAT_MIN_PLANE


def workspace(spec):
    """Scratch bytes: every thread holds one task's buffers (volume, zero strip, row scratch)."""
    if _flat_kernels(spec):
        return grouped.workspace(spec)
    if spec.direction == GRAD_INPUT:
        b = _buffer_shape(spec.in_size, (1, 1, 1), spec.kernel, spec.dilation)
        per_task = spec.group_out * prod(b) + 2 * spec.in_size[1] * b[2]
    else:
        b = _buffer_shape(spec.out_size, spec.stride, spec.kernel, spec.dilation)
        per_task = prod(b) + 2 * spec.out_size[1] * b[2]
    return numba.get_num_threads() * per_task * spec.np_dtype.itemsize


def _buffer_shape(out_size, step, kernel, dilation):
    """Per axis, the extent that holds every tap of every output: (o - 1) * s + (k - 1) * d + 1."""
    return tuple((o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_size, step, kernel, dilation))


def forward(spec, x, w):
    if _flat_kernels(spec):
        return grouped.forward(spec, x, w)
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    bshape = _buffer_shape(spec.out_size, spec.stride, spec.kernel, spec.dilation)
    _fwd_depthwise_kernel(x, w, y, spec.stride, spec.dilation, spec.pad_lo, bshape)
    return y


def grad_input(spec, dy, w):
    if _flat_kernels(spec):
        return grouped.grad_input(spec, dy, w)
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    # dx[i] = sum_k w[K-1-k] * b[i + k*d], where the buffer b holds dy[m] at m*s + (K-1)*d - pad_lo
    shift = tuple((k - 1) * d - p for k, d, p in zip(spec.kernel, spec.dilation, spec.pad_lo))
    bshape = _buffer_shape(spec.in_size, (1, 1, 1), spec.kernel, spec.dilation)
    _bwd_data_depthwise_kernel(dy, w, dx, spec.stride, spec.dilation, shift, bshape)
    return dx


def grad_weights(spec, x, dy):
    if _flat_kernels(spec):
        return grouped.grad_weights(spec, x, dy)
    dwt = np.empty(spec.w_shape, dtype=spec.np_dtype)
    bshape = _buffer_shape(spec.out_size, spec.stride, spec.kernel, spec.dilation)
    _bwd_filter_depthwise_kernel(x, dy, dwt, spec.stride, spec.dilation, spec.pad_lo, bshape)
    return dwt
