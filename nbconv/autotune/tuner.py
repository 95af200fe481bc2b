"""Timing the candidates of one problem and choosing the winner.

For each applicable candidate, in registration order with the guess first (a good early best lets
the clearly slower candidates stop early):

1. an estimate ``skip`` times the lowest estimate -> skipped, never run (the reference still
   runs once, for the check); more scratch memory than the device's workspace limit -> failed,
   never run;
2. one warm-up call (it compiles, so JIT time never enters the timings; it also absorbs the
   previous candidate's thread pools winding down) whose result is compared with the reference
   algorithm ('direct') -> failed if it raises or disagrees. If it did no JIT work and still took
   ``prune_warmup`` times the best median so far, the candidate is pruned without a timed call;
3. timed calls through the device's timer, back to back, until ``budget`` seconds are spent (at
   least ``min_repeat``, even for long calls: fewer let one burst of machine load decide; at most
   ``max_repeat``),
   stopping early ("pruned") once even the fastest call is ``prune`` times slower than the best
   median so far (``prune_first`` after a single call, where one burst of noise weighs more):
   noise only adds time, so such a candidate cannot be in the tie band.

Back-to-back calls, not calls interleaved with other candidates: measured here, a GEMM-based
candidate timed right after another algorithm ran 2-10x slower than in a run of its own calls
(thread pools still winding down), which decided winners more than the algorithms did.

4. a run-off between the candidates whose median came within ``runoff`` of the best: they are
   timed again in alternating blocks (an untimed call, then timed calls; the block order reversed
   every round), so that a change of machine load during the first pass, which timed them one
   after the other, weighs on all of them alike. The run-off's lower quartiles then decide. When
   the first and the second half of its rounds, taken alone, name different winners, the
   decision is still at the mercy of the noise: another ``runoff_rounds`` rounds follow, up to
   ``runoff_extend`` times.

The winner has the lowest score (the run-off's lower quartile, else the first pass's median);
candidates within ``tie`` (relative) of it are a tie broken by registration order, so repeated
tunings pick the same algorithm. Candidates run on random operands of the problem's shapes (fixed
seed), never on a user's arrays: nothing of the user's is written, and the stored decision does
not depend on one batch's values (NaN, denormals).
"""
from __future__ import annotations

import datetime
import math
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .. import config, registry
from ..spec import FORWARD, GRAD_INPUT
from .timing import WallTimer, get_timer

REFERENCE = "direct"
#: largest |candidate - reference| / max |reference| accepted; float32 algorithms differ from the
#: direct loops by summation order (and FFT/Winograd transforms), ~1e-6..1e-4 on real layers
TOLERANCE = {"float32": 2e-3, "float64": 1e-8}
MIN_REPEAT = 3
MAX_REPEAT = 25
PRUNE = 1.5
#: candidates within this factor of the best first-pass median go to the run-off, timed there in
#: RUNOFF_ROUNDS alternating blocks. 1.3 left 1 of 34 suite rows at 8 of 10 processes agreeing:
#: a burst of load during winograd's first pass on ResNet's 512-channel 3x3 layer (17.3 ms
#: against 8.8-9.2 ms in quiet runs) put it 1.4x behind im2col, out of a 1.3x run-off
RUNOFF = 2.0
#: 4 rounds of up to 3 calls left ResNet's 56x56 grad-weights (im2col 12 % ahead of winograd when
#: re-measured) and C3D's grad-weights (winograd 27 % ahead) at 8 or 9 of 10 processes agreeing: a
#: burst of load over two of a finalist's four blocks moved its median past the gap. Six rounds,
#: extended while the halves disagree, cost 3-6 % more tuning time on the suite
RUNOFF_ROUNDS = 6
RUNOFF_EXTEND = 2
PRUNE_FIRST = 2.0
#: a warm-up call that did no JIT work yet took this many times the best median prunes its
#: candidate without a timed call: first calls can be slow for other reasons (scratch buffers
#: allocated and faulted in: 25x measured for im2col on a WaveNet layer), hence the wide margin
PRUNE_WARMUP = 50.0
#: candidates whose own estimate is this many times the lowest estimate are not run at all (the
#: estimates of the algorithms that won or came within 1.3x on the benchmark suite were at most
#: 12.7x the lowest)
SKIP = 25.0


