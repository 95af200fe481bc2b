"""How well the autotuner does: ``python -m nbconv.autotune.evaluate overhead|warmup|regret|stability``.

overhead   per-call cost of API + dispatch over the kernel for a problem whose winner is known
           (the kernel replaced by a function returning a ready result; wall and thread CPU time)
warmup     seconds to tune a workload (all three directions) into an empty database
regret     time of the tuned choice / time of the fastest candidate, re-measured side by side
           (interleaved rounds), per (problem, direction), and their geometric mean
stability  the winners of N fresh processes tuning the same workload: how often they agree where
           the candidates differ by more than 10 %

Every command prints the load average before and after, since the figures mean little without it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _load():
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def overhead(rounds=21, number=2000):
    from .. import config

    with config(tuning_db=config.MEMORY):  # never the user's database
        _overhead(rounds, number)


def _overhead(rounds, number):
    import numpy as np

    from .. import api, dispatch
    from ..problems import Problem
    from .warmup import tune

    p = Problem.from_dict({"name": "lenet_tiny", "nd": 2, "input": [1, 1, 28, 28], "filters": [6, 1, 5, 5]})
    tune([p], directions=["forward"])
    spec = p.spec("forward")
    alg, source = dispatch.explain(spec)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 28, 28), dtype=np.float32)
    w = rng.standard_normal((6, 1, 5, 5), dtype=np.float32)
    xc, wc = dispatch.canonical(x, spec.x_shape, spec.np_dtype), dispatch.canonical_weights(spec, w)
    run = alg.run["forward"]
    ready = run(spec, xc, wc)

    def call():
        api.conv2d(x, w)

    def kernel():
        run(spec, xc, wc)

    def per_call(fn, clock):
        out = []
        for _ in range(rounds):
            t0 = clock()
            for _ in range(number):
                fn()
            out.append((clock() - t0) / number)
        return out

    for _ in range(200):
        call()
    whole = per_call(call, time.perf_counter)
    alone = per_call(kernel, time.perf_counter)
    alg.run["forward"] = lambda s, a, b: ready
    try:
        for _ in range(200):
            call()
        wall = per_call(call, time.perf_counter)
        cpu = per_call(call, time.thread_time)
    finally:
        alg.run["forward"] = run
    med = statistics.median
    print(f"problem {spec.describe()}: {alg.name} (from {source})")
    print(f"whole call {med(whole) * 1e6:.2f} us, kernel alone {med(alone) * 1e6:.2f} us, difference "
          f"{(med(whole) - med(alone)) * 1e6:.2f} us (medians of {rounds} rounds x {number})")
    print(f"API + dispatch with the kernel replaced by a ready result: wall median {med(wall) * 1e6:.2f} us "
          f"(min {min(wall) * 1e6:.2f}), thread CPU time median {med(cpu) * 1e6:.2f} us (min {min(cpu) * 1e6:.2f})")


def warmup(workload="resnet50", passes=2):
    """Tune ``workload`` into an empty in-memory database ``passes`` times in this process (the
    first pass includes JIT compilation unless Numba's cache is warm; later passes use --force)."""
    from .. import config
    from .db import current as current_db
    from .warmup import tune

    with config(tuning_db=config.MEMORY):
        for i in range(passes):
            t0, c0 = time.perf_counter(), time.process_time()
            rows = tune(workload, force=i > 0)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"pass {i + 1}: {len(rows)} (problem, direction) rows of {workload!r} in {dt:.1f} s "
                  f"wall, {cpu:.1f} s CPU (all threads) ({sum(r.status == 'failed' for r in rows)} "
                  f"failed); load {_load()}", flush=True)
            # where the time went: each candidate's warm-up call and timed calls
            spent = {}
            for _, _, _, rec in current_db().records():
                for c in rec["candidates"]:
                    t = (c.get("warmup_s") or 0.0) + c.get("median_s", 0.0) * c.get("repeats", 0)
                    spent[c["algorithm"]] = spent.get(c["algorithm"], 0.0) + t
            print("   seconds per candidate (warm-up + timed calls, approx.): " + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])), flush=True)


