"""Benchmark a workload through nbconv's public API, alone, against PyTorch, or against another build.

``python -m nbconv bench [WORKLOAD] [--peer torch] [--save FILE.json]``, ``nbconv bench compare``,
``nbconv bench report`` (see :func:`main`), or :func:`run` / :func:`compare_builds` /
:func:`compare_results`. Each (case, direction) is timed as users call it (the public function, so
spec look-up, canonicalisation and the filter flip are included), after a warm-up that also
compiles. Directions follow the stored forward problem (see ``tuning/workloads/suite.json``): for
op 'transpose' the 'grad_input' row is the transposed convolution's forward pass and is called
through ``conv2d_transpose`` / ``F.conv_transpose2d``.

Sides and rounds
----------------
Two things are compared by timing them in alternating *rounds* (A B, then B A, ...), each side
in its own worker process (:mod:`nbconv.benchworker`), so that load changes on a shared machine
hit both sides alike and cancel in the per-round ratio (the method of asv's
``continuous --interleave-rounds``). A turn is one untimed call (waking the side's thread pools
and caches) and then enough timed calls to fill ~``TURN_S``; before a turn the coordinator waits
until no thread of the other workers is still running.

Why separate processes, and why wait (measured on the 2-core project machine; the README has the
table): the first version alternated nbconv and PyTorch *in one process*, and each side then ran
slower than alone (batch 8, forward: torch's unshared_lc 47 ms instead of 5.6, its r50_1x1_14 7.9
instead of 4.0, nbconv's im2col on r50_3x3_56 16.4 instead of 14.0). Two causes, both idle threads:

* one OpenMP runtime for both. Numba's OpenMP layer loads the system ``libgomp.so.1.0.0`` when
  its pool starts, and ``nbconv.threads`` sets its wait policy first (then
  ``OMP_WAIT_POLICY=PASSIVE``, now a short ``GOMP_SPINCOUNT``). Torch's
  ``libtorch_cpu`` needs ``libgomp.so.1``, the same soname, so when torch is imported after
  nbconv the loader hands it the runtime already loaded: torch then runs on nbconv's runtime,
  with its policy (the passive one: a futex sleep and wake-up around each parallel region; torch
  alone with ``OMP_WAIT_POLICY=PASSIVE`` took the same 47 ms). Imported the other way round the
  process holds *two* runtimes whose workers spin next to each other's regions (r50_1x1_14:
  torch 65 ms, r50_3x3_56: nbconv 133 ms).
* pools that keep spinning after their work. OpenBLAS (NumPy's GEMM, which nbconv's im2col and
  gemm_1x1 call) keeps its idle threads polling with ``sched_yield`` for ~0.1 s (2**28 cycles)
  after every call, libgomp's active workers spin for a while too; the next call of the *other*
  side started right away and shared the two cores with them (workers without the wait:
  torch's r50_1x1_14 at a median of 12.8 ms).

A worker per side gives each library the runtime, the wait policy and the thread pools it has
in a process of its own (the torch worker imports torch before anything else and is started
without nbconv's policy in its environment); waiting for the other workers' threads to stop
running removes the second cause across processes. Measured so, every side is within noise of
its time alone (r50_3x3_56 im2col 13.8 ms, torch r50_1x1_14 4.08, unshared_lc 5.8). The pause
also lets the side's own threads fall asleep, which the untimed first call of a turn absorbs.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import benchstats
from .benchworker import PEERS, NbconvSide, Server, TorchPeer, nbconv_call  # noqa: F401  (re-exported)
from .problems import load_workload, workload_path
from .spec import DIRECTIONS, GRAD_INPUT
from .threads import get_num_threads

#: FP32 peak of the project's benchmark machine, GFLOP/s: 2 cores (AMD EPYC, Zen 4) x ~2.85 GHz x
#: 2 FMA pipes x 8 lanes (AVX2 width) x 2 flops, i.e. the 182 GFLOP/s measured with an FMA-bound
#: loop. Other machines get an estimate from /proc/cpuinfo (see :func:`peak_gflops`), or set
#: ``NBCONV_PEAK_GFLOPS`` / ``--peak``.
PEAK_GFLOPS = 182.0
#: (CPU model, cores) -> measured peak; the estimate from the nominal clock misses turbo (166 here)
KNOWN_PEAKS = {("AMD EPYC", 2): PEAK_GFLOPS}
PEAK_ENV = "NBCONV_PEAK_GFLOPS"

#: float32 agreement required between two sides, relative to the largest |result|.
CHECK_RTOL = 1e-4

#: Seconds of timed calls per turn: fast cases get several calls per turn (their median is the
#: turn's value), slow ones one.
TURN_S = 0.02
MAX_CALLS_PER_TURN = 50
#: A turn starts with an untimed call when calls are shorter than this: waking the side's thread
#: pools and reloading its caches after the pause would otherwise be timed (a few hundred
#: microseconds: nothing next to a longer call, whose warm-up would only double the run time).
WARM_MAX_S = 0.25
#: Longest wait for the other workers' threads to stop running before a turn (OpenBLAS's idle
#: threads poll for ~0.1 s; longer means something else keeps them busy, so go on anyway).
QUIET_TIMEOUT_S = 0.5

SCHEMA = "nbconv.bench/1"
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchworker.py")
#: the directory holding this nbconv package: the build an isolated nbconv worker imports, so it
#: runs the code (and reads the tuning entries) of the coordinator, not whatever ``import nbconv``
#: finds on the interpreter's path (an installed copy of another tree)
OWN_BUILD = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# machine: peak, fingerprint, load
# ---------------------------------------------------------------------------------------------


def _cpuinfo():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    info.setdefault(k, v)
    except OSError:
        pass
    return info


def cpu_model():
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_gflops(value=None):
    """(FP32 peak GFLOP/s, where it came from): ``value`` if given, else ``NBCONV_PEAK_GFLOPS``,
    else the measured peak of a known machine, else cores x nominal clock x FMA flops per cycle
    (32 with AVX2/FMA or AMD's double-pumped AVX-512, 64 with Intel's AVX-512, 8 without FMA)."""
    if value is not None:
        return float(value), "given"
    env = os.environ.get(PEAK_ENV, "").strip()
    if env:
        return float(env), PEAK_ENV
    cores = _cores()
    known = KNOWN_PEAKS.get((cpu_model(), cores))
    if known:
        return known, f"measured on this machine model ({cpu_model()}, {cores} cores)"
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    mhz = float(info.get("cpu MHz", 0) or 0)
    if not mhz:
        return PEAK_GFLOPS, "default (no clock found)"
    per_cycle = 8
    if "fma" in flags:
        per_cycle = 64 if "avx512f" in flags and "GenuineIntel" in info.get("vendor_id", "") else 32
    return cores * mhz / 1e3 * per_cycle, f"estimate: {cores} cores x {mhz:.0f} MHz x {per_cycle} flops/cycle"


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def fingerprint():
    """What the numbers depend on: CPU, cores, thread settings, versions, BLAS."""
    import llvmlite
    import numba

    from . import __version__

    env = {k: v for k, v in sorted(os.environ.items())
           if k.startswith(("NBCONV_", "NUMBA_", "OMP_", "GOMP_", "OPENBLAS_", "MKL_", "KMP_"))}
    blas = []
    try:
        from threadpoolctl import threadpool_info

        blas = [{k: d.get(k) for k in ("user_api", "internal_api", "version", "num_threads",
                                        "threading_layer", "architecture")}
                for d in threadpool_info()]
    except Exception as e:  # threadpoolctl is a dependency, but its introspection is best-effort
        blas = [{"error": f"{type(e).__name__}: {e}"}]
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run in this process yet
        layer = numba.config.THREADING_LAYER
    peak, source = peak_gflops()
    return {
        "cpu_model": cpu_model(),
        "cores": _cores(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "peak_gflops": peak,
        "peak_source": source,
        "threads": {"nbconv": get_num_threads(), "numba_max": numba.config.NUMBA_NUM_THREADS,
                    "numba_threading_layer": layer},
        "env": env,
        "blas": blas,
        "versions": {"nbconv": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "numba": numba.__version__,
                     "llvmlite": llvmlite.__version__},
    }


# ---------------------------------------------------------------------------------------------
# rows
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One (case, direction) of a run: nbconv, and the peer when there is one."""

    case: str
    op: str
    direction: str
    algorithm: str
    ms: float  # median over rounds of each turn's median
    gflops: float
    pct_peak: float
    gflop: float = 0.0  # work of one call
    dtype: str = "float32"
    first_call_s: float | None = None  # the first call: compilation (or the cache load) included
    times_s: list = field(default_factory=list)  # raw: per round, the timed calls of the turn
    peer_ms: float | None = None
    peer_gflops: float | None = None
    peer_times_s: list | None = None
    ratio: float | None = None  # peer ms / nbconv ms (> 1: nbconv faster), median round ratio
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    reference_ms: float | None = None  # the workload file's recorded PyTorch time, if any
    max_rel_err: float | None = None  # against the peer's result
    load: list | None = None  # 1-minute load average after the case


