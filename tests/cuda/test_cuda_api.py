"""Device arrays through the public API: routing, zero copies, canonicalisation, errors, device=."""
import numpy as np
import pytest
import reference as R
from cuda_helpers import Interface, device, host, pointer
from helpers import compare
from numba import cuda

import nbconv
from nbconv import registry
from nbconv.cuda import arrays, front

RNG = np.random.default_rng(5)
X = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
W = RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)


def _spy(monkeypatch, algo, direction):
    """Record the canonical operands the algorithm receives and the array it returns."""
    alg = registry.get(algo, "cuda")
    seen = {}
    real = alg.run[direction]

    def spy(spec, a, b):
        seen["a"], seen["b"] = a, b
        seen["out"] = real(spec, a, b)
        return seen["out"]

    monkeypatch.setitem(alg.run, direction, spy)
    return seen


def test_device_arrays_run_on_the_gpu_and_return_device_arrays():
    y = nbconv.conv2d(device(X), device(W), border_mode="half")
    assert arrays.is_device_array(y) and not isinstance(y, np.ndarray)
    assert compare(host(y), R.conv2d(X, W, "half"), np.float32, 20.0) is None


def test_interface_objects_are_used_in_place(monkeypatch):
    """Inputs exporting __cuda_array_interface__ reach the kernels without a copy, and the
    result is the array the algorithm wrote (no copy either)."""
    xi, wi = Interface(device(X)), Interface(device(W))
    seen = _spy(monkeypatch, "direct", "forward")
    y = nbconv.conv2d(xi, wi, filter_flip=False, algo="direct")
    assert pointer(seen["a"]) == pointer(xi)
    assert pointer(seen["b"]) == pointer(wi)
    assert pointer(y) == pointer(seen["out"])
    assert compare(host(y), R.conv2d(X, W, filter_flip=False), np.float32, 20.0) is None


def test_an_algorithm_that_flips_itself_gets_the_users_weights(monkeypatch):
    """Algorithm.flips on the GPU as on the CPU: the front copies no flipped weights for an
    algorithm that applies the flip itself, and leaves its weight gradient as it returns it."""
    direct = registry.get("direct", "cuda")
    seen = {}

    def fwd(spec, a, b):  # flips in its own way: a flipped copy, then the correlation
        seen["b"] = b
        return direct.run["forward"](spec.correlation, a, arrays.flip_kernel_axes(b))

    def gw(spec, a, b):  # the user's orientation: the correlation's gradient, flipped back
        return arrays.flip_kernel_axes(direct.run["grad_weights"](spec.correlation, a, b))

    alg = registry.Algorithm("t_flips", "cuda", {"forward": fwd, "grad_weights": gw}, flips=True)
    monkeypatch.setitem(registry._REGISTRY, ("cuda", "t_flips"), alg)
    wd = device(W)
    y = nbconv.conv2d(device(X), wd, border_mode=1, algo="t_flips")
    assert pointer(seen["b"]) == pointer(wd)  # no copy: the weights as the user passed them
    assert compare(host(y), R.conv2d(X, W, 1), np.float32, 20.0) is None
    dy = RNG.standard_normal(y.shape).astype(np.float32)
    dw = nbconv.conv2d_grad_wrt_weights(device(X), device(dy), W.shape, border_mode=1,
                                        algo="t_flips")
    ref = R.conv2d_grad_wrt_weights(X, dy, W.shape, 1)
    assert compare(host(dw), ref, np.float32, 20.0) is None


def test_flip_and_layout_copies_happen_on_the_device(monkeypatch):
    """Flipped weights and a non-contiguous input are copied once each, on the device."""
    xs = device(X, "strided")
    seen = _spy(monkeypatch, "direct", "forward")
    y = nbconv.conv2d(xs, device(W), border_mode=1, algo="direct")
    assert seen["a"].is_c_contiguous() and seen["b"].is_c_contiguous()
    np.testing.assert_array_equal(host(seen["b"]).reshape(W.shape), W[:, :, ::-1, ::-1])
    assert compare(host(y), R.conv2d(X, W, 1), np.float32, 20.0) is None


def test_wrap_is_zero_copy_and_writes_through():
    d = device(X)
    wrapped = arrays.wrap(Interface(d), "input")
    assert pointer(wrapped) == pointer(d)
    arrays.contiguous(wrapped, np.float32)  # already canonical: itself
    assert arrays.contiguous(wrapped, np.float32) is wrapped


def test_copy_kernel_converts_dtype_and_flips():
    a = RNG.standard_normal((2, 3, 4, 5))
    d = device(a, "strided")
    out = host(arrays.contiguous(d, np.float32, nflip=2))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a[:, :, ::-1, ::-1].astype(np.float32))


def test_mixed_dtypes_compute_in_float64():
    y = nbconv.conv2d(device(X), device(W.astype(np.float64)))
    assert y.dtype == np.float64
    assert compare(host(y), R.conv2d(X, W), np.float64, 20.0) is None


def test_host_and_device_arrays_cannot_be_mixed():
    with pytest.raises(TypeError, match=r"filters is a CUDA device array but input is a host"):
        nbconv.conv2d(X, device(W))
    with pytest.raises(TypeError, match=r"output_grad is a CUDA device array but filters is a host"):
        nbconv.conv2d_grad_wrt_inputs(device(np.zeros((2, 4, 4, 3), np.float32)), W, X.shape)
    with pytest.raises(TypeError, match=r"device='cpu' but input and filters are CUDA device arrays"):
        nbconv.conv2d(device(X), device(W), device="cpu")
    with pytest.raises(ValueError, match=r"device must be None, 'cpu' or 'cuda', got 'gpu'"):
        nbconv.conv2d(X, W, device="gpu")


