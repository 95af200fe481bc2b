"""Theano's abstract-conv functions, evaluated eagerly on NumPy arrays.

Each function validates its arguments into a :class:`~nbconv.spec.ConvSpec` (cached per call
signature, so a repeated call skips the Python validation), makes the operands canonical and hands
them to :mod:`nbconv.dispatch`. ``algo=`` names a registered algorithm (see
:func:`nbconv.registry.names`) or a tuning policy (:data:`nbconv.config.POLICIES`); by default the
policy :mod:`nbconv.config` sets for the call's direction decides.

CUDA: when the arrays are device arrays (Numba device arrays, or anything exporting
``__cuda_array_interface__``: CuPy arrays, PyTorch CUDA tensors), the call runs on the GPU through
:func:`nbconv.cuda.front.execute` (imported on first use) and returns a Numba device array; NumPy
arrays run on the CPU unless ``device='cuda'`` is passed (copied in, the result copied out).
Mixing host and device arrays in one call is a TypeError.
"""
from __future__ import annotations

from math import gcd

import numpy as np

from . import dispatch
from .spec import (
    FORWARD, GRAD_INPUT, GRAD_WEIGHTS, as_bool, as_float_array, as_int, build, check_ndim,
    check_output_grad, check_shape_hint, fill_shape, int_tuple, result_dtype,
)

# Error messages name the parameters of the function the user called.
_FWD = {"x": "input", "w": "filters", "y": "output"}
_GIN = {"x": "input_shape", "w": "filters", "y": "output_grad"}
_GW = {"x": "input", "w": "filter_shape", "y": "output_grad"}
_TRANSPOSE = {"x": "output_shape", "w": "filters", "y": "input", "subsample": "input_dilation"}

_SPEC_CACHE: dict = {}
_SPEC_CACHE_MAX = 4096


_PLAIN_SCALARS = frozenset((int, str, type(None)))


def _plain(v):
    """True for values whose equality implies identical meaning (exact ints, str, None, tuples of
    those, nested once as border_mode's (lo, hi) pairs): only such call signatures are cached, so
    ``1.0``/``True`` never alias a cached ``1``. Loops, not recursion: ~0.3 us a call less."""
    t = type(v)
    if t in _PLAIN_SCALARS:
        return True
    if t is not tuple:
        return False
    for e in v:
        t = type(e)
        if t in _PLAIN_SCALARS:
            continue
        if t is not tuple:
            return False
        for f in e:
            if type(f) not in _PLAIN_SCALARS:
                return False
    return True


def _cacheable(flip, unshared, groups, border_mode, subsample, dilation, x_hint, w_hint):
    # the common scalar forms tested inline: ~0.4 us of the ~10 us a LeNet-sized call takes
    return (type(flip) is bool and type(unshared) is bool and type(groups) is int
            and (type(border_mode) is str or _plain(border_mode))
            and (type(subsample) is int or _plain(subsample))
            and (type(dilation) is int or _plain(dilation))
            and (x_hint is None or _plain(x_hint)) and (w_hint is None or _plain(w_hint)))


def _cached(key, ok, make):
    if ok:
        spec = _SPEC_CACHE.get(key)
        if spec is not None:
            return spec
    spec = make()
    if ok:
        if len(_SPEC_CACHE) >= _SPEC_CACHE_MAX:
            _SPEC_CACHE.clear()
        _SPEC_CACHE[key] = spec
    return spec


_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _array(a, name, device_ok=False):
    # dtype equality, not dtype.char: '>f8' has the char 'd' too but is not native float64
    if type(a) is np.ndarray and (a.dtype == _NATIVE_FLOATS[0] or a.dtype == _NATIVE_FLOATS[1]):
        return a
    if _is_device(a):
        if not device_ok:
            raise TypeError(f"{name} is a CUDA device array; this function takes host (NumPy) arrays")
        from .cuda import arrays

        return arrays.wrap(a, name)  # a Numba device array of the same memory
    return as_float_array(a, name)


def _is_device(a):
    """A Numba device array or an object exporting __cuda_array_interface__ (no numba.cuda import)."""
    if type(a) is np.ndarray:
        return False
    if getattr(a, "__cuda_ndarray__", False):
        return True
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001  (e.g. a PyTorch CUDA tensor that requires grad)
        return True


