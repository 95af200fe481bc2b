"""CPU algorithms (Numba ``@njit(parallel=True)`` kernels); importing this package registers them.

Each module exposes ``forward``, ``grad_input`` and ``grad_weights`` (and optionally ``supports``
and ``workspace``); registration order is the tie-break order of the ``guess`` policy.
"""
from math import prod

from ..registry import Algorithm, register
from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import depthwise, direct, gemm1x1, im2col, unshared

# Predicted seconds for the `guess` policy: a fixed launch cost plus flops at the rate measured for
# each algorithm on the benchmark suite (2 cores, float32).
_LAUNCH = 20e-6


def _direct_estimate(spec):
    # unshared problems walk 8-D weights tap by tap: ~1.5 GFLOP/s against ~12 for shared ones
    return _LAUNCH + spec.flops() / (1.5e9 if spec.unshared else 12e9)


def _im2col_estimate(spec):
    # GEMMs at ~80 GFLOP/s (60-130 measured on the dense suite cases) plus writing and reading
    # the column matrix once at ~20 GB/s; a kernel launch and a BLAS call per chunk
    cols = spec.batch * spec.in_channels * prod(spec.kernel) * prod(spec.out_size)
    return 3 * _LAUNCH + spec.flops() / 80e9 + 2 * cols * spec.np_dtype.itemsize / 20e9


def _register(name, module, description, estimate, **extra):
    extra.update({k: getattr(module, k) for k in ("supports", "workspace") if hasattr(module, k)})
    run = {d: getattr(module, d) for d in (FORWARD, GRAD_INPUT, GRAD_WEIGHTS) if hasattr(module, d)}
    register(Algorithm(name=name, device="cpu", run=run, description=description, estimate=estimate, **extra))


_register("direct", direct, "direct loops, padding clipped per tap; every problem, every direction",
          _direct_estimate, exact_nonfinite=True)
_register("unshared_gemm", unshared,
          "locally connected layers: one (N x K) @ (K x O) product per output position",
          lambda spec: _LAUNCH + spec.flops() / 40e9, flips=True)
# mbv2_dw (3x3, 56x56, float32): ~33 GFLOP/s on 2 cores in all three directions
_register("depthwise", depthwise,
          "one input channel per group (any multiplier): padded plane, 3 taps fused per pass",
          lambda spec: _LAUNCH + spec.flops() / 30e9)
_register("im2col", im2col,
          "Caffe's CorrMM: im2col/col2im kernels around BLAS GEMMs, chunked to a workspace limit",
          _im2col_estimate)
from . import im2col_flat  # noqa: E402


def _im2col_flat_estimate(spec):
    # im2col's GEMMs widened by the junk columns, the column matrix written once in long copies
    g = im2col_flat._grid(spec)
    cols = spec.batch * spec.in_channels * prod(spec.kernel) * g.Lb
    widen = g.Lb / (spec.out_size[0] * spec.out_size[1] * spec.out_size[2])
    return 4 * _LAUNCH + widen * spec.flops() / 80e9 + cols * spec.np_dtype.itemsize / 20e9


_register("im2col_flat", im2col_flat,
          "im2col over flattened stride-phase planes: one contiguous copy per column row, the GEMMs "
          "widened by each row's junk columns; whole images per chunk",
          _im2col_flat_estimate)
# r50_1x1_14: ~170 GFLOP/s measured, BLAS-bound
_register("gemm_1x1", gemm1x1, "1x1 kernels: batched GEMMs on views (strided or padded: gathered input)",
          lambda spec: 2 * _LAUNCH + spec.flops() / 150e9, exact_nonfinite=True)

from . import direct_serial, flat  # noqa: E402

# Single-threaded kernels: no pool wake-up (~10-20 us per parallel launch measured here), so they
# win only on problems of a few hundred kFLOP, like LeNet's first layer.
_register("direct_serial", direct_serial,
          "the direct kernels on the calling thread only: tiny problems, every direction",
          lambda spec: 1e-6 + spec.flops() / (0.4e9 if spec.unshared else 5e9), exact_nonfinite=True,
          numba_only=True)
_register("flat", flat,
          "stride 1, single-threaded: each tap one long multiply-add over flattened padded planes",
          lambda spec: 2e-6 + spec.flops() / 12e9, flips=True, numba_only=True)

from . import winograd  # noqa: E402


def _winograd_estimate(spec):
    # the 36 GEMMs at im2col's rate when all their dimensions are >= 32 (measured: 63-110 GFLOP/s
    # per core, less with fewer channels per group or tiles per chunk), the transforms at ~1.3 ns
    # per transformed element and core (V, M and the weights', measured single-threaded)
    flops, dim, elements = winograd.cost(spec)
    return 4 * _LAUNCH + flops / (80e9 * min(1.0, dim / 32)) + elements * 0.7e-9


_register("winograd", winograd,
          "F(4x4, 3x3) Winograd: tile transforms around 36 stacked GEMMs; stride 1, kernels up to 3x3",
          _winograd_estimate, flips=True)

from . import grouped  # noqa: E402

_register("grouped_direct", grouped, "few channels per group: taps as flat offsets into unpadded input planes, up to 9 fused per vector pass", grouped.estimate)

from . import fft  # noqa: E402


