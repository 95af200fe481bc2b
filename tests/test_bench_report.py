"""Result files, reports and the ``nbconv bench`` command line, on synthetic results and a tiny
workload (fast: the real suite is timed by ``tests/benchmarks``)."""
import json
import os
import subprocess

import numpy as np
import pytest

from nbconv import bench, cli, report

TINY = {"name": "tiny", "problems": [
    {"name": "tiny_3x3", "nd": 2, "input": [1, 2, 8, 8], "filters": [3, 2, 3, 3], "border_mode": 1},
]}


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def _times(rng, ms, rounds=10, calls=3):
    return (ms * 1e-3 * np.exp(0.02 * rng.standard_normal((rounds, calls)))).tolist()


def synthetic_run(slow=None, peer=True, seed=0):
    """A run result of two cases x two directions; ``slow`` = (case, direction, factor)."""
    rng = np.random.default_rng(seed)
    rows = []
    for case, op in (("a_conv", "conv"), ("b_tconv", "transpose")):
        for d, ms in (("forward", 2.0), ("grad_input", 4.0)):
            if slow and slow[:2] == (case, d):
                ms *= slow[2]
            times = _times(rng, ms)
            med = float(np.median(bench.turn_values(times))) * 1e3
            r = bench.Row(case=case, op=op, direction=d, algorithm="im2col", ms=med,
                          gflops=1.0 / (med * 1e-3), pct_peak=100 / (med * 1e-3) / 182, gflop=1.0,
                          times_s=times, load=[0.5, 0.5, 0.5])
            if peer:
                r.peer_times_s = _times(rng, 3.0)
                r.peer_ms = 3.0
                r.peer_gflops = 1.0 / 3e-3
                r.ratio, r.ratio_lo, r.ratio_hi = 3.0 / med, 2.9 / med, 3.1 / med
                r.max_rel_err = 1e-7
            rows.append(r)
    return bench.make_result("run", rows, "synthetic", {"repeat": 10}, bench.fingerprint(),
                             {"before": [0.5, 0.5, 0.5], "after": [0.6, 0.5, 0.5], "samples": []},
                             {"nbconv": {}, "torch": {}} if peer else {"nbconv": {}})


# ---------------------------------------------------------------------------------------------
# result files
# ---------------------------------------------------------------------------------------------


def test_result_schema_round_trip(tmp_path):
    result = synthetic_run()
    path = tmp_path / "r.json"
    bench.save_result(path, result)
    loaded = bench.load_result(path)
    assert loaded["schema"] == bench.SCHEMA and loaded["kind"] == "run"
    m = loaded["machine"]
    for key in ("cpu_model", "cores", "peak_gflops", "peak_source", "threads", "versions", "env", "blas"):
        assert key in m
    assert {"nbconv", "numba", "numpy", "python"} <= set(m["versions"])
    assert m["threads"]["nbconv"] >= 1 and "numba_threading_layer" in m["threads"]
    assert loaded["load"]["before"] == [0.5, 0.5, 0.5]
    row = loaded["rows"][0]
    assert len(row["times_s"]) == 10 and len(row["times_s"][0]) == 3  # raw: rounds x calls
    assert bench.rows_of(loaded)[0] == bench.Row(**row)


@pytest.mark.parametrize("breakage, message", [
    (lambda r: r.update(schema="other/1"), "schema"),
    (lambda r: r.pop("machine"), "machine"),
    (lambda r: r["machine"].pop("cores"), "cores"),
    (lambda r: r.update(kind="nonsense"), "kind"),
    (lambda r: r["rows"][1].pop("times_s"), "row 1"),
])
def test_result_schema_rejects(breakage, message):
    result = synthetic_run()
    breakage(result)
    with pytest.raises(ValueError, match=message):
        bench.validate(result)


def test_compare_results_flags_only_the_slowed_case():
    base = synthetic_run(seed=1)
    new = synthetic_run(slow=("b_tconv", "forward", 1.4), seed=2)
    rows = bench.compare_results(base, new)
    flags = {(r.case, r.direction): r.flag for r in rows}
    assert flags.pop(("b_tconv", "forward")) == "regression"
    assert set(flags.values()) == {""}
    same = bench.compare_results(base, synthetic_run(seed=3))
    assert all(r.flag == "" for r in same)


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------


def test_markdown_run_report():
    text = report.markdown(synthetic_run())
    lines = text.splitlines()
    assert "AMD" in text or "peak" in text
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 1 + 4  # header + rows
    assert "torch ms" in table[0] and "% peak" in table[0]
    assert any("grad_input*" in line for line in table)  # transpose's forward marked
    # % of peak follows the given peak: 1 GFLOP in ~2 ms = ~500 GFLOP/s = ~50 % of 1000
    custom = report.markdown(synthetic_run(), peak=1000.0)
    row = next(line for line in custom.splitlines() if line.startswith("| a_conv | forward"))
    assert abs(float(row.split("|")[6]) - 50.0) < 2.0
    assert "torch" not in report.markdown(synthetic_run(peer=False)).split("\n\n")[1]


