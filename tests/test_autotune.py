"""Autotuning: config API, policies, the tuner (with a fake timer), warm-up, recorder, CLI."""
import json
from time import sleep

import numpy as np
import pytest

import nbconv
from nbconv import config, dispatch, registry
from nbconv.autotune import (
    FakeTimer,
    TuningDB,
    layer_signature,
    policy,
    problem_key,
    tune_spec,
    use_timer,
)
from nbconv.autotune.tuner import Candidate, random_operands
from nbconv.cli import main as cli_main
from nbconv.problems import Problem, load_workload
from nbconv.spec import build
from nbconv.threads import get_num_threads

X_SHAPE, W_SHAPE = (1, 2, 7, 7), (3, 2, 3, 3)


@pytest.fixture
def db_path(tmp_path):
    """A fresh database for the test, default policies, nothing decided yet."""
    path = tmp_path / "tuning.json"
    with config(tuning_db=str(path), algo_fwd="guess_on_shape_change",
                algo_bwd_data="guess_on_shape_change", algo_bwd_filter="guess_on_shape_change"):
        dispatch.clear_cache()
        policy.forget()
        yield path
    dispatch.clear_cache()
    policy.forget()


def _spec(x_shape=X_SHAPE, w_shape=W_SHAPE, direction="forward", dtype=np.float64, **kw):
    opts = {"border_mode": 1, "subsample": 1, "filter_dilation": 1, "num_groups": 1,
            "unshared": False, "filter_flip": True, **kw}
    return build(direction, len(x_shape) - 2, x_shape, w_shape, dtype=dtype,
                 names={"x": "input", "w": "filters"}, **opts)