@dataclass
class CompareRow:
    """One (case, direction) of a comparison of a base and a new side (ratio = new / base time)."""

    case: str
    op: str
    direction: str
    gflop: float
    base_algorithm: str
    new_algorithm: str
    base_ms: float
    new_ms: float
    ratio: float
    lo: float
    hi: float
    confidence: float
    n: int
    method: str
    flag: str
    dtype: str = "float32"
    base_times_s: list = field(default_factory=list)
    new_times_s: list = field(default_factory=list)
    groups: list | None = None  # the worker pair (process generation) of each round
    max_rel_err: float | None = None
    load: list | None = None


def _row_from_dict(cls, d):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def turn_values(times_s):
    """Each round's value: the median of its turn's timed calls."""
    return [float(np.median(t)) for t in times_s]


def reference_ms(workload):
    """The workload file's ``reference_ms`` mapping (case -> direction -> ms), or {}."""
    with open(workload_path(workload)) as f:
        return json.load(f).get("reference_ms", {})


# ---------------------------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


class Worker:
    """A side in its own process (see :mod:`nbconv.benchworker`)."""

    def __init__(self, label, side, build=None, threads=None, force=None):
        self.label, self.side = label, side
        cmd = [sys.executable, WORKER, "--side", side, "--force", json.dumps(force or {})]
        if build:
            cmd += ["--build", build]
        if threads:
            cmd += ["--threads", str(threads)]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, env=worker_env())
        self.pid = self.proc.pid
        self._read()  # the worker's "ready": imports done
        self.info = self.request("info")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerError(f"{self.label} worker exited ({self.proc.wait()}):\n{self.stderr_tail()}")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(f"{self.label} worker: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def request(self, cmd, **kw):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stderr_tail(self, n=3000):
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-n:]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


