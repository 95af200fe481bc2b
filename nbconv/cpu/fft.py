"""FFT convolution on the CPU: forward, grad-input and grad-weights as products in frequency space.

Per spatial axis (length I, dilated kernel Kd, pad lo, stride s) the stride-1 correlation
``c[m] = sum_k x[m + k] wd[k]`` is read at ``m = o*s - lo``. Only outputs whose ``m`` lies in
``[-(Kd-1), I-1]`` can be nonzero (the others see padding only); let ``m_a``, ``m_b`` be the first
and last of them. A circular correlation of length F equals the linear one there when
``F >= max(I - m_a, m_b + Kd)``; F is that rounded up to a 2^a 3^b 5^c length (and never below I
or Kd, so the input and the dilated kernel fit unwrapped). Negative ``m`` wrap to ``F + m``, so the
pads are never materialised, and a 'valid' problem needs only F >= I ('full': I + Kd - 1). Axes
whose F is 1 (the singleton axes of 1D/2D problems, among others) are not transformed.

The three directions are one diagram with different conjugations (per frequency f and group g):

    forward       Y[f, g]  (nb, Og) = X[f, g] (nb, Cg) @ conj(W[f, g]) (Cg, Og)
    grad_input    DX[f, g] (nb, Cg) = U[f, g] (nb, Og) @ W[f, g]^T (Og, Cg)
    grad_weights  DW[f, g] (Og, Cg) = sum over the batch of conj(U[f, g])^T (Og, nb) @ X[f, g]

U is dy on the stride-1 grid (zero-upsampled, at ``m mod F``) and W the transform of the dilated
kernel (taps at lags ``k * dilation``). Each product is one stacked complex ``np.matmul`` over
(frequency, group); the result is transformed back and only the needed positions are kept: the
strided outputs, the input box, or the kernel lags.

Layout: the spatial axes lead and (image, channel) trail, ``(FD, FH, FW, nb, C)``. The FFTs run
over strided axes with long contiguous batches of lines, and each per-frequency matrix is a plain
strided view (rows nb, columns one group's channels) that BLAS takes without a copy, so no complex
array is ever transposed. The only reorderings are of real data, in two parallel Numba kernels:
``_pack`` (channel-last, W zero-padded or upsampled) and ``_unpack`` (the kept W positions back
into the channel-first result).

Transforms are separable, one axis at a time, so data known to be zero or not needed is never
transformed: the forward transforms start from the compact operand (the padding of D and H
appears axis by axis) and the inverse transforms drop unneeded positions after each axis. The
kernel's few taps (and the weight gradient's few lags) go through a DFT by GEMM instead of an FFT
when that is cheaper: a K-tap axis costs 8*K flops per output frequency in a GEMM running several
times faster than an FFT's ~5*log2(F) flops per point.

Each per-frequency product is a separate small GEMM; chunks are sized so that OpenBLAS runs every
one on the calling thread (see ``_GEMM_SERIAL``), so the products use one core while the FFTs and
the kernels use all of them.

float32 problems compute in complex64: the FFT's error grows like eps * log2(F) relative to the
norm of the whole signal, far below the tolerance of 1e-5 of the sum of |terms| for any size that
fits in memory. NaN and Inf spread to every output of the image (for the weight gradient, of the
group) they occur in, a superset of the outputs that depend on them.

The batch is processed in chunks of whole images sized to the workspace limit of
:mod:`nbconv.cpu.im2col`; problems whose buffers for a single image exceed it are not supported.
"""
from functools import cache, lru_cache, wraps
from math import log2, prod

import numpy as np
from numba import njit, prange

from .. import threads as _threads
from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import im2col

try:  # an optional dependency: multi-threaded FFTs that can work in place
    import scipy.fft as _sfft
except ImportError:  # pragma: no cover - exercised only without SciPy
    _sfft = None


