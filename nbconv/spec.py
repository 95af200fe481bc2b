"""The canonical convolution problem.

Every public function turns its Theano-style arguments into one frozen :class:`ConvSpec` here, and
every validation error is raised here, before any array reaches a kernel (Numba kernels do no bounds
checking). The spec always describes the *forward* convolution (``border_mode`` is the forward
padding); ``direction`` says which of the three linear maps of that convolution is computed:

* ``forward``      y  = conv(x, w)
* ``grad_input``   dx = d<conv(x, w), dy>/dx    (also the transposed convolution)
* ``grad_weights`` dw = d<conv(x, w), dy>/dw

Problems of 1, 2 or 3 spatial dimensions are normalised to three spatial axes, with singleton axes
in front, so one compiled kernel serves all ranks. Weights are ``(O, C/G, kD, kH, kW)``, or for
unshared (locally connected) convolution ``(O, oD, oH, oW, C/G, kD, kH, kW)``; both layouts end with
the three kernel axes, which is what ``filter_flip`` reverses.
"""
from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass, replace
from functools import cached_property
from math import prod

import numpy as np

FORWARD = "forward"
GRAD_INPUT = "grad_input"
GRAD_WEIGHTS = "grad_weights"
DIRECTIONS = (FORWARD, GRAD_INPUT, GRAD_WEIGHTS)

#: Axes of the canonical layout; user problems of lower rank get leading singleton axes.
NSPATIAL = 3

_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


class AlgorithmNotApplicable(ValueError):
    """An explicitly requested algorithm cannot compute the requested problem."""