class LocalWorker:
    """The nbconv side in this process (a run without a peer): the same requests, no pipe."""

    pid = None

    def __init__(self, label="nbconv", threads=None, force=None):
        self.label, self.side = label, "nbconv"
        self.server = Server(NbconvSide(threads, force))
        self.info = self.request("info")

    def request(self, cmd, **kw):
        return self.server.handle({"cmd": cmd, **kw})

    def close(self):
        pass


def worker_env():
    """The environment a worker starts with: this one, less the spin count and OpenBLAS timeout
    that nbconv's import put there (a worker's own nbconv import sets them again; torch must not
    inherit them)."""
    from . import threads

    env = dict(os.environ)
    if getattr(threads, "WAIT_POLICY_SET", False) and env.get("GOMP_SPINCOUNT") == threads.SPIN_COUNT:
        del env["GOMP_SPINCOUNT"]
    if threads.BLAS_TIMEOUT_SET and env.get("OPENBLAS_THREAD_TIMEOUT") == threads.BLAS_TIMEOUT:
        del env["OPENBLAS_THREAD_TIMEOUT"]
    return env


def _running_threads(pid):
    """Threads of ``pid`` in state R (running or runnable), from /proc; 0 where unavailable."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    n = 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"R":
            n += 1
    return n


def wait_quiet(pids, timeout=QUIET_TIMEOUT_S):
    """Wait until no thread of ``pids`` runs (idle pools polling the cores), at most ``timeout``
    seconds; returns the seconds waited."""
    pids = [p for p in pids if p]
    t0 = time.perf_counter()
    if not pids:
        return 0.0
    if not os.path.isdir("/proc/self/task"):  # no /proc: a fixed pause instead
        time.sleep(0.1)
        return 0.1
    while any(_running_threads(p) for p in pids):
        if time.perf_counter() - t0 > timeout:
            break
        time.sleep(0.001)
    return time.perf_counter() - t0


def _turn_plan(estimate_s):
    """(timed calls, untimed calls) of a turn for a call of ``estimate_s`` seconds."""
    calls = int(min(MAX_CALLS_PER_TURN, max(1, math.ceil(TURN_S / max(estimate_s, 1e-7)))))
    return calls, int(estimate_s < WARM_MAX_S)


def interleave(workers, case, direction, rounds, warmup=2, quiet=True):
    """Prepare ``(case, direction)`` on every worker, then time it in ``rounds`` alternating rounds.

    Returns ({label: prepare reply}, {label: [[timed call seconds] per round]}); a side whose
    reply says ``supported: False`` is left out of the rounds.
    """
    prep = {w.label: w.request("prepare", case=case, direction=direction, warmup=warmup)
            for w in workers}
    active = [w for w in workers if prep[w.label]["supported"]]
    plans = {w.label: _turn_plan(prep[w.label]["last_s"]) for w in active}
    times = {w.label: [] for w in active}
    for r in range(rounds):
        for w in (active if r % 2 == 0 else active[::-1]):
            if quiet and len(active) > 1:
                wait_quiet([o.pid for o in active if o is not w])
            calls, warm = plans[w.label]
            reply = w.request("time", case=case, direction=direction, calls=calls, warm=warm)
            times[w.label].append(reply["times"])
    return prep, times


def _max_rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if ours.shape != theirs.shape:
        return math.inf
    scale = max(1.0, float(np.abs(theirs).max())) if theirs.size else 1.0
    return float(np.abs(ours - theirs).max()) / scale if ours.size else 0.0


def _check(a, b, case, direction, tmp):
    """Max relative difference between the last results of workers ``a`` and ``b``."""
    pa, pb = (os.path.join(tmp, f"{case}-{direction}-{i}.npy") for i in (0, 1))
    try:
        a.request("save", case=case, direction=direction, path=pa)
        b.request("save", case=case, direction=direction, path=pb)
        return _max_rel_err(np.load(pa), np.load(pb))
    finally:
        for p in (pa, pb):
            if os.path.exists(p):
                os.remove(p)


# ---------------------------------------------------------------------------------------------
# a run: nbconv alone or against a peer
# ---------------------------------------------------------------------------------------------


def select(workload, cases=None, batch=None):
    """(name, problems) of ``workload``, restricted to ``cases`` (in the workload's order) and with
    the batch size replaced by ``batch`` when given."""
    name, problems = load_workload(workload)
    if cases:
        unknown = set(cases) - {p.name for p in problems}
        if unknown:
            raise ValueError(f"no case(s) {sorted(unknown)} in workload {name!r}")
        problems = [p for p in problems if p.name in cases]
    if batch:
        problems = [_with_batch(p, batch) for p in problems]
    return name, problems


def _with_batch(p, batch):
    from dataclasses import replace

    return replace(p, input=(int(batch),) + tuple(p.input[1:]))


def parse_force(items):
    """``['CASE=ALGO', 'CASE:DIRECTION=ALGO']`` -> {'CASE': 'ALGO', 'CASE:DIRECTION': 'ALGO'}."""
    force = {}
    for item in items or ():
        key, sep, algo = item.partition("=")
        if not sep or not key or not algo:
            raise ValueError(f"--force-algo takes CASE=ALGO or CASE:DIRECTION=ALGO, got {item!r}")
        force[key] = algo
    return force


def run(workload="suite", peer=None, directions=None, repeat=10, cases=None, warmup=2,
        on_row=None, isolate=None, batch=None, force=None, peak=None, sides=None):
    """Time every (case, direction); returns a list of :class:`Row`.

    ``peer``: None or 'torch'. ``cases``: names to keep (default all). ``repeat``: rounds per
    (case, direction). ``on_row(row)`` is called as each row is ready (the CLI prints with it).
    ``isolate``: nbconv in a worker process too (always with a peer; default: only then).
    ``batch`` replaces the batch size; ``force`` maps 'CASE[:DIRECTION]' to an algorithm (to
    validate the regression gate). ``sides``: a dict to fill with each side's versions and
    settings (for the result file). Raises ImportError if the peer is missing.
    """
    _, problems = select(workload, cases, batch)
    refs = reference_ms(workload)
    directions = list(directions or DIRECTIONS)
    peak = peak_gflops(peak)[0]
    if peer:
        __import__(peer)  # ImportError here rather than in a worker
    isolate = bool(peer) if isolate is None else isolate or bool(peer)
    threads = get_num_threads()
    workers = []
    try:
        if isolate:
            workers.append(Worker("nbconv", "nbconv", build=OWN_BUILD, threads=threads, force=force))
        else:
            workers.append(LocalWorker("nbconv", threads=None, force=force))
        if peer:
            workers.append(Worker(peer, peer, threads=threads))
        for w in workers:
            w.request("setup", problems=[asdict(p) for p in problems])
        rows = []
        with tempfile.TemporaryDirectory(prefix="nbconv-bench-") as tmp:
            for p in problems:
                for d in directions:
                    row = _measure_row(workers, p, d, repeat, warmup, peak, refs, peer, tmp)
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
        if sides is not None:
            sides.update({w.label: w.info for w in workers})
        return rows
    finally:
        for w in workers:
            w.close()


def _measure_row(workers, p, d, repeat, warmup, peak, refs, peer, tmp):
    spec = p.spec(d)
    prep, times = interleave(workers, p.name, d, repeat, warmup)
    ours = turn_values(times["nbconv"])
    ms = float(np.median(ours)) * 1e3
    gflop = spec.flops() / 1e9
    row = Row(case=p.name, op=p.op, direction=d, algorithm=prep["nbconv"]["algorithm"], ms=ms,
              gflops=gflop / (ms * 1e-3), pct_peak=100.0 * gflop / (ms * 1e-3) / peak,
              gflop=gflop, dtype=p.dtype, first_call_s=prep["nbconv"]["first_s"],
              times_s=times["nbconv"], reference_ms=refs.get(p.name, {}).get(d),
              load=load_average())
    if peer and peer in times:
        theirs = turn_values(times[peer])
        row.peer_times_s = times[peer]
        row.peer_ms = float(np.median(theirs)) * 1e3
        row.peer_gflops = gflop / (row.peer_ms * 1e-3)
        # peer / nbconv per round: the same statistics as a comparison, new = peer
        ci = benchstats.paired_ratio(ours, theirs)
        row.ratio, row.ratio_lo, row.ratio_hi = ci.ratio, ci.lo, ci.hi
        row.max_rel_err = _check(workers[0], workers[1], p.name, d, tmp)
    return row


def geomean_ratio(rows):
    return benchstats.geomean([r.ratio for r in rows if r.ratio])


# ---------------------------------------------------------------------------------------------
# comparing two builds
# ---------------------------------------------------------------------------------------------


def _git(repo, *args, **kw):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, **kw).stdout


def package_root():
    """The directory holding this nbconv package (a checkout's root for a development install)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _repository():
    """The git checkout that revisions are resolved in: the one holding this package (a
    development install), else the one around the current directory (an installed nbconv run
    from inside a checkout)."""
    for where in (package_root(), os.getcwd()):
        try:
            return _git(where, "rev-parse", "--show-toplevel", text=True).strip()
        except (subprocess.CalledProcessError, OSError):
            continue
    raise ValueError("--against needs a git checkout: run it inside the repository")


def builds_dir():
    base = os.environ.get("NBCONV_BENCH_BUILDS")
    if base:
        return base
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "nbconv", "bench-builds")


def checkout(rev, repo=None):
    """(directory, commit) of ``rev``'s tree, extracted with ``git archive`` into the builds cache.

    Kept there, keyed by commit: the tree never changes, so Numba's on-disk cache of its kernels
    (written next to the sources) stays valid and a later comparison against the same commit
    skips the compilation. Nothing is added to the repository (no worktree, no branch).
    """
    import io
    import shutil
    import tarfile

    repo = repo or _repository()
    try:
        sha = _git(repo, "rev-parse", "--verify", f"{rev}^{{commit}}", text=True).strip()
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        raise ValueError(f"cannot resolve revision {rev!r} in {repo}: "
                         f"{getattr(e, 'stderr', '') or e}".strip()) from None
    root = os.path.join(builds_dir(), sha)
    if not os.path.isdir(os.path.join(root, "nbconv")):
        os.makedirs(builds_dir(), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f"{sha[:12]}-", dir=builds_dir())
        data = _git(repo, "archive", "--format=tar", sha)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.rename(tmp, root)
        except OSError:  # another comparison extracted it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return root, sha


def _describe_build(path, rev=None, sha=None):
    """Where a side's nbconv comes from: a revision's commit, or a working tree's HEAD and whether
    it has uncommitted changes."""
    desc = {"path": path, "rev": rev, "commit": sha}
    if rev is None:
        try:
            desc["commit"] = _git(path, "rev-parse", "HEAD", text=True).strip()
            desc["dirty"] = bool(_git(path, "status", "--porcelain", "--untracked-files=no",
                                      text=True).strip())
        except (subprocess.CalledProcessError, OSError):  # not a git checkout (an installed copy)
            pass
    return desc


def compare_builds(against, workload="suite", candidate=None, directions=None, repeat=18,
                   cases=None, warmup=2, on_row=None, batch=None, force=None, processes=6,
                   threshold=benchstats.DEFAULT_THRESHOLD,
                   confidence=benchstats.DEFAULT_CONFIDENCE):
    """Time the build of git revision ``against`` (base) and the ``candidate`` build (a revision,
    or None for the package this module belongs to, i.e. the working tree) in alternating rounds,
    each in its own worker; returns (rows, builds) with a :class:`CompareRow` per case and
    direction. ``force`` applies to the candidate only (to validate the regression gate).

    The ``repeat`` rounds are spread over ``processes`` successive pairs of fresh workers, and the
    interval is computed over the pairs (see :func:`nbconv.benchstats.clustered_ratio`): a worker
    keeps a speed of its own for its whole life (measured: two workers of the *same* build 15 %
    apart on lenet_tiny for a whole run, tight per-round interval, from where its arrays and
    threads happened to land), which pairing rounds cannot cancel, only new processes can.
    """
    base_dir, base_sha = checkout(against)
    new_dir, new_sha = checkout(candidate) if candidate else (package_root(), None)
    builds = {"base": _describe_build(base_dir, against, base_sha),
              "new": _describe_build(new_dir, candidate, new_sha)}
    _, problems = select(workload, cases, batch)
    directions = list(directions or DIRECTIONS)
    threads = get_num_threads()
    processes = max(1, int(processes))
    per_process = max(1, math.ceil(repeat / processes))
    keys = [(p, d) for p in problems for d in directions]
    times = {(p.name, d): {"base": [], "new": [], "groups": []} for p, d in keys}
    first = {}  # (case, direction) -> (prepare replies, max_rel_err) of the first pair
    with tempfile.TemporaryDirectory(prefix="nbconv-bench-") as tmp:
        for g in range(processes):
            workers = []
            try:
                workers.append(Worker("base", "nbconv", build=base_dir, threads=threads))
                workers.append(Worker("new", "nbconv", build=new_dir, threads=threads, force=force))
                for w, d in zip(workers, (base_dir, new_dir)):
                    got = os.path.realpath(w.info["file"])
                    if os.path.commonpath([got, os.path.realpath(d)]) != os.path.realpath(d):
                        raise WorkerError(f"the {w.label} worker imported nbconv from {got}, not from {d}")
                    builds[w.label]["side"] = w.info
                    w.request("setup", problems=[asdict(p) for p in problems])
                for p, d in keys:
                    prep, t = interleave(workers, p.name, d, per_process, warmup)
                    acc = times[(p.name, d)]
                    acc["base"] += t["base"]
                    acc["new"] += t["new"]
                    acc["groups"] += [g] * len(t["base"])
                    if g == 0:
                        first[(p.name, d)] = (prep, _check(workers[0], workers[1], p.name, d, tmp))
            finally:
                for w in workers:
                    w.close()
    rows = []
    for p, d in keys:
        acc = times[(p.name, d)]
        prep, err = first[(p.name, d)]
        base, new = turn_values(acc["base"]), turn_values(acc["new"])
        ci = benchstats.clustered_ratio(base, new, acc["groups"], confidence)
        row = CompareRow(
            case=p.name, op=p.op, direction=d, gflop=p.spec(d).flops() / 1e9,
            base_algorithm=prep["base"]["algorithm"], new_algorithm=prep["new"]["algorithm"],
            base_ms=float(np.median(base)) * 1e3, new_ms=float(np.median(new)) * 1e3,
            ratio=ci.ratio, lo=ci.lo, hi=ci.hi, confidence=ci.confidence, n=ci.n,
            method=ci.method, flag=ci.flag(threshold), dtype=p.dtype,
            base_times_s=acc["base"], new_times_s=acc["new"], groups=acc["groups"],
            max_rel_err=err, load=load_average())
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows, builds


def compare_results(base, new, threshold=benchstats.DEFAULT_THRESHOLD,
                    confidence=benchstats.DEFAULT_CONFIDENCE):
    """Compare two saved run results (nbconv's timings): the rows the two have in common, with
    independent-sample statistics (the runs were not interleaved, so no round pairs up)."""
    index = {(r["case"], r["direction"]): r for r in base["rows"]}
    rows = []
    for r in new["rows"]:
        b = index.get((r["case"], r["direction"]))
        if b is None:
            continue
        bt, nt = turn_values(b["times_s"]), turn_values(r["times_s"])
        ci = benchstats.independent_ratio(bt, nt, confidence)
        rows.append(CompareRow(
            case=r["case"], op=r["op"], direction=r["direction"], gflop=r.get("gflop", 0.0),
            base_algorithm=b["algorithm"], new_algorithm=r["algorithm"],
            base_ms=float(np.median(bt)) * 1e3, new_ms=float(np.median(nt)) * 1e3,
            ratio=ci.ratio, lo=ci.lo, hi=ci.hi, confidence=ci.confidence, n=ci.n,
            method=ci.method, flag=ci.flag(threshold), dtype=r.get("dtype", "float32"),
            base_times_s=b["times_s"], new_times_s=r["times_s"]))
    return rows


# ---------------------------------------------------------------------------------------------
# result files
# ---------------------------------------------------------------------------------------------


def make_result(kind, rows, workload, settings, machine, load, sides=None, problems=None):
    """The JSON-able result document (see ``validate``)."""
    return {
        "schema": SCHEMA,
        "kind": kind,  # 'run' or 'compare'
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv),
        "workload": {"name": workload, "problems": [asdict(p) for p in problems or ()]},
        "settings": settings,
        "machine": machine,
        "load": load,
        "sides": sides or {},
        "rows": [asdict(r) for r in rows],
    }