# --------------------------------------------------------------------------------------------
# Kernels: the reorderings between the channel-first arrays and the channel-last buffers
# --------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _pack(src, n0, d0, h0, w0, wpos, buf):
    """buf[d, h, wpos[j], n, c] = src[n0 + n, c, d0 + d, h0 + h, w0 + j], zero elsewhere; buf is
    (LD, LH, FW, m, C). Each task owns one (d, h) row of the buffer."""
    LD, LH, m, C = buf.shape[0], buf.shape[1], buf.shape[3], buf.shape[4]
    LW = wpos.shape[0]
    for t in prange(LD * LH):
        d = t // LH
        h = t % LH
        row = buf[d, h]
        row[...] = 0.0
        for n in range(m):
            for c in range(C):
                s = src[n0 + n, c, d0 + d, h0 + h]
                for j in range(LW):
                    row[wpos[j], n, c] = s[w0 + j]


@njit(parallel=True, cache=True)
def _unpack(z, wsrc, dst, n0, d0, h0, w0):
    """dst[n0 + n, c, d0 + d, h0 + h, w0 + j] = z[d, h, wsrc[j], n, c]: the transpose of
    :func:`_pack` for the kept positions. Each task owns one (d, h) row of every plane."""
    LD, LH, m, C = z.shape[0], z.shape[1], z.shape[3], z.shape[4]
    LW = wsrc.shape[0]
    for t in prange(LD * LH):
        d = t // LH
        h = t % LH
        row = z[d, h]
        for n in range(m):
            for c in range(C):
                out = dst[n0 + n, c, d0 + d, h0 + h]
                for j in range(LW):
                    out[w0 + j] = row[wsrc[j], n, c]


# --------------------------------------------------------------------------------------------
# One-axis transforms (SciPy when importable, else NumPy)
# --------------------------------------------------------------------------------------------


def _workers():
    return _threads.get_num_threads()


def _rfft(a, n, axis):
    if _sfft is not None:
        return _sfft.rfft(a, n=n, axis=axis, workers=_workers())
    out = np.fft.rfft(a, n=n, axis=axis)
    return out.astype(np.result_type(a.dtype, np.complex64), copy=False)


def _fft(a, n, axis, inverse=False):
    """Complex transform along ``axis`` (zero-padded to ``n``), in place when ``a`` may be."""
    if _sfft is not None:
        f = _sfft.ifft if inverse else _sfft.fft
        return f(a, n=n, axis=axis, overwrite_x=True, workers=_workers())
    out = (np.fft.ifft if inverse else np.fft.fft)(a, n=n, axis=axis)
    return out.astype(a.dtype, copy=False)


def _irfft(a, n, axis):
    if _sfft is not None:
        return _sfft.irfft(a, n=n, axis=axis, overwrite_x=True, workers=_workers())
    out = np.fft.irfft(a, n=n, axis=axis)
    return out.astype(np.float32 if a.dtype == np.complex64 else np.float64, copy=False)


