"""im2col + GEMM (Caffe's CorrMM, Theano's CPU path): forward, grad-input and grad-weights.

The column matrix of a chunk of the problem has one row per (input channel, kD, kH, kW) tap and
one column per (image, output position)::

    col[(c, kd, kh, kw), b * L + q] = x[n0 + b, c, od*sd - pd + kd*dd, oh*sh - ph + kh*dh, ...]

for the L output positions p0 + q of the chunk (0 where the tap falls in the padding). Rows of
group g are the block [g * Cg*K, (g+1) * Cg*K), so one kernel launch serves every group, and the
GEMMs of all groups are one stacked ``np.matmul``:

    forward       y[n, g]  (Og, L)    = W_g (Og, CgK) @ col_g[:, n] (CgK, L)
    grad_input    dcol_g[:, n]        = W_g^T (CgK, Og) @ dy[n, g] (Og, L),  then col2im into dx
    grad_weights  dW_g^T (CgK, Og)   += col_g (CgK, nb*L) @ dy_g^T (nb*L, Og)

A chunk is several whole images when one image's columns fit the workspace limit, else part of
one image's output positions, so the workspace never exceeds the limit (unless a single output
position does not fit, when the chunk is that one position). The images of a chunk share one GEMM
when their positions are few (``_BATCH_P``). BLAS is called from Python between the Numba kernels,
never inside a ``prange`` region (see :mod:`nbconv.threads`); the kernels divide their work among
the threads the way the GEMM next to them does (see ``_split``).

Strided problems: an input row is read at columns ow*sw + off, a scalar gather. The kernels split
each row into its sw phases (columns j*sw + r for r < sw) once, in a per-task buffer, so every
tap becomes a contiguous copy (im2col) or a contiguous add (col2im).
"""
import os
import threading

import numpy as np
from numba import get_num_threads, njit, prange

from .. import threads as _threads  # noqa: F401  (sizes the BLAS pool to nbconv's thread count)
from ..spec import GRAD_WEIGHTS
from .direct import _FASTMATH, _col_ranges

_workspace_limit = 512 * 2**20


# Images per chunk are chosen so the columns stay near this size: the GEMM then reads them from the
# 32 MiB L3 cache right after the kernel wrote them. Measured on 2 cores (forward, ms): ResNet 3x3
# at 56x56 15.6 with 8 MiB chunks (one image) vs 16.6 at 32 MiB and 23.9 for the whole batch; the
# dilated 3x3 at 33x33 63.7 / 68.3 / 75.8; ResNet's 7x7 conv1 21.4 / 27.2 / 33.3.
_CHUNK_TARGET = 8 * 2**20

# Below this many output positions per image, forward and grad-input multiply a chunk's images in
# one GEMM (N = images x positions) through a gathered copy of dy / a temporary of y, instead of
# one GEMM per image on views. Measured (1 thread, CPU ms, per image vs one GEMM): ResNet's 3x3 at
# 7x7 (49 positions) forward 27.3 vs 22.4, grad-input 31.1 vs 22.0; DCGAN's 4x4 (256) 28.7 vs
# 28.0; the strided 3x3 (784) 27.1 vs 27.2, its GEMM on 2 threads 2.37 vs 2.27.
_BATCH_P = 1024

# Grad-weights computes dW^T (then transposes it) for weights of at most this many elements.
_GW_TRANSPOSE_MAX = 2**18

# Scratch memory is one block per calling thread, kept between calls up to this size (glibc's
# largest mmap threshold: bigger blocks are mapped and unmapped per call anyway). Allocated per
# call, glibc hands the pages back to the kernel whenever the freed scratch exceeds its trim
# threshold, and the im2col kernel then page-faults through its chunk: measured with DCGAN's
# scratch at 13.4 MB (an earlier two-buffer variant), 5.5 ms per chunk on 2 threads instead of
# 0.8. The present single-buffer scratch stayed under the threshold in the suite (no difference
# measured), which depends on the process's allocation history, not on this module. winograd
# shares the block; its transformed weights alone reach 36 MiB on ResNet's 512-channel 3x3 layers.
_SCRATCH_KEEP = 64 * 2**20

_scratch = threading.local()


def get_workspace_limit():
    """Bytes of scratch memory one im2col call may allocate (default 512 MiB)."""
    return _workspace_limit


def set_workspace_limit(nbytes):
    global _workspace_limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
        raise ValueError(f"workspace limit must be a positive number of bytes, got {nbytes!r}")
    _workspace_limit = int(nbytes)
    # which algorithms apply (im2col_flat's images must fit) may change: forget cached decisions
    from .. import dispatch

    dispatch.clear_cache()


