"""Problem keys of the tuning database and the layer signature of the ``*_once`` policies.

A key names everything that can change which algorithm is fastest: operation, direction, device,
dtype, layout, the three shapes, pads, strides, dilations, groups, flip, unshared and the thread
count. It is a readable string (a JSON object key) such as::

    conv/forward/cpu/float32/NCHW/x1x64x56x56/w64x64x3x3/p1-1,1-1/s1,1/d1,1/g1/flip/shared/t2
"""
from __future__ import annotations

from ..spec import NSPATIAL

LAYOUTS = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


def _dims(shape):
    return "x".join(str(v) for v in shape)


def _ints(values):
    return ",".join(str(v) for v in values)


def problem_key(spec, device, threads):
    ex = NSPATIAL - spec.nd
    pads = ",".join(f"{lo}-{hi}" for lo, hi in zip(spec.pad_lo[ex:], spec.pad_hi[ex:]))
    return "/".join((
        "conv", spec.direction, device, spec.dtype, LAYOUTS[spec.nd],
        "x" + _dims(spec.user_x_shape), "w" + _dims(spec.user_w_shape), "p" + pads,
        "s" + _ints(spec.stride[ex:]), "d" + _ints(spec.dilation[ex:]), f"g{spec.groups}",
        "flip" if spec.flip else "corr", "unshared" if spec.unshared else "shared", f"t{threads}",
    ))


def problem_fields(spec, device, threads):
    """The key's fields as a JSON object (stored next to each record, for people and tools)."""
    ex = NSPATIAL - spec.nd
    return {
        "op": "conv", "direction": spec.direction, "device": device, "dtype": spec.dtype,
        "layout": LAYOUTS[spec.nd], "input": list(spec.user_x_shape),
        "filters": list(spec.user_w_shape), "output": list(spec.user_y_shape),
        "pads": [[lo, hi] for lo, hi in zip(spec.pad_lo[ex:], spec.pad_hi[ex:])],
        "strides": list(spec.stride[ex:]), "dilations": list(spec.dilation[ex:]),
        "groups": spec.groups, "flip": spec.flip, "unshared": spec.unshared, "threads": threads,
    }


def layer_signature(spec, device, threads):
    """Everything but the batch size and the spatial sizes (input, output and, for unshared
    filters, their output grid): the unit a ``*_once`` policy decides for."""
    return (
        spec.direction, device, spec.dtype, spec.nd, spec.in_channels, spec.out_channels,
        spec.groups, spec.kernel, spec.pad_lo, spec.pad_hi, spec.stride, spec.dilation, spec.flip,
        spec.unshared, threads,
    )
