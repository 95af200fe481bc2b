"""Slow, obviously-correct NumPy reference implementations of the nbconv API.

Everything here is written from the definition of the convolution, independently of nbconv:

    nd spatial axes; x (N, C, i_1..i_nd); w (O, C/G, k_1..k_nd); G = num_groups, Cg = C/G,
    Og = O/G and the group of output channel o is g = o // Og.
    xpad = x zero-padded by (lo_a, hi_a) on spatial axis a.
    w_eff = w reversed along every kernel axis if filter_flip else w.
    y[n, o, p] = sum_{c < Cg} sum_q xpad[n, g*Cg + c, p*s + q*d] * w_eff[o, c, q]
    unshared: w (O, o_1..o_nd, Cg, k_1..k_nd) and w_eff[o, p, c, q] replaces w_eff[o, c, q]
    (flipping only ever reverses the kernel axes q).

The reference loops over kernel offsets q; for a fixed q the input positions p*s + q*d form a strided
slice of xpad, so each step is one einsum. The gradients are computed *independently* of each other:

* grad-input scatter-adds dy * w_eff into a zero padded buffer through exactly the same slices the
  forward pass reads (the literal adjoint of the forward loops) and crops the padding off;
* grad-weights correlates the padded input with dy (one einsum per kernel offset) and un-flips.

All computation happens in float64 whatever the input dtype; results are float64 arrays.
``conv_nd_naive`` is an even more literal scalar-loop version used to check the reference itself.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = [
    "pads_from_border_mode",
    "conv_output_size",
    "conv_nd",
    "conv_nd_naive",
    "conv_nd_grad_input",
    "conv_nd_grad_weights",
    "conv2d",
    "conv3d",
    "conv2d_grad_wrt_inputs",
    "conv3d_grad_wrt_inputs",
    "conv2d_grad_wrt_weights",
    "conv3d_grad_wrt_weights",
    "conv2d_transpose",
    "conv3d_transpose",
    "separable_conv2d",
    "separable_conv3d",
    "causal_conv1d",
    "bilinear_kernel_1D",
    "bilinear_kernel_2D",
    "bilinear_upsampling",
    "frac_bilinear_upsampling",
]


# ---------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------


def _as_tuple(v, nd):
    if v is None:
        return (1,) * nd
    if isinstance(v, (int, np.integer)):
        return (int(v),) * nd
    v = tuple(int(a) for a in v)
    assert len(v) == nd, (v, nd)
    return v


def pads_from_border_mode(border_mode, kshape, dilation=None):
    """[(lo, hi)] per spatial axis for a Theano border_mode."""
    nd = len(kshape)
    dilation = _as_tuple(dilation, nd)
    dk = [(k - 1) * d + 1 for k, d in zip(kshape, dilation)]
    if isinstance(border_mode, str):
        if border_mode == "valid":
            return [(0, 0)] * nd
        if border_mode == "full":
            return [(e - 1, e - 1) for e in dk]
        if border_mode == "half":
            return [(e // 2, e // 2) for e in dk]
        raise ValueError(border_mode)
    if isinstance(border_mode, (int, np.integer)):
        p = int(border_mode)
        return [(p, p)] * nd
    assert len(border_mode) == nd, (border_mode, nd)
    pads = []
    for m in border_mode:
        if isinstance(m, (int, np.integer)):
            pads.append((int(m), int(m)))
        else:
            lo, hi = m
            pads.append((int(lo), int(hi)))
    assert all(lo >= 0 and hi >= 0 for lo, hi in pads)
    return pads


def conv_output_size(i, k, lo, hi, s=1, d=1):
    return (i + lo + hi - ((k - 1) * d + 1)) // s + 1


def _flip_kernel_axes(w, nd):
    """Reverse the last nd axes (the kernel axes, for shared and unshared layouts alike)."""
    return w[(Ellipsis,) + (slice(None, None, -1),) * nd]


class _Problem:
    """Shapes and per-axis parameters of one convolution, from x's and w's shapes."""

    def __init__(self, x_shape, w_shape, border_mode, subsample, filter_dilation, num_groups,
                 unshared):
        nd = len(x_shape) - 2
        self.nd = nd
        self.N, self.C = int(x_shape[0]), int(x_shape[1])
        self.ishape = tuple(int(v) for v in x_shape[2:])
        self.O = int(w_shape[0])
        if unshared:
            assert len(w_shape) == 2 * nd + 2, w_shape
            self.grid = tuple(int(v) for v in w_shape[1:1 + nd])
            self.Cg = int(w_shape[1 + nd])
        else:
            assert len(w_shape) == nd + 2, w_shape
            self.grid = None
            self.Cg = int(w_shape[1])
        self.kshape = tuple(int(v) for v in w_shape[-nd:])
        self.G = int(num_groups)
        assert self.C == self.Cg * self.G, (x_shape, w_shape, num_groups)
        assert self.O % self.G == 0, (w_shape, num_groups)
        self.Og = self.O // self.G
        self.s = _as_tuple(subsample, nd)
        self.d = _as_tuple(filter_dilation, nd)
        self.pads = pads_from_border_mode(border_mode, self.kshape, self.d)
        self.pshape = tuple(i + lo + hi for i, (lo, hi) in zip(self.ishape, self.pads))
        self.oshape = tuple(
            conv_output_size(i, k, lo, hi, s, d)
            for i, k, (lo, hi), s, d in zip(self.ishape, self.kshape, self.pads, self.s, self.d)
        )
        assert all(o >= 1 for o in self.oshape), self.oshape
        if unshared:
            assert self.grid == self.oshape, (self.grid, self.oshape)
        self.unshared = bool(unshared)

    def offsets(self):
        return itertools.product(*[range(k) for k in self.kshape])

    def window(self, q):
        """Slices of the padded spatial axes read by kernel offset q: p*s + q*d for all p."""
        return tuple(
            slice(qa * da, qa * da + (oa - 1) * sa + 1, sa)
            for qa, da, oa, sa in zip(q, self.d, self.oshape, self.s)
        )

    def crop(self):
        return tuple(slice(lo, lo + i) for (lo, _), i in zip(self.pads, self.ishape))


def _f64(a):
    return np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# the three linear maps, n-d
# ---------------------------------------------------------------------------------------------


def conv_nd(x, w, border_mode="valid", subsample=None, filter_flip=True, filter_dilation=None,
            num_groups=1, unshared=False):
    """Forward convolution (float64 result)."""
    x, w = _f64(x), _f64(w)
    P = _Problem(x.shape, w.shape, border_mode, subsample, filter_dilation, num_groups, unshared)
    nd = P.nd
    xpad = np.pad(x, [(0, 0), (0, 0)] + list(P.pads))
    xg = xpad.reshape((P.N, P.G, P.Cg) + P.pshape)
    w_eff = _flip_kernel_axes(w, nd) if filter_flip else w
    y = np.zeros((P.N, P.G, P.Og) + P.oshape)
    for q in P.offsets():
        xs = xg[(slice(None),) * 3 + P.window(q)]  # (N, G, Cg, *o)
        if unshared:
            wq = w_eff[(slice(None),) * (nd + 2) + q]  # (O, *o, Cg)
            wq = np.moveaxis(wq, -1, 1).reshape((P.G, P.Og, P.Cg) + P.oshape)
            y += np.einsum("ngc...,goc...->ngo...", xs, wq)
        else:
            wq = w_eff[(slice(None), slice(None)) + q].reshape(P.G, P.Og, P.Cg)
            y += np.einsum("ngc...,goc->ngo...", xs, wq)
    return y.reshape((P.N, P.O) + P.oshape)


def conv_nd_naive(x, w, border_mode="valid", subsample=None, filter_flip=True,
                  filter_dilation=None, num_groups=1, unshared=False):
    """The definition, one scalar at a time (only for tiny self-checks of conv_nd)."""
    x, w = _f64(x), _f64(w)
    P = _Problem(x.shape, w.shape, border_mode, subsample, filter_dilation, num_groups, unshared)
    nd = P.nd
    y = np.zeros((P.N, P.O) + P.oshape)
    for n in range(P.N):
        for o in range(P.O):
            g = o // P.Og
            for p in itertools.product(*[range(v) for v in P.oshape]):
                acc = 0.0
                for c in range(P.Cg):
                    for q in P.offsets():
                        # position in the padded input, then in the real input
                        pos = [p[a] * P.s[a] + q[a] * P.d[a] - P.pads[a][0] for a in range(nd)]
                        if any(v < 0 or v >= P.ishape[a] for a, v in enumerate(pos)):
                            continue
                        qq = tuple(P.kshape[a] - 1 - q[a] for a in range(nd)) if filter_flip else q
                        if unshared:
                            wv = w[(o,) + tuple(p) + (c,) + qq]
                        else:
                            wv = w[(o, c) + qq]
                        acc += x[(n, g * P.Cg + c) + tuple(pos)] * wv
                y[(n, o) + tuple(p)] = acc
    return y


def conv_nd_grad_input(dy, w, input_shape, border_mode="valid", subsample=None, filter_flip=True,
                       filter_dilation=None, num_groups=1, unshared=False):
    """d<conv(x, w), dy>/dx by scatter-adding (float64 result).

    input_shape may have None in the batch / channel entries.
    """
    dy, w = _f64(dy), _f64(w)
    nd = dy.ndim - 2
    Cg = w.shape[1 + nd] if unshared else w.shape[1]
    input_shape = tuple(input_shape)
    x_shape = (dy.shape[0], Cg * num_groups) + tuple(int(v) for v in input_shape[2:])
    for given, real in zip(input_shape[:2], x_shape[:2]):
        assert given is None or given == real, (input_shape, x_shape)
    P = _Problem(x_shape, w.shape, border_mode, subsample, filter_dilation, num_groups, unshared)
    assert dy.shape == (P.N, P.O) + P.oshape, (dy.shape, P.oshape)
    w_eff = _flip_kernel_axes(w, nd) if filter_flip else w
    dyg = dy.reshape((P.N, P.G, P.Og) + P.oshape)
    dxpad = np.zeros((P.N, P.G, P.Cg) + P.pshape)
    for q in P.offsets():
        idx = (slice(None),) * 3 + P.window(q)
        if unshared:
            wq = w_eff[(slice(None),) * (nd + 2) + q]  # (O, *o, Cg)
            wq = np.moveaxis(wq, -1, 1).reshape((P.G, P.Og, P.Cg) + P.oshape)
            dxpad[idx] += np.einsum("ngo...,goc...->ngc...", dyg, wq)
        else:
            wq = w_eff[(slice(None), slice(None)) + q].reshape(P.G, P.Og, P.Cg)
            dxpad[idx] += np.einsum("ngo...,goc->ngc...", dyg, wq)
    dxpad = dxpad.reshape((P.N, P.C) + P.pshape)
    return np.ascontiguousarray(dxpad[(slice(None), slice(None)) + P.crop()])


def conv_nd_grad_weights(x, dy, filter_shape, border_mode="valid", subsample=None,
                         filter_flip=True, filter_dilation=None, num_groups=1, unshared=False):
    """d<conv(x, w), dy>/dw for w as passed, by correlating x with dy (float64 result).

    filter_shape may have None in the two channel entries.
    """
    x, dy = _f64(x), _f64(dy)
    nd = x.ndim - 2
    filter_shape = list(filter_shape)
    cg_axis = 1 + nd if unshared else 1
    if filter_shape[0] is None:
        filter_shape[0] = dy.shape[1]
    if filter_shape[cg_axis] is None:
        filter_shape[cg_axis] = x.shape[1] // num_groups
    P = _Problem(x.shape, filter_shape, border_mode, subsample, filter_dilation, num_groups,
                 unshared)
    assert dy.shape == (P.N, P.O) + P.oshape, (dy.shape, P.oshape)
    xpad = np.pad(x, [(0, 0), (0, 0)] + list(P.pads))
    xg = xpad.reshape((P.N, P.G, P.Cg) + P.pshape)
    dyg = dy.reshape((P.N, P.G, P.Og) + P.oshape)
    dw_eff = np.zeros(tuple(filter_shape))
    for q in P.offsets():
        xs = xg[(slice(None),) * 3 + P.window(q)]  # (N, G, Cg, *o)
        if unshared:
            t = np.einsum("ngc...,ngo...->go...c", xs, dyg)  # (G, Og, *o, Cg)
            dw_eff[(slice(None),) * (nd + 2) + q] = t.reshape((P.O,) + P.oshape + (P.Cg,))
        else:
            sp = "XYZ"[:nd]
            t = np.einsum(f"ngc{sp},ngo{sp}->goc", xs, dyg)
            dw_eff[(slice(None), slice(None)) + q] = t.reshape(P.O, P.Cg)
    return np.ascontiguousarray(_flip_kernel_axes(dw_eff, nd) if filter_flip else dw_eff)


# ---------------------------------------------------------------------------------------------
# the public API, as references
# ---------------------------------------------------------------------------------------------


def conv2d(input, filters, border_mode="valid", subsample=(1, 1), filter_flip=True,
           filter_dilation=(1, 1), num_groups=1, unshared=False):
    assert np.ndim(input) == 4
    return conv_nd(input, filters, border_mode, subsample, filter_flip, filter_dilation,
                   num_groups, unshared)


def conv3d(input, filters, border_mode="valid", subsample=(1, 1, 1), filter_flip=True,
           filter_dilation=(1, 1, 1), num_groups=1, unshared=False):
    assert np.ndim(input) == 5
    return conv_nd(input, filters, border_mode, subsample, filter_flip, filter_dilation,
                   num_groups, unshared)


def conv2d_grad_wrt_inputs(output_grad, filters, input_shape, border_mode="valid",
                           subsample=(1, 1), filter_flip=True, filter_dilation=(1, 1),
                           num_groups=1, unshared=False):
    assert np.ndim(output_grad) == 4
    return conv_nd_grad_input(output_grad, filters, input_shape, border_mode, subsample,
                              filter_flip, filter_dilation, num_groups, unshared)


def conv3d_grad_wrt_inputs(output_grad, filters, input_shape, border_mode="valid",
                           subsample=(1, 1, 1), filter_flip=True, filter_dilation=(1, 1, 1),
                           num_groups=1, unshared=False):
    assert np.ndim(output_grad) == 5
    return conv_nd_grad_input(output_grad, filters, input_shape, border_mode, subsample,
                              filter_flip, filter_dilation, num_groups, unshared)


def conv2d_grad_wrt_weights(input, output_grad, filter_shape, border_mode="valid",
                            subsample=(1, 1), filter_flip=True, filter_dilation=(1, 1),
                            num_groups=1, unshared=False):
    assert np.ndim(input) == 4
    return conv_nd_grad_weights(input, output_grad, filter_shape, border_mode, subsample,
                                filter_flip, filter_dilation, num_groups, unshared)


def conv3d_grad_wrt_weights(input, output_grad, filter_shape, border_mode="valid",
                            subsample=(1, 1, 1), filter_flip=True, filter_dilation=(1, 1, 1),
                            num_groups=1, unshared=False):
    assert np.ndim(input) == 5
    return conv_nd_grad_weights(input, output_grad, filter_shape, border_mode, subsample,
                                filter_flip, filter_dilation, num_groups, unshared)


def conv2d_transpose(input, filters, output_shape, border_mode="valid", input_dilation=(1, 1),
                     filter_flip=True, filter_dilation=(1, 1), num_groups=1, unshared=False):
    return conv2d_grad_wrt_inputs(input, filters, output_shape, border_mode, input_dilation,
                                  filter_flip, filter_dilation, num_groups, unshared)


def conv3d_transpose(input, filters, output_shape, border_mode="valid", input_dilation=(1, 1, 1),
                     filter_flip=True, filter_dilation=(1, 1, 1), num_groups=1, unshared=False):
    return conv3d_grad_wrt_inputs(input, filters, output_shape, border_mode, input_dilation,
                                  filter_flip, filter_dilation, num_groups, unshared)


def _separable(input, depthwise_filters, pointwise_filters, num_channels, border_mode, subsample,
               filter_flip, filter_dilation):
    depth = conv_nd(input, depthwise_filters, border_mode, subsample, filter_flip,
                    filter_dilation, num_groups=num_channels)
    return conv_nd(depth, pointwise_filters, "valid", None, filter_flip, None, 1)


def separable_conv2d(input, depthwise_filters, pointwise_filters, num_channels,
                     border_mode="valid", subsample=(1, 1), filter_flip=True,
                     filter_dilation=(1, 1)):
    assert np.ndim(input) == 4
    return _separable(input, depthwise_filters, pointwise_filters, num_channels, border_mode,
                      subsample, filter_flip, filter_dilation)


def separable_conv3d(input, depthwise_filters, pointwise_filters, num_channels,
                     border_mode="valid", subsample=(1, 1, 1), filter_flip=True,
                     filter_dilation=(1, 1, 1)):
    assert np.ndim(input) == 5
    return _separable(input, depthwise_filters, pointwise_filters, num_channels, border_mode,
                      subsample, filter_flip, filter_dilation)


def causal_conv1d(input, filters, subsample=1, filter_flip=True, filter_dilation=1, num_groups=1,
                  unshared=False):
    """Input (N, C, L); filters (O, C/g, K) or unshared (O, out_len, C/g, K)."""
    assert np.ndim(input) == 3
    K = np.shape(filters)[-1]
    left = filter_dilation * (K - 1)
    return conv_nd(input, filters, ((left, 0),), (subsample,), filter_flip, (filter_dilation,),
                   num_groups, unshared)


# ---------------------------------------------------------------------------------------------
# bilinear upsampling
# ---------------------------------------------------------------------------------------------


def bilinear_kernel_1D(ratio, normalize=True):
    half = list(range(1, ratio + 1))
    k = np.array(half + half[-2::-1], dtype=np.float64)
    return k / ratio if normalize else k


def bilinear_kernel_2D(ratio, normalize=True):
    if isinstance(ratio, tuple):
        rv, rh = ratio
    else:
        rv = rh = ratio
    return np.outer(bilinear_kernel_1D(rv, normalize), bilinear_kernel_1D(rh, normalize))


def _edge_replicate(x):
    """(N, C, R, Col) -> (N*C, 1, R+2, Col+2), first/last row and column repeated once."""
    x = _f64(x)
    N, C, R, Col = x.shape
    up = x.reshape(N * C, 1, R, Col)
    up = np.concatenate([up[:, :, :1], up, up[:, :, -1:]], axis=2)
    return np.concatenate([up[:, :, :, :1], up, up[:, :, :, -1:]], axis=3)


def bilinear_upsampling(input, ratio):
    """Integer-ratio bilinear upsampling, Theano's 2-D kernel algorithm (float64 result)."""
    N, C, R, Col = np.shape(input)
    padded = _edge_replicate(input)
    pad = 2 * ratio - (ratio - 1) // 2 - 1
    kern = bilinear_kernel_2D(ratio)[None, None]
    up = conv_nd_grad_input(padded, kern, (N * C, 1, R * ratio, Col * ratio),
                            border_mode=(pad, pad), subsample=(ratio, ratio), filter_flip=True)
    return up.reshape(N, C, R * ratio, Col * ratio)


def _reduce(p, q):
    g = math.gcd(p, q)
    return p // g, q // g


def frac_bilinear_upsampling(input, frac_ratio):
    """Fractional-ratio bilinear upsampling, Theano's algorithm (float64 result)."""
    N, C, R, Col = np.shape(input)
    if isinstance(frac_ratio[0], tuple):
        (p1, q1), (p2, q2) = _reduce(*frac_ratio[0]), _reduce(*frac_ratio[1])
    else:
        p1, q1 = p2, q2 = _reduce(*frac_ratio)
    ratio, subsample = (p1, p2), (q1, q2)
    concat = _edge_replicate(input)
    double_pad = [(2 * R - 1) * ratio[0] + 1, (2 * Col - 1) * ratio[1] + 1]
    pad = [v // 2 for v in double_pad]
    kern = bilinear_kernel_2D(ratio)
    pad_kern = np.pad(kern, [(pad[0], double_pad[0] - pad[0]), (pad[1], double_pad[1] - pad[1])])
    out = conv_nd(pad_kern[None, None], concat, "valid", subsample, True, ratio, 1)
    return out.reshape(N, C, out.shape[2], out.shape[3])