@cache
def fast_len(n):
    """The smallest 2^a 3^b 5^c >= n."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _dft_cheaper(points, n):
    """Whether ``points`` positions of an n-point axis are cheaper by GEMM than by FFT: 8 flops
    per position and frequency at several times the FFT's rate (measured about break-even at
    21 taps on a 72-point axis, 27 on 144, 35 on 1080)."""
    return points <= 3.5 * log2(max(n, 2))


@lru_cache(maxsize=64)
def _dft_matrix(n, positions, nfreq, inverse, dtype):
    """Forward: E[f, j] = exp(-2 pi i f p_j / n), (nfreq, P). Inverse: the (P, nfreq) matrix that
    gives the values at the positions from the first nfreq coefficients; when nfreq < n those are
    a real signal's (Hermitian) half, counted twice except f = 0 and f = n/2, and only the real
    part of the product is meaningful."""
    f = np.arange(nfreq)
    p = np.asarray(positions)
    if not inverse:
        return np.exp(-2j * np.pi * np.outer(f, p) / n).astype(dtype)
    weight = np.full(nfreq, 1.0 if nfreq == n else 2.0)
    if nfreq < n:
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
    return (weight * np.exp(2j * np.pi * np.outer(p, f) / n) / n).astype(dtype)


def _along(a, axis, matrix):
    """``matrix`` (R, L) applied along ``axis`` (length L) of ``a``, as one GEMM.

    Axes before ``axis`` are moved behind it (copies) rather than made a stack of GEMMs: a
    stack of mid-sized products each woke OpenBLAS's pool, 7 of them measured 0.5 ms alone and
    up to 390 ms on the loaded 2-core machine. Only the steps on small arrays have such axes."""
    shape = a.shape
    moved = np.ascontiguousarray(np.moveaxis(a, axis, 0), dtype=matrix.dtype)
    out = matrix @ moved.reshape(shape[axis], -1)
    if prod(shape[:axis]) == 1:
        return out.reshape(shape[:axis] + (matrix.shape[0],) + shape[axis + 1:])
    out = out.reshape((matrix.shape[0],) + shape[:axis] + shape[axis + 1:])
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def _at(axis, index):
    return (slice(None),) * axis + (index,)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


class _Geometry:
    """Per spatial axis: the FFT length, the outputs [oa, ob) that can be nonzero, and where the
    operands sit in the length-F buffers (a slice where possible, so takes are views)."""

    def __init__(self, spec):
        self.F, self.oa, self.ob, self.pos, self.inbox, self.taps = [], [], [], [], [], []
        self.empty = False
        for i, k, d, lo, s, o in zip(spec.in_size, spec.kernel, spec.dilation, spec.pad_lo,
                                     spec.stride, spec.out_size):
            kd = (k - 1) * d + 1
            oa = max(0, -(-(lo - (kd - 1)) // s))  # first o with o*s - lo >= -(kd - 1)
            ob = min(o, (i - 1 + lo) // s + 1)  # one past the last o with o*s - lo <= i - 1
            if oa >= ob:
                self.empty = True  # every output along this axis sees padding only
                oa = ob = 0
            ma, mb = oa * s - lo, (ob - 1) * s - lo
            f = fast_len(max(i - ma, mb + kd, i, kd))
            self.F.append(f)
            self.oa.append(oa)
            self.ob.append(ob)
            if ma >= 0:
                self.pos.append(slice(ma, mb + 1, s))
            else:  # the first outputs wrap to the end of the buffer
                self.pos.append((np.arange(oa, ob) * s - lo) % f)
            self.inbox.append(slice(0, i))
            self.taps.append(slice(0, kd, d))
        self.F = tuple(self.F)
        self.pos, self.inbox, self.taps = tuple(self.pos), tuple(self.inbox), tuple(self.taps)
        # at least one axis is transformed, so the frequency arrays are complex for any problem
        self.axes = tuple(a for a in range(3) if self.F[a] > 1) or (2,)
        self.freq = tuple(f // 2 + 1 if a == self.axes[-1] else f for a, f in enumerate(self.F))
        self.pc = prod(self.freq)
        self.valid = prod(b - a for a, b in zip(self.oa, self.ob))
        self.valid_box = (slice(None), slice(None)) + tuple(
            slice(a, b) for a, b in zip(self.oa, self.ob))
        # the kernel's taps and the weight gradient's lags: by GEMM on the axes where it is cheaper
        self.tap_dft = tuple(a for a in self.axes if _dft_cheaper(spec.kernel[a], self.F[a]))
        # the packed operands (see _packed): W placed by the kernel, D and H by the transforms
        full_w = slice(0, self.F[2])
        self.x_index = (self.inbox[0], self.inbox[1], full_w)
        self.u_index = (self.pos[0], self.pos[1], full_w)
        self.x_wpos = np.arange(spec.in_size[2])
        self.u_wpos = np.array(_positions(self.pos[2], self.F[2]), dtype=np.int64)
        self.x_lo = (0, 0, 0)
        self.u_lo = tuple(self.oa)
        self.x_shape = tuple(spec.in_size[:2])
        self.u_shape = tuple(b - a for a, b in zip(self.oa[:2], self.ob[:2]))


@lru_cache(maxsize=256)
def _geometry(spec):
    return _Geometry(spec)


def _count(index, n):
    return len(range(n)[index]) if isinstance(index, slice) else len(index)


def _positions(index, n):
    return tuple(range(n)[index]) if isinstance(index, slice) else tuple(int(v) for v in index)


# --------------------------------------------------------------------------------------------
# Separable transforms, and the bytes they hold at their peak (for the workspace accounting;
# the two must walk the same steps)
# --------------------------------------------------------------------------------------------


def _is_prefix(index):
    return isinstance(index, slice) and index.start == 0 and index.step in (1, None)


def _to_freq(g, a, index, dft):
    """The transform of a real operand ``a`` (3 spatial axes, then any) whose spatial axes hold
    only the entries at ``index`` (per axis, into the length-F buffer), the rest being zero:
    the complex array (freq..., rest)."""
    ctype = np.result_type(a.dtype, np.complex64)
    for step, ax in enumerate(reversed(g.axes)):
        n, real, idx = g.F[ax], step == 0, index[ax]
        if ax in dft:
            nout = n // 2 + 1 if real else n
            a = _along(a, ax, _dft_matrix(n, _positions(idx, n), nout, False, ctype))
        elif _is_prefix(idx):  # the transform zero-pads
            a = _rfft(a, n, ax) if real else _fft(a, n, ax)
        else:
            buf = np.zeros(a.shape[:ax] + (n,) + a.shape[ax + 1:], dtype=a.dtype)
            buf[_at(ax, idx)] = a
            a = _rfft(buf, None, ax) if real else _fft(buf, None, ax)
            del buf
    return a


def _to_freq_peak(g, index, dft, r, packed):
    """Peak bytes of :func:`_to_freq` per unit of the trailing size; ``r`` is the real itemsize.
    The operand is counted when ``packed`` (a buffer of :func:`_packed`), not when it is a view."""
    c = 2 * r
    shape = [_count(index[ax], g.F[ax]) for ax in range(3)]
    peak = owned = prod(shape) * r if packed else 0
    for step, ax in enumerate(reversed(g.axes)):
        n, real, idx = g.F[ax], step == 0, index[ax]
        count = shape[ax]
        before = prod(shape)
        shape[ax] = n // 2 + 1 if real else n
        after = prod(shape)
        if ax in dft:  # the GEMM reads a contiguous complex copy of the (strided) weights
            batch = prod(shape[:ax])
            new = (before * c if real or batch > 1 else 0) + after * c * (2 if batch > 1 else 1)
        elif real:  # a zero-padded (or scattered) real buffer unless the operand fills the axis
            padded = 0 if _is_prefix(idx) and count == n else before // count * n * r
            new = padded + after * c
        else:  # a zero-padded buffer transformed in place (or the owned array itself)
            new = 0 if _is_prefix(idx) and count == n else after * c
        peak = max(peak, owned + new)
        owned = after * c
    return peak


def _from_freq(g, a, keep, dft):
    """The real array at the positions ``keep`` (per axis) of the inverse transform of the
    complex ``a`` (which is overwritten)."""
    last = g.axes[-1]
    for ax in g.axes:
        n, real, idx = g.F[ax], ax == last, keep[ax]
        if ax in dft:
            a = _along(a, ax, _dft_matrix(n, _positions(idx, n), a.shape[ax], True, a.dtype))
            if real:
                a = a.real
        else:
            a = _irfft(a, n, ax) if real else _fft(a, None, ax, inverse=True)
            a = a[_at(ax, idx)]
    return a


def _from_freq_peak(g, keep, dft, r):
    """Peak bytes of :func:`_from_freq` per unit of the trailing size, its operand included
    (the caller holds it throughout)."""
    c = 2 * r
    shape = list(g.freq)
    caller = prod(shape) * c
    peak, owned, contiguous = caller, 0, True
    last = g.axes[-1]
    for ax in g.axes:
        n, real, idx = g.F[ax], ax == last, keep[ax]
        before = prod(shape)
        shape[ax] = count = _count(idx, n)
        after = prod(shape)
        if ax in dft:  # a strided operand is copied for the GEMM
            batch = prod(shape[:ax])
            new = (0 if contiguous and batch == 1 else before * c) + after * c * (
                2 if batch > 1 else 1)
            peak = max(peak, caller + owned + new)
            owned, contiguous = after * c, True
            continue
        if real:
            full = before // g.freq[ax] * n * r
            peak = max(peak, caller + owned + full)
            owned = full
        if isinstance(idx, slice):  # a view
            contiguous = contiguous and count == n
        else:
            new = after * (r if real else c)
            peak = max(peak, caller + owned + new)
            owned, contiguous = new, True
    return peak


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def _costs(spec):
    """(outside, base, per_image, chunked) bytes: the peak of the phases before and after the
    loop over the batch, the arrays living through the loop, those of each image of a chunk,
    and those added when there is more than one chunk."""
    g = _geometry(spec)
    r = spec.np_dtype.itemsize
    c = 2 * r
    C, O, K = spec.in_channels, spec.out_channels, spec.out_channels * spec.group_in
    P = g.pc
    # without SciPy, NumPy's transforms are never in place: count every step twice
    more = 1 if _sfft is not None else 2
    weights = P * K * c
    in_x = _to_freq_peak(g, g.x_index, (), r, True) * more
    in_u = _to_freq_peak(g, g.u_index, (), r, True) * more
    full_w = (slice(None),)
    if spec.direction in (FORWARD, GRAD_INPUT):
        fwd = spec.direction == FORWARD
        a, b = (C, O) if fwd else (O, C)
        per = max(
            (in_x if fwd else in_u) * a,  # the operand's transform
            P * (a + b) * c,  # both transforms around the product
            _from_freq_peak(g, (g.pos if fwd else g.inbox)[:2] + full_w, (), r) * more * b,
        )
        return _to_freq_peak(g, g.taps, g.tap_dft, r, False) * more * K, weights, per, 0
    # grad-weights: the frequency-space sum lives through the loop; X stays while dy is
    # upsampled and transformed; from the second chunk on each product goes through a temporary
    per = max(in_x * C, P * C * c + in_u * O)
    return _from_freq_peak(g, g.taps, g.tap_dft, r) * more * K, weights, per, weights


def _peak(spec, nb):
    outside, base, per, chunked = _costs(spec)
    return int(max(outside, base + per * nb + (chunked if nb < spec.batch else 0)))


# OpenBLAS runs a GEMM with m*n*k >= 65536 on its thread pool, a wake-up and a barrier per call;
# the product is thousands of such calls (one per frequency and group), which measured 2 ms on
# one thread and 135 ms on two for 200 products of (16 x 64) @ (64 x 64) on the loaded 2-core
# machine. Chunks of at most this many images keep every call below the threshold.
_GEMM_SERIAL = 32768


def _plan(spec):
    """(images per chunk, workspace bytes): as many whole images as the limit and the serial
    GEMM size allow, at least one (a single image over the limit still runs when the algorithm
    is named explicitly)."""
    N = spec.batch
    if N == 0 or _geometry(spec).empty:
        return 0, 0
    nb = min(N, max(1, _GEMM_SERIAL // (spec.group_in * spec.group_out)))
    if _peak(spec, nb) > im2col.get_workspace_limit():
        _, base, per, chunked = _costs(spec)
        nb = int(min(nb, max(1, (im2col.get_workspace_limit() - base - chunked) // per)))
    return nb, _peak(spec, nb)


def workspace(spec):
    return _plan(spec)[1]


def supports(spec):
    return not spec.unshared and workspace(spec) <= im2col.get_workspace_limit()


def _chain_flops(g, sizes, dft, inverse):
    """(FFT flops, DFT-by-GEMM flops) of one transform chain per unit of the trailing size:
    5 n log2 n per complex line of n points (half for the real axis), 8 per tap and output
    point of a DFT step. ``sizes``: per axis, the operand's entries (forward) or the kept ones
    (inverse)."""
    last = g.axes[-1]
    order = g.axes if inverse else tuple(reversed(g.axes))
    shape = list(g.freq) if inverse else list(sizes)
    fft_f = dft_f = 0.0
    for ax in order:
        n, real = g.F[ax], ax == last
        before = prod(shape)
        shape[ax] = sizes[ax] if inverse else (n // 2 + 1 if real else n)
        after = prod(shape)
        if ax in dft:  # expanding (forward) or shrinking (inverse): the larger side times taps
            dft_f += 8.0 * max(before, after) * sizes[ax]
        else:
            lines = (before if inverse else after) / (g.freq[ax] if inverse else shape[ax])
            fft_f += lines * 5.0 * n * log2(max(n, 2)) * (0.5 if real else 1.0)
    return fft_f, dft_f


def cost(spec):
    """(FFT flops, DFT-by-GEMM flops, per-frequency product flops, per-frequency products,
    bytes moved, library calls) of one call, for the ``guess`` estimate."""
    g = _geometry(spec)
    N, C, O, G = spec.batch, spec.in_channels, spec.out_channels, spec.groups
    K = O * spec.group_in
    if g.empty or N == 0:
        return 0.0, 0.0, 0.0, 0, 0.0, 1
    u_sizes = tuple(b - a for a, b in zip(g.oa, g.ob))
    fx, _ = _chain_flops(g, spec.in_size, (), spec.direction == GRAD_INPUT)
    fu, _ = _chain_flops(g, u_sizes, (), spec.direction == FORWARD)
    fw, dw = _chain_flops(g, spec.kernel, g.tap_dft, spec.direction == GRAD_WEIGHTS)
    product = 8.0 * g.pc * N * C * spec.group_out
    chunks = -(-N // _plan(spec)[0])
    r = spec.np_dtype.itemsize
    # packing and unpacking the operands; the kernel's transform is written once and read by
    # every chunk's product (it is the largest array for many channels: P * O * Cg)
    moved = 2.0 * N * (C * prod(spec.in_size) + O * prod(u_sizes)) * r + (
        1 + chunks) * g.pc * K * 2 * r
    # per chunk: two transforms of len(axes) steps, pack, product, unpack...; the kernel's
    calls = chunks * (2 * len(g.axes) + 4) + 2 * len(g.axes)
    return N * C * fx + N * O * fu + K * fw, K * dw, product, chunks * g.pc * G, moved, calls


# --------------------------------------------------------------------------------------------
# The three directions
# --------------------------------------------------------------------------------------------


def _complex(spec):
    return np.complex64 if spec.np_dtype == np.float32 else np.complex128


def _weights_transform(spec, w, g):
    """W (P, G, Cg, Og)."""
    G, Og, Cg = spec.groups, spec.group_out, spec.group_in
    taps = w.reshape((G, Og, Cg) + spec.kernel).transpose(3, 4, 5, 0, 2, 1)
    return _to_freq(g, taps, g.taps, g.tap_dft).reshape(g.pc, G, Cg, Og)


def _packed(g, src, n0, m, which):
    """The channel-last real buffer of images n0..n0+m of x (``which`` 'x') or of dy on the
    stride-1 grid ('u'), placed along W, compact along D and H (see ``g.x_index``/``u_index``)."""
    shape, lo, wpos = (g.x_shape, g.x_lo, g.x_wpos) if which == "x" else (g.u_shape, g.u_lo,
                                                                           g.u_wpos)
    buf = np.empty(shape + (g.F[2], m, src.shape[1]), dtype=src.dtype)
    _pack(src, n0, lo[0], lo[1], lo[2], wpos, buf)
    return buf


def _quiet(direction):
    """NaN and Inf propagate (an Inf makes inf * 0 = NaN inside the transforms and products, as
    promised); NumPy would warn about it from matmul, where the other algorithms' kernels do not."""
    @wraps(direction)
    def run(spec, a, b):
        with np.errstate(invalid="ignore", over="ignore"):
            return direction(spec, a, b)

    return run


