"""im2col_flat: its phase-plane arithmetic, and its chunked paths against the reference.

The registry-parametrized sweeps run it with the default workspace limit, where every small
problem is one chunk; here the limit is shrunk so problems split into several whole-image chunks,
or leave the algorithm inapplicable when one image does not fit.
"""
import itertools

import numba
import numpy as np
import pytest
import reference as R
from helpers import DTYPES, Sweep, check_directions, compare, rand, random_case, shared_spec

import nbconv
from nbconv.cpu import im2col, im2col_flat
from nbconv.spec import build
from nbconv.threads import threads

from test_im2col_blocked import SHAPES, shape_check


def test_every_tap_offset_reads_the_input_point_of_the_definition():
    """For every real output position and tap, the phase-plane element at position + offset is
    the padded input point o * stride + k * dilation, and every read of the Lb-long column rows
    stays inside the planes."""
    rng = np.random.default_rng(11)
    checked = 0
    for idx in range(60):
        nd = int(rng.integers(1, 4))
        case = random_case(rng, nd, idx, unshared=False, max_stride=4)
        spec = shared_spec(case)
        g = im2col_flat._grid(spec)
        plane = g.Dq * g.Hq * g.Wq
        assert g.PS > plane and g.tap_off.max() + g.Lb <= g.PS
        (OD, OH, OW), K = spec.out_size, spec.kernel
        for od, oh, ow in itertools.product(range(OD), range(OH), range(OW)):
            p = (od * g.Hq + oh) * g.Wq + ow
            assert p < g.Lb
            for t, k in enumerate(itertools.product(*map(range, K))):
                e = p + g.tap_off[t]
                assert e < plane, (case, k)
                i, j, l = e // (g.Hq * g.Wq), (e // g.Wq) % g.Hq, e % g.Wq
                want = [o * s + kk * d for o, s, kk, d in
                        zip((od, oh, ow), spec.stride, k, spec.dilation)]
                got = [q * s + r for q, s, r in
                       zip((i, j, l), spec.stride, g.phases[g.tap_phase[t]])]
                assert got == want, (case, k, (od, oh, ow))
                checked += 1
    assert checked > 1000


@pytest.mark.parametrize("images", [1, 2], ids=lambda n: f"{n}_per_chunk")
@pytest.mark.parametrize("nd", [2, 3])
def test_chunked_sweep(workspace_limit, nd, images):
    """Several whole-image chunks (and a short last one), strides up to 4, both gradients'
    GEMM arrangements (dW^T below the transpose threshold, dW above: forced both ways)."""
    rng = np.random.default_rng(7100 + 10 * nd + images)
    sweep = Sweep("im2col_flat")
    for idx in range(20 if nd == 2 else 8):
        case = random_case(rng, nd, idx, unshared=False, batch=int(rng.integers(2, 6)),
                           max_spatial=11 if nd == 2 else 6, kmax=5 if nd == 2 else 3, max_stride=4)
        spec = shared_spec(case, "grad_weights")
        per = im2col_flat._per_image(spec) * spec.np_dtype.itemsize
        workspace_limit(images * per + im2col_flat._weights_temp(spec) * spec.np_dtype.itemsize)
        assert im2col_flat._plan(spec)[0] == min(images, case.x_shape[0])
        saved = im2col._GW_TRANSPOSE_MAX
        im2col._GW_TRANSPOSE_MAX = (0, 1 << 30)[idx % 2]
        try:
            sweep.run(f"[{idx}] {case!r}", lambda case=case: check_directions(case, rng, "im2col_flat"))
        finally:
            im2col._GW_TRANSPOSE_MAX = saved
    sweep.check()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=range(len(SHAPES)))
def test_benchmark_like_shapes_with_every_thread_count(shape, dtype):
    check = shape_check(shape, dtype, 8100)
    most = numba.config.NUMBA_NUM_THREADS
    for n in sorted({1, min(2, most), most}):
        with threads(n):
            msg = check("im2col_flat")
        assert msg is None, (n, msg)


def test_an_image_over_the_workspace_limit_is_not_applicable(workspace_limit):
    x = np.ones((2, 3, 10, 10), dtype=np.float32)
    w = np.ones((4, 3, 3, 3), dtype=np.float32)
    spec = build("forward", 2, x.shape, w.shape, border_mode=1, subsample=(2, 2),
                 filter_dilation=(1, 1), num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "x", "w": "w"})
    per = im2col_flat._per_image(spec) * 4
    workspace_limit(per)
    assert im2col_flat.supports(spec) and im2col_flat.workspace(spec) <= per
    np.testing.assert_allclose(nbconv.conv2d(x, w, border_mode=1, subsample=2, algo="im2col_flat"),
                               R.conv_nd(x, w, border_mode=1, subsample=(2, 2)), rtol=1e-5)
    workspace_limit(per - 1)
    assert not im2col_flat.supports(spec)
    with pytest.raises(nbconv.AlgorithmNotApplicable):
        nbconv.conv2d(x, w, border_mode=1, subsample=2, algo="im2col_flat")