def regret(workload="suite", db=None, rounds=5, drop=3.0, directions=None):
    """Re-measure the candidates of each (problem, direction) side by side and compare with the
    database's (or a fresh tuning's) choice."""
    from ..spec import DIRECTIONS
    from ..threads import get_num_threads
    from . import db as _db
    from .keys import problem_key
    from .warmup import _problems, tune

    database = _db.open_db(db)
    t0 = time.perf_counter()
    tune(workload, directions=directions, db=database)
    print(f"tuned (or found) {workload!r} in {time.perf_counter() - t0:.1f} s; load {_load()}", flush=True)
    threads, ratios = get_num_threads(), []
    print(f"{'problem':32s} {'direction':13s} {'chosen':14s} {'fastest':14s} {'regret':>7s}  medians (ms)")
    for p in _problems(workload):
        for d in directions or DIRECTIONS:
            spec = p.spec(d)
            rec = database.lookup(problem_key(spec, "cpu", threads))
            if not rec or not rec.get("winner"):
                continue
            chosen = rec["winner"]["algorithm"]
            names = [c["algorithm"] for c in rec["candidates"] if c["status"] != "failed"]
            med = _stat(_remeasure(spec, names, rounds, drop, keep=chosen), 50)
            fastest = min(med, key=med.get)
            ratio = med[chosen] / med[fastest]
            ratios.append(ratio)
            detail = " ".join(f"{n}={v * 1e3:.3f}" for n, v in sorted(med.items(), key=lambda kv: kv[1]))
            print(f"{p.name[:32]:32s} {d:13s} {chosen:14s} {fastest:14s} {ratio:7.3f}  {detail}", flush=True)
    g = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"regret: geometric mean {g:.4f}, max {max(ratios):.3f}, {sum(r > 1.05 for r in ratios)} of "
          f"{len(ratios)} rows above 1.05 ({rounds} interleaved rounds); load {_load()}")
    return g


def _remeasure(spec, names, rounds=7, drop=3.0, keep=None):
    """The times of the candidates ``names`` for ``spec``, timed side by side in rounds (each visit an untimed call, then a timed one). A
    candidate whose fastest of the first three rounds is ``drop`` times the best such time is left
    out: one burst of load in a single first round dropped a tied candidate."""
    from .. import registry
    from .timing import WallTimer
    from .tuner import random_operands

    timer = WallTimer()
    a, b = random_operands(spec, seed=1)
    fns = {n: registry.get(n).compute for n in names}
    for fn in fns.values():
        fn(spec, a, b)
    times = {n: [] for n in names}
    for r in range(rounds):
        for n in list(times):
            # the untimed call absorbs the previous candidate's thread pools winding down, the
            # rounds spread a change of machine load over all candidates alike
            fns[n](spec, a, b)
            times[n].append(timer(None, lambda fn=fns[n]: fn(spec, a, b), spec))
        if r == min(2, rounds - 1):
            best = min(min(t) for t in times.values())
            times = {n: t for n, t in times.items() if min(t) <= drop * best or n == keep}
    return times


def _stat(times, q):
    """The ``q``-th percentile of each candidate's times."""
    return {n: float(np.percentile(t, q)) for n, t in times.items()}