def _arrays(x_shape=X_SHAPE, w_shape=W_SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(x_shape), rng.standard_normal(w_shape)


def _direct(spec, a, b):
    return registry.get("direct").run[spec.direction](spec, a, b)


def _alg(name, run=None, workspace=None, estimate=None):
    run = run or _direct
    extra = {"workspace": workspace} if workspace else {}
    return registry.Algorithm(name, "cpu", {"forward": run}, estimate=estimate, **extra)


@pytest.fixture
def temp_algorithms():
    """Register test algorithms for the duration of a test."""
    added = []

    def add(alg):
        registry.register(alg)
        added.append(alg)
        return alg

    yield add
    for alg in added:
        registry._REGISTRY.pop((alg.device, alg.name), None)
    dispatch.clear_cache()
    policy.forget()


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def test_default_policy_is_guess_on_shape_change():
    assert config.DEFAULT_POLICY == "guess_on_shape_change"
    assert set(config.POLICIES) == {"guess_once", "guess_on_shape_change", "time_once",
                                    "time_on_shape_change"}


def test_environment_variables_set_the_initial_policies(monkeypatch):
    try:
        monkeypatch.setenv("NBCONV_ALGO_FWD", "time_once")
        monkeypatch.setenv("NBCONV_ALGO_BWD_DATA", "im2col")
        monkeypatch.setenv("NBCONV_ALGO_BWD_FILTER", "guess_once")
        monkeypatch.setenv("NBCONV_TUNING_DB", "/tmp/somewhere/t.json")
        config.reset()
        assert config.algo_fwd == "time_once"
        assert config.algo_bwd_data == "im2col"
        assert config.algo_bwd_filter == "guess_once"
        assert config.tuning_db == "/tmp/somewhere/t.json"
        assert config.policy == {"forward": "time_once", "grad_input": "im2col",
                                 "grad_weights": "guess_once"}
        monkeypatch.setenv("NBCONV_ALGO_FWD", "no_such_thing")
        with pytest.raises(ValueError, match="NBCONV_ALGO_FWD"):
            config.reset()
    finally:
        monkeypatch.undo()
        config.reset()
    assert config.algo_fwd == config.DEFAULT_POLICY


def test_default_database_location_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert config.default_db_path() == str(tmp_path / "nbconv" / "tuning.json")


def test_attribute_access_validates_and_context_manager_restores(db_path):
    config.algo_fwd = "time_once"
    assert config.algo_fwd == "time_once" and config.policy["forward"] == "time_once"
    with pytest.raises(ValueError, match="neither a policy"):
        config.algo_fwd = "tim_once"
    with pytest.raises(TypeError):
        config.algo_bwd_data = 3
    with pytest.raises(AttributeError, match="no setting"):
        config.algo_forward = "guess_once"
    with pytest.raises(ValueError):
        config(tune_budget=-1)
    with config(algo_fwd="direct", algo_bwd_filter="time_on_shape_change"):
        assert config.policy["forward"] == "direct"
        assert config.algo_bwd_filter == "time_on_shape_change"
    assert config.algo_fwd == "time_once" and config.algo_bwd_filter == "guess_on_shape_change"
    with pytest.raises(RuntimeError), config(algo_fwd="im2col"):
        raise RuntimeError
    assert config.algo_fwd == "time_once"
    config.set(algo_fwd="guess_on_shape_change")


def test_per_direction_policy_and_per_call_override(db_path):
    x, w = _arrays()
    dy = np.ones((1, 3, 7, 7))
    with config(algo_bwd_filter="direct"):
        spec_w = _spec(direction="grad_weights")
        nbconv.conv2d_grad_wrt_weights(x, dy, w.shape, border_mode=1)
        assert dispatch.explain(spec_w) == (registry.get("direct"), "explicit")
        spec_f = _spec()
        nbconv.conv2d(x, w, border_mode=1)
        assert dispatch.explain(spec_f)[1] == "guess"
        # the per-call keyword beats the config, for policies and names alike
        y = nbconv.conv2d(x, w, border_mode=1, algo="guess_once")
        np.testing.assert_allclose(y, nbconv.conv2d(x, w, border_mode=1, algo="direct"))
    with pytest.raises(ValueError, match="no_such"):
        nbconv.conv2d(x, w, algo="no_such")
    with pytest.raises(TypeError):
        nbconv.conv2d(x, w, algo=3)


# ---------------------------------------------------------------------------------------------
# the tuner, with a fake timer and test algorithms
# ---------------------------------------------------------------------------------------------


def test_fake_timer_decides_the_winner():
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b"), _alg("t_c")]
    r = tune_spec(spec, algorithms=algs, reference=algs[0],
                  timer=FakeTimer({"t_a": 3e-3, "t_b": 1e-3, "t_c": 2e-3}))
    assert r.winner == Candidate("t_b", "cpu")
    r = tune_spec(spec, algorithms=algs, reference=algs[0],
                  timer=FakeTimer({"t_a": 1e-3, "t_b": 3e-3, "t_c": 2e-3}))
    assert r.winner.algorithm == "t_a"
    assert [m.candidate.algorithm for m in r.measurements] == ["t_a", "t_b", "t_c"]


def test_ties_within_the_noise_band_go_to_registration_order():
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b")]
    times = {"t_a": 1.00e-3, "t_b": 0.97e-3}  # 3 % apart: a tie at the default 5 % band
    winners = {tune_spec(spec, algorithms=algs, reference=algs[0], timer=FakeTimer(times)).winner
               for _ in range(5)}
    assert winners == {Candidate("t_a")}
    assert tune_spec(spec, algorithms=algs, reference=algs[0], timer=FakeTimer(times),
                     tie=0.01).winner.algorithm == "t_b"
    times = {"t_a": 1.0e-3, "t_b": 0.8e-3}
    assert tune_spec(spec, algorithms=algs, reference=algs[0],
                     timer=FakeTimer(times)).winner.algorithm == "t_b"


def test_noisy_times_median_min_and_spread_are_recorded():
    spec = _spec()
    algs = [_alg("t_a")]
    r = tune_spec(spec, algorithms=algs, reference=algs[0],
                  timer=FakeTimer({"t_a": [1e-3, 5e-3, 1e-3, 1.2e-3, 0.9e-3]}))
    m = r.measurements[0]
    assert m.median == pytest.approx(1e-3) and m.min == pytest.approx(0.9e-3)
    rec = r.to_record({})
    (c,) = rec["candidates"]
    assert c["median_s"] == m.median and c["min_s"] == m.min and c["repeats"] == len(m.times)
    assert c["spread"] >= 0 and rec["measured_at"] and rec["winner"]["algorithm"] == "t_a"


def test_repeats_adapt_to_the_budget_and_slow_candidates_are_pruned():
    spec = _spec()
    algs = [_alg("t_fast"), _alg("t_slow"), _alg("t_huge")]
    timer = FakeTimer({"t_fast": 1e-3, "t_slow": 10e-3, "t_huge": 1.0})
    r = tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer, budget=0.01,
                  min_repeat=3, max_repeat=25)
    fast, slow, huge = r.measurements
    assert len(fast.times) == 10  # 10 x 1 ms = the 10 ms budget
    assert slow.status == "pruned" and len(slow.times) == 1
    assert huge.status == "pruned" and len(huge.times) == 1
    r = tune_spec(spec, algorithms=algs[2:], reference=algs[0], timer=timer, budget=0.01)
    assert len(r.measurements[0].times) == 3  # min_repeat, however long a call
    r = tune_spec(spec, algorithms=algs[:1], reference=algs[0], timer=FakeTimer({"t_fast": 1e-6}),
                  budget=0.01, max_repeat=25)
    assert len(r.measurements[0].times) == 25