_REQUIRED = {
    "schema": str, "kind": str, "created": str, "workload": dict, "settings": dict,
    "machine": dict, "load": dict, "sides": dict, "rows": list,
}
_ROW_REQUIRED = {
    "run": ("case", "op", "direction", "algorithm", "ms", "gflops", "pct_peak", "times_s"),
    "compare": ("case", "op", "direction", "base_ms", "new_ms", "ratio", "lo", "hi", "flag",
                "base_times_s", "new_times_s"),
}


def validate(result):
    """Raise ValueError unless ``result`` is a result document of this schema."""
    if not isinstance(result, dict):
        raise ValueError("a result file holds a JSON object")
    if result.get("schema") != SCHEMA:
        raise ValueError(f"not an nbconv bench result (schema {result.get('schema')!r}, expected {SCHEMA!r})")
    for key, typ in _REQUIRED.items():
        if not isinstance(result.get(key), typ):
            raise ValueError(f"result field {key!r} missing or not a {typ.__name__}")
    if result["kind"] not in _ROW_REQUIRED:
        raise ValueError(f"unknown result kind {result['kind']!r}")
    for key in ("cpu_model", "cores", "peak_gflops", "threads", "versions"):
        if key not in result["machine"]:
            raise ValueError(f"machine fingerprint lacks {key!r}")
    for i, row in enumerate(result["rows"]):
        missing = [k for k in _ROW_REQUIRED[result["kind"]] if k not in row]
        if missing:
            raise ValueError(f"row {i} lacks {missing}")
    return result