def _compare_result(slow=1.4):
    rows = bench.compare_results(synthetic_run(seed=1), synthetic_run(slow=("a_conv", "grad_input", slow), seed=2))
    return bench.make_result("compare", rows, "synthetic", {"repeat": 10, "threshold": 1.1},
                             bench.fingerprint(), {"before": None}, {"base": {"rev": "v1"}, "new": {"rev": "v2"}})


def test_markdown_compare_report():
    text = report.markdown(bench.validate(_compare_result()))
    assert "**REGRESSION**" in text and "`v1`" in text and "`v2`" in text
    assert text.count("**REGRESSION**") == 1
    assert "1 regression(s) flagged" in text


@pytest.mark.parametrize("kind", ["run", "compare"])
def test_png_report(tmp_path, kind):
    pytest.importorskip("matplotlib")
    result = synthetic_run() if kind == "run" else _compare_result()
    path = tmp_path / "r.png"
    report.write_png(result, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def test_cli_run_save_and_report(tiny, tmp_path, capsys):
    out = tmp_path / "run.json"
    assert cli.main(["bench", tiny, "--repeat", "3", "--directions", "forward", "grad_weights",
                     "--save", str(out), "--peak", "100"]) == 0
    printed = capsys.readouterr().out
    assert "tiny_3x3" in printed and "load average" in printed and f"saved {out}" in printed
    result = bench.load_result(out)
    assert [r["direction"] for r in result["rows"]] == ["forward", "grad_weights"]
    assert result["machine"]["peak_gflops"] == 100.0 and result["settings"]["repeat"] == 3
    assert all(len(r["times_s"]) == 3 for r in result["rows"])
    md = tmp_path / "run.md"
    assert cli.main(["bench", "report", str(out), "--markdown", str(md)]) == 0
    assert "tiny_3x3" in md.read_text()
    # two saved runs compare (unpaired): exit status 0 without a regression
    assert cli.main(["bench", "compare", str(out), str(out)]) == 0
    assert "0 regression(s)" in capsys.readouterr().out


def test_cli_compare_exit_status(tmp_path, capsys):
    base, new = tmp_path / "base.json", tmp_path / "new.json"
    bench.save_result(base, synthetic_run(seed=1))
    bench.save_result(new, synthetic_run(slow=("a_conv", "forward", 1.5), seed=2))
    saved = tmp_path / "cmp.json"
    assert cli.main(["bench", "compare", str(base), str(new), "--save", str(saved)]) == 1
    assert "REGRESSION a_conv forward" in capsys.readouterr().out
    assert bench.load_result(saved)["kind"] == "compare"
    # a looser threshold lets the same slowdown through
    assert cli.main(["bench", "compare", str(base), str(new), "--threshold", "1.6"]) == 0
    with pytest.raises(SystemExit):
        cli.main(["bench", "compare", str(base)])  # one file and no --against


def test_force_algo_parsing():
    assert bench.parse_force(["a=direct", "b:forward=im2col"]) == {"a": "direct", "b:forward": "im2col"}
    with pytest.raises(ValueError):
        bench.parse_force(["nonsense"])


def test_workers_interleave_and_force(tiny, monkeypatch):
    """Two worker processes on this build (what `compare --against` does with two builds), one
    forced to another algorithm: rounds alternate, results agree, the forced side reports it."""
    monkeypatch.setattr(bench, "checkout", lambda rev, repo=None: (bench.package_root(), "0" * 40))
    rows, builds = bench.compare_builds("HEAD", tiny, directions=["forward"], repeat=4,
                                        processes=2, force={"tiny_3x3": "direct"})
    (row,) = rows
    assert row.new_algorithm == "direct"
    assert len(row.base_times_s) == len(row.new_times_s) == 4 and row.groups == [0, 0, 1, 1]
    assert row.n == 2 and "2 process pairs" in row.method
    assert row.max_rel_err is not None and row.max_rel_err < bench.CHECK_RTOL
    assert builds["new"]["side"]["force"] == {"tiny_3x3": "direct"}


def test_checkout_extracts_a_revision(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "nbconv").mkdir(parents=True)
    (repo / "nbconv" / "__init__.py").write_text("X = 1\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    monkeypatch.setenv("NBCONV_BENCH_BUILDS", str(tmp_path / "builds"))
    root, sha = bench.checkout("HEAD", repo=str(repo))
    assert os.path.basename(root) == sha and (tmp_path / "builds" / sha / "nbconv" / "__init__.py").exists()
    assert bench.checkout("HEAD", repo=str(repo)) == (root, sha)  # cached
    with pytest.raises(ValueError, match="cannot resolve"):
        bench.checkout("no-such-rev", repo=str(repo))