def test_each_candidate_is_timed_in_one_run_of_calls():
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b"), _alg("t_c")]
    timer = FakeTimer({"t_a": 1e-3, "t_b": 1.1e-3, "t_c": 1.2e-3})
    tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer, budget=0.003, min_repeat=3,
              runoff=0)
    assert timer.calls == ["t_a"] * 3 + ["t_b"] * 3 + ["t_c"] * 3


def test_close_candidates_go_to_a_run_off_in_alternating_blocks():
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b"), _alg("t_c"), _alg("t_far")]
    timer = FakeTimer({"t_a": 1e-3, "t_b": 1.1e-3, "t_c": 1.2e-3, "t_far": 1.4e-3})
    r = tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer, budget=0.003,
                  min_repeat=3, runoff=1.3, runoff_rounds=4)
    first = ["t_a"] * 3 + ["t_b"] * 3 + ["t_c"] * 3 + ["t_far"] * 3
    block = round(2 * 0.003 / (4 * 1e-3))  # 2 calls per block: twice the budget over 4 rounds
    abc = [n for n in ("t_a", "t_b", "t_c") for _ in range(block)]
    assert timer.calls == first + abc + abc[::-1] + abc + abc[::-1]  # t_far: 1.4x, not a finalist
    a, b, c, far = r.measurements
    assert len(a.runoff) == len(b.runoff) == len(c.runoff) == 4 * block and not far.runoff
    rec = r.to_record({})["candidates"]
    assert rec[0]["runoff_repeats"] == 4 * block and "runoff_median_s" not in rec[3]


def test_the_run_off_decides_over_a_first_pass_disturbed_by_load():
    """t_a's first pass ran during a burst of load (1.8 ms, 1.2x t_b's 1.5 ms): the run-off
    times both again, alternately, and finds t_a the faster."""
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b")]
    timer = FakeTimer({"t_a": [1.8e-3] * 3 + [1e-3] * 100, "t_b": 1.5e-3})
    r = tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer, budget=0.004,
                  min_repeat=3, max_repeat=3)
    assert r.winner.algorithm == "t_a"
    assert r.measurements[0].median == pytest.approx(1.8e-3)  # the first pass is kept as measured
    assert r.winner_time == pytest.approx(1e-3)
    r = tune_spec(spec, algorithms=algs, reference=algs[0], budget=0.004, min_repeat=3,
                  max_repeat=3, runoff=0,
                  timer=FakeTimer({"t_a": [1.8e-3] * 3 + [1e-3] * 100, "t_b": 1.5e-3}))
    assert r.winner.algorithm == "t_b"  # without it, the burst decides


def _rounds(pattern, quiet=1e-3, burst=1.6e-3, calls=2):
    """Run-off times of ``calls`` calls per round: 'Q' a quiet round, 'B' one under load."""
    return [quiet if c == "Q" else burst for c in pattern for _ in range(calls)]