def _operands(a, b, na, nb, device):
    """The two arrays of a call (host, or wrapped device arrays) and whether it runs on CUDA."""
    a, b = _array(a, na, True), _array(b, nb, True)
    if device is None and type(a) is np.ndarray and type(b) is np.ndarray:
        return a, b, False
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
    on_a, on_b = not isinstance(a, np.ndarray), not isinstance(b, np.ndarray)  # (memmaps are host)
    if on_a != on_b:
        dev, host = (na, nb) if on_a else (nb, na)
        raise TypeError(
            f"{dev} is a CUDA device array but {host} is a host (NumPy) array: pass both on the "
            f"device (numba.cuda.to_device(...)) or both on the host (.copy_to_host()); host "
            f"arrays run on the GPU with device='cuda'"
        )
    if on_a and device == "cpu":
        raise TypeError(f"device='cpu' but {na} and {nb} are CUDA device arrays "
                        f"(copy them to the host with .copy_to_host())")
    return a, b, on_a or device == "cuda"


def _cuda_execute(spec, a, b, algo, names):
    from .cuda import front

    return front.execute(spec, a, b, algo, names)


def _filters_ndim(nd, unshared):
    return 2 * nd + 2 if as_bool(unshared, "unshared") else nd + 2


def _opts(border_mode, subsample, filter_flip, filter_dilation, num_groups, unshared, dtype, names):
    return dict(
        border_mode=border_mode, subsample=subsample, filter_dilation=filter_dilation,
        num_groups=num_groups, unshared=unshared, filter_flip=filter_flip, dtype=dtype, names=names,
    )


# ---------------------------------------------------------------------------------------------
# The three directions, for any rank
# ---------------------------------------------------------------------------------------------


def _forward(nd, input, filters, input_shape, filter_shape, border_mode, subsample, filter_flip,
             filter_dilation, num_groups, unshared, algo, names=_FWD, device=None):
    x, w, cuda = _operands(input, filters, names["x"], names["w"], device)
    key = (FORWARD, nd, x.shape, w.shape, x.dtype.char, w.dtype.char, border_mode, subsample,
           filter_flip, filter_dilation, num_groups, unshared, input_shape, filter_shape)
    ok = _cacheable(filter_flip, unshared, num_groups, border_mode, subsample, filter_dilation,
                    input_shape, filter_shape)

    def make():
        check_ndim(x, nd + 2, names["x"])
        check_ndim(w, _filters_ndim(nd, unshared), names["w"], " for unshared convolution" if unshared else "")
        check_shape_hint(input_shape, x.shape, names.get("x_hint", "input_shape"), names["x"])
        check_shape_hint(filter_shape, w.shape, names.get("w_hint", "filter_shape"), names["w"])
        return build(FORWARD, nd, x.shape, w.shape, **_opts(
            border_mode, subsample, filter_flip, filter_dilation, num_groups, unshared,
            result_dtype(x, w), names))

    spec = _cached(key, ok, make)
    if cuda:
        return _cuda_execute(spec, x, w, algo, (names["x"], names["w"]))
    dt = spec.np_dtype
    return dispatch.execute(spec, dispatch.canonical(x, spec.x_shape, dt),
                            w, algo, unflipped=True)


def _grad_input(nd, output_grad, filters, input_shape, filter_shape, border_mode, subsample,
                filter_flip, filter_dilation, num_groups, unshared, algo, names=_GIN, device=None):
    dy, w, cuda = _operands(output_grad, filters, names["y"], names["w"], device)
    if isinstance(input_shape, np.ndarray):
        input_shape = tuple(input_shape.tolist())
    key = (GRAD_INPUT, nd, dy.shape, w.shape, dy.dtype.char, w.dtype.char, border_mode, subsample,
           filter_flip, filter_dilation, num_groups, unshared, input_shape, filter_shape)
    ok = _cacheable(filter_flip, unshared, num_groups, border_mode, subsample, filter_dilation,
                    input_shape, filter_shape)

    def make():
        check_ndim(dy, nd + 2, names["y"])
        check_ndim(w, _filters_ndim(nd, unshared), names["w"], " for unshared convolution" if unshared else "")
        check_shape_hint(filter_shape, w.shape, "filter_shape", names["w"])
        groups = as_int(num_groups, "num_groups", 1)
        known = (dy.shape[0], w.shape[-nd - 1] * groups) + (None,) * nd
        x_shape = fill_shape(input_shape, known, names["x"], 2)
        if x_shape[0] != dy.shape[0]:
            raise ValueError(
                f"{names['x']}[0]={x_shape[0]} contradicts the batch size {dy.shape[0]} of "
                f"{names['y']} (shape {dy.shape})"
            )
        spec = build(GRAD_INPUT, nd, x_shape, w.shape, **_opts(
            border_mode, subsample, filter_flip, filter_dilation, num_groups, unshared,
            result_dtype(dy, w), names))
        check_output_grad(spec, dy.shape, names)
        return spec

    spec = _cached(key, ok, make)
    if cuda:
        return _cuda_execute(spec, dy, w, algo, (names["y"], names["w"]))
    dt = spec.np_dtype
    return dispatch.execute(spec, dispatch.canonical(dy, spec.y_shape, dt),
                            w, algo, unflipped=True)


