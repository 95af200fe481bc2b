"""CPU algorithms (Numba ``@njit(parallel=True)`` kernels); importing this package registers them."""
from math import prod

from ..registry import Algorithm, register
from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import direct, unshared

# Predicted seconds for the `guess` policy: a fixed launch cost plus flops at the rate measured for
# each algorithm on the benchmark suite (2 cores, float32).
_LAUNCH = 20e-6


def _direct_estimate(spec):
    # unshared problems walk 8-D weights tap by tap: ~1.5 GFLOP/s against ~12 for shared ones
    return _LAUNCH + spec.flops() / (1.5e9 if spec.unshared else 12e9)


register(
    Algorithm(
        name="direct",
        device="cpu",
        run={
            FORWARD: direct.forward,
            GRAD_INPUT: direct.grad_input,
            GRAD_WEIGHTS: direct.grad_weights,
        },
        description="direct loops, padding clipped per tap; every problem, every direction",
        estimate=_direct_estimate,
    )
)

register(
    Algorithm(
        name="unshared_gemm",
        device="cpu",
        run={
            FORWARD: unshared.forward,
            GRAD_INPUT: unshared.grad_input,
            GRAD_WEIGHTS: unshared.grad_weights,
        },
        supports=unshared.supports,
        workspace=unshared.workspace,
        description="locally connected layers: one (N x K) @ (K x O) product per output position",
        estimate=lambda spec: _LAUNCH + spec.flops() / 17e9,
    )
)

from . import depthwise  # noqa: E402  (appended registration, like the ones above)

register(
    Algorithm(
        name="depthwise",
        device="cpu",
        run={
            FORWARD: depthwise.forward,
            GRAD_INPUT: depthwise.grad_input,
            GRAD_WEIGHTS: depthwise.grad_weights,
        },
        supports=depthwise.supports,
        workspace=depthwise.workspace,
        description="one input channel per group (any multiplier): padded plane, 3 taps fused per pass",
        # mbv2_dw (3x3, 56x56, float32): 16-19 GFLOP/s per core in all three directions
        estimate=lambda spec: _LAUNCH + spec.flops() / 30e9,
    )
)

from . import gemm1x1, im2col  # noqa: E402  (appended registration, like the ones above)


def _im2col_estimate(spec):
    # GEMMs at ~80 GFLOP/s (60-130 measured on the dense suite cases) plus writing and reading
    # the column matrix once at ~20 GB/s; a kernel launch and a BLAS call per chunk
    cols = spec.batch * spec.in_channels * prod(spec.kernel) * prod(spec.out_size)
    return 3 * _LAUNCH + spec.flops() / 80e9 + 2 * cols * spec.np_dtype.itemsize / 20e9


register(
    Algorithm(
        name="im2col",
        device="cpu",
        run={
            FORWARD: im2col.forward,
            GRAD_INPUT: im2col.grad_input,
            GRAD_WEIGHTS: im2col.grad_weights,
        },
        supports=im2col.supports,
        workspace=im2col.workspace,
        description="Caffe's CorrMM: im2col/col2im kernels around BLAS GEMMs, chunked to a workspace limit",
        estimate=_im2col_estimate,
    )
)

register(
    Algorithm(
        name="gemm_1x1",
        device="cpu",
        run={
            FORWARD: gemm1x1.forward,
            GRAD_INPUT: gemm1x1.grad_input,
            GRAD_WEIGHTS: gemm1x1.grad_weights,
        },
        supports=gemm1x1.supports,
        workspace=gemm1x1.workspace,
        description="1x1 kernels: batched GEMMs on views (strided or padded: gathered input)",
        # r50_1x1_14: ~170 GFLOP/s measured, BLAS-bound
        estimate=lambda spec: 2 * _LAUNCH + spec.flops() / 150e9,
    )
)
