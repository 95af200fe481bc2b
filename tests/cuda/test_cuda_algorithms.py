"""Every registered CUDA algorithm, every direction, against the NumPy reference.

Tiny random problems (the simulator runs a Python thread per GPU thread) drawn so that together
they cover every parameter: groups, dilation, stride, padding (every border_mode form, asymmetric
pairs included), filter flip, unshared, 1D/2D/3D, float32/float64, non-contiguous device inputs;
plus a few fixed problems for paths random draws reach rarely (chunked columns, split sums,
depthwise without its shared-memory tile). Each case goes through the public API with device
arrays and ``algo=`` the algorithm, so canonicalisation and the flip are tested too.
"""
import numpy as np
import pytest
import reference as R
from cuda_helpers import device, host
from helpers import compare, random_case

import nbconv
from nbconv import registry
from nbconv.cuda import launch

CUDA_ALGOS = registry.names(device="cuda")
FWD = {1: nbconv.conv2d, 2: nbconv.conv2d, 3: nbconv.conv3d}
GIN = {1: nbconv.conv2d_grad_wrt_inputs, 2: nbconv.conv2d_grad_wrt_inputs, 3: nbconv.conv3d_grad_wrt_inputs}
GW = {1: nbconv.conv2d_grad_wrt_weights, 2: nbconv.conv2d_grad_wrt_weights, 3: nbconv.conv3d_grad_wrt_weights}

#: what each algorithm's problems must look like to be applicable
CONSTRAINTS = {
    "direct": {},
    "im2col": {"unshared": False},
    "implicit_gemm": {"unshared": False},
    "depthwise": {"unshared": False, "cg": 1},
    "unshared_gemm": {"unshared": True},
}
N_CASES = 8


def scale_of(a):
    return float(np.abs(a).max()) if a.size else 1.0


def _as_2d(case, x, w, dy):
    """1-D problems run as conv2d with a singleton first axis (the API has no conv1d)."""
    if case.nd != 1:
        return x, w, dy, case.border_mode, case.subsample, case.dilation
    x2 = x[:, :, None]
    dy2 = dy[:, :, None]
    # unshared (O, oL, Cg, K) -> (O, 1, oL, Cg, 1, K); shared (O, Cg, K) -> (O, Cg, 1, K)
    w2 = w[:, None, :, :, None] if case.unshared else w[:, :, None]
    bm = case.border_mode
    if not isinstance(bm, str):
        bm = (0, bm) if isinstance(bm, int) else ((0, 0), bm[0])
    return x2, w2, dy2, bm, (1,) + case.subsample, (1,) + case.dilation