def _grad_weights(nd, input, output_grad, filter_shape, input_shape, border_mode, subsample,
                  filter_flip, filter_dilation, num_groups, unshared, algo, names=_GW, device=None):
    x, dy, cuda = _operands(input, output_grad, names["x"], names["y"], device)
    if isinstance(filter_shape, np.ndarray):
        filter_shape = tuple(filter_shape.tolist())
    key = (GRAD_WEIGHTS, nd, x.shape, dy.shape, x.dtype.char, dy.dtype.char, border_mode,
           subsample, filter_flip, filter_dilation, num_groups, unshared, input_shape, filter_shape)
    ok = _cacheable(filter_flip, unshared, num_groups, border_mode, subsample, filter_dilation,
                    input_shape, filter_shape)

    def make():
        is_unshared = as_bool(unshared, "unshared")
        check_ndim(x, nd + 2, names["x"])
        check_ndim(dy, nd + 2, names["y"])
        check_shape_hint(input_shape, x.shape, "input_shape", names["x"])
        groups = as_int(num_groups, "num_groups", 1)
        cg = x.shape[1] // groups
        if is_unshared:
            known = (dy.shape[1],) + dy.shape[2:] + (cg,) + (None,) * nd
            first_kernel_axis = nd + 2
        else:
            known = (dy.shape[1], cg) + (None,) * nd
            first_kernel_axis = 2
        w_shape = fill_shape(filter_shape, known, names["w"], first_kernel_axis)
        spec = build(GRAD_WEIGHTS, nd, x.shape, w_shape, **_opts(
            border_mode, subsample, filter_flip, filter_dilation, num_groups, unshared,
            result_dtype(x, dy), names))
        check_output_grad(spec, dy.shape, names)
        return spec

    spec = _cached(key, ok, make)
    if cuda:
        return _cuda_execute(spec, x, dy, algo, (names["x"], names["y"]))
    dt = spec.np_dtype
    return dispatch.execute(spec, dispatch.canonical(x, spec.x_shape, dt),
                            dispatch.canonical(dy, spec.y_shape, dt), algo)


# ---------------------------------------------------------------------------------------------
# 2D
# ---------------------------------------------------------------------------------------------


def conv2d(input, filters, input_shape=None, filter_shape=None, border_mode="valid",
           subsample=(1, 1), filter_flip=True, filter_dilation=(1, 1), num_groups=1,
           unshared=False, *, algo=None, device=None):
    """2D convolution of ``input`` (N, C, H, W) with ``filters`` (O, C/num_groups, kH, kW), or
    unshared filters (O, oH, oW, C/num_groups, kH, kW). Returns (N, O, oH, oW)."""
    return _forward(2, input, filters, input_shape, filter_shape, border_mode, subsample,
                    filter_flip, filter_dilation, num_groups, unshared, algo, device=device)


def conv2d_grad_wrt_inputs(output_grad, filters, input_shape, filter_shape=None,
                           border_mode="valid", subsample=(1, 1), filter_flip=True,
                           filter_dilation=(1, 1), num_groups=1, unshared=False, *, algo=None, device=None):
    """Gradient of a 2D convolution's output w.r.t. its input, of shape ``input_shape`` (whose
    batch and channel entries may be None). All other arguments are the forward call's."""
    return _grad_input(2, output_grad, filters, input_shape, filter_shape, border_mode, subsample,
                       filter_flip, filter_dilation, num_groups, unshared, algo, device=device)