def test_a_run_off_whose_halves_disagree_is_extended():
    """t_a is faster in quiet rounds (1 ms against t_b's steady 1.2 ms); a burst of load covers
    five of the first six run-off rounds (t_a 1.6 ms there). Those six alone make t_b the
    winner, but their halves disagree, so more rounds follow, which the burst no longer
    reaches."""
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b")]
    block = 2  # round(2 * 0.006 / (6 * 1e-3))
    times_a = [1e-3] * 3 + _rounds("QBBBBB" + "Q" * 30, calls=block)
    timer = FakeTimer({"t_a": times_a, "t_b": 1.2e-3})
    r = tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer, budget=0.006,
                  min_repeat=3, max_repeat=3, runoff_rounds=6, runoff_extend=2)
    a, b = r.measurements
    # after 12 rounds the first half (1 quiet, 5 disturbed rounds) still names t_b: 18 rounds
    assert len(a.runoff) == len(b.runoff) == 18 * block
    assert r.winner.algorithm == "t_a"
    timer = FakeTimer({"t_a": times_a, "t_b": 1.2e-3})
    r = tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer, budget=0.006,
                  min_repeat=3, max_repeat=3, runoff_rounds=6, runoff_extend=0)
    assert len(r.measurements[0].runoff) == 6 * block and r.winner.algorithm == "t_b"


def test_a_run_off_is_extended_at_most_runoff_extend_times():
    """t_a's rounds, 3 quiet, 15 disturbed, then quiet, leave the halves disagreeing after 6,
    12, 18 and 24 rounds."""
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b")]
    times_a = [1e-3] * 3 + _rounds("Q" * 3 + "B" * 15 + "Q" * 30)
    for extend in (1, 2, 3):
        r = tune_spec(spec, algorithms=algs, reference=algs[0], budget=0.006, min_repeat=3,
                      max_repeat=3, runoff_rounds=6, runoff_extend=extend,
                      timer=FakeTimer({"t_a": times_a, "t_b": 1.2e-3}))
        assert len(r.measurements[1].runoff) == 6 * (1 + extend) * 2


def test_the_run_off_decides_by_its_lower_quartile():
    """A stretch of load slowed 2 of every 3 of t_a's run-off calls 2x: its median says 2 ms,
    behind t_b's 1.5 ms; its quiet calls (1 ms) are what the algorithm costs."""
    spec = _spec()
    algs = [_alg("t_a"), _alg("t_b")]
    timer = FakeTimer({"t_a": [1e-3] * 3 + [1e-3, 2e-3, 2e-3] * 40, "t_b": 1.5e-3})
    r = tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer, budget=0.006,
                  min_repeat=3, max_repeat=3)
    a = r.measurements[0]
    assert np.median(a.runoff) == pytest.approx(2e-3) and r.winner.algorithm == "t_a"
    assert r.to_record({})["candidates"][0]["runoff_q25_s"] == pytest.approx(a.score)


def test_a_hopeless_estimate_is_not_run_and_a_hopeless_warm_up_not_timed():
    spec = _spec()
    ref = _direct(spec, *random_operands(spec))  # compiled now: the calls below do no JIT work
    calls = []

    def slow(spec, a, b):
        calls.append(1)
        sleep(0.02)
        return ref.copy()

    algs = [_alg("t_fast", lambda s, a, b: ref.copy(), estimate=lambda s: 1e-6),
            _alg("t_slow", slow, estimate=lambda s: 2e-6),
            _alg("t_far", slow, estimate=lambda s: 1e-3)]
    r = tune_spec(spec, algorithms=algs, reference=algs[0], budget=0.001)
    fast, slow_m, far = r.measurements
    assert r.winner.algorithm == "t_fast" and fast.status == "ok"
    assert far.status == "skipped" and "estimate" in far.error
    assert slow_m.status == "pruned" and slow_m.times == [slow_m.warmup_s] and len(calls) == 1


def test_a_candidate_that_raises_never_wins_nor_crashes():
    spec = _spec()

    def boom(spec, a, b):
        raise MemoryError("no room")

    calls = []

    def late_boom(spec, a, b):  # fine in the warm-up, fails when timed
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("second call")
        return _direct(spec, a, b)

    algs = [_alg("t_ok"), _alg("t_boom", boom), _alg("t_late", late_boom)]
    timer = FakeTimer({"t_ok": 5e-3, "t_boom": 1e-3, "t_late": 1e-3}, run=True)
    r = tune_spec(spec, algorithms=algs, reference=algs[0], timer=timer)
    assert r.winner.algorithm == "t_ok"
    by = {m.candidate.algorithm: m for m in r.measurements}
    assert by["t_boom"].status == "failed" and "MemoryError: no room" in by["t_boom"].error
    assert by["t_late"].status == "failed" and "second call" in by["t_late"].error
    assert "t_boom" not in timer.calls