def test_device_arrays_must_be_float():
    with pytest.raises(TypeError, match=r"filters must have dtype float32 or float64.*int32"):
        nbconv.conv2d(device(X), device(W.astype(np.int32)))


def test_host_only_functions_reject_device_arrays():
    with pytest.raises(TypeError, match=r"input is a CUDA device array; this function takes host"):
        nbconv.bilinear_upsampling(device(X), ratio=2)


def test_device_cuda_copies_numpy_in_and_out():
    y = nbconv.conv2d(X, W, border_mode="full", device="cuda", algo="implicit_gemm")
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert compare(y, R.conv2d(X, W, "full"), np.float32, 20.0) is None
    dw = nbconv.conv2d_grad_wrt_weights(X, y, W.shape, border_mode="full", device="cuda")
    assert isinstance(dw, np.ndarray)
    assert compare(dw, R.conv2d_grad_wrt_weights(X, y, W.shape, "full"), np.float32, 2000.0) is None


def test_compositions_take_device_arrays():
    x = RNG.standard_normal((2, 3, 9))
    w = RNG.standard_normal((2, 3, 3))
    y = nbconv.causal_conv1d(device(x), device(w), w.shape, filter_dilation=2)
    assert compare(host(y), R.causal_conv1d(x, w, filter_dilation=2), np.float64, 10.0) is None
    x4 = RNG.standard_normal((1, 2, 5, 5))
    dw = RNG.standard_normal((4, 1, 3, 3))
    pw = RNG.standard_normal((3, 4, 1, 1))
    out = nbconv.separable_conv2d(device(x4), device(dw), device(pw), 2, border_mode=1)
    assert compare(host(out), R.separable_conv2d(x4, dw, pw, 2, border_mode=1), np.float64, 50.0) is None
    tr = nbconv.conv2d_transpose(device(np.ones((1, 1, 3, 3))), device(np.ones((1, 1, 2, 2))),
                                 (1, 1, 6, 6), input_dilation=(2, 2))
    ref = R.conv2d_transpose(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), (1, 1, 6, 6),
                             input_dilation=(2, 2))
    np.testing.assert_allclose(host(tr), ref)


def test_empty_batch():
    x = np.zeros((0, 3, 5, 4), np.float32)
    y = nbconv.conv2d(device(x), device(W))
    assert y.shape == (0, 4, 4, 3)
    dw = nbconv.conv2d_grad_wrt_weights(device(x), device(np.zeros((0, 4, 4, 3), np.float32)), W.shape)
    np.testing.assert_array_equal(host(dw), np.zeros(W.shape, np.float32))


def test_explicit_algorithm_choice_and_errors():
    spec = nbconv.spec.build("forward", 2, X.shape, W.shape, border_mode=0, subsample=1,
                             filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                             dtype="float32", names={"x": "input", "w": "filters"})
    assert front.choose(spec, "im2col").name == "im2col"
    with pytest.raises(ValueError, match="not a registered cuda algorithm"):
        front.choose(spec, "winograd_cuda")
    with pytest.raises(nbconv.AlgorithmNotApplicable):
        front.choose(spec, "unshared_gemm")
    with pytest.raises(nbconv.AlgorithmNotApplicable):
        nbconv.conv2d(device(X), device(W), algo="depthwise")


def test_numba_device_array_results_wrap_back():
    """A result fed back in as input (the usual chain of layers) is used without a copy."""
    y = nbconv.conv2d(device(X), device(W))
    assert pointer(arrays.contiguous(arrays.wrap(y, "y"), np.float32)) == pointer(y)
    assert isinstance(y, type(cuda.device_array(1)))


def test_cuda_calls_are_tuned_into_the_database_per_device(tmp_path):
    """device='cuda' problems go through the same policies and database as the CPU, keyed and
    fingerprinted by device: a time_* policy times the CUDA candidates (a fake timer here), checks
    them against 'direct', stores the winner under the cuda key, and a later call uses it."""
    from nbconv import dispatch
    from nbconv.autotune import FakeTimer, current_db, problem_key, use_timer
    from nbconv.threads import get_num_threads

    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 6, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    spec = nbconv.spec.build("forward", 2, x.shape, w.shape, border_mode=1, subsample=1,
                             filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                             dtype="float32", names={"x": "input", "w": "filters"})
    favourite = "implicit_gemm" if front.choose(spec).name != "implicit_gemm" else "im2col"
    timer = FakeTimer(lambda name, s: 1e-3 if name == favourite else 5e-3)
    with nbconv.config(tuning_db=str(tmp_path / "t.json")), use_timer(timer, device="cuda"):
        dispatch.clear_cache()
        y = nbconv.conv2d(cuda.to_device(x), cuda.to_device(w), border_mode=1, algo="time_on_shape_change")
        assert timer.calls, "no CUDA candidate was timed"
        assert dispatch.explain(spec, "guess_on_shape_change", device="cuda") == (
            registry.get(favourite, "cuda"), "db")
        key = problem_key(spec, "cuda", get_num_threads())
        assert current_db().lookup(key, "cuda")["winner"]["algorithm"] == favourite
        ref = R.conv_nd(x.astype(np.float64), w.astype(np.float64), border_mode=1)
        assert compare(y.copy_to_host(), ref, np.float32, float(np.abs(ref).max()) + 1) is None
    dispatch.clear_cache()
