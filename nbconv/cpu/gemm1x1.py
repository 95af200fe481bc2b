"""1x1 convolutions (every kernel axis 1) as batched GEMMs, all three directions.

A 1x1 kernel couples each output position with one input element, so the column matrix of im2col
is the input itself: the outputs whose input lies inside x (the box, all of y without padding)
read the input on a strided grid (all of x at stride 1), and the outputs in the padding are zero.
Per image and group, on the box and the grid:

    forward       y[n, g]  (Og, P) = W_g (Og, Cg) @ x[n, g] (Cg, P)
    grad_input    dx[n, g] (Cg, P) = W_g^T (Cg, Og) @ dy[n, g] (Og, P)
    grad_weights  dW_g     (Og, Cg) = sum_n dy[n, g] (Og, P) @ x[n, g]^T (P, Cg)

Forward and grad-input are one stacked ``np.matmul`` over (n, g), on views of the arrays when
there is no padding and no stride (no workspace); otherwise the strided grid or the box is copied
contiguous, or computed contiguous and scattered into a zeroed result. Grad-weights copies x and
dy batch-minor, (G, C/G, N*P), to sum over the images inside one GEMM. Dilation has no effect on a
1x1 kernel.
"""
from math import prod

import numpy as np
from numba import njit, prange

from .. import threads as _threads  # noqa: F401  (sizes the BLAS pool to nbconv's thread count)
from ..spec import FORWARD, GRAD_INPUT


def supports(spec):
    return not spec.unshared and spec.kernel == (1, 1, 1)


def _layout(spec):
    """(box, grid, box is all of y, grid is all of x): the output positions inside the input and
    the input elements they read, as index tuples for 5-D arrays."""
    box, grid = [Ellipsis], [Ellipsis]
    for i, o, lo_pad, s in zip(spec.in_size, spec.out_size, spec.pad_lo, spec.stride):
        lo = -(-lo_pad // s)  # first output whose input index od*s - lo_pad is >= 0
        count = max(0, min(o, (i - 1 + lo_pad) // s + 1) - lo)
        box.append(slice(lo, lo + count))
        start = lo * s - lo_pad
        grid.append(slice(start, start + (count - 1) * s + 1, s) if count else slice(0, 0))
    box_size = tuple(b.stop - b.start for b in box[1:])
    # the grid is all of x only at stride 1 (or on axes of size 1)
    return tuple(box), tuple(grid), box_size == spec.out_size, box_size == spec.in_size


def _copies(spec):
    """Element counts of the arrays copied or computed contiguous before the result."""
    box, _, full_box, full_grid = _layout(spec)
    npos = spec.batch * prod(b.stop - b.start for b in box[1:])
    C, O = spec.in_channels, spec.out_channels
    if spec.direction == FORWARD:
        return (not full_grid) * C * npos + (not full_box) * O * npos
    if spec.direction == GRAD_INPUT:
        return (not full_box) * O * npos + (not full_grid) * C * npos
    many = spec.batch != 1  # a batch of 0 too: no image 0 to view
    return (many or not full_grid) * C * npos + (many or not full_box) * O * npos


def workspace(spec):
    return _copies(spec) * spec.np_dtype.itemsize


def _per_image(a, groups):
    """(N, G, channels / G, P) view of a contiguous (N, channels, d, h, w) array."""
    n, c = a.shape[:2]
    return a.reshape(n, groups, c // groups, prod(a.shape[2:]))


@njit(parallel=True, cache=True)
def _batch_minor_kernel(a, out):
    """out[c, n] = a[n, c] for a (N, C, P) and out (C, N, P)."""
    N, C = a.shape[0], a.shape[1]
    for t in prange(C * N):
        src = a[t % N, t // N]
        dst = out[t // N, t % N]
        for j in range(src.shape[0]):
            dst[j] = src[j]


def _batch_minor(a, groups):
    """(G, channels / G, N * P) contiguous copy of an (N, channels, d, h, w) array or view."""
    n, c = a.shape[:2]
    p = prod(a.shape[2:])
    out = np.empty((groups, c // groups, n) + a.shape[2:], dtype=a.dtype)
    if a.flags.c_contiguous:
        # on both threads: ResNet's 1x1 at 14x14 (x 6.4 MB) copied in 0.25 ms against 1.0-1.2 ms
        # for NumPy's single-threaded copy; the whole grad-weights 5.2-5.4 vs 6.6-6.9 ms (2 threads)
        _batch_minor_kernel(a.reshape(n, c, p), out.reshape(c, n, p))
    else:
        np.copyto(out, a.reshape((n, groups, c // groups) + a.shape[2:]).transpose(1, 2, 0, 3, 4, 5))
    return out.reshape(groups, c // groups, n * p)


def forward(spec, x, w):
    G = spec.groups
    box, grid, full_box, full_grid = _layout(spec)
    xg = x if full_grid else np.ascontiguousarray(x[grid])
    wg = w.reshape(G, spec.group_out, spec.group_in)
    if full_box:
        y = np.empty(spec.y_shape, dtype=spec.np_dtype)
        np.matmul(wg, _per_image(xg, G), out=_per_image(y, G))
        return y
    y = np.zeros(spec.y_shape, dtype=spec.np_dtype)
    y[box] = np.matmul(wg, _per_image(xg, G)).reshape(y[box].shape)
    return y


def grad_input(spec, dy, w):
    G = spec.groups
    box, grid, full_box, full_grid = _layout(spec)
    dyb = dy if full_box else np.ascontiguousarray(dy[box])
    wt = w.reshape(G, spec.group_out, spec.group_in).transpose(0, 2, 1)
    if full_grid:
        dx = np.empty(spec.x_shape, dtype=spec.np_dtype)
        np.matmul(wt, _per_image(dyb, G), out=_per_image(dx, G))
        return dx
    dx = np.zeros(spec.x_shape, dtype=spec.np_dtype)
    dx[grid] = np.matmul(wt, _per_image(dyb, G)).reshape(dx[grid].shape)
    return dx


def grad_weights(spec, x, dy):
    # One GEMM over all images (inner dimension N*P) on batch-minor copies: measured 5.2 ms for
    # ResNet's 1x1 at 14x14 (N=8), against 5.4-14 ms for one GEMM per image accumulated into dW.
    G = spec.groups
    box, grid, full_box, full_grid = _layout(spec)
    many = spec.batch != 1  # a batch of 0 too: no image 0 to view
    xm = _batch_minor(x[grid], G) if many or not full_grid else _per_image(x, G)[0]
    dym = _batch_minor(dy[box], G) if many or not full_box else _per_image(dy, G)[0]
    dw = np.empty(spec.w_shape, dtype=spec.np_dtype)
    np.matmul(dym, xm.transpose(0, 2, 1), out=dw.reshape(G, spec.group_out, spec.group_in))
    return dw
