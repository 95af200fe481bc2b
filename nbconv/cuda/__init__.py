"""CUDA algorithms (Numba ``@cuda.jit`` kernels); importing this package registers them.

The twins of :mod:`nbconv.cpu`, file for file where an algorithm exists on both (``direct``,
``im2col``, ``depthwise``, ``unshared_gemm``), plus ``implicit_gemm``. Each module exposes
``forward``, ``grad_input`` and ``grad_weights`` taking and returning Numba device arrays in the
canonical layout (see :mod:`nbconv.registry`), and ``supports`` / ``workspace``.

Importing needs no GPU and touches no device: kernels compile at their first launch. It does import
``numba.cuda`` (~0.1 s), so :mod:`nbconv` imports this package only when a call involves device
arrays or ``device='cuda'``; ``import nbconv.cuda`` registers the algorithms explicitly (e.g. to
list them with ``nbconv.registry.algorithms(device='cuda')``). Launch configuration (block sizes,
GEMM tiles, workspace limit): :mod:`nbconv.cuda.launch`.
"""
from math import prod

from ..registry import Algorithm, register
from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import depthwise, direct, im2col, implicit_gemm, launch, unshared
from .launch import ceil_div

# Predicted seconds for the `guess` policy. These are a model, not measurements (no GPU was
# available when they were written; `python -m nbconv.cuda.bench` measures them): a launch cost
# per kernel plus flops at a rate per algorithm (float64 at half the float32 rate), GEMMs
# counting the flops of their padded tiles, plus the bytes im2col's columns move.
_LAUNCH = 5e-6
_BANDWIDTH = 1.5e12


def _rate(spec, f32):
    return f32 if spec.dtype == "float32" else f32 / 2


def _taps(spec):
    return prod(spec.kernel)


def _tiled_flops(spec, m, n, k, z):
    """Flops of z (m x k) @ (k x n) products as the tiled GEMM computes them (tiles padded)."""
    bm, bn = launch.gemm_tile(spec.np_dtype, m)[:2]
    return 2.0 * z * ceil_div(m, bm) * bm * ceil_div(n, bn) * bn * k


def _gemm_flops(spec):
    """Flops of the GEMMs of the implicit GEMM / im2col algorithms (one per group)."""
    P, G = prod(spec.out_size), spec.groups
    cgk = spec.group_in * _taps(spec)
    if spec.direction == FORWARD:
        return _tiled_flops(spec, spec.group_out, spec.batch * P, cgk, G)
    if spec.direction == GRAD_INPUT:
        return _tiled_flops(spec, spec.group_in, spec.batch * prod(spec.in_size),
                            spec.group_out * _taps(spec), G)
    return _tiled_flops(spec, spec.group_out, cgk, spec.batch * P, G)


def _direct_estimate(spec):
    launches = 2 if spec.direction == GRAD_WEIGHTS else 1
    return launches * _LAUNCH + spec.flops() / _rate(spec, 0.3e12 if spec.unshared else 0.5e12)


def _implicit_estimate(spec):
    launches = 2 if spec.direction == GRAD_WEIGHTS else 1
    return launches * _LAUNCH + _gemm_flops(spec) / _rate(spec, 6e12)


def _im2col_estimate(spec):
    # the column matrix: (C*K, N*P); grad-input multiplies W^T (CgK x Og) into it, the strides
    # costing nothing (unlike implicit GEMM's transposed gather, which multiplies by zeros)
    P, G = spec.batch * prod(spec.out_size), spec.groups
    cgk = spec.group_in * _taps(spec)
    m, n, k = {FORWARD: (spec.group_out, P, cgk), GRAD_INPUT: (cgk, P, spec.group_out),
               GRAD_WEIGHTS: (spec.group_out, cgk, P)}[spec.direction]
    cols = spec.batch * spec.in_channels * _taps(spec) * prod(spec.out_size)
    return (3 * _LAUNCH + _tiled_flops(spec, m, n, k, G) / _rate(spec, 7e12)
            + 2 * cols * spec.np_dtype.itemsize / _BANDWIDTH)


def _depthwise_estimate(spec):
    moved = (prod(spec.x_shape) + prod(spec.y_shape)) * spec.np_dtype.itemsize
    return 2 * _LAUNCH + moved / _BANDWIDTH + spec.flops() / _rate(spec, 1e12)


def _unshared_estimate(spec):
    cgk = spec.group_in * _taps(spec)
    m, n, k = {
        FORWARD: (spec.batch, spec.group_out, cgk),
        GRAD_INPUT: (spec.batch, cgk, spec.group_out),
        GRAD_WEIGHTS: (spec.group_out, cgk, spec.batch),
    }[spec.direction]
    flops = _tiled_flops(spec, m, n, k, prod(spec.out_size) * spec.groups)
    return 2 * _LAUNCH + flops / _rate(spec, 6e12)


def _register(name, module, description, estimate):
    run = {FORWARD: module.forward, GRAD_INPUT: module.grad_input, GRAD_WEIGHTS: module.grad_weights}
    extra = {k: getattr(module, k) for k in ("supports", "workspace") if hasattr(module, k)}
    register(Algorithm(name=name, device="cuda", run=run, description=description,
                       estimate=estimate, deterministic=True, **extra))


_register("direct", direct, "one thread per output / input element; grad-weights block reductions",
          _direct_estimate)
_register("unshared_gemm", unshared,
          "locally connected layers: one tiled GEMM per (output position, group), patches gathered",
          _unshared_estimate)
_register("depthwise", depthwise,
          "one input channel per group: input tiles in shared memory; grad-weights block reductions",
          _depthwise_estimate)
_register("im2col", im2col, "im2col/col2im kernels around a tiled shared-memory GEMM, chunked",
          _im2col_estimate)
_register("implicit_gemm", implicit_gemm,
          "tiled shared-memory GEMM gathering the input while loading its tiles; no column buffer",
          _implicit_estimate)