def test_a_wrong_result_never_wins():
    spec = _spec()

    def wrong(spec, a, b):
        out = _direct(spec, a, b)
        out[0, 0, 0, 0, 0] += 1e-3 * np.abs(out).max()
        return out

    def nan(spec, a, b):
        return np.full(spec.result_shape, np.nan)

    algs = [_alg("t_ref"), _alg("t_wrong", wrong), _alg("t_nan", nan), _alg("t_shape", lambda s, a, b: a)]
    r = tune_spec(spec, algorithms=algs, reference=algs[0],
                  timer=FakeTimer({"t_ref": 1.0, "t_wrong": 1e-3, "t_nan": 1e-3, "t_shape": 1e-3}))
    assert r.winner.algorithm == "t_ref"
    for m in r.measurements[1:]:
        assert m.status == "failed" and "wrong result" in m.error


def test_float32_tolerance_accepts_rounding_differences():
    spec = _spec(dtype=np.float32)

    def rounded(spec, a, b):
        out = _direct(spec, a, b)
        return (out * (1 + 1e-6)).astype(np.float32)

    algs = [_alg("t_ref"), _alg("t_rounded", rounded)]
    r = tune_spec(spec, algorithms=algs, reference=algs[0],
                  timer=FakeTimer({"t_ref": 2e-3, "t_rounded": 1e-3}))
    assert r.winner.algorithm == "t_rounded"
    # the same relative difference is wrong in float64
    r = tune_spec(_spec(), algorithms=algs, reference=algs[0],
                  timer=FakeTimer({"t_ref": 2e-3, "t_rounded": 1e-3}))
    assert r.winner.algorithm == "t_ref"


def test_workspace_over_the_limit_fails_without_running():
    from nbconv.cpu.im2col import get_workspace_limit

    spec = _spec()
    ran = []

    def hungry(spec, a, b):
        ran.append(1)
        return _direct(spec, a, b)

    algs = [_alg("t_ref"), _alg("t_hungry", hungry, workspace=lambda s: get_workspace_limit() + 1)]
    r = tune_spec(spec, algorithms=algs, reference=algs[0],
                  timer=FakeTimer({"t_ref": 2e-3, "t_hungry": 1e-3}))
    assert r.winner.algorithm == "t_ref" and not ran
    assert "exceeds the limit" in r.measurements[1].error


def test_operands_are_never_written():
    spec = _spec()

    def scribble(spec, a, b):
        out = _direct(spec, a, b)
        a[...] = 0
        b[...] = 0
        return out

    a, b = random_operands(spec, seed=3)
    a0, b0 = a.copy(), b.copy()
    algs = [_alg("t_ref"), _alg("t_scribble", scribble)]
    r = tune_spec(spec, algorithms=algs, reference=algs[0], operands=(a, b),
                  timer=FakeTimer({"t_ref": 2e-3, "t_scribble": 1e-3}, run=True))
    assert r.winner.algorithm == "t_scribble"
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def test_real_algorithms_with_the_wall_clock_timer():
    for direction in ("forward", "grad_input", "grad_weights"):
        spec = _spec(direction=direction, dtype=np.float32)
        r = tune_spec(spec, budget=0.002)
        assert r.winner is not None and registry.get(r.winner.algorithm).applicable(spec)
        assert {m.candidate.algorithm for m in r.measurements} == {
            a.name for a in registry.candidates(spec)}
        for m in r.measurements:
            assert m.status in ("ok", "pruned", "skipped", "failed")
            if m.status in ("ok", "pruned"):
                assert m.times and all(t > 0 for t in m.times)
            else:
                assert not m.times and m.error


# ---------------------------------------------------------------------------------------------
# policies through the public API
# ---------------------------------------------------------------------------------------------


def _first_other(spec, name):
    """An applicable algorithm other than ``name`` (the test makes it the fake winner)."""
    return next(a.name for a in registry.candidates(spec) if a.name != name)