def save_result(path, result):
    validate(result)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False, default=_json_default)
        f.write("\n")


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def load_result(path):
    with open(path) as f:
        return validate(json.load(f))


def rows_of(result):
    cls = Row if result["kind"] == "run" else CompareRow
    return [_row_from_dict(cls, r) for r in result["rows"]]


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------

HEADER = (f"{'case':15s} {'direction':13s} {'algorithm':13s} {'ms':>9s} {'GFLOP/s':>8s} {'%peak':>6s}"
          f" {'peer ms':>9s} {'ratio':>6s} {'95% CI':>13s} {'ref ms':>8s}  check")


def _direction_label(op, direction):
    return direction + ("*" if op == "transpose" and direction == GRAD_INPUT else "")


def format_row(r):
    direction = _direction_label(r.op, r.direction)
    if r.peer_ms is not None:
        peer = f"{r.peer_ms:9.3f} {r.ratio:6.2f} {f'[{r.ratio_lo:.2f}, {r.ratio_hi:.2f}]':>13s}"
    else:
        peer = f"{'-':>9s} {'-':>6s} {'-':>13s}"
    ref = f"{r.reference_ms:8.3f}" if r.reference_ms is not None else f"{'-':>8s}"
    if r.max_rel_err is None:
        check = "-"
    else:
        check = ("ok" if r.max_rel_err <= CHECK_RTOL else "MISMATCH") + f" {r.max_rel_err:.1e}"
    return (f"{r.case:15s} {direction:13s} {r.algorithm:13s} {r.ms:9.3f} {r.gflops:8.1f} "
            f"{r.pct_peak:6.1f} {peer} {ref}  {check}")