def _fft_estimate(spec):
    # 1-thread CPU time on the loaded 2-core machine (90 problem-directions, 80% of pred/meas in
    # 0.7-1.2) fits pocketfft at 7 GFLOP/s (5 n log2 n per complex line), the per-frequency
    # products at 40 GFLOP/s plus ~30 ns each, the kernel's DFT-by-GEMM steps at ~35, the arrays
    # streamed at ~7.7 GB/s and ~10 us per library call. Scaled like im2col's estimate (~0.8 x
    # its 1-thread time) where the work runs on both cores, and by 1.44 where it is serial: the
    # products (each kept below OpenBLAS's threading size) and Python.
    transforms, dft, product, products, moved, calls = fft.cost(spec)
    return (calls * 14e-6 + transforms / 8.8e9 + dft / 45e9 + product / 28e9 + products * 43e-9
            + moved / 9.6e9)


_register("fft", fft, "real FFTs over the spatial axes, one complex GEMM per frequency; large kernels", _fft_estimate)

from . import phase_direct  # noqa: E402


def _phase_direct_estimate(spec):
    # ~150 GFLOP/s on the widened grid for the 4-channel blocks (140-190 measured on the suite's
    # stem, strided, 3x3 and 3D layers, 2 cores), ~30 for the channels left over when a group's
    # count is not a multiple of 4 (one accumulator row per pass: the depthwise 3x3 measured 31),
    # plus ~50 ns per pass (forward: 4 channels x 8 taps over a segment) or reduction block
    # (grad-weights: 4 x 4), which dominates when the planes are small (ResNet's 3x3 at 7x7:
    # 32 ms measured, 58 GFLOP/s)
    widen, passes = phase_direct.cost(spec)
    og = spec.group_out
    blocked = (og - og % 4) / og
    work = widen * spec.flops()
    return 3 * _LAUNCH + work * (blocked / 150e9 + (1 - blocked) / 30e9) + passes * 50e-9 / 2


_register("phase_direct", phase_direct,
          "direct multiply-adds over flattened stride-phase planes, 4 output channels x 8 taps per "
          "vector pass, no GEMM; grad-input of stride-1 problems as its adjoint's forward", _phase_direct_estimate,
          flips=True)
from . import phase_tiled  # noqa: E402


def _phase_tiled_estimate(spec):
    # ~175 GFLOP/s on the rounded grid for the 6- and 4-channel tiles, ~60 for a group's
    # leftover channels (tiles of 2 or 1: 8 or 4 accumulator vectors), plus ~30 ns per tile (its
    # accumulators' loads and stores, a block's row offsets), which dominates on small planes.
    # Measured on 2 cores: DCGAN 190 GFLOP/s, strided 3x3 174, ResNet's 3x3 at 7x7 148, its 1x1
    # at 14x14 with 1024 channels 117, 1-channel groups 19. Of rate x overhead pairs from 165 to
    # 185 GFLOP/s and 10 to 50 ns, this one keeps Winograd and the 1x1 GEMM where they are faster
    # (they are: 7.5 vs 12.5 ms, 4.9 vs 7.0) and picks this for the strided 3x3 and DCGAN
    if spec.direction == GRAD_INPUT and spec.stride != (1, 1, 1):
        # a forward problem per phase of dx, each writing its strided view of dx, plus ~0.5 ns per
        # element of dx (its first touch, the phases' weights, dy's planes filled once per phase)
        subs = [sub for _, sub, _, _ in phase_tiled._phases(spec) if sub is not None]
        return sum(_phase_tiled_estimate(sub) for sub in subs) + prod(spec.x_shape) * 0.5e-9
    widen, tiles, full = phase_tiled.cost(spec)
    if spec.direction == GRAD_WEIGHTS:
        # the swapped tile: ~190 GFLOP/s with 4 vectors of output channels per tile (DCGAN 198,
        # the strided 3x3 195), less with fewer (ResNeXt's 4-channel groups, 1 vector with 4
        # lanes used: 115 on the lanes), plus ~0.7 ns per element of dy transposed onto the grid
        # and of dW copied out of the accumulators (measured 0.5-0.8 and 0.5-1.2)
        nv, moved = phase_tiled.gw_extra(spec)
        rate = 190e9 * (0.5 + nv / 8)
        return (3 * _LAUNCH + widen * spec.flops() * (full / rate + (1 - full) / 60e9) + tiles * 30e-9
                + moved * 0.7e-9)
    return 3 * _LAUNCH + widen * spec.flops() * (full / 175e9 + (1 - full) / 60e9) + tiles * 30e-9


_register("phase_tiled", phase_tiled,
          "phase_direct's planes with register-tiled accumulators (up to 6 output channels x 64 "
          "positions per tile, LLVM vector IR); forward, grad-input (strided: a stride-1 "
          "problem per phase of dx), grad-weights (6 input channels x 64 output channels per tile)",
          _phase_tiled_estimate, flips=True)

from . import direct_tiled  # noqa: E402


def _direct_tiled_estimate(spec):
    # phase_tiled's rates on the vectors every path computes (the border passes' are mostly
    # rounding on small images: 2.3x the useful work on ResNet's 7x7 layer), nothing filled or
    # cropped but the border passes' copies (~0.4 ns per element measured on ResNeXt's layer)
    widen, tiles, copied = direct_tiled.cost(spec)
    full = phase_tiled._full(spec.group_out)
    return (3 * _LAUNCH + widen * spec.flops() * (full / 175e9 + (1 - full) / 60e9)
            + tiles * 30e-9 + copied * 0.4e-9)


_register("direct_tiled", direct_tiled,
          "'same' stride-1 layers (2-D; 3-D with 1-deep kernels): phase_tiled's register tiles "
          "reading x and writing y in place over the interior, small padded copies for the border "
          "rows and edge columns; forward, grad-input", _direct_tiled_estimate, flips=True)
