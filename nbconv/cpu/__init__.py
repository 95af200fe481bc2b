"""CPU algorithms (Numba ``@njit(parallel=True)`` kernels); importing this package registers them."""
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