@dataclass(frozen=True)
class Candidate:
    """One way to compute a problem: an algorithm on a device, with launch parameters as sorted
    ``(name, value)`` pairs (none on the CPU yet; a GPU kernel's block shape later)."""

    algorithm: str
    device: str = "cpu"
    params: tuple = ()

    def to_json(self):
        return {"algorithm": self.algorithm, "device": self.device, "params": dict(self.params)}

    @classmethod
    def from_json(cls, d):
        return cls(d["algorithm"], d.get("device", "cpu"), tuple(sorted((d.get("params") or {}).items())))


@dataclass
class Measurement:
    candidate: Candidate
    status: str  # "ok", "pruned" (timed, clearly slower), "skipped" (estimate) or "failed"
    times: list = field(default_factory=list)
    runoff: list = field(default_factory=list)  # the run-off's timings (see the module doc)
    error: str = None
    max_rel_err: float = None
    warmup_s: float = None

    @property
    def median(self):
        return float(np.median(self.times)) if self.times else math.inf

    @property
    def score(self):
        """What decides: the run-off's lower quartile where the candidate was in one (see
        :func:`_quartile`), else the first pass's median."""
        return _quartile(self.runoff) if self.runoff else self.median

    @property
    def min(self):
        return float(min(self.times)) if self.times else math.inf

    @property
    def spread(self):
        """Interquartile range relative to the median (max - min for fewer than 4 runs)."""
        if len(self.times) < 2:
            return 0.0
        t = np.asarray(self.times)
        lo, hi = np.percentile(t, [25, 75]) if len(t) >= 4 else (t.min(), t.max())
        return float((hi - lo) / np.median(t))

    def to_json(self):
        d = {**self.candidate.to_json(), "status": self.status}
        if self.times:
            d.update(median_s=self.median, min_s=self.min, spread=round(self.spread, 4),
                     repeats=len(self.times))
        if self.runoff:
            d.update(runoff_median_s=float(np.median(self.runoff)), runoff_q25_s=self.score,
                     runoff_min_s=float(min(self.runoff)),
                     runoff_repeats=len(self.runoff))
        if self.warmup_s is not None:
            d["warmup_s"] = self.warmup_s
        if self.max_rel_err is not None:
            d["max_rel_err"] = self.max_rel_err
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class Result:
    spec: object
    device: str
    winner: Candidate  # None when no candidate could be timed and checked
    measurements: list
    guess: str = None  # the heuristic's choice, for the speed-up figure
    measured_at: str = ""

    def measurement(self, name):
        for m in self.measurements:
            if m.candidate.algorithm == name:
                return m
        return None

    @property
    def winner_time(self):
        m = self.measurement(self.winner.algorithm) if self.winner else None
        return m.score if m else math.inf

    @property
    def guess_time(self):
        m = self.measurement(self.guess) if self.guess else None
        return m.score if m and m.times else math.inf

    def to_record(self, fields):
        return {
            "problem": fields,
            "winner": self.winner.to_json() if self.winner else None,
            "guess": self.guess,
            "candidates": [m.to_json() for m in self.measurements],
            "measured_at": self.measured_at,
        }


def random_operands(spec, seed=0):
    """Canonical host operands (a, b) of ``spec.direction`` (see :mod:`nbconv.registry`)."""
    rng = np.random.default_rng(seed)
    x_or_dy = spec.y_shape if spec.direction == GRAD_INPUT else spec.x_shape
    second = spec.w_shape if spec.direction in (FORWARD, GRAD_INPUT) else spec.y_shape
    return tuple(rng.standard_normal(s, dtype=np.float32).astype(spec.np_dtype, copy=False)
                 for s in (x_or_dy, second))


