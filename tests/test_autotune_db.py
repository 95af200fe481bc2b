"""The tuning database: format, fingerprint sections, bad files, concurrency, fallback to memory."""
import json
import multiprocessing
import os
import sys
import warnings

import numpy as np
import pytest

from nbconv import config, registry
from nbconv.autotune import (
    TuningDB,
    TuningDBWarning,
    fingerprint,
    fingerprint_id,
    problem_key,
)
from nbconv.autotune import db as dbmod
from nbconv.autotune.fingerprint import current_id, source_hash
from nbconv.autotune.timing import FakeTimer
from nbconv.autotune.tuner import tune_spec
from nbconv.spec import build


def _spec(batch=1, direction="forward"):
    return build(direction, 2, (batch, 2, 6, 6), (3, 2, 3, 3), border_mode=1, subsample=1,
                 filter_dilation=1, num_groups=1, unshared=False, filter_flip=True,
                 dtype=np.float32, names={"x": "input", "w": "filters"})


def _record(winner="im2col", when="2025-01-01T00:00:00+00:00"):
    return {"winner": {"algorithm": winner, "device": "cpu", "params": {}}, "candidates": [],
            "measured_at": when}


KEY = problem_key(_spec(), "cpu", 2)


def test_the_suite_never_uses_the_users_database():
    assert os.path.abspath(config.tuning_db) != os.path.abspath(config.default_db_path())


def test_format_schema_sections_and_round_trip(tmp_path):
    path = tmp_path / "t.json"
    db = TuningDB(path)
    assert db.lookup(KEY) is None and not path.exists()  # reading never creates the file
    db.store({KEY: _record()})
    data = json.loads(path.read_text())
    assert data["schema"] == dbmod.SCHEMA
    sec = data["sections"][current_id()]
    assert sec["fingerprint"] == fingerprint("cpu") and sec["records"][KEY] == _record()
    assert TuningDB(path).lookup(KEY) == _record()
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_keys_name_every_field():
    assert KEY == "conv/forward/cpu/float32/NCHW/x1x2x6x6/w3x2x3x3/p1-1,1-1/s1,1/d1,1/g1/flip/shared/t2"
    keys = {problem_key(_spec(b, d), "cpu", t) for b in (1, 2) for d in ("forward", "grad_input")
            for t in (1, 2)}
    assert len(keys) == 8
    assert problem_key(_spec(), "cuda", 2) != KEY


def test_fingerprint_covers_machine_versions_threads_and_kernels(tmp_path, monkeypatch):
    fpmod = sys.modules["nbconv.autotune.fingerprint"]  # the package exports a function of that name

    fp = fingerprint("cpu")
    assert fp["device"] == "cpu" and len(fp["kernel_sources"]) == 16
    assert set(fp["versions"]) >= {"nbconv", "numba", "llvmlite", "numpy"}
    assert "numba_pool" in fp["threads"] and fp["cpu"]
    assert fingerprint_id(fp) == current_id("cpu")
    gpu = fingerprint("cuda")  # without a GPU it still answers (and differs)
    assert gpu["device"] == "cuda" and fingerprint_id(gpu) != current_id("cpu")
    # an edited kernel source is another fingerprint
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cpu" / "k.py").write_text("a = 1\n")
    monkeypatch.setattr(fpmod, "_PACKAGE", tmp_path)
    before = source_hash()
    (tmp_path / "cpu" / "k.py").write_text("a = 2\n")
    assert source_hash() != before
    (tmp_path / "cpu" / "k.py").write_text("a = 1\n")
    assert source_hash() == before
    (tmp_path / "cuda" / "k.py").write_text("")
    assert source_hash() != before


def test_foreign_fingerprint_sections_are_ignored_and_kept(tmp_path):
    path = tmp_path / "t.json"
    foreign = dict(fingerprint("cpu"), kernel_sources="0000")
    path.write_text(json.dumps({"schema": dbmod.SCHEMA, "sections": {
        fingerprint_id(foreign): {"fingerprint": foreign, "records": {KEY: _record("direct")}}}}))
    db = TuningDB(path)
    assert db.lookup(KEY) is None
    assert [s["trusted"] for s in db.sections().values()] == [False]
    db.store({KEY: _record("im2col")})
    data = json.loads(path.read_text())
    assert data["sections"][fingerprint_id(foreign)]["records"][KEY]["winner"]["algorithm"] == "direct"
    assert TuningDB(path).lookup(KEY)["winner"]["algorithm"] == "im2col"


@pytest.mark.parametrize("content", [
    "{not json", '{"schema": 1, "sections": {"a": {"records": {', "", "\x00\x01garbage",
    '[1, 2]', '{"schema": 1, "sections": {"x": 3}}',
], ids=["corrupt", "truncated", "empty", "binary", "not-an-object", "bad-section"])
def test_an_unusable_file_is_moved_aside_with_a_warning(tmp_path, content):
    path = tmp_path / "t.json"
    path.write_text(content)
    db = TuningDB(path)
    with pytest.warns(TuningDBWarning, match="moved it to"):
        assert db.lookup(KEY) is None
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("t.json.bad-")]
    assert len(aside) == 1 and aside[0].read_text() == content
    db.store({KEY: _record()})  # and tuning goes on
    assert TuningDB(path).lookup(KEY) == _record()