def test_time_once_never_retimes_and_reuses_the_layer_decision(db_path):
    x, w = _arrays()
    spec = _spec()
    favourite = _first_other(spec, registry.guess(spec).name)
    timer = FakeTimer(lambda name, s: 1e-3 if name == favourite else 5e-3)
    with use_timer(timer):
        y = nbconv.conv2d(x, w, border_mode=1, algo="time_once")
        n = len(timer.calls)
        assert n > 0 and dispatch.explain(spec, "time_once") == (registry.get(favourite), "timed")
        np.testing.assert_allclose(y, nbconv.conv2d(x, w, border_mode=1, algo="direct"))
        dispatch.clear_cache()  # even without dispatch's memory: the database knows the key
        nbconv.conv2d(x, w, border_mode=1, algo="time_once")
        assert len(timer.calls) == n
        # another batch and image size, same layer: reused, not timed
        x2 = np.random.default_rng(1).standard_normal((3, 2, 11, 9))
        nbconv.conv2d(x2, w, border_mode=1, algo="time_once")
        assert len(timer.calls) == n
        spec2 = _spec(x_shape=(3, 2, 11, 9))
        assert layer_signature(spec2, "cpu", 1) == layer_signature(spec, "cpu", 1)
        assert dispatch.explain(spec2, "time_once") == (registry.get(favourite), "once")
        # another layer: timed
        nbconv.conv2d(x, w, border_mode=0, algo="time_once")
        assert len(timer.calls) > n


def test_time_on_shape_change_redecides_for_new_shapes(db_path):
    w = _arrays()[1]
    spec1, spec2 = _spec(), _spec(x_shape=(2, 2, 9, 9))
    names = [a.name for a in registry.candidates(spec1)]
    first, second = names[0], names[1]
    assert second in [a.name for a in registry.candidates(spec2)]

    def times(name, spec):  # `first` wins at batch 1, `second` at batch 2
        if spec.batch == 1:
            return 1e-3 if name == first else 4e-3
        return 1e-3 if name == second else 4e-3

    timer = FakeTimer(times)
    with use_timer(timer), config(algo_fwd="time_on_shape_change"):
        rng = np.random.default_rng(2)
        nbconv.conv2d(rng.standard_normal((1, 2, 7, 7)), w, border_mode=1)
        n1 = len(timer.calls)
        nbconv.conv2d(rng.standard_normal((2, 2, 9, 9)), w, border_mode=1)
        n2 = len(timer.calls)
        nbconv.conv2d(rng.standard_normal((1, 2, 7, 7)), w, border_mode=1)  # known: no timing
        assert 0 < n1 < n2 == len(timer.calls)
        assert dispatch.explain(spec1)[0].name == first
        assert dispatch.explain(spec2)[0].name == second
    db = TuningDB(db_path)
    threads = get_num_threads()
    for spec, name in ((spec1, first), (spec2, second)):
        rec = db.lookup(problem_key(spec, "cpu", threads))
        assert rec["winner"]["algorithm"] == name
        assert rec["problem"]["input"] == list(spec.user_x_shape)
        assert {c["algorithm"] for c in rec["candidates"]} == {
            a.name for a in registry.candidates(spec)}


def test_guess_policies_use_a_database_winner(db_path):
    x, w = _arrays()
    spec = _spec()
    guess = registry.guess(spec).name
    other = _first_other(spec, guess)
    key = problem_key(spec, "cpu", get_num_threads())
    TuningDB(db_path).store({key: {"winner": Candidate(other).to_json(), "candidates": []}})
    for pol in ("guess_once", "guess_on_shape_change", "time_once", "time_on_shape_change"):
        with use_timer(FakeTimer({})):  # would raise if anything were timed
            nbconv.conv2d(x, w, border_mode=1, algo=pol)
        assert dispatch.explain(spec, pol) == (registry.get(other), "db")
    # the same layer at another size is not in the database: guess_once reuses, the other guesses
    spec2 = _spec(x_shape=(2, 2, 8, 8))
    assert dispatch.explain(spec2, "guess_once") == (registry.get(other), "once")
    assert dispatch.explain(spec2, "guess_on_shape_change") == (registry.guess(spec2), "guess")


def test_a_stale_database_winner_is_ignored(db_path):
    spec = _spec()
    key = problem_key(spec, "cpu", get_num_threads())
    TuningDB(db_path).store({key: {"winner": {"algorithm": "removed_algo"}, "candidates": []}})
    assert dispatch.explain(spec) == (registry.guess(spec), "guess")