def stability(workload="demo", processes=10, directions=None, rounds=7, keep=None):
    """Tune ``workload`` in ``processes`` fresh processes (each into its own database); then
    re-measure each row's candidates side by side to find the rows whose two fastest candidates
    differ by more than 10 % (by the medians, and by the lower quartiles the tuner decides by),
    and count how many processes agree on those rows' winner.
    ``keep``: a directory to write the databases to (kept for inspection; default temporary)."""
    from ..problems import load_workload
    from ..spec import DIRECTIONS
    from ..threads import get_num_threads
    from .keys import problem_key

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        if keep:
            os.makedirs(keep, exist_ok=True)
            tmp = keep
        for i in range(processes):
            path = os.path.join(tmp, f"db{i}.json")
            cmd = [sys.executable, "-m", "nbconv", "tune", workload, "--db", path]
            if directions:
                cmd += ["--directions", ",".join(directions)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(path) as f:
                data = json.load(f)
            (sec,) = data["sections"].values()
            runs.append(sec["records"])
            print(f"process {i + 1}/{processes}: {len(sec['records'])} records in "
                  f"{time.perf_counter() - t0:.1f} s; load {_load()}", flush=True)
    threads = get_num_threads()
    clear, agreeing = {50: 0, 25: 0}, {50: 0, 25: 0}
    print(f"{'winners (count)':44s} {'gap':>6s} {'q25':>6s}  re-measured medians (ms); problem")
    for p in load_workload(workload)[1]:
        for d in directions or DIRECTIONS:
            spec = p.spec(d)
            key = problem_key(spec, "cpu", threads)
            winners = [r[key]["winner"]["algorithm"] for r in runs if key in r]
            if not winners:
                continue
            counts = {w: winners.count(w) for w in set(winners)}
            names = sorted({c["algorithm"] for r in runs if key in r for c in r[key]["candidates"]
                            if c.get("status") != "failed"})
            times = _remeasure(spec, names, rounds)
            top, gaps = max(counts.values()), {}
            for q in (50, 25):
                two = sorted(_stat(times, q).values())[:2]
                gaps[q] = two[1] / two[0] - 1 if len(two) == 2 else math.inf
                if gaps[q] > 0.10:
                    clear[q] += 1
                    agreeing[q] += top >= math.ceil(0.9 * processes)
            desc = ", ".join(f"{w} ({n})" for w, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            med = _stat(times, 50)
            detail = " ".join(f"{n}={v * 1e3:.3f}" for n, v in sorted(med.items(), key=lambda kv: kv[1])[:3])
            print(f"{desc[:44]:44s} {min(gaps[50], 99.99) * 100:5.0f}% {min(gaps[25], 99.99) * 100:5.0f}%  "
                  f"{detail}; {p.name} {d}", flush=True)
    for q, what in ((50, "medians"), (25, "lower quartiles")):
        print(f"rows whose two fastest candidates differ by > 10 % (re-measured {what}, {rounds} "
              f"interleaved rounds): {clear[q]}; the same winner in >= 90 % of {processes} processes "
              f"for {agreeing[q]} of them")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m nbconv.autotune.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("overhead")
    w = sub.add_parser("warmup")
    w.add_argument("workload", nargs="?", default="resnet50")
    w.add_argument("--passes", type=int, default=2)
    r = sub.add_parser("regret")
    r.add_argument("workload", nargs="?", default="suite")
    r.add_argument("--db", help="database to use (default: a fresh temporary one)")
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument("--directions", nargs="+")
    s = sub.add_parser("stability")
    s.add_argument("workload", nargs="?", default="demo")
    s.add_argument("--processes", type=int, default=10)
    s.add_argument("--directions", nargs="+")
    s.add_argument("--rounds", type=int, default=7)
    s.add_argument("--keep", metavar="DIR", help="write the databases to DIR and keep them")
    args = parser.parse_args(argv)
    print(f"load average before: {_load()}", flush=True)
    if args.what == "overhead":
        overhead()
    elif args.what == "warmup":
        warmup(args.workload, args.passes)
    elif args.what == "regret":
        db = args.db or os.path.join(tempfile.mkdtemp(prefix="nbconv-regret-"), "tuning.json")
        regret(args.workload, db, args.rounds, directions=args.directions)
    else:
        stability(args.workload, args.processes, args.directions, args.rounds, args.keep)
    print(f"load average after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