def conv2d_grad_wrt_weights(input, output_grad, filter_shape, input_shape=None,
                            border_mode="valid", subsample=(1, 1), filter_flip=True,
                            filter_dilation=(1, 1), num_groups=1, unshared=False, *, algo=None, device=None):
    """Gradient of a 2D convolution's output w.r.t. the filters as passed to the forward call
    (``filter_flip`` is accounted for), of shape ``filter_shape`` (channel entries may be None)."""
    return _grad_weights(2, input, output_grad, filter_shape, input_shape, border_mode, subsample,
                         filter_flip, filter_dilation, num_groups, unshared, algo, device=device)


def conv2d_transpose(input, filters, output_shape, filter_shape=None, border_mode="valid",
                     input_dilation=(1, 1), filter_flip=True, filter_dilation=(1, 1),
                     num_groups=1, unshared=False, *, algo=None, device=None):
    """Transposed convolution: the grad-input of the forward convolution whose ``border_mode`` and
    ``subsample`` (= ``input_dilation``) are given. ``filters`` are (C_in, C_out/num_groups, kH, kW)
    with C_in the channels of ``input``."""
    return _grad_input(2, input, filters, output_shape, filter_shape, border_mode, input_dilation,
                       filter_flip, filter_dilation, num_groups, unshared, algo, names=_TRANSPOSE, device=device)


# ---------------------------------------------------------------------------------------------
# 3D (unshared 3D filters are 8-D: an nbconv extension)
# ---------------------------------------------------------------------------------------------


def conv3d(input, filters, input_shape=None, filter_shape=None, border_mode="valid",
           subsample=(1, 1, 1), filter_flip=True, filter_dilation=(1, 1, 1), num_groups=1,
           unshared=False, *, algo=None, device=None):
    """3D convolution of ``input`` (N, C, D, H, W) with ``filters`` (O, C/num_groups, kD, kH, kW)."""
    return _forward(3, input, filters, input_shape, filter_shape, border_mode, subsample,
                    filter_flip, filter_dilation, num_groups, unshared, algo, device=device)


def conv3d_grad_wrt_inputs(output_grad, filters, input_shape, filter_shape=None,
                           border_mode="valid", subsample=(1, 1, 1), filter_flip=True,
                           filter_dilation=(1, 1, 1), num_groups=1, unshared=False, *, algo=None, device=None):
    return _grad_input(3, output_grad, filters, input_shape, filter_shape, border_mode, subsample,
                       filter_flip, filter_dilation, num_groups, unshared, algo, device=device)


def conv3d_grad_wrt_weights(input, output_grad, filter_shape, input_shape=None,
                            border_mode="valid", subsample=(1, 1, 1), filter_flip=True,
                            filter_dilation=(1, 1, 1), num_groups=1, unshared=False, *, algo=None, device=None):
    return _grad_weights(3, input, output_grad, filter_shape, input_shape, border_mode, subsample,
                         filter_flip, filter_dilation, num_groups, unshared, algo, device=device)


def conv3d_transpose(input, filters, output_shape, filter_shape=None, border_mode="valid",
                     input_dilation=(1, 1, 1), filter_flip=True, filter_dilation=(1, 1, 1),
                     num_groups=1, unshared=False, *, algo=None, device=None):
    """3D transposed convolution (not in Theano): see :func:`conv2d_transpose`."""
    return _grad_input(3, input, filters, output_shape, filter_shape, border_mode, input_dilation,
                       filter_flip, filter_dilation, num_groups, unshared, algo, names=_TRANSPOSE, device=device)


# ---------------------------------------------------------------------------------------------
# Compositions
# ---------------------------------------------------------------------------------------------


def causal_conv1d(input, filters, filter_shape, input_shape=None, subsample=1, filter_flip=True,
                  filter_dilation=1, num_groups=1, unshared=False, *, algo=None, device=None):
    """Dilated causal convolution of ``input`` (N, C, L) with ``filters`` (O, C/num_groups, K):
    the input is left-padded by ``filter_dilation * (K - 1)`` and not at all on the right, so the
    output at t sees the inputs up to and including t. Output length ``(L - 1) // subsample + 1``.
    With ``unshared=True`` the filters are (O, out_len, C/num_groups, K)."""
    w = _array(filters, "filters", True)
    nd_w = _filters_ndim(1, unshared)
    check_ndim(w, nd_w, "filters", " for unshared causal convolution" if unshared else "")
    if filter_shape is None:
        raise TypeError("filter_shape is required: the filter length sets the causal padding")
    check_shape_hint(filter_shape, w.shape, "filter_shape", "filters")
    if filter_shape[-1] is None:
        raise ValueError(f"filter_shape[-1] (the filter length) must be given, got {tuple(filter_shape)!r}")
    dilation = int_tuple(filter_dilation, 1, "filter_dilation")
    left = dilation[0] * (w.shape[-1] - 1)
    return _forward(1, input, w, input_shape, filter_shape, ((left, 0),), subsample, filter_flip,
                    dilation, num_groups, unshared, algo, device=device)