@_quiet
def forward(spec, x, w):
    g = _geometry(spec)
    N, G, Cg, Og = spec.batch, spec.groups, spec.group_in, spec.group_out
    if g.empty or N == 0:
        return np.zeros(spec.y_shape, dtype=spec.np_dtype)
    nb = _plan(spec)[0]
    wf = _weights_transform(spec, w, g)
    np.conjugate(wf, out=wf)
    alloc = np.empty if g.valid == prod(spec.out_size) else np.zeros
    y = alloc(spec.y_shape, dtype=spec.np_dtype)
    keep = (g.pos[0], g.pos[1], slice(None))
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        # the buffers are passed on, never named here, so each is freed as soon as it is read
        xf = _to_freq(g, _packed(g, x, n0, m, "x"), g.x_index, ())
        yf = np.empty(g.freq + (m, spec.out_channels), dtype=_complex(spec))
        np.matmul(xf.reshape(g.pc, m, G, Cg).transpose(0, 2, 1, 3), wf,
                  out=yf.reshape(g.pc, m, G, Og).transpose(0, 2, 1, 3))
        del xf
        z = _from_freq(g, yf, keep, ())
        del yf
        _unpack(z, g.u_wpos, y, n0, *g.u_lo)
        del z
    return y


@_quiet
def grad_input(spec, dy, w):
    g = _geometry(spec)
    N, G, Cg, Og = spec.batch, spec.groups, spec.group_in, spec.group_out
    if g.empty or N == 0:
        return np.zeros(spec.x_shape, dtype=spec.np_dtype)
    nb = _plan(spec)[0]
    wt = _weights_transform(spec, w, g).transpose(0, 1, 3, 2)  # (P, G, Og, Cg)
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
    keep = (g.inbox[0], g.inbox[1], slice(None))
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        uf = _to_freq(g, _packed(g, dy, n0, m, "u"), g.u_index, ())
        xf = np.empty(g.freq + (m, spec.in_channels), dtype=_complex(spec))
        np.matmul(uf.reshape(g.pc, m, G, Og).transpose(0, 2, 1, 3), wt,
                  out=xf.reshape(g.pc, m, G, Cg).transpose(0, 2, 1, 3))
        del uf
        z = _from_freq(g, xf, keep, ())
        del xf
        _unpack(z, g.x_wpos, dx, n0, 0, 0, 0)
        del z
    return dx