@dataclass(frozen=True)
class DeviceAdapter:
    """How the tuner moves operands to a device and results back, and the device's workspace
    limit (None: unchecked). A GPU backend registers its own with :func:`register_device`."""

    to_device: object = None  # host ndarray -> what the device's algorithms take (a copy)
    to_host: object = np.asarray  # result -> host ndarray, for the check against the reference
    workspace_limit: object = None  # () -> bytes, or None


def _cpu_limit():
    from ..cpu.im2col import get_workspace_limit

    return get_workspace_limit()


_adapters = {"cpu": DeviceAdapter(to_device=np.array, workspace_limit=_cpu_limit)}


def register_device(device, adapter):
    _adapters[device] = adapter


def _cuda_adapter():
    from numba import cuda

    def to_host(a):
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)

    return DeviceAdapter(to_device=lambda a: cuda.to_device(np.ascontiguousarray(a)), to_host=to_host)


def _adapter(device):
    adapter = _adapters.get(device)
    if adapter is None and device == "cuda":
        adapter = _adapters["cuda"] = _cuda_adapter()
    return adapter or DeviceAdapter(to_device=np.array)


def rel_err(out, ref):
    """max |out - ref| / max |ref| over finite entries; inf when shapes or non-finite entries differ."""
    out, ref = np.asarray(out), np.asarray(ref)
    if out.shape != ref.shape:
        return math.inf
    if ref.size == 0:
        return 0.0
    finite = np.isfinite(ref)
    if not np.array_equal(finite, np.isfinite(out)):
        return math.inf
    if not finite.all():
        out, ref = out[finite], ref[finite]
        if ref.size == 0:
            return 0.0
    scale = float(np.abs(ref).max())
    err = float(np.abs(out.astype(np.float64) - ref).max())
    return err / scale if scale > 0 else err


def _numba_specialisations():
    """How many specialisations nbconv's module-level Numba functions hold: it grows when a call
    compiles a kernel or loads one from Numba's on-disk cache."""
    n = 0
    for name, mod in list(sys.modules.items()):
        if mod is not None and name.startswith("nbconv."):
            for v in list(vars(mod).values()):
                overloads = getattr(v, "overloads", None)
                if isinstance(overloads, dict):
                    n += len(overloads)
    return n


@contextmanager
def _watch_jit(enabled):
    """Yields a list that holds True after the block when the block did no JIT work (no
    compilation, no load from Numba's cache): its duration is then a call of the kernels."""
    verdict = []
    if not enabled:
        yield verdict
        return
    from numba.core import event

    before = _numba_specialisations()
    with event.install_recorder("numba:compile") as rec:
        yield verdict
    verdict.append(not rec.buffer and _numba_specialisations() == before)


def _error(exc):
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"[:500]