def _cases(algo):
    rng = np.random.default_rng(sum(map(ord, algo)))
    cons = CONSTRAINTS[algo]
    out = []
    for idx in range(N_CASES):
        nd = (2, 3, 1)[idx % 3]
        # random_case's index picks the border_mode form (index % 7), the dtype ((index // 7) % 2)
        # and the flip ((index // 14) % 2): here every form, dtypes alternating, flips by pairs
        index = idx % 7 + 7 * (idx % 2 + 2 * ((idx // 2) % 2))
        # unshared GEMMs are one GEMM per output position: fewer positions
        small = cons.get("unshared") or nd == 3
        case = random_case(rng, nd, index, max_spatial=3 if small else 5, kmax=3, max_stride=2,
                           max_dilation=2, batch=1 + idx % 2, **cons)
        out.append(case)
    return out


@pytest.mark.parametrize("algo", CUDA_ALGOS)
def test_cases_cover_every_parameter(algo):
    cases = _cases(algo)
    pads = [R.pads_from_border_mode(c.border_mode, c.kshape, c.dilation) for c in cases]
    assert {np.dtype(c.dtype) for c in cases} == {np.dtype(np.float32), np.dtype(np.float64)}
    assert {c.flip for c in cases} == {True, False}
    assert {c.nd for c in cases} == {1, 2, 3}
    assert any(c.groups > 1 for c in cases)
    assert any(max(c.subsample) > 1 for c in cases)
    assert any(max(c.dilation) > 1 for c in cases)
    assert any(lo != hi for p in pads for lo, hi in p), "no asymmetric padding"
    assert {c.unshared for c in cases} == ({True, False} if algo == "direct" else {algo == "unshared_gemm"})


@pytest.mark.parametrize("algo", CUDA_ALGOS)
def test_algorithm_matches_reference(algo):
    failures, ran = [], 0
    rng = np.random.default_rng(7)
    for idx, case in enumerate(_cases(algo)):
        x = rng.standard_normal(case.x_shape).astype(case.dtype)
        w = rng.standard_normal(case.w_shape).astype(case.dtype)
        dy = rng.standard_normal(case.y_shape).astype(case.dtype)
        kw = case.ref_kwargs()
        refs = {
            "forward": (R.conv_nd(x, w, **kw), R.conv_nd(np.abs(x), np.abs(w), **kw)),
            "grad_input": (R.conv_nd_grad_input(dy, w, case.x_shape, **kw),
                           R.conv_nd_grad_input(np.abs(dy), np.abs(w), case.x_shape, **kw)),
            "grad_weights": (R.conv_nd_grad_weights(x, dy, case.w_shape, **kw),
                             R.conv_nd_grad_weights(np.abs(x), np.abs(dy), case.w_shape, **kw)),
        }
        x2, w2, dy2, bm, s, d = _as_2d(case, x, w, dy)
        nd = max(case.nd, 2)
        layout = ("C", "strided")[idx % 2]
        opts = {"border_mode": bm, "subsample": s, "filter_dilation": d, "filter_flip": case.flip,
                "num_groups": case.groups, "unshared": case.unshared, "algo": algo}
        calls = {
            "forward": (FWD[nd], (x2, layout), (w2, "C")),
            "grad_input": (GIN[nd], (dy2, "C"), (w2, layout), x2.shape),
            "grad_weights": (GW[nd], (x2, layout), (dy2, layout), w2.shape),
        }
        for direction, (fn, a, b, *shape) in calls.items():
            ref, scale = refs[direction]
            try:
                out = host(fn(device(*a), device(*b), *shape, **opts)).reshape(ref.shape)
                msg = compare(out, ref, case.dtype, scale_of(scale))
            except nbconv.AlgorithmNotApplicable as exc:
                msg = f"not applicable: {exc}"
            except Exception as exc:  # noqa: BLE001  (reported with the case)
                msg = f"raised {type(exc).__name__}: {exc}"
            ran += 1
            if msg:
                failures.append(f"[{idx}] {direction} {case!r} layout={layout}: {msg}")
    assert ran == 3 * N_CASES
    assert not failures, f"{len(failures)} of {ran} failed:\n" + "\n".join(failures[:6])


# --------------------------------------------------------------------------------------------
# Fixed problems for rarely drawn paths
# --------------------------------------------------------------------------------------------


def _check_all_directions(algo, x, w, kw, dtype=np.float64):
    rng = np.random.default_rng(3)
    y_ref = R.conv2d(x, w, **kw)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    api = dict(kw)
    y = host(nbconv.conv2d(device(x), device(w), algo=algo, **api))
    dx = host(nbconv.conv2d_grad_wrt_inputs(device(dy), device(w), x.shape, algo=algo, **api))
    dw = host(nbconv.conv2d_grad_wrt_weights(device(x), device(dy), w.shape, algo=algo, **api))
    for out, ref in ((y, y_ref), (dx, R.conv2d_grad_wrt_inputs(dy, w, x.shape, **kw)),
                     (dw, R.conv2d_grad_wrt_weights(x, dy, w.shape, **kw))):
        msg = compare(out, ref, dtype, 10.0)
        assert msg is None, msg


@pytest.mark.parametrize("algo", ["im2col", "unshared_gemm"])
def test_chunked_workspace(algo):
    """A workspace limit below one image's columns: im2col and unshared grad-input chunk over
    output positions (and im2col's grad-weights adds the chunks' products)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 2, 4, 4))
    unshared = algo == "unshared_gemm"
    w = rng.standard_normal((2, 3, 3, 2, 2, 2) if unshared else (2, 2, 2, 2))
    with launch.override(workspace_limit=2 * 2 * 4 * 8 * 3):
        _check_all_directions(algo, x, w, {"border_mode": 0, "unshared": unshared})


def test_depthwise_without_shared_tile():
    """A stride whose input patch does not fit the shared buffer: the per-output kernel."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 1, 2, 2)).astype(np.float32)
    _check_all_directions("depthwise", x, w, {"border_mode": 1, "subsample": (5, 5), "num_groups": 2},
                          np.float32)


@pytest.mark.parametrize("algo", ["direct", "implicit_gemm"])
def test_grad_weights_split_sums_are_deterministic(algo):
    """More slices than one (split-K / split block reductions) and the same bits twice."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    with launch.override(target_blocks=64):
        a = host(nbconv.conv2d_grad_wrt_weights(device(x), device(dy), (2, 2, 3, 3), border_mode="half", algo=algo))
        b = host(nbconv.conv2d_grad_wrt_weights(device(x), device(dy), (2, 2, 3, 3), border_mode="half", algo=algo))
    np.testing.assert_array_equal(a, b)
    ref = R.conv2d_grad_wrt_weights(x, dy, (2, 2, 3, 3), border_mode="half")
    assert compare(a, ref, np.float32, 40.0) is None