@dataclass(frozen=True)
class ConvSpec:
    """One convolution problem, in canonical form (three spatial axes, per-axis pads lo/hi)."""

    direction: str
    nd: int  # spatial rank the user asked for (1, 2 or 3)
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple  # (D, H, W)
    kernel: tuple  # (kD, kH, kW)
    out_size: tuple  # (oD, oH, oW)
    pad_lo: tuple
    pad_hi: tuple
    stride: tuple
    dilation: tuple
    flip: bool
    unshared: bool
    dtype: str

    # Specs are dictionary keys on the hot path: hash once (cached_property writes the instance
    # __dict__ directly, which a frozen dataclass allows; the derived shapes below are cached too).
    @cached_property
    def _hash(self):
        return hash(self.key())

    def __hash__(self):
        return self._hash

    @cached_property
    def correlation(self):
        """This problem with ``flip=False``: what an algorithm computes on weights already
        flipped (see :func:`nbconv.dispatch.execute`)."""
        return replace(self, flip=False) if self.flip else self

    # -- shapes of the three arrays, canonical (5-D / 8-D) and as the user sees them -------------
    @cached_property
    def x_shape(self):
        return (self.batch, self.in_channels) + self.in_size

    @cached_property
    def y_shape(self):
        return (self.batch, self.out_channels) + self.out_size

    @cached_property
    def w_shape(self):
        cg = self.in_channels // self.groups
        if self.unshared:
            return (self.out_channels,) + self.out_size + (cg,) + self.kernel
        return (self.out_channels, cg) + self.kernel

    def _user(self, shape, lead):
        """Drop the leading singleton spatial axes added by the normalisation."""
        extra = NSPATIAL - self.nd
        if not extra:
            return shape
        if self.unshared and lead == "w":
            o, grid, cg, k = shape[0], shape[1:4], shape[4], shape[5:]
            return (o,) + grid[extra:] + (cg,) + k[extra:]
        return shape[:2] + shape[2 + extra:]

    @cached_property
    def user_x_shape(self):
        return self._user(self.x_shape, "x")

    @cached_property
    def user_y_shape(self):
        return self._user(self.y_shape, "y")

    @cached_property
    def user_w_shape(self):
        return self._user(self.w_shape, "w")

    @cached_property
    def result_shape(self):
        """Canonical shape of the array this spec's direction produces."""
        return {FORWARD: self.y_shape, GRAD_INPUT: self.x_shape, GRAD_WEIGHTS: self.w_shape}[
            self.direction
        ]

    @cached_property
    def user_result_shape(self):
        return {
            FORWARD: self.user_y_shape,
            GRAD_INPUT: self.user_x_shape,
            GRAD_WEIGHTS: self.user_w_shape,
        }[self.direction]

    @cached_property
    def dilated_kernel(self):
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def group_in(self):
        return self.in_channels // self.groups

    @property
    def group_out(self):
        return self.out_channels // self.groups

    @cached_property
    def np_dtype(self):
        return np.dtype(self.dtype)

    def flops(self):
        """Multiply-adds x 2 of the direct algorithm; the same for all three directions."""
        return 2 * self.batch * self.out_channels * prod(self.out_size) * self.group_in * prod(
            self.kernel
        )

    def with_direction(self, direction):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        return replace(self, direction=direction)

    def key(self):
        """Everything that identifies the problem (for caches and the tuning database)."""
        return (
            self.direction, self.nd, self.batch, self.in_channels, self.out_channels, self.groups,
            self.in_size, self.kernel, self.out_size, self.pad_lo, self.pad_hi, self.stride,
            self.dilation, self.flip, self.unshared, self.dtype,
        )

    def describe(self):
        """A short human-readable summary, e.g. for the demo and error messages."""
        ex = NSPATIAL - self.nd
        parts = [
            f"x{self.user_x_shape}",
            f"w{self.user_w_shape}",
            f"y{self.user_y_shape}",
        ]
        pads = list(zip(self.pad_lo[ex:], self.pad_hi[ex:]))
        if any(p != (0, 0) for p in pads):
            parts.append(f"pad={pads}")
        if any(s != 1 for s in self.stride):
            parts.append(f"stride={self.stride[ex:]}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dil={self.dilation[ex:]}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.unshared:
            parts.append("unshared")
        if not self.flip:
            parts.append("corr")
        parts.append(self.dtype)
        return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Argument parsing. Each helper names the offending parameter and value in its error.
# ---------------------------------------------------------------------------------------------


#: Kernels take int64 parameters; anything this large is a mistake, not a convolution.
_INT_LIMIT = 2**31 - 1


def as_int(value, name, minimum=None):
    """A Python/NumPy integer (never a bool or a float, even an integral one)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > _INT_LIMIT:
        raise ValueError(f"{name}={value} is too large (limit {_INT_LIMIT})")
    return value


def as_bool(value, name):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")


def int_tuple(value, nd, name, minimum=1):
    """``value`` as an nd-tuple of ints >= minimum; a bare int is repeated on every axis."""
    if isinstance(value, (list, tuple)):
        if len(value) != nd:
            raise ValueError(f"{name} must have {nd} elements, got {value!r}")
        return tuple(as_int(v, f"{name}[{i}]", minimum) for i, v in enumerate(value))
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return int_tuple(value.tolist(), nd, name, minimum)
    return (as_int(value, name, minimum),) * nd


def parse_border_mode(border_mode, nd, dilated_kernel, name="border_mode"):
    """Per-axis (lo, hi) pads of the forward convolution for any Theano ``border_mode`` form.

    'valid' -> 0, 'full' -> dilated_k - 1, 'half' -> dilated_k // 2 (on both sides, also for even
    kernels), an int -> that pad on every axis, or a tuple of nd entries each an int or a (lo, hi)
    pair (asymmetric pads are accepted for any rank, not only 2D as in Theano).
    """
    if isinstance(border_mode, str):
        if border_mode == "valid":
            return (0,) * nd, (0,) * nd
        if border_mode == "full":
            p = tuple(k - 1 for k in dilated_kernel)
            return p, p
        if border_mode == "half":
            p = tuple(k // 2 for k in dilated_kernel)
            return p, p
        raise ValueError(
            f"{name} must be 'valid', 'full', 'half', an int or a tuple of {nd} ints or (lo, hi) "
            f"pairs; got {border_mode!r}"
        )
    if isinstance(border_mode, (list, tuple)):
        if len(border_mode) != nd:
            raise ValueError(f"{name} must have {nd} elements (one per spatial axis), got {border_mode!r}")
        lo, hi = [], []
        for i, m in enumerate(border_mode):
            if isinstance(m, (list, tuple)):
                if len(m) != 2:
                    raise ValueError(f"{name}[{i}] must be an int or a (lo, hi) pair, got {m!r}")
                a = _pad_int(m[0], f"{name}[{i}][0]")
                b = _pad_int(m[1], f"{name}[{i}][1]")
            else:
                a = b = _pad_int(m, f"{name}[{i}]")
            lo.append(a)
            hi.append(b)
        return tuple(lo), tuple(hi)
    p = _pad_int(border_mode, name)
    return (p,) * nd, (p,) * nd


def _pad_int(value, name):
    try:
        return as_int(value, name, 0)
    except TypeError:
        raise ValueError(
            f"{name} must be a non-negative int (or 'valid'/'full'/'half' for the whole "
            f"border_mode), got {value!r}"
        ) from None


def out_size_1axis(i, k, lo, hi, s, d):
    return (i + lo + hi - ((k - 1) * d + 1)) // s + 1


# ---------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------


def as_float_array(a, name):
    """``a`` as an ndarray of a supported float dtype; TypeError for anything else."""
    if not isinstance(a, np.ndarray):
        if a is None:
            raise TypeError(f"{name} must be an array, got None")
        try:
            a = np.asarray(a)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if a.dtype.kind == "f" and not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if a.dtype not in _DTYPES:
        raise TypeError(
            f"{name} must have dtype float32 or float64, got {a.dtype} "
            f"(cast it explicitly, e.g. {name}.astype(np.float32))"
        )
    return a


def result_dtype(*arrays):
    """float64 if any operand is float64, else float32 (never a silent loss of precision)."""
    for a in arrays:
        if a.dtype == np.float64:
            return np.dtype(np.float64)
    return np.dtype(np.float32)


def check_ndim(a, ndim, name, what=""):
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D{what}, got shape {a.shape}")


def check_shape_hint(hint, actual, name, array_name):
    """A Theano shape hint: None, or a sequence like ``actual`` where None means 'unknown'."""
    if hint is None:
        return
    if not isinstance(hint, (list, tuple)):
        raise TypeError(f"{name} must be None or a tuple, got {hint!r}")
    if len(hint) != len(actual):
        raise ValueError(f"{name} must have {len(actual)} elements, got {tuple(hint)!r}")
    for i, (h, a) in enumerate(zip(hint, actual)):
        if h is None:
            continue
        h = as_int(h, f"{name}[{i}]")
        if h != a:
            raise ValueError(
                f"{name}={tuple(hint)!r} contradicts the shape of {array_name} {tuple(actual)!r} "
                f"(element {i})"
            )


def fill_shape(shape, known, name, min_spatial_from):
    """Complete a required shape argument (``input_shape`` / ``filter_shape``).

    Entries that are None are taken from ``known`` (same length, None where not derivable);
    entries from index ``min_spatial_from`` on must be given as positive ints.
    """
    if not isinstance(shape, (list, tuple)):
        raise TypeError(f"{name} must be a tuple, got {shape!r}")
    if len(shape) != len(known):
        raise ValueError(f"{name} must have {len(known)} elements, got {tuple(shape)!r}")
    out = []
    for i, (s, k) in enumerate(zip(shape, known)):
        if s is None:
            if k is None or i >= min_spatial_from:
                raise ValueError(f"{name}[{i}] must be given (got None in {tuple(shape)!r})")
            out.append(k)
        else:
            out.append(as_int(s, f"{name}[{i}]", 1 if i >= min_spatial_from else 0))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Building the spec
# ---------------------------------------------------------------------------------------------


def build(
    direction, nd, x_shape, w_shape, *, border_mode, subsample, filter_dilation, num_groups,
    unshared, filter_flip, dtype, names,
):
    """The spec of the forward convolution x_shape (*) w_shape, for ``direction``.

    ``x_shape``/``w_shape`` are the user-rank shapes (already checked for length). ``names`` maps
    'x', 'w' to the parameter names of the calling function, so errors name what the user passed.
    """
    nx, nw = names["x"], names["w"]
    stride = int_tuple(subsample, nd, names.get("subsample", "subsample"))
    dil = int_tuple(filter_dilation, nd, "filter_dilation")
    groups = as_int(num_groups, "num_groups", 1)
    flip = as_bool(filter_flip, "filter_flip")
    unshared = as_bool(unshared, "unshared")

    n, c = x_shape[0], x_shape[1]
    in_size = tuple(x_shape[2:])
    o = w_shape[0]
    if unshared:
        grid, cg, ksize = tuple(w_shape[1:1 + nd]), w_shape[1 + nd], tuple(w_shape[2 + nd:])
    else:
        grid, cg, ksize = None, w_shape[1], tuple(w_shape[2:])

    for i, v in enumerate(in_size):
        if v < 1:
            raise ValueError(f"{nx} spatial dimensions must be >= 1, got shape {tuple(x_shape)}")
    for v in ksize:
        if v < 1:
            raise ValueError(f"{nw} spatial dimensions must be >= 1, got shape {tuple(w_shape)}")
    if c % groups:
        raise ValueError(f"num_groups={groups} must divide the {c} channels of {nx}")
    if o % groups:
        raise ValueError(f"num_groups={groups} must divide the {o} output channels of {nw}")
    if cg * groups != c:
        raise ValueError(
            f"channel mismatch: {nx} has {c} channels but {nw} expects {cg} per group x "
            f"num_groups={groups} = {cg * groups} ({nx} shape {tuple(x_shape)}, {nw} shape "
            f"{tuple(w_shape)})"
        )

    dk = tuple((k - 1) * d + 1 for k, d in zip(ksize, dil))
    lo, hi = parse_border_mode(border_mode, nd, dk)
    out_size = tuple(
        out_size_1axis(i, k, a, b, s, d)
        for i, k, a, b, s, d in zip(in_size, ksize, lo, hi, stride, dil)
    )
    if any(v < 1 for v in out_size):
        raise ValueError(
            f"the convolution would produce an empty output {out_size}: {nx} spatial size "
            f"{in_size} padded by border_mode={border_mode!r} (pads lo={lo}, hi={hi}) is smaller "
            f"than the dilated kernel {dk} of {nw}"
        )
    if unshared and grid != out_size:
        raise ValueError(
            f"unshared {nw} of shape {tuple(w_shape)} have an output grid {grid} that does not "
            f"match the convolution's output size {out_size}"
        )

    ex = NSPATIAL - nd
    one, zero = (1,) * ex, (0,) * ex
    return ConvSpec(
        direction=direction, nd=nd, batch=n, in_channels=c, out_channels=o, groups=groups,
        in_size=one + in_size, kernel=one + ksize, out_size=one + out_size,
        pad_lo=zero + lo, pad_hi=zero + hi, stride=one + stride, dilation=one + dil,
        flip=flip, unshared=unshared, dtype=_DTYPES[np.dtype(dtype)],
    )


def check_output_grad(spec, dy_shape, names):
    """``output_grad`` must be exactly the forward output of the spec."""
    if tuple(dy_shape) != spec.user_y_shape:
        raise ValueError(
            f"{names['y']} has shape {tuple(dy_shape)} but {names['x']} shape {spec.user_x_shape} "
            f"and filters {spec.user_w_shape} with these border_mode/subsample/filter_dilation "
            f"produce an output of shape {spec.user_y_shape}"
        )