def test_a_wrong_but_fast_registered_algorithm_never_wins(db_path, temp_algorithms):
    def zeros(spec, a, b):
        return np.zeros(spec.result_shape)

    temp_algorithms(_alg("t_zeros", zeros, estimate=lambda s: 0.0))
    x, w = _arrays()
    spec = _spec()
    with use_timer(FakeTimer(lambda name, s: 1e-6 if name == "t_zeros" else 1e-3)):
        y = nbconv.conv2d(x, w, border_mode=1, algo="time_on_shape_change")
    np.testing.assert_allclose(y, nbconv.conv2d(x, w, border_mode=1, algo="direct"))
    alg, source = dispatch.explain(spec, "time_on_shape_change")
    assert alg.name != "t_zeros" and source == "timed"
    rec = TuningDB(db_path).lookup(problem_key(spec, "cpu", get_num_threads()))
    bad = next(c for c in rec["candidates"] if c["algorithm"] == "t_zeros")
    assert bad["status"] == "failed" and "wrong result" in bad["error"]


def test_user_arrays_are_untouched_by_timing(db_path):
    x, w = _arrays()
    x0, w0 = x.copy(), w.copy()
    with use_timer(FakeTimer(lambda name, s: 1e-3, run=True)):
        nbconv.conv2d(x, w, border_mode=1, algo="time_on_shape_change")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


def test_a_known_problem_costs_no_database_access(db_path, monkeypatch):
    x, w = _arrays()
    nbconv.conv2d(x, w, border_mode=1)

    def no(*args, **kwargs):
        raise AssertionError("the database was consulted for a known problem")

    monkeypatch.setattr(TuningDB, "lookup", no)
    monkeypatch.setattr(TuningDB, "_load", no)
    nbconv.conv2d(x, w, border_mode=1)


def test_decisions_are_an_lru_of_bounded_size(db_path):
    w = _arrays()[1]
    with config(cache_size=3):
        for n in (1, 2, 3, 1, 4):  # 1 is used again before 4 arrives: 2 is the one evicted
            nbconv.conv2d(np.ones((n, 2, 5, 5)), w)
        info = dispatch._decided.cache_info()
        assert info.currsize == 3 and info.maxsize == 3 and info.misses == 4
        nbconv.conv2d(np.ones((1, 2, 5, 5)), w)
        assert dispatch._decided.cache_info().misses == 4
        nbconv.conv2d(np.ones((2, 2, 5, 5)), w)
        assert dispatch._decided.cache_info().misses == 5


def test_changing_the_database_forgets_decisions(db_path, tmp_path):
    x, w = _arrays()
    nbconv.conv2d(x, w, border_mode=1)
    assert dispatch._decided.cache_info().currsize
    with config(tuning_db=str(tmp_path / "other.json")):
        assert not dispatch._decided.cache_info().currsize


# ---------------------------------------------------------------------------------------------
# warm-up, recorder, command line
# ---------------------------------------------------------------------------------------------

SMALL = [
    {"name": "tiny_a", "nd": 2, "input": [1, 2, 7, 7], "filters": [3, 2, 3, 3], "border_mode": 1},
    {"name": "tiny_1x1", "nd": 2, "input": [1, 4, 5, 5], "filters": [2, 4, 1, 1]},
]


def _workload(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"name": "small", "problems": SMALL}))
    return str(path)


def test_tune_stores_winners_and_skips_known_problems(db_path, tmp_path):
    wl = _workload(tmp_path)
    timer = FakeTimer(lambda name, s: 1e-3)
    rows = nbconv.tune(wl, directions="forward,grad_weights", timer=timer)
    assert [(r.problem, r.direction, r.status) for r in rows] == [
        ("tiny_a", "forward", "tuned"), ("tiny_a", "grad_weights", "tuned"),
        ("tiny_1x1", "forward", "tuned"), ("tiny_1x1", "grad_weights", "tuned")]
    for r in rows:
        assert r.winner and r.key in TuningDB(db_path).export()["sections"].popitem()[1]["records"]
        assert r.speedup == pytest.approx(1.0)  # equal fake times: the tie goes to the guess... or not
    n = len(timer.calls)
    rows = nbconv.tune(wl, directions=["forward"], timer=timer)
    assert {r.status for r in rows} == {"cached"} and len(timer.calls) == n
    rows = nbconv.tune(wl, directions=["forward"], timer=timer, force=True)
    assert {r.status for r in rows} == {"tuned"} and len(timer.calls) > n
    # the calls that follow use the warmed database
    spec = Problem.from_dict(SMALL[0]).spec("forward")
    assert dispatch.explain(spec)[1] == "db"
    with pytest.raises(ValueError, match="direction"):
        nbconv.tune(wl, directions=["sideways"])


