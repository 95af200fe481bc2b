"""unshared_gemm with every thread count: its chunks of positions (one per thread) and, for
grad-input, the private copies of dx that all but the first chunk add into. The registry sweeps
run it with the default thread count only."""
import numba
import numpy as np
import pytest
from helpers import Sweep, check_directions, random_case

from nbconv.threads import threads


@pytest.mark.parametrize("nd", [2, 3])
def test_every_thread_count(nd):
    rng = np.random.default_rng(9300 + nd)
    most = numba.config.NUMBA_NUM_THREADS
    sweep = Sweep("unshared_gemm")
    for idx in range(18 if nd == 2 else 8):
        case = random_case(rng, nd, idx, unshared=True, batch=int(rng.integers(1, 6)))
        for n in sorted({1, min(2, most), most}):
            with threads(n):
                sweep.run(f"[{idx}] threads={n} {case!r}",
                          lambda case=case: check_directions(case, rng, "unshared_gemm"))
    sweep.check()