def test_a_truncated_real_database_is_moved_aside(tmp_path):
    path = tmp_path / "t.json"
    db = TuningDB(path)
    db.store({KEY: _record(), KEY + "x": _record()})
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.warns(TuningDBWarning, match="corrupt"):
        TuningDB(path).store({KEY: _record("direct")})
    assert TuningDB(path).lookup(KEY)["winner"]["algorithm"] == "direct"


def test_another_schema_version_is_moved_aside(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"schema": 999, "sections": {}}))
    with pytest.warns(TuningDBWarning, match="schema 999"):
        TuningDB(path).store({KEY: _record()})
    assert json.loads(path.read_text())["schema"] == dbmod.SCHEMA
    assert any(p.name.startswith("t.json.bad-") for p in tmp_path.iterdir())


def test_an_unwritable_location_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    db = TuningDB(blocker / "sub" / "t.json")  # works as root too, unlike a chmod
    with pytest.warns(TuningDBWarning, match="kept in memory"):
        db.store({KEY: _record()})
    assert db.in_memory and db.fallback
    assert db.lookup(KEY) == _record()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not per record
        db.store({KEY + "2": _record()})
    assert len(db.records()) == 2


def test_the_memory_database_never_touches_the_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = TuningDB(":memory:")
    db.store({KEY: _record()})
    assert db.lookup(KEY) == _record() and not list(tmp_path.iterdir())


def test_another_process_writes_are_seen_on_lookup(tmp_path):
    path = tmp_path / "t.json"
    reader, writer = TuningDB(path), TuningDB(path)
    assert reader.lookup(KEY) is None
    writer.store({KEY: _record()})
    assert reader.lookup(KEY) == _record()


def test_merge_keeps_the_newer_measurement_and_export(tmp_path):
    a, b = TuningDB(tmp_path / "a.json"), TuningDB(tmp_path / "b.json")
    a.store({KEY: _record("direct", "2025-01-01T00:00:00+00:00"), "k_old": _record()})
    b.store({KEY: _record("im2col", "2025-06-01T00:00:00+00:00")})
    assert a.merge(b.export()) == 1
    assert a.lookup(KEY)["winner"]["algorithm"] == "im2col" and a.lookup("k_old")
    assert b.merge(str(tmp_path / "a.json")) == 1  # only k_old is new to b
    with pytest.raises(ValueError, match="schema"):
        a.merge({"schema": 0})
    assert a.clear() == 2 and a.records() == []


def test_sections_are_capped(tmp_path):
    path = tmp_path / "t.json"
    sections = {f"f{i:02d}": {"fingerprint": {}, "records": {}, "updated_at": f"2020-01-{i + 1:02d}"}
                for i in range(dbmod.MAX_SECTIONS + 3)}
    path.write_text(json.dumps({"schema": dbmod.SCHEMA, "sections": sections}))
    TuningDB(path).store({KEY: _record()})
    kept = json.loads(path.read_text())["sections"]
    assert len(kept) == dbmod.MAX_SECTIONS and current_id() in kept and "f00" not in kept


# ---------------------------------------------------------------------------------------------
# concurrency: 8 processes tuning different problems into one file
# ---------------------------------------------------------------------------------------------

PROCESSES, PER_PROCESS = 8, 6


def _fake_tuning_worker(path, worker, barrier):
    """Fake-fast tuning: numpy 'algorithms' timed by a fake timer, one store per problem (no
    Numba kernels run in the forked child)."""
    def ref(spec, a, b):
        return np.zeros(spec.result_shape, spec.np_dtype)

    algs = [registry.Algorithm(n, "cpu", {"forward": ref}) for n in ("t_a", "t_b")]
    db = TuningDB(path)
    barrier.wait()
    for i in range(PER_PROCESS):
        spec = _spec(batch=1 + worker * PER_PROCESS + i)
        r = tune_spec(spec, algorithms=algs, reference=algs[0],
                      timer=FakeTimer({"t_a": 2e-3, "t_b": 1e-3}))
        db.store({problem_key(spec, "cpu", 2): r.to_record({"worker": worker})})


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_concurrent_processes_lose_no_entry(tmp_path):
    path = str(tmp_path / "shared.json")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES)
    procs = [ctx.Process(target=_fake_tuning_worker, args=(path, w, barrier)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    with open(path) as f:
        records = json.load(f)["sections"][current_id()]["records"]
    assert len(records) == PROCESSES * PER_PROCESS
    assert {r["winner"]["algorithm"] for r in records.values()} == {"t_b"}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
