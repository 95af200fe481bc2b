"""Tests that need a real GPU (marked ``gpu``; skipped in the simulator): the real launch
configuration, bigger problems, interoperability with CuPy and PyTorch, run-to-run determinism."""
import numpy as np
import pytest
from cuda_helpers import Interface, device, host, pointer
from helpers import compare

import nbconv
from nbconv import registry

pytestmark = pytest.mark.gpu

ALGOS = registry.names(device="cuda")


def _problem(algo, rng):
    if algo == "depthwise":
        x, w, kw = (4, 32, 23, 19), (64, 1, 3, 3), {"num_groups": 32, "border_mode": 1}
    elif algo == "unshared_gemm":
        x, w, kw = (4, 8, 12, 11), (16, 10, 9, 8, 3, 3), {"unshared": True}
    else:
        x, w, kw = (4, 32, 23, 19), (48, 16, 3, 3), {"num_groups": 2, "border_mode": (1, (2, 0)),
                                                      "subsample": (2, 1), "filter_dilation": (1, 2)}
    return (rng.standard_normal(x).astype(np.float32), rng.standard_normal(w).astype(np.float32), kw)


@pytest.mark.parametrize("algo", ALGOS)
def test_bigger_problems_match_the_cpu(algo):
    rng = np.random.default_rng(1)
    x, w, kw = _problem(algo, rng)
    y_cpu = nbconv.conv2d(x, w, algo="direct", **kw)
    dy = rng.standard_normal(y_cpu.shape).astype(np.float32)
    gpu = {
        "forward": host(nbconv.conv2d(device(x), device(w), algo=algo, **kw)),
        "grad_input": host(nbconv.conv2d_grad_wrt_inputs(device(dy), device(w), x.shape, algo=algo, **kw)),
        "grad_weights": host(nbconv.conv2d_grad_wrt_weights(device(x), device(dy), w.shape, algo=algo, **kw)),
    }
    cpu = {
        "forward": y_cpu,
        "grad_input": nbconv.conv2d_grad_wrt_inputs(dy, w, x.shape, algo="direct", **kw),
        "grad_weights": nbconv.conv2d_grad_wrt_weights(x, dy, w.shape, algo="direct", **kw),
    }
    for d, want in cpu.items():
        msg = compare(gpu[d], want.astype(np.float64), np.float32, 10 * float(np.abs(want).max()))
        assert msg is None, f"{d}: {msg}"


@pytest.mark.parametrize("algo", ALGOS)
def test_results_are_bitwise_reproducible(algo):
    rng = np.random.default_rng(2)
    x, w, kw = _problem(algo, rng)
    dx, dw = device(x), device(w)
    y = nbconv.conv2d(dx, dw, algo=algo, **kw)
    a = host(nbconv.conv2d_grad_wrt_weights(dx, y, w.shape, algo=algo, **kw))
    b = host(nbconv.conv2d_grad_wrt_weights(dx, y, w.shape, algo=algo, **kw))
    np.testing.assert_array_equal(a, b)


def test_results_export_the_cuda_array_interface():
    y = nbconv.conv2d(device(np.ones((1, 1, 4, 4), np.float32)), device(np.ones((1, 1, 2, 2), np.float32)))
    cai = y.__cuda_array_interface__
    assert cai["shape"] == (1, 1, 3, 3) and cai["data"][0] == pointer(y)
    again = nbconv.conv2d(Interface(y), device(np.ones((1, 1, 2, 2), np.float32)))
    np.testing.assert_array_equal(host(again), np.full((1, 1, 2, 2), 16, np.float32))


def test_pytorch_cuda_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    x = torch.randn(2, 3, 8, 8, device="cuda")
    w = torch.randn(4, 3, 3, 3, device="cuda")
    y = nbconv.conv2d(x, w, border_mode=1, filter_flip=False)
    t = torch.as_tensor(y, device="cuda")  # zero-copy through __cuda_array_interface__
    assert t.data_ptr() == pointer(y)
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    torch.testing.assert_close(t, ref, rtol=1e-4, atol=1e-4)


def test_cupy_arrays_in_and_out():
    cp = pytest.importorskip("cupy")
    x = cp.random.standard_normal((2, 3, 8, 8), dtype=cp.float32)
    w = cp.random.standard_normal((4, 3, 3, 3), dtype=cp.float32)
    y = cp.asarray(nbconv.conv2d(x, w, border_mode="half"))
    ref = nbconv.conv2d(cp.asnumpy(x), cp.asnumpy(w), border_mode="half")
    np.testing.assert_allclose(cp.asnumpy(y), ref, rtol=1e-4, atol=1e-4)