COMPARE_HEADER = (f"{'case':15s} {'direction':13s} {'base algo':13s} {'new algo':13s} {'base ms':>9s}"
                  f" {'new ms':>9s} {'new/base':>8s} {'CI':>15s}  flag")


def format_compare_row(r):
    ci = f"[{r.lo:.3f}, {r.hi:.3f}]"
    flag = r.flag.upper() if r.flag == "regression" else r.flag
    return (f"{r.case:15s} {_direction_label(r.op, r.direction):13s} {r.base_algorithm:13s} "
            f"{r.new_algorithm:13s} {r.base_ms:9.3f} {r.new_ms:9.3f} {r.ratio:8.3f} {ci:>15s}  {flag}")


def _load_str(values):
    return ", ".join(f"{v:.2f}" for v in values) if values else "n/a"


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def _add_selection(p, default_repeat):
    p.add_argument("--directions", nargs="+", choices=list(DIRECTIONS))
    p.add_argument("--cases", nargs="+", metavar="NAME", help="only these cases of the workload")
    p.add_argument("--batch", type=int, metavar="N", help="replace every case's batch size (quick runs)")
    p.add_argument("--repeat", type=int, default=default_repeat, metavar="ROUNDS",
                   help=f"alternating rounds per case and direction (default {default_repeat})")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before the rounds (compiling)")
    p.add_argument("--force-algo", action="append", metavar="CASE[:DIRECTION]=ALGO",
                   help="run CASE with ALGO (on the new side of a comparison): a deliberate "
                        "slowdown to validate the regression gate")


