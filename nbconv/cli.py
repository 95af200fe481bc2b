"""Command line: ``python -m nbconv demo|info|bench|tune|db|record`` (also installed as ``nbconv``)."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from .threads import get_num_threads


def _median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cmd_demo(args):
    from . import dispatch
    from .problems import load_workload
    from .spec import DIRECTIONS

    name, problems = load_workload(args.workload)
    directions = args.directions or list(DIRECTIONS)
    print(f"nbconv demo: workload {name!r}, {len(problems)} problems, directions {', '.join(directions)}")
    print(f"threads: {get_num_threads()}   load average: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    from .autotune import current_db

    db = current_db()
    print(f"tuning database: {db.path} ({len(db.records())} records for this machine); "
          f"chosen by: db = tuned winner, guess = heuristic (run `nbconv tune {args.workload}` first)")
    header = f"{'problem':16s} {'direction':13s} {'algorithm':18s} {'compile+1st':>11s} {'median':>10s} {'GFLOP/s':>8s}  shapes"
    print(header)
    print("-" * len(header))
    for p in problems:
        for d in directions:
            spec, a, b = p.operands(d)
            alg, source = dispatch.explain(spec)
            t0 = time.perf_counter()
            p.run(spec, a, b)
            first = time.perf_counter() - t0
            med = _median_time(lambda: p.run(spec, a, b), args.repeat)
            gflops = spec.flops() / med / 1e9
            print(f"{p.name:16s} {d:13s} {alg.name + ' (' + source + ')':18s} {first * 1e3:9.1f}ms {med * 1e3:8.2f}ms "
                  f"{gflops:8.1f}  {spec.describe()}", flush=True)
    return 0


def cmd_info(args):
    import llvmlite
    import numba

    from . import __version__, registry

    print(f"nbconv {__version__}  numba {numba.__version__}  llvmlite {llvmlite.__version__}  numpy {np.__version__}")
    print(f"python {platform.python_version()}  machine {platform.machine()}  cpus {os.cpu_count()}  threads {get_num_threads()}")
    print("algorithms:")
    for a in registry.algorithms():
        print(f"  {a.device:5s} {a.name:12s} {', '.join(sorted(a.directions)):40s} {a.description}")
    return 0


def cmd_bench(args):
    from . import bench

    return bench.main(args.bench_args)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="nbconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a workload's layers through dispatch and print algorithm and time")
    demo.add_argument("workload", nargs="?", default="demo", help="built-in workload name or path to a JSON file")
    demo.add_argument("--directions", nargs="+", choices=["forward", "grad_input", "grad_weights"])
    demo.add_argument("--repeat", type=int, default=3, help="timed runs after the first (median reported)")
    demo.set_defaults(func=cmd_demo)
    info = sub.add_parser("info", help="versions, threads and registered algorithms")
    info.set_defaults(func=cmd_info)
    # `nbconv bench [compare|report] ...` has its own parsers (nbconv.bench.main), so everything
    # after 'bench' is handed over as it is
    bench = sub.add_parser("bench", add_help=False,
                           help="time a workload (alone or against PyTorch), compare builds, report; "
                                "see `nbconv bench --help`")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    from .autotune.cli import add_commands

    add_commands(sub)  # tune, db, record
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # REMAINDER cannot start with an option: hand over directly
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