if os.environ.get("NBCONV_WORKSPACE_LIMIT", "").strip():
    set_workspace_limit(int(os.environ["NBCONV_WORKSPACE_LIMIT"]))


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@njit(inline="always")
def _split_phases(xrow, buf, sw, Wq):
    """buf[r * Wq + j] = xrow[j * sw + r]: the sw phases of an input row, each contiguous."""
    W = xrow.shape[0]
    if sw == 2:
        # a constant stride lets LLVM vectorise the de-interleave
        h = W // 2
        for j in range(h):
            buf[j] = xrow[2 * j]
            buf[Wq + j] = xrow[2 * j + 1]
        if W % 2:
            buf[h] = xrow[W - 1]
    else:
        for r in range(sw):
            for j in range((W - r + sw - 1) // sw):
                buf[r * Wq + j] = xrow[j * sw + r]


@njit(inline="always")
def _fill_zero(dst):
    for j in range(dst.shape[0]):
        dst[j] = 0.0


@njit(inline="always")
def _copy(dst, src):
    # loops from 0 over views: Numba's slice assignment measured 2x slower on these short rows, and
    # an index with an offset of unknown sign keeps the negative-index wraparound (no vectorising)
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@njit(parallel=True, cache=True)
def _im2col_kernel(x, col, n0, nb, p0, L, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw,
                   nt):
    """Fill ``col`` (C*K, nb*L) for images n0..n0+nb, output positions p0..p0+L; each task owns
    the KW rows of one (image, channel, kd, kh), or their part in one of ``nt`` equal blocks of
    each image's columns, and reads each input row once for all KW taps.

    The threads write the columns in the blocks the GEMM after the kernel reads (see _split).
    """
    C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    Wq = (W + sw - 1) // sw
    klo, khi = _col_ranges(KW, dw, pw, sw, W, OW)
    rows = nb * C * KD * KH
    for t in prange(nt * rows):
        # images innermost: each thread then fills a contiguous block of rows. With images
        # outermost, two threads wrote the two halves of every row of a 2-image chunk at the same
        # time: the strided 3x3 at 56x56 took 2.26 ms on 2 threads (1.25 ms on one), now 0.66.
        blk = t // rows
        b = t % nb
        c = (t % rows) // (nb * KD * KH)
        kd = (t // (nb * KH)) % KD
        kh = (t // nb) % KH
        row0 = ((c * KD + kd) * KH + kh) * KW
        qa, qe = blk * L // nt, (blk + 1) * L // nt  # this task's columns of image b
        if qa >= qe:
            continue
        buf = np.empty(sw * Wq if sw > 1 else 0, dtype=x.dtype)
        # output rows (od, oh) overlapping [p0 + qa, p0 + qe); [a, e) is the part inside them
        for r in range((p0 + qa) // OW, (p0 + qe - 1) // OW + 1):
            base = r * OW - p0 + b * L
            a = max(0, p0 + qa - r * OW)
            e = min(OW, p0 + qe - r * OW)
            idd = (r // OH) * sd - pd + kd * dd
            ih = (r % OH) * sh - ph + kh * dh
            if idd < 0 or idd >= D or ih < 0 or ih >= H:
                for kw in range(KW):
                    _fill_zero(col[row0 + kw, base + a:base + e])
                continue
            xrow = x[n0 + b, c, idd, ih]
            src = xrow
            if sw > 1:
                _split_phases(xrow, buf, sw, Wq)
                src = buf
            for kw in range(KW):
                row = col[row0 + kw]  # base may be negative (a > 0 then): slice from base + a
                off = kw * dw - pw
                i0 = min(max(klo[kw], a), e)
                i1 = max(min(khi[kw], e), i0)
                _fill_zero(row[base + a:base + i0])
                _fill_zero(row[base + i1:base + e])
                if sw == 1:
                    s = off
                else:
                    q = off // sw
                    s = (off - q * sw) * Wq + q
                _copy(row[base + i0:base + i1], src[i0 + s:i1 + s])


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _col2im_kernel(dcol, dx, n0, nb, p0, L, KD, KH, KW, OD, OH, OW, sd, sh, sw, dd, dh, dw, pd, ph, pw,
                   init, nt):
    """Add the columns ``dcol`` (C*K, nb*L) back into ``dx``: the transpose of ``_im2col_kernel``;
    with ``init`` the rows of dx are overwritten instead (the chunk that starts each image).

    Gathered per input row (each task owns dx[n, c, id, ih], so no two tasks write one element),
    rather than Caffe's scatter per column row, which would race between taps.
    """
    C, D, H, W = dx.shape[1], dx.shape[2], dx.shape[3], dx.shape[4]
    Wq = (W + sw - 1) // sw
    klo, khi = _col_ranges(KW, dw, pw, sw, W, OW)
    # nt > 1: thread i takes block i of every plane's rows, which reads about the block of
    # positions its core wrote in the GEMM before (see _split); nt = 1: plane by plane
    R = -(-(D * H) // nt)
    for t in prange(nt * nb * C * R):
        blk = t // (nb * C * R)
        b = (t // (C * R)) % nb
        c = (t // R) % C
        k = blk * R + t % R
        if k >= D * H:
            continue
        idd = k // H
        ih = k % H
        dxrow = dx[n0 + b, c, idd, ih]
        # strided: accumulate the sw phases of the row contiguously, interleave once at the end
        acc = dxrow if sw == 1 else np.zeros(sw * Wq, dtype=dx.dtype)
        if sw == 1 and init:
            _fill_zero(acc)
        for kd in range(KD):
            td = idd + pd - kd * dd
            if td < 0 or td % sd != 0 or td // sd >= OD:
                continue
            for kh in range(KH):
                th = ih + ph - kh * dh
                if th < 0 or th % sh != 0 or th // sh >= OH:
                    continue
                # output row (od, oh) = (td // sd, th // sh); [a, e) is its part inside the chunk
                base = ((td // sd) * OH + th // sh) * OW - p0
                a = max(0, -base)
                e = min(OW, L - base)
                if a >= e:
                    continue
                base += b * L
                for kw in range(KW):
                    off = kw * dw - pw
                    lo = max(klo[kw], a)
                    hi = min(khi[kw], e)
                    if sw == 1:
                        s = off
                    else:
                        q = off // sw
                        s = (off - q * sw) * Wq + q
                    drow = dcol[((c * KD + kd) * KH + kh) * KW + kw]
                    dst = acc[lo + s:hi + s]
                    src = drow[base + lo:base + hi]
                    for j in range(hi - lo):
                        dst[j] += src[j]
        if sw > 1:
            for r in range(sw):
                part = acc[r * Wq:]
                if init:
                    for j in range((W - r + sw - 1) // sw):
                        dxrow[j * sw + r] = part[j]
                else:
                    for j in range((W - r + sw - 1) // sw):
                        dxrow[j * sw + r] += part[j]


@njit(parallel=True, cache=True)
def _transpose_kernel(src, dst):
    """dst[g] = src[g].T for src (G, A, B), in 32 x 32 tiles. NumPy's strided copy of ResNet's
    (4608, 512) dW^T measured 11.9 ms: every element of a destination row is a cache miss."""
    G, A, B = src.shape
    TA, TB = (A + 31) // 32, (B + 31) // 32
    for t in prange(G * TA * TB):
        g = t // (TA * TB)
        ta = (t // TB) % TA
        tb = t % TB
        for j in range(tb * 32, min(B, tb * 32 + 32)):
            for i in range(ta * 32, min(A, ta * 32 + 32)):
                dst[g, j, i] = src[g, i, j]


# --------------------------------------------------------------------------------------------
# Chunking and workspace
# --------------------------------------------------------------------------------------------


def _taps(spec):
    return spec.kernel[0] * spec.kernel[1] * spec.kernel[2]


def _positions(spec):
    return spec.out_size[0] * spec.out_size[1] * spec.out_size[2]


def _batched(spec, nb):
    """Whether forward / grad-input multiply the nb images of a chunk in one GEMM."""
    return nb > 1 and (spec.direction == GRAD_WEIGHTS or _positions(spec) < _BATCH_P)


def _plan(spec):
    """(images per chunk nb, output positions per chunk L, workspace bytes) for ``spec``.

    Per (image, output position) the columns take C*K elements. A chunk of several images
    multiplied in one GEMM also takes a copy of its dy (grad-input, grad-weights) or its y
    (forward): O elements per position. Grad-weights adds each chunk's dW^T into a sum of the
    weights' size and transposes it into the result.
    """
    item = spec.np_dtype.itemsize
    N, O = spec.batch, spec.out_channels
    P = _positions(spec)
    ck = spec.in_channels * _taps(spec)
    if N == 0:
        return 0, P, 0
    wtmp = 2 * O * spec.group_in * _taps(spec) * item if spec.direction == GRAD_WEIGHTS else 0
    # whole images, as many as fit the cache-sized target: at least one
    nb = min(N, max(1, min(_CHUNK_TARGET, _workspace_limit) // ((ck + O) * P * item)))
    total = (ck + (O if _batched(spec, nb) else 0)) * nb * P * item + wtmp
    if total <= _workspace_limit:
        return nb, P, total
    # one image does not fit the limit: part of its output positions per chunk
    L = max(1, min(P, (min(_CHUNK_TARGET, _workspace_limit - wtmp)) // (ck * item)))
    return 1, L, ck * L * item + wtmp


def workspace(spec):
    return _plan(spec)[2]


def release_scratch():
    """Drop this thread's scratch block (it is allocated again by the next call that needs it)."""
    _scratch.block = None


def _scratch_arrays(dtype, *counts):
    """1-D arrays of ``counts`` elements, 64-byte aligned, carved from this thread's scratch block
    (never returned to the caller: results are always fresh arrays)."""
    dtype = np.dtype(dtype)
    sizes = [-(-c * dtype.itemsize // 64) * 64 for c in counts]
    need = sum(sizes) + 64
    block = getattr(_scratch, "block", None)
    if block is None or block.nbytes < need:
        block = np.empty(need, dtype=np.uint8)
        if need <= _SCRATCH_KEEP:
            _scratch.block = block
    off = -block.ctypes.data % 64
    out = []
    for c, size in zip(counts, sizes):
        out.append(block[off:off + c * dtype.itemsize].view(dtype))
        off += size
    return out


def _chunks(spec, nb, L):
    """(n0, images, p0, positions) of every chunk, in order."""
    P = _positions(spec)
    for n0 in range(0, spec.batch, nb):
        for p0 in range(0, P, L):
            yield n0, min(nb, spec.batch - n0), p0, min(L, P - p0)


def _geometry(spec):
    return spec.kernel + spec.out_size + spec.stride + spec.dilation + spec.pad_lo


def supports(spec):
    return not spec.unshared


def _split(batched):
    """How many blocks of each image's columns the kernels divide among the threads: one per
    thread when the GEMM is per image, else 1 (by rows).

    NumPy hands a row-major product to OpenBLAS transposed, so OpenBLAS's rows (which it divides
    among its threads) are the columns of y: a per-image forward or grad-input GEMM splits the
    positions, the grad-weights GEMM the rows of the column matrix. Data one core wrote and the
    other reads (or rewrites) crosses between the cores' caches, which on this 2-vCPU VM was
    expensive at times (we saw two regimes, apparently the vCPUs' placement): ResNet's conv1,
    forward, 22.7 ms with the kernels dividing rows, 16.6 with them dividing positions like the
    GEMM (its 3x3 at 56x56: 21.4 vs 17.3; grad-input 21.0 vs 17.0 and 19.6 vs 16.0); in the
    other regime 13.2 vs 13.3 ms and 12.1 vs 12.9. For the batched GEMMs (several images as one N)
    dividing positions measured slower in both regimes (strided 3x3: 18.3 vs 19-20 ms, 12.6 vs
    13.3) and the rows stay.
    """
    return 1 if batched else get_num_threads()


# --------------------------------------------------------------------------------------------
# Thin wrappers: allocate, then im2col / GEMM / col2im per chunk.
# --------------------------------------------------------------------------------------------


def forward(spec, x, w):
    N, G, Og, ck = spec.batch, spec.groups, spec.group_out, spec.in_channels * _taps(spec)
    P = _positions(spec)
    nb, L, _ = _plan(spec)
    batched = _batched(spec, nb)
    y = np.empty(spec.y_shape, dtype=spec.np_dtype)
    yv = y.reshape(N, G, Og, P)
    wg = w.reshape(G, Og, ck // G)
    buf, tmp = _scratch_arrays(spec.np_dtype, ck * nb * L, spec.out_channels * nb * L if batched else 0)
    nt = _split(batched)
    for n0, m, p0, l in _chunks(spec, nb, L):
        col = buf[:ck * m * l].reshape(ck, m * l)
        _im2col_kernel(x, col, n0, m, p0, l, *_geometry(spec), nt)
        if batched:
            t = tmp[:G * Og * m * l].reshape(G, Og, m * l)
            np.matmul(wg, col.reshape(G, ck // G, m * l), out=t)
            np.copyto(yv[n0:n0 + m], t.reshape(G, Og, m, l).transpose(2, 0, 1, 3))
        else:
            cols = col.reshape(G, ck // G, m, l).transpose(2, 0, 1, 3)  # (m, G, CgK, l)
            np.matmul(wg, cols, out=yv[n0:n0 + m, :, :, p0:p0 + l])
    return y


def grad_input(spec, dy, w):
    N, G, Og, ck = spec.batch, spec.groups, spec.group_out, spec.in_channels * _taps(spec)
    P = _positions(spec)
    nb, L, _ = _plan(spec)
    batched = _batched(spec, nb)
    dx = np.empty(spec.x_shape, dtype=spec.np_dtype)  # the first chunk of each image overwrites
    dyv = dy.reshape(N, G, Og, P)
    wt = w.reshape(G, Og, ck // G).transpose(0, 2, 1)
    buf, gather = _scratch_arrays(spec.np_dtype, ck * nb * L, spec.out_channels * nb * L if batched else 0)
    nt = _split(batched)
    for n0, m, p0, l in _chunks(spec, nb, L):
        dcol = buf[:ck * m * l].reshape(ck, m * l)
        if batched:
            d = gather[:G * Og * m * l].reshape(G, Og, m, l)
            np.copyto(d, dyv[n0:n0 + m].transpose(1, 2, 0, 3))
            np.matmul(wt, d.reshape(G, Og, m * l), out=dcol.reshape(G, ck // G, m * l))
        else:
            np.matmul(wt, dyv[n0:n0 + m, :, :, p0:p0 + l],
                      out=dcol.reshape(G, ck // G, m, l).transpose(2, 0, 1, 3))
        _col2im_kernel(dcol, dx, n0, m, p0, l, *_geometry(spec), p0 == 0, nt)
    return dx


def _gw_product(cg, d, transposed, first, out, part):
    """out = (first chunk) or += one chunk's grad-weights product: dW^T = cg @ d^T when
    ``transposed``, else dW = d @ cg^T, for the columns cg (G, CgK, n) and dy d (G, Og, n)."""
    a, b = (cg, d.transpose(0, 2, 1)) if transposed else (d, cg.transpose(0, 2, 1))
    if first:
        np.matmul(a, b, out=out)
    else:
        np.matmul(a, b, out=part)
        out += part


def grad_weights(spec, x, dy):
    N, G, Og, ck = spec.batch, spec.groups, spec.group_out, spec.in_channels * _taps(spec)
    P = _positions(spec)
    if N == 0:
        return np.zeros(spec.w_shape, dtype=spec.np_dtype)
    nb, L, _ = _plan(spec)
    dyv = dy.reshape(N, G, Og, P)
    # Small weights: dW^T = col @ dy^T, the column matrix as BLAS's row-major A operand, then a
    # transpose into dw; measured (1 core, ms) conv1's (147 x 12544) @ (12544 x 64) 3.10 vs 3.45
    # for dW = dy @ col^T, ResNet's 3x3 at 56x56 2.58 vs 3.05. Large ones (ResNet's 3x3 at 7x7,
    # 512 x 4608) compute dW directly: the GEMMs tie and the transposed copy took 11.5 ms.
    transposed = G * Og * (ck // G) <= _GW_TRANSPOSE_MAX
    wsize = spec.out_channels * (ck // G)
    buf, gather, tmp, dwt = _scratch_arrays(
        spec.np_dtype, ck * nb * L, spec.out_channels * nb * L if nb > 1 else 0, wsize,
        wsize if transposed else 0,
    )
    # the sum is the result itself when it is not transposed
    out = dwt.reshape(G, ck // G, Og) if transposed else np.empty((G, Og, ck // G), spec.np_dtype)
    tmp = tmp.reshape(out.shape)
    for i, (n0, m, p0, l) in enumerate(_chunks(spec, nb, L)):
        col = buf[:ck * m * l].reshape(ck, m * l)
        _im2col_kernel(x, col, n0, m, p0, l, *_geometry(spec), 1)
        if m == 1:
            d = dyv[n0, :, :, p0:p0 + l]
        else:  # images side by side, matching the columns: dy (G, Og, m*P)
            d = gather[:G * Og * m * l].reshape(G, Og, m, l)
            np.copyto(d, dyv[n0:n0 + m].transpose(1, 2, 0, 3))
            d = d.reshape(G, Og, m * l)
        _gw_product(col.reshape(G, ck // G, m * l), d, transposed, i == 0, out, tmp)
    if not transposed:
        return out.reshape(spec.w_shape)
    dw = np.empty(spec.w_shape, dtype=spec.np_dtype)
    _transpose_kernel(out, dw.reshape(G, Og, ck // G))
    return dw
