"""The bench tool (``nbconv.bench`` / ``python -m nbconv bench``) on the scaled-down suite."""
import dataclasses
import json

import pytest

from nbconv import bench, cli
from nbconv.spec import DIRECTIONS

from test_bench_suite import SUITE, scaled


@pytest.fixture(scope="module")
def small_workload(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "small.json"
    problems = [dataclasses.asdict(scaled(p)) for p in SUITE]
    path.write_text(json.dumps({"name": "small", "problems": problems,
                                "reference_ms": {"lenet_tiny": {"forward": 0.056}}}))
    return str(path)


def test_run_rows_without_peer(small_workload):
    rows = bench.run(small_workload, cases=["lenet_tiny", "mbv2_dw"], repeat=1, warmup=1)
    # in the workload's order, whatever the order of ``cases``
    assert [(r.case, r.direction) for r in rows] == [
        (c, d) for c in ("mbv2_dw", "lenet_tiny") for d in DIRECTIONS
    ]
    for r in rows:
        assert r.ms > 0 and r.gflops > 0 and r.peer_ms is None and r.ratio is None
    assert rows[3].reference_ms == 0.056
    assert bench.geomean_ratio(rows) is None


def test_isolated_worker_runs_the_coordinators_nbconv():
    """The nbconv worker imports the package the coordinator runs (a checkout run with
    ``python -m nbconv`` next to an installed copy of another tree measured the installed one)."""
    import os

    import nbconv

    w = bench.Worker("nbconv", "nbconv", build=bench.OWN_BUILD, threads=1)
    try:
        assert w.info["file"] == os.path.dirname(os.path.abspath(nbconv.__file__))
    finally:
        w.close()


def test_unknown_case_is_an_error(small_workload):
    with pytest.raises(ValueError, match="no_such_case"):
        bench.run(small_workload, cases=["no_such_case"])


def test_torch_peer_agrees_on_every_case(small_workload):
    """Every case and direction, flip, transpose, causal padding and unshared included: the
    peer mapping computes the same numbers as nbconv."""
    rows = bench.run(small_workload, peer="torch", repeat=1, warmup=1)
    assert len(rows) == 3 * len(SUITE)
    bad = [(r.case, r.direction, r.max_rel_err) for r in rows
           if r.max_rel_err is None or r.max_rel_err > bench.CHECK_RTOL]
    assert not bad
    assert bench.geomean_ratio(rows) > 0


def test_cli_prints_the_table(small_workload, capsys):
    assert cli.main(["bench", small_workload, "--cases", "lenet_tiny", "--repeat", "1",
                     "--directions", "forward"]) == 0
    out = capsys.readouterr().out
    assert "lenet_tiny" in out and "load average" in out and "GFLOP/s" in out
