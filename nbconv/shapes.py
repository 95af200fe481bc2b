"""Theano's convolution shape arithmetic (``get_conv_output_shape`` and friends).

Same names, arguments and ``None``-means-unknown convention as ``theano.tensor.nnet.abstract_conv``,
with these deliberate differences (Theano is inconsistent here):

* ``border_mode_to_pad`` accepts a bare int, as the conv functions do.
* ``get_conv_gradweights_shape`` with ``num_groups > 1`` returns the real kernel shape
  ``(out_ch, in_ch // num_groups, ...)`` (Theano divided the output channels instead).
* ``get_conv_gradweights_shape_1axis`` returns an int, and raises ``ValueError`` when no integer
  kernel size is consistent with the shapes (Theano returned a float).
* ``get_conv_gradinputs_shape`` reads the channel count of unshared kernel shapes correctly.
* Asymmetric ``(lo, hi)`` pads are accepted for every rank, and unknown ``border_mode`` strings or
  negative pads raise ``ValueError`` naming the value.
"""
from __future__ import annotations

from .spec import as_int

_MODES = ("valid", "full", "half")


def _pads_1axis(border_mode, dil_kernel):
    if isinstance(border_mode, str):
        if border_mode == "half":
            return dil_kernel // 2, dil_kernel // 2
        if border_mode == "full":
            return dil_kernel - 1, dil_kernel - 1
        if border_mode == "valid":
            return 0, 0
        raise ValueError(f"border_mode must be one of {_MODES}, an int or a (lo, hi) pair, got {border_mode!r}")
    if isinstance(border_mode, (tuple, list)):
        if len(border_mode) != 2:
            raise ValueError(f"a per-axis border_mode must be an int or a (lo, hi) pair, got {border_mode!r}")
        lo, hi = border_mode
    else:
        lo = hi = border_mode
    lo = as_int(lo, "border_mode")
    hi = as_int(hi, "border_mode")
    if lo < 0 or hi < 0:
        raise ValueError(f"border_mode must be >= 0, got {border_mode!r}")
    return lo, hi


def _per_axis(border_mode, nd):
    if isinstance(border_mode, (tuple, list)):
        if len(border_mode) != nd:
            raise ValueError(f"border_mode must have {nd} elements, got {border_mode!r}")
        return tuple(border_mode)
    return (border_mode,) * nd


def _seq(value, nd, name):
    if value is None:
        return (1,) * nd
    if isinstance(value, (tuple, list)):
        if len(value) != nd:
            raise ValueError(f"{name} must have {nd} elements, got {value!r}")
        return tuple(value)
    try:
        return tuple(value)  # numpy arrays
    except TypeError:
        return (value,) * nd


def get_conv_shape_1axis(image_shape, kernel_shape, border_mode, subsample, dilation=1):
    """Output size on one axis: ``(i + lo + hi - ((k - 1) * d + 1)) // s + 1``; None if unknown."""
    if None in (image_shape, kernel_shape, border_mode, subsample, dilation):
        return None
    dk = (kernel_shape - 1) * dilation + 1
    lo, hi = _pads_1axis(border_mode, dk)
    return (image_shape + lo + hi - dk) // subsample + 1


def get_conv_output_shape(image_shape, kernel_shape, border_mode, subsample, filter_dilation=None):
    """``(batch, out_channels, *spatial)`` of a convolution (the kernel spatial dims are the last
    ``nd`` entries of ``kernel_shape``, so unshared kernel shapes work too)."""
    nd = len(image_shape) - 2
    subsample = _seq(subsample, nd, "subsample")
    dilation = _seq(filter_dilation, nd, "filter_dilation")
    modes = _per_axis(border_mode, nd)
    kshp = tuple(kernel_shape)[-nd:]
    out = tuple(
        get_conv_shape_1axis(image_shape[2 + i], kshp[i], modes[i], subsample[i], dilation[i])
        for i in range(nd)
    )
    return (image_shape[0], kernel_shape[0]) + out


def get_conv_gradweights_shape_1axis(image_shape, top_shape, border_mode, subsample, dilation):
    """Kernel size on one axis from input and output sizes; None when it cannot be determined
    (unknown sizes, ``subsample != 1`` or ``'half'``)."""
    if None in (image_shape, top_shape, border_mode, subsample, dilation):
        return None
    if subsample != 1 or (isinstance(border_mode, str) and border_mode == "half"):
        return None
    if isinstance(border_mode, str) and border_mode == "full":
        span = top_shape - image_shape
    elif isinstance(border_mode, str) and border_mode == "valid":
        span = image_shape - top_shape
    else:
        lo, hi = _pads_1axis(border_mode, 1)
        span = image_shape + lo + hi - top_shape
    if span < 0 or span % dilation:
        raise ValueError(
            f"no kernel size is consistent with image size {image_shape}, output size {top_shape}, "
            f"border_mode={border_mode!r} and dilation {dilation}"
        )
    return span // dilation + 1