def test_record_writes_each_forward_problem_once(tmp_path, db_path):
    out = tmp_path / "rec.json"
    x, w = _arrays()
    dy = np.ones((1, 3, 7, 7))
    with nbconv.record(out) as r:
        nbconv.conv2d(x, w, border_mode=1)
        nbconv.conv2d(x, w, border_mode=1)
        nbconv.conv2d_grad_wrt_inputs(dy, w, x.shape, border_mode=1)
        nbconv.conv2d_grad_wrt_weights(x, dy, w.shape, border_mode=1)
        nbconv.conv3d(np.ones((1, 2, 4, 5, 6)), np.ones((2, 2, 1, 2, 3)), border_mode=((1, 0), 0, 2),
                      subsample=(1, 2, 1), filter_flip=False)
        nbconv.conv2d(np.ones((0, 2, 7, 7)), w)  # empty batch: nothing to tune
    nbconv.conv2d(np.ones((2, 2, 7, 7)), w)  # outside the block
    assert r.directions[_spec().key()] == {"forward", "grad_input", "grad_weights"}
    name, problems = load_workload(str(out))
    assert name == "rec" and len(problems) == 2
    assert problems[0].spec() == _spec(dtype=np.float64)
    assert problems[1].spec().key() == build(
        "forward", 3, (1, 2, 4, 5, 6), (2, 2, 1, 2, 3), border_mode=((1, 0), 0, 2),
        subsample=(1, 2, 1), filter_dilation=1, num_groups=1, unshared=False, filter_flip=False,
        dtype=np.float64, names={"x": "input", "w": "filters"}).key()
    with nbconv.record(out):  # a second run appends new problems only
        nbconv.conv2d(x, w, border_mode=1)
        nbconv.conv2d(x, w, border_mode=2)
    assert len(load_workload(str(out))[1]) == 3


def test_cli_tune_and_db_commands(tmp_path, capsys, db_path):
    wl = _workload(tmp_path)
    db = str(tmp_path / "cli.json")
    assert cli_main(["tune", wl, "--directions", "forward", "--db", db, "--budget", "0.001"]) == 0
    out, err = capsys.readouterr()
    assert "speed-up" in out and "tiny_a" in out and "2/2" in err
    assert cli_main(["db", "path", "--db", db]) == 0
    assert capsys.readouterr().out.strip() == db
    assert cli_main(["db", "show", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "conv/forward/cpu/float32/NCHW/x1x2x7x7" in out and "yes" in out
    exported = tmp_path / "export.json"
    assert cli_main(["db", "export", str(exported), "--db", db]) == 0
    capsys.readouterr()
    other = str(tmp_path / "other.json")
    assert cli_main(["db", "merge", str(exported), "--db", other]) == 0
    assert "2 records" in capsys.readouterr().out
    assert len(TuningDB(other).records()) == 2
    assert cli_main(["db", "clear", "--db", other]) == 0
    assert "removed 2" in capsys.readouterr().out
    assert TuningDB(other).records() == []
    assert cli_main(["tune", wl, "--directions", "forward", "--db", db]) == 0
    assert "cached" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["tune", wl, "--directions", "forward,upward"])


def test_cli_record_runs_a_script(tmp_path, db_path):
    script = tmp_path / "model.py"
    script.write_text("import numpy as np, nbconv\n"
                      "nbconv.conv2d(np.ones((1, 2, 7, 7)), np.ones((3, 2, 3, 3)))\n")
    out = tmp_path / "model_workload.json"
    assert cli_main(["record", str(out), str(script)]) == 0
    assert len(load_workload(str(out))[1]) == 1
