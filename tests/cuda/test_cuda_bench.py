"""The GPU benchmark command: its table (in the simulator, timings meaningless) and its PyTorch
peer's formulas (checked on CPU tensors against the reference)."""
import json

import numba
import numpy as np
import pytest
import reference as R
from helpers import compare

from nbconv.cuda import bench
from nbconv.problems import Problem
from nbconv.spec import DIRECTIONS

PROBLEMS = [
    {"name": "t2d", "nd": 2, "input": [1, 4, 5, 4], "filters": [2, 2, 2, 3], "border_mode": [[1, 0], 1],
     "num_groups": 2, "subsample": [2, 1]},
    {"name": "tcausal", "nd": 1, "input": [2, 2, 6], "filters": [2, 2, 2], "border_mode": [[2, 0]],
     "filter_dilation": 2},
    {"name": "t3d", "nd": 3, "input": [1, 2, 3, 4, 3], "filters": [2, 2, 2, 2, 2], "border_mode": 1,
     "filter_dilation": [1, 2, 1]},
]


@pytest.mark.skipif(not numba.config.ENABLE_CUDASIM, reason="the table in the simulator (a GPU runs the real bench)")
def test_bench_prints_a_row_per_case_and_direction(tmp_path, capsys):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"name": "tiny", "problems": PROBLEMS[:2]}))
    assert bench.main([str(path), "--repeat", "1", "--warmup", "0", "--no-peer"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("t2d", "tcausal"))]
    assert len(rows) == 2 * len(DIRECTIONS)
    assert all("*" in row for row in rows)  # the default choice, marked


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p["name"])
def test_pytorch_peer_computes_the_same_problem(problem):
    """The cuDNN side of the table computes what the kernels compute (cross-correlation, asymmetric
    pads by pre-padding), here on CPU tensors."""
    torch = pytest.importorskip("torch")
    p = Problem.from_dict(dict(problem, dtype="float64"))
    kw = {"border_mode": p.border_mode, "subsample": p.subsample, "filter_flip": False,
          "filter_dilation": p.filter_dilation, "num_groups": p.num_groups}
    for d in DIRECTIONS:
        spec = p.spec(d)
        x, w, dy = p.arrays()
        peer = bench._Peer(torch, spec, x, w, dy, dev="cpu")
        ref = {"forward": R.conv_nd(x, w, **kw),
               "grad_input": R.conv_nd_grad_input(dy, w, x.shape, **kw),
               "grad_weights": R.conv_nd_grad_weights(x, dy, w.shape, **kw)}[d]
        out = peer.result(d)
        assert compare(np.asarray(out, np.float64), ref, np.float64, 100.0) is None, d