def get_conv_gradweights_shape(
    image_shape, top_shape, border_mode, subsample, filter_dilation=None, num_groups=1, unshared=False
):
    """Kernel shape ``(out_ch, in_ch // num_groups, *k)`` (unshared: ``(out_ch, *out_grid,
    in_ch // num_groups, *k)``) from input and output shapes."""
    nd = len(image_shape) - 2
    subsample = _seq(subsample, nd, "subsample")
    dilation = _seq(filter_dilation, nd, "filter_dilation")
    modes = _per_axis(border_mode, nd)
    num_groups = as_int(num_groups, "num_groups", 1)
    nchan = image_shape[1] // num_groups if image_shape[1] is not None else None
    nkern = top_shape[1]
    out = tuple(
        get_conv_gradweights_shape_1axis(image_shape[2 + i], top_shape[2 + i], modes[i], subsample[i], dilation[i])
        for i in range(nd)
    )
    if unshared:
        return (nkern,) + tuple(top_shape[2:]) + (nchan,) + out
    return (nkern, nchan) + out


def get_conv_gradinputs_shape_1axis(kernel_shape, top_shape, border_mode, subsample, dilation):
    """Input size on one axis from kernel and output sizes; None when unknown or ``subsample != 1``
    (then several input sizes map to the same output)."""
    if None in (kernel_shape, top_shape, border_mode, subsample, dilation):
        return None
    if subsample != 1:
        return None
    dk = (kernel_shape - 1) * dilation + 1
    lo, hi = _pads_1axis(border_mode, dk)
    return top_shape - lo - hi + dk - 1


def get_conv_gradinputs_shape(kernel_shape, top_shape, border_mode, subsample, filter_dilation=None, num_groups=1):
    """Input shape ``(batch, in_ch, *spatial)`` from kernel and output shapes."""
    nd = len(top_shape) - 2
    subsample = _seq(subsample, nd, "subsample")
    dilation = _seq(filter_dilation, nd, "filter_dilation")
    modes = _per_axis(border_mode, nd)
    num_groups = as_int(num_groups, "num_groups", 1)
    kernel_shape = tuple(kernel_shape)
    nchan = kernel_shape[-nd - 1]
    if nchan is not None:
        nchan = nchan * num_groups
    kshp = kernel_shape[-nd:]
    out = tuple(
        get_conv_gradinputs_shape_1axis(kshp[i], top_shape[2 + i], modes[i], subsample[i], dilation[i])
        for i in range(nd)
    )
    return (top_shape[0], nchan) + out


def check_conv_gradinputs_shape(image_shape, kernel_shape, output_shape, border_mode, subsample, filter_dilation=None):
    """False if a convolution of ``image_shape`` by ``kernel_shape`` cannot produce ``output_shape``;
    True otherwise (including when unknown entries prevent the check)."""
    image_shape, kernel_shape, output_shape = tuple(image_shape), tuple(kernel_shape), tuple(output_shape)
    nd = len(image_shape) - 2
    if len(output_shape) != len(image_shape) or len(kernel_shape) not in (nd + 2, 2 * nd + 2):
        return False
    if len(_seq(subsample, nd, "subsample")) != nd:
        return False
    if filter_dilation is not None and len(_seq(filter_dilation, nd, "filter_dilation")) != nd:
        return False
    computed = get_conv_output_shape(image_shape, kernel_shape, border_mode, subsample, filter_dilation)
    return all(g is None or c is None or int(g) == int(c) for g, c in zip(output_shape, computed))


def border_mode_to_pad(mode, convdim, kshp):
    """``((lo, hi),) * convdim`` pads for ``mode``; ``kshp`` is the (dilated) kernel size per axis."""
    convdim = as_int(convdim, "convdim", 1)
    kshp = _seq(kshp, convdim, "kshp")
    if isinstance(mode, str):
        if mode not in _MODES:
            raise ValueError(f"Unsupported border_mode {mode!r}: must be one of {_MODES}, an int or a tuple")
        return tuple(_pads_1axis(mode, k) for k in kshp)
    return tuple(_pads_1axis(m, 1) for m in _per_axis(mode, convdim))


def assert_conv_shape(shape):
    """Return ``tuple(shape)``; ValueError if the batch or channel dim is < 0 or a spatial dim
    is <= 0 (None entries are unknown and pass)."""
    out = tuple(shape)
    for i, n in enumerate(out):
        if n is None:
            continue
        if i < 2 and n < 0:
            raise ValueError(f"The convolution would produce an invalid shape (dim[{i}]: {n} < 0).")
        if i >= 2 and n <= 0:
            raise ValueError(f"The convolution would produce an invalid shape (dim[{i}]: {n} <= 0).")
    return out