def _parsers():
    import argparse

    run_p = argparse.ArgumentParser(
        prog="nbconv bench",
        description="Time a workload through nbconv's public API, optionally against PyTorch. "
                    "Subcommands: 'nbconv bench compare ...', 'nbconv bench report ...'.")
    run_p.add_argument("workload", nargs="?", default="suite", help="built-in workload name or path to a JSON file")
    run_p.add_argument("--peer", choices=sorted(PEERS), help="also time this library in alternating rounds and check its results")
    run_p.add_argument("--isolate", action="store_true", help="time nbconv in a worker process even without a peer")
    run_p.add_argument("--save", metavar="FILE.json", help="write the result file")
    run_p.add_argument("--peak", type=float, metavar="GFLOPS", help=f"FP32 peak for %%peak (default: ${PEAK_ENV} or this machine's)")
    _add_selection(run_p, 10)

    cmp_p = argparse.ArgumentParser(
        prog="nbconv bench compare",
        description="Compare two saved results (A.json B.json), or re-run a workload on the build "
                    "of a git revision and on the working tree in alternating rounds (--against REV). "
                    "Exit status 1 when a regression is flagged: the confidence interval of the "
                    "time ratio new/base lies entirely above the threshold.")
    cmp_p.add_argument("results", nargs="*", metavar="RESULT.json", help="base and new result files")
    cmp_p.add_argument("--against", metavar="REV", help="base: this git revision, built in the builds cache")
    cmp_p.add_argument("--candidate", metavar="REV", help="new side: this revision instead of the working tree")
    cmp_p.add_argument("--workload", default="suite")
    cmp_p.add_argument("--threshold", type=float, default=benchstats.DEFAULT_THRESHOLD,
                       help="flag a regression when the CI's lower bound exceeds this ratio (default %(default)s)")
    cmp_p.add_argument("--confidence", type=float, default=benchstats.DEFAULT_CONFIDENCE)
    cmp_p.add_argument("--processes", type=int, default=6, metavar="PAIRS",
                       help="spread the rounds over this many fresh worker pairs (default 6; the "
                            "interval is over the pairs)")
    cmp_p.add_argument("--save", metavar="FILE.json", help="write the comparison result file")
    cmp_p.add_argument("--markdown", metavar="FILE.md", help="write the before/after table")
    cmp_p.add_argument("--png", metavar="FILE.png", help="write the before/after plot (needs matplotlib)")
    _add_selection(cmp_p, 18)

    rep_p = argparse.ArgumentParser(prog="nbconv bench report",
                                    description="Markdown table and PNG from a result file.")
    rep_p.add_argument("result", metavar="RESULT.json")
    rep_p.add_argument("--markdown", metavar="FILE.md", help="write the table (default: print it)")
    rep_p.add_argument("--png", metavar="FILE.png", help="write the plot (needs matplotlib: pip install 'nbconv[report]')")
    rep_p.add_argument("--peak", type=float, metavar="GFLOPS", help="override the peak stored in the result")
    rep_p.add_argument("--threshold", type=float, default=benchstats.DEFAULT_THRESHOLD)
    return run_p, cmp_p, rep_p


def main(argv):
    """``nbconv bench [compare|report] ...`` (argv after 'bench'); returns the exit status."""
    argv = list(argv)
    run_p, cmp_p, rep_p = _parsers()
    if argv[:1] == ["compare"]:
        return cmd_compare(cmp_p.parse_args(argv[1:]), cmp_p)
    if argv[:1] == ["report"]:
        return cmd_report(rep_p.parse_args(argv[1:]))
    return cmd_run(run_p.parse_args(argv))


def _settings(args, **extra):
    return {"repeat": args.repeat, "warmup": args.warmup, "directions": args.directions or list(DIRECTIONS),
            "cases": args.cases, "batch": args.batch, "force_algo": parse_force(args.force_algo),
            "turn_s": TURN_S, "max_calls_per_turn": MAX_CALLS_PER_TURN, **extra}