def tune_spec(spec, *, device="cpu", timer=None, algorithms=None, reference=REFERENCE,
              budget=None, tie=None, min_repeat=MIN_REPEAT, max_repeat=MAX_REPEAT, prune=PRUNE,
              prune_first=PRUNE_FIRST, prune_warmup=PRUNE_WARMUP, skip=SKIP, runoff=RUNOFF,
              runoff_rounds=RUNOFF_ROUNDS, runoff_extend=RUNOFF_EXTEND, operands=None, seed=0):
    """Measure every applicable candidate for ``spec`` and pick the winner (see the module doc).

    ``algorithms``: the Algorithm objects to consider (default: the registry's for ``device``, in
    registration order); ``reference``: the name (or Algorithm) whose result the others must
    match; ``operands``: canonical (a, b) to time on (copied; default random).
    """
    timer = timer if timer is not None else get_timer(device)
    budget = config.get("tune_budget") if budget is None else budget
    tie = config.get("tune_tie") if tie is None else tie
    if algorithms is None:
        algorithms = registry.algorithms(device)
    algorithms = [a for a in algorithms if a.device == device]
    order = {a.name: i for i, a in enumerate(algorithms)}
    applicable = [a for a in algorithms if a.applicable(spec)]
    guess = _guess(spec, applicable)
    if isinstance(reference, str):
        reference = next((a for a in algorithms if a.name == reference), None) or (
            registry.get(reference, device) if reference in registry.names(device) else None)
    adapter = _adapter(device)
    a0, b0 = operands if operands is not None else random_operands(spec, seed)
    limit = adapter.workspace_limit() if adapter.workspace_limit else None

    def fresh(v):  # a private copy on the device: nothing of the caller's is ever written
        return adapter.to_device(v) if adapter.to_device is not None else np.array(v)

    def call(alg, a, b):
        return alg.compute(spec, a, b)

    measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # a warm-up call is a timing only with the wall clock on the CPU (synchronous calls, the same
    # clock) and when it did no JIT work
    watch = device == "cpu" and isinstance(timer, WallTimer)
    estimates = {a.name: _estimate(a, spec) for a in applicable}
    lowest = min((e for e in estimates.values() if e is not None), default=None)
    ref_out, ref_error, ref_warmup, ref_clean = None, None, None, False
    if reference is not None and reference.applicable(spec):
        try:
            with _watch_jit(watch) as verdict:
                t0 = time.perf_counter()
                ref_out = adapter.to_host(call(reference, fresh(a0), fresh(b0)))
                ref_warmup = time.perf_counter() - t0
            ref_clean = bool(verdict and verdict[0])
        except Exception as exc:  # noqa: BLE001  (any failure of a candidate is recorded)
            ref_error = _error(exc)
    else:
        ref_error = f"reference algorithm {getattr(reference, 'name', reference)!r} does not apply"

    ranked = sorted(applicable, key=lambda a: (guess is None or a.name != guess.name, order[a.name]))
    measurements, best = {}, math.inf
    for alg in ranked:
        m = measurements[alg.name] = Measurement(Candidate(alg.name, device), "failed")
        est = estimates[alg.name]
        if skip and lowest and est is not None and est > skip * lowest:
            m.status = "skipped"
            m.error = f"not run: its estimate is {est / lowest:.0f}x the lowest"
            continue
        try:
            ws = alg.workspace(spec)
        except Exception as exc:  # noqa: BLE001
            m.error = "workspace: " + _error(exc)
            continue
        if limit is not None and ws > limit:
            m.error = f"workspace {ws} bytes exceeds the limit of {limit} bytes"
            continue
        a, b = fresh(a0), fresh(b0)
        if reference is not None and alg.name == reference.name:
            if ref_out is None:
                m.error = ref_error
                continue
            m.warmup_s, clean = ref_warmup, ref_clean
        else:
            try:
                with _watch_jit(watch) as verdict:
                    t0 = time.perf_counter()
                    out = call(alg, a, b)
                    m.warmup_s = time.perf_counter() - t0
                clean = bool(verdict and verdict[0])
            except Exception as exc:  # noqa: BLE001
                m.error = _error(exc)
                continue
            if ref_out is None:
                m.error = f"cannot be checked: {ref_error}"
                continue
            m.max_rel_err = err = rel_err(adapter.to_host(out), ref_out)
            del out
            if not err <= TOLERANCE[spec.dtype]:
                m.error = f"wrong result: max relative error {err:.3g} > {TOLERANCE[spec.dtype]:g}"
                continue
        if clean and m.warmup_s > prune_warmup * best:
            m.status, m.times = "pruned", [m.warmup_s]
            continue
        if reference is not None and alg.name == reference.name and ref_warmup < budget:
            call(alg, a, b)  # its check ran before the others: warm up again, back to back
        m.status = "ok"
        total = 0.0
        try:
            while True:
                t = timer(m.candidate, lambda alg=alg, a=a, b=b: call(alg, a, b), spec)
                m.times.append(t)
                total += t
                n = len(m.times)
                if m.min > (prune_first if n == 1 else prune) * best:
                    m.status = "pruned"
                    break
                if n >= max_repeat or (n >= min_repeat and total >= budget):
                    break
        except Exception as exc:  # noqa: BLE001  (failing only on a later call is failing)
            m.status, m.error, m.times = "failed", _error(exc), []
            continue
        if m.status == "ok":
            best = min(best, m.median)

    ms = [measurements[a.name] for a in applicable]  # report in registration order
    ok = [m for m in ms if m.status == "ok"]
    if runoff and runoff_rounds and len(ok) > 1:
        _runoff(ok, runoff, runoff_rounds, runoff_extend, tie, budget, min_repeat, timer,
                {a.name: a for a in applicable}, call, fresh, a0, b0, spec)
        ok = [m for m in ms if m.status == "ok"]
    winner = _pick(ok, lambda m: m.score, tie)
    return Result(spec, device, winner.candidate if winner else None, ms,
                  guess.name if guess else None, measured_at)