def _separable(nd, input, depthwise_filters, pointwise_filters, num_channels, input_shape,
               depthwise_filter_shape, pointwise_filter_shape, border_mode, subsample,
               filter_flip, filter_dilation, algo, device=None):
    x = _array(input, "input", True)
    check_ndim(x, nd + 2, "input")
    num_channels = as_int(num_channels, "num_channels", 1)
    if x.shape[1] != num_channels:
        raise ValueError(f"num_channels={num_channels} does not match the {x.shape[1]} channels of input {x.shape}")
    depthwise = _forward(nd, x, depthwise_filters, input_shape, depthwise_filter_shape, border_mode,
                         subsample, filter_flip, filter_dilation, num_channels, False, algo,
                         names={"x": "input", "w": "depthwise_filters", "y": "output",
                                "w_hint": "depthwise_filter_shape"}, device=device)
    return _forward(nd, depthwise, pointwise_filters, None, pointwise_filter_shape, "valid",
                    (1,) * nd, filter_flip, (1,) * nd, 1, False, algo,
                    names={"x": "depthwise output", "w": "pointwise_filters", "y": "output",
                           "w_hint": "pointwise_filter_shape"}, device=device)


def separable_conv2d(input, depthwise_filters, pointwise_filters, num_channels, input_shape=None,
                     depthwise_filter_shape=None, pointwise_filter_shape=None,
                     border_mode="valid", subsample=(1, 1), filter_flip=True,
                     filter_dilation=(1, 1), *, algo=None, device=None):
    """Depthwise convolution (``num_groups=num_channels``; filters (M*C, 1, kH, kW)) followed by a
    pointwise one (filters (O, M*C, 1, 1)). ``border_mode``, ``subsample`` and ``filter_dilation``
    apply to the depthwise step."""
    return _separable(2, input, depthwise_filters, pointwise_filters, num_channels, input_shape,
                      depthwise_filter_shape, pointwise_filter_shape, border_mode, subsample,
                      filter_flip, filter_dilation, algo, device=device)


def separable_conv3d(input, depthwise_filters, pointwise_filters, num_channels, input_shape=None,
                     depthwise_filter_shape=None, pointwise_filter_shape=None,
                     border_mode="valid", subsample=(1, 1, 1), filter_flip=True,
                     filter_dilation=(1, 1, 1), *, algo=None, device=None):
    """3D twin of :func:`separable_conv2d`."""
    return _separable(3, input, depthwise_filters, pointwise_filters, num_channels, input_shape,
                      depthwise_filter_shape, pointwise_filter_shape, border_mode, subsample,
                      filter_flip, filter_dilation, algo, device=device)


# ---------------------------------------------------------------------------------------------
# Bilinear upsampling (a transposed convolution with a fixed pyramid kernel)
# ---------------------------------------------------------------------------------------------


def bilinear_kernel_1D(ratio, normalize=True):
    """``[1, 2, ..., ratio, ..., 2, 1]`` (length ``2 * ratio - 1``), divided by ``ratio`` if
    ``normalize``; float64."""
    ratio = as_int(ratio, "ratio", 1)
    half = np.arange(1, ratio + 1, dtype=np.float64)
    kern = np.concatenate([half, half[-2::-1]])
    if as_bool(normalize, "normalize"):
        kern /= ratio
    return kern


def bilinear_kernel_2D(ratio, normalize=True):
    """Outer product of the 1D kernels; ``ratio`` is an int or a (row_ratio, col_ratio) pair."""
    if isinstance(ratio, (tuple, list)):
        if len(ratio) != 2:
            raise ValueError(f"ratio must be an int or a (row, col) pair, got {ratio!r}")
        rv, rh = ratio
    else:
        rv = rh = ratio
    return np.outer(bilinear_kernel_1D(rv, normalize), bilinear_kernel_1D(rh, normalize))