def cmd_run(args):
    peer = args.peer
    if peer:
        try:
            __import__(peer)
        except ImportError:
            print(f"peer {peer!r} is not installed: timing nbconv only")
            peer = None
    name = load_workload(args.workload)[0]
    peak, peak_source = peak_gflops(args.peak)
    isolate = args.isolate or bool(peer)
    print(f"nbconv bench: workload {name!r}, threads {get_num_threads()}, peer {peer or 'none'}, "
          f"{args.repeat} rounds (median of turns), {'worker processes' if isolate else 'in-process'}, "
          f"peak {peak:g} GFLOP/s ({peak_source})")
    load = {"before": load_average(), "samples": []}
    print(f"load average before: {_load_str(load['before'])}")
    print(HEADER)
    print("-" * len(HEADER))
    t0 = time.time()

    def on_row(r):
        load["samples"].append({"t": round(time.time() - t0, 1), "case": r.case,
                                "direction": r.direction, "load": r.load})
        print(format_row(r), flush=True)

    force = parse_force(args.force_algo)
    sides = {}
    rows = run(args.workload, peer=peer, directions=args.directions, repeat=args.repeat,
               cases=args.cases, warmup=args.warmup, on_row=on_row, isolate=isolate,
               batch=args.batch, force=force, peak=peak, sides=sides)
    print("-" * len(HEADER))
    g = geomean_ratio(rows)
    if g is not None:
        print(f"geometric mean of ratios (peer ms / nbconv ms, > 1: nbconv faster): {g:.3f} "
              f"over {sum(1 for r in rows if r.ratio)} rows")
    if any(r.op == "transpose" for r in rows):
        print("* transposed convolution: grad_input of the stored problem = the transpose's forward")
    load["after"] = load_average()
    print(f"load average after: {_load_str(load['after'])}")
    if args.save:
        machine = fingerprint()
        machine["peak_gflops"], machine["peak_source"] = peak, peak_source
        result = make_result("run", rows, name, _settings(args, peer=peer, isolate=isolate),
                             machine, load, sides, select(args.workload, args.cases, args.batch)[1])
        save_result(args.save, result)
        print(f"saved {args.save}")
    bad = [r for r in rows if r.max_rel_err is not None and r.max_rel_err > CHECK_RTOL]
    if bad:
        print(f"{len(bad)} row(s) disagree with the peer beyond rtol {CHECK_RTOL:g}")
        return 1
    return 0


def _print_compare_summary(rows, threshold):
    regressions = [r for r in rows if r.flag == "regression"]
    improvements = [r for r in rows if r.flag == "improvement"]
    g = benchstats.geomean([r.ratio for r in rows])
    if g is not None:
        print(f"geometric mean of new/base: {g:.3f} over {len(rows)} rows")
    print(f"{len(regressions)} regression(s) (CI lower bound > {threshold:g}), "
          f"{len(improvements)} improvement(s) (CI upper bound < {1 / threshold:.3f})")
    for r in regressions:
        print(f"  REGRESSION {r.case} {r.direction}: x{r.ratio:.3f} [{r.lo:.3f}, {r.hi:.3f}]")
    return regressions


def cmd_compare(args, parser):
    if args.against and args.results:
        parser.error("give either two result files or --against REV, not both")
    if not args.against and len(args.results) != 2:
        parser.error("give two result files (base new) or --against REV")
    print(COMPARE_HEADER)
    print("-" * len(COMPARE_HEADER))
    if args.results:
        base, new = (load_result(p) for p in args.results)
        if base["kind"] != "run" or new["kind"] != "run":
            parser.error("compare takes two results of 'nbconv bench --save'")
        rows = compare_results(base, new, args.threshold, args.confidence)
        for r in rows:
            print(format_compare_row(r))
        load = {"base": base["load"], "new": new["load"]}
        sides = {"base": {"file": args.results[0], "machine": base["machine"]},
                 "new": {"file": args.results[1], "machine": new["machine"]}}
        workload = new["workload"]["name"]
        if base["machine"].get("cpu_model") != new["machine"].get("cpu_model"):
            print("note: the two results come from different CPUs")
        problems = []
    else:
        load = {"before": load_average(), "samples": []}
        print(f"base {args.against}, new {args.candidate or 'working tree'}; "
              f"load average before: {_load_str(load['before'])}", flush=True)
        rows, sides = compare_builds(
            args.against, args.workload, candidate=args.candidate, directions=args.directions,
            repeat=args.repeat, cases=args.cases, warmup=args.warmup, batch=args.batch,
            force=parse_force(args.force_algo), processes=args.processes, threshold=args.threshold,
            confidence=args.confidence,
            on_row=lambda r: print(format_compare_row(r), flush=True))
        load["after"] = load_average()
        print(f"load average after: {_load_str(load['after'])}")
        workload = load_workload(args.workload)[0]
        problems = select(args.workload, args.cases, args.batch)[1]
    print("-" * len(COMPARE_HEADER))
    regressions = _print_compare_summary(rows, args.threshold)
    result = make_result("compare", rows, workload,
                         _settings(args, threshold=args.threshold, confidence=args.confidence,
                                   against=args.against, candidate=args.candidate,
                                   processes=args.processes if args.against else None,
                                   files=args.results or None),
                         fingerprint(), load, sides, problems)
    if args.save:
        save_result(args.save, result)
        print(f"saved {args.save}")
    if args.markdown or args.png:
        from . import report

        if args.markdown:
            report.write_markdown(result, args.markdown, threshold=args.threshold)
            print(f"wrote {args.markdown}")
        if args.png:
            report.write_png(result, args.png, threshold=args.threshold)
            print(f"wrote {args.png}")
    return 1 if regressions else 0


def cmd_report(args):
    from . import report

    result = load_result(args.result)
    if args.markdown:
        report.write_markdown(result, args.markdown, peak=args.peak, threshold=args.threshold)
        print(f"wrote {args.markdown}")
    else:
        print(report.markdown(result, peak=args.peak, threshold=args.threshold))
    if args.png:
        try:
            report.write_png(result, args.png, peak=args.peak, threshold=args.threshold)
        except ImportError as e:
            print(f"no PNG: {e}")
            return 2
        print(f"wrote {args.png}")
    return 0