def _pick(ms, score, tie):
    """The first of ``ms`` (registration order) whose score is within ``tie`` of the lowest."""
    if not ms:
        return None
    fastest = min(score(m) for m in ms)
    return next(m for m in ms if score(m) <= fastest * (1 + tie))


def _runoff(ok, factor, rounds, extend, tie, budget, min_repeat, timer, algs, call, fresh, a0,
            b0, spec):
    best = min(m.median for m in ok)
    finalists = [m for m in ok if m.median <= factor * best]
    if len(finalists) < 2:
        return
    # calls per block: the run-off spends about twice the first pass's budget per finalist
    per_block = min_repeat if best <= 0 else max(1, min(min_repeat, round(2 * budget / (rounds * best))))
    operands = {m.candidate.algorithm: (fresh(a0), fresh(b0)) for m in finalists}
    for r in range(rounds * (1 + max(0, extend))):
        if r and r % rounds == 0 and _settled([m for m in finalists if m.status == "ok"],
                                              per_block, tie):
            return
        for m in finalists if r % 2 == 0 else finalists[::-1]:
            if m.status != "ok":
                continue
            alg, (a, b) = algs[m.candidate.algorithm], operands[m.candidate.algorithm]
            fn = lambda alg=alg, a=a, b=b: call(alg, a, b)  # noqa: E731
            try:
                fn()  # untimed: the previous finalist's thread pools winding down
                m.runoff.extend(timer(m.candidate, fn, spec) for _ in range(per_block))
            except Exception as exc:  # noqa: BLE001
                m.status, m.error, m.times, m.runoff = "failed", _error(exc), [], []


def _settled(finalists, per_block, tie):
    """Whether the run-off's first and second half of rounds, each alone, pick the winner that
    all its rounds pick."""
    if len(finalists) < 2:
        return True
    half = len(finalists[0].runoff) // per_block // 2 * per_block
    whole = _pick(finalists, lambda m: _quartile(m.runoff), tie)
    return all(_pick(finalists, lambda m, s=s: _quartile(m.runoff[s]), tie) is whole
               for s in (slice(None, half), slice(half, None)))


def _quartile(times):
    """The lower quartile: load on this shared machine only adds time, and it came in stretches
    that slowed most of one finalist's run-off calls 2x while its other calls, and the other
    finalist's, ran at the usual speed (ResNet's 56x56 grad-weights, im2col: run-off median 27.7
    ms, minimum 13.1, in 2 of 10 processes; 15.0-15.5 in the others). The median followed those
    stretches; the minimum follows single lucky calls."""
    return float(np.percentile(times, 25))


def _estimate(alg, spec):
    if alg.estimate is None:
        return None
    try:
        return float(alg.estimate(spec))
    except Exception:  # noqa: BLE001  (a broken estimate only loses the skip)
        return None


def _guess(spec, applicable):
    """``registry.guess`` over an explicit list: lowest estimate, then registration order."""
    best, best_key = None, None
    for i, a in enumerate(applicable):
        key = (0, a.estimate(spec), i) if a.estimate is not None else (1, 0.0, i)
        if best_key is None or key < best_key:
            best, best_key = a, key
    return best