def _edge_padded(x):
    n, c, rows, cols = x.shape
    flat = x.reshape(n * c, 1, rows, cols)
    return np.pad(flat, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")


def bilinear_upsampling(input, ratio=None, frac_ratio=None, batch_size=None,
                        num_input_channels=None, use_1D_kernel=True):
    """Upsample (N, C, R, Col) by an integer ``ratio`` (or a fractional ``frac_ratio`` with
    ``use_1D_kernel=False``) with bilinear interpolation, replicating the border as Theano does."""
    x = _array(input, "input")
    check_ndim(x, 4, "input")
    if ratio is not None and frac_ratio is not None:
        raise ValueError("can't use ratio and frac_ratio together")
    if ratio is None and frac_ratio is None:
        raise ValueError("No ratio (or frac_ratio) provided")
    use_1D_kernel = as_bool(use_1D_kernel, "use_1D_kernel")
    if frac_ratio is not None:
        if use_1D_kernel:
            raise ValueError(
                "For fractional ratios 1D kernel method not implemented. "
                "You may want to pass use_1D_kernel as False"
            )
        return frac_bilinear_upsampling(x, frac_ratio)
    ratio = as_int(ratio, "ratio", 1)
    n, c, rows, cols = x.shape
    if batch_size is not None and as_int(batch_size, "batch_size") != n:
        raise ValueError(f"batch_size={batch_size} does not match input shape {x.shape}")
    if num_input_channels is not None and as_int(num_input_channels, "num_input_channels") != c:
        raise ValueError(f"num_input_channels={num_input_channels} does not match input shape {x.shape}")
    padded = _edge_padded(x)
    pad = 2 * ratio - (ratio - 1) // 2 - 1
    if use_1D_kernel:
        k = bilinear_kernel_1D(ratio).astype(x.dtype)
        up_rows = conv2d_grad_wrt_inputs(padded, k[None, None, :, None], (n * c, 1, rows * ratio, cols + 2),
                                         border_mode=(pad, 0), subsample=(ratio, 1))
        out = conv2d_grad_wrt_inputs(up_rows, k[None, None, None, :], (n * c, 1, rows * ratio, cols * ratio),
                                     border_mode=(0, pad), subsample=(1, ratio))
    else:
        k = bilinear_kernel_2D(ratio).astype(x.dtype)
        out = conv2d_grad_wrt_inputs(padded, k[None, None], (n * c, 1, rows * ratio, cols * ratio),
                                     border_mode=(pad, pad), subsample=(ratio, ratio))
    return out.reshape(n, c, rows * ratio, cols * ratio)


def _frac(value, name):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (numerator, denominator) pair, got {value!r}")
    p = as_int(value[0], f"{name}[0]", 1)
    q = as_int(value[1], f"{name}[1]", 1)
    d = gcd(p, q)
    return p // d, q // d


def frac_bilinear_upsampling(input, frac_ratio):
    """Bilinear upsampling by a fractional ratio ``(p, q)`` or ``((p_rows, q_rows), (p_cols, q_cols))``:
    output size ``(R * p - 1) // q + 1`` per axis (ratios reduced by their gcd)."""
    x = _array(input, "input")
    check_ndim(x, 4, "input")
    if not isinstance(frac_ratio, tuple):
        raise ValueError(f"frac_ratio must be a tuple, got {frac_ratio!r}")
    if len(frac_ratio) == 2 and all(isinstance(f, (tuple, list)) for f in frac_ratio):
        (p0, q0), (p1, q1) = _frac(frac_ratio[0], "frac_ratio[0]"), _frac(frac_ratio[1], "frac_ratio[1]")
    else:
        p0, q0 = p1, q1 = _frac(frac_ratio, "frac_ratio")
    n, c, rows, cols = x.shape
    padded = _edge_padded(x)
    double_pad = ((2 * rows - 1) * p0 + 1, (2 * cols - 1) * p1 + 1)
    pad = (double_pad[0] // 2, double_pad[1] // 2)
    kern = bilinear_kernel_2D((p0, p1)).astype(x.dtype)
    pad_kern = np.zeros((1, 1, kern.shape[0] + double_pad[0], kern.shape[1] + double_pad[1]), dtype=x.dtype)
    pad_kern[0, 0, pad[0]:pad[0] + kern.shape[0], pad[1]:pad[1] + kern.shape[1]] = kern
    # As in Theano, the image is the filter bank and the padded pyramid the single input.
    up = conv2d(pad_kern, padded, border_mode="valid", filter_dilation=(p0, p1), subsample=(q0, q1))
    return up.reshape(n, c, up.shape[2], up.shape[3])
