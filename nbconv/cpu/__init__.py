"""CPU algorithms (Numba ``@njit(parallel=True)`` kernels); importing this package registers them."""
from ..registry import Algorithm, register
from ..spec import FORWARD, GRAD_INPUT, GRAD_WEIGHTS
from . import direct

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
    )
)
