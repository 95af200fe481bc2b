"""unshared_gemm with every thread count: its chunks of positions (one per thread) and, for
grad-input, the private copies of dx that all but the first chunk add into. The registry sweeps
run it with the default thread count only."""
import numba
import numpy as np
import pytest
import reference as R
from helpers import Sweep, compare, rand, random_case

import nbconv
from nbconv.threads import threads

FWD = {2: nbconv.conv2d, 3: nbconv.conv3d}
GIN = {2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}
GW = {2: nbconv.conv2d_grad_wrt_weights, 3: nbconv.conv3d_grad_wrt_weights}


def _check(case, rng, nd):
    x = rand(rng, case.x_shape, case.dtype)
    w = rand(rng, case.w_shape, case.dtype)
    dy = rand(rng, case.y_shape, case.dtype)
    kw = dict(subsample=case.subsample, algo="unshared_gemm", **case.kwargs())
    rk = case.ref_kwargs()
    runs = (
        (FWD[nd](x, w, **kw), R.conv_nd(x, w, **rk), R.conv_nd(np.abs(x), np.abs(w), **rk)),
        (GIN[nd](dy, w, case.x_shape, **kw), R.conv_nd_grad_input(dy, w, case.x_shape, **rk),
         R.conv_nd_grad_input(np.abs(dy), np.abs(w), case.x_shape, **rk)),
        (GW[nd](x, dy, case.w_shape, **kw), R.conv_nd_grad_weights(x, dy, case.w_shape, **rk),
         R.conv_nd_grad_weights(np.abs(x), np.abs(dy), case.w_shape, **rk)),
    )
    for name, (out, ref, mag) in zip(("forward", "grad_input", "grad_weights"), runs):
        msg = compare(out, ref, case.dtype, float(mag.max()) if mag.size else 1.0, ref.shape)
        if msg:
            return f"{name}: {msg}"
    return None


@pytest.mark.parametrize("nd", [2, 3])
def test_every_thread_count(nd):
    rng = np.random.default_rng(9300 + nd)
    most = numba.config.NUMBA_NUM_THREADS
    sweep = Sweep("unshared_gemm")
    for idx in range(18 if nd == 2 else 8):
        case = random_case(rng, nd, idx, unshared=True, batch=int(rng.integers(1, 6)))
        for n in sorted({1, min(2, most), most}):
            with threads(n):
                sweep.run(f"[{idx}] threads={n} {case!r}", lambda case=case: _check(case, rng, nd))
    sweep.check()