@_quiet
def grad_weights(spec, x, dy):
    g = _geometry(spec)
    N, G, Cg, Og = spec.batch, spec.groups, spec.group_in, spec.group_out
    if g.empty or N == 0:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    nb = _plan(spec)[0]
    acc = np.empty(g.freq + (G, Og, Cg), dtype=_complex(spec))
    av = acc.reshape(g.pc, G, Og, Cg)
    tmp = None
    for n0 in range(0, N, nb):
        m = min(nb, N - n0)
        xf = _to_freq(g, _packed(g, x, n0, m, "x"), g.x_index, ())
        uf = _to_freq(g, _packed(g, dy, n0, m, "u"), g.u_index, ())
        np.conjugate(uf, out=uf)
        a = uf.reshape(g.pc, m, G, Og).transpose(0, 2, 3, 1)  # (P, G, Og, m)
        b = xf.reshape(g.pc, m, G, Cg).transpose(0, 2, 1, 3)  # (P, G, m, Cg)
        if n0 == 0:
            np.matmul(a, b, out=av)
        else:
            if tmp is None:
                tmp = np.empty_like(av)
            np.matmul(a, b, out=tmp)
            av += tmp
        del xf, uf, a, b
    del av, tmp
    r = _from_freq(g, acc, g.taps, g.tap_dft)
    del acc
    # (lags..., G, Og, Cg) -> (G, Og, Cg, lags...)
    return np.ascontiguousarray(r.transpose(3, 4, 5, 0, 1, 2)).reshape(spec.w_shape)
