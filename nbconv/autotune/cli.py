"""The ``tune``, ``db`` and ``record`` subcommands of ``python -m nbconv`` (added by nbconv.cli)."""
from __future__ import annotations

import json
import math
import os
import sys
import time

from ..spec import DIRECTIONS


def _directions(text):
    names = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in names if d not in DIRECTIONS]
    if bad or not names:
        raise ValueError(f"--directions takes a comma-separated subset of {','.join(DIRECTIONS)}")
    return names


def add_commands(sub):
    import argparse

    def directions(text):
        try:
            return _directions(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    tune = sub.add_parser("tune", help="warm-up: time workloads' problems and store the winners in the tuning database")
    tune.add_argument("workloads", nargs="+", metavar="WORKLOAD", help="built-in workload name or path to a JSON file")
    tune.add_argument("--directions", type=directions, default=list(DIRECTIONS),
                      help="comma-separated subset of forward,grad_input,grad_weights (default all)")
    tune.add_argument("--db", metavar="PATH", help="database file (default: nbconv.config.tuning_db)")
    tune.add_argument("--force", action="store_true", help="time problems already in the database again")
    tune.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    tune.add_argument("--budget", type=float, metavar="SECONDS",
                      help="timed seconds per candidate (default nbconv.config.tune_budget)")
    tune.set_defaults(func=cmd_tune)

    db = sub.add_parser("db", help="inspect, export, merge or clear a tuning database")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    show = dbsub.add_parser("show", help="sections and this machine's records")
    show.add_argument("--all", action="store_true", help="also list the records of other fingerprints")
    path = dbsub.add_parser("path", help="print the database's path")
    export = dbsub.add_parser("export", help="write the database (this machine's section) as JSON")
    export.add_argument("output", nargs="?", default="-", help="file (default: standard output)")
    export.add_argument("--all", action="store_true", help="every section, not only this machine's")
    merge = dbsub.add_parser("merge", help="merge other database files in (newer measurements win)")
    merge.add_argument("inputs", nargs="+", metavar="FILE")
    clear = dbsub.add_parser("clear", help="forget this machine's records")
    clear.add_argument("--all", action="store_true", help="forget every section")
    for p in (show, path, export, merge, clear):
        p.add_argument("--db", metavar="PATH", help="database file (default: nbconv.config.tuning_db)")
        p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    db.set_defaults(func=cmd_db)

    rec = sub.add_parser("record", help="run a Python script and write the convolution problems it hits to a workload file")
    rec.add_argument("output", help="workload JSON file to write (problems are appended, deduplicated)")
    rec.add_argument("script", help="the Python script to run")
    rec.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    rec.set_defaults(func=cmd_record)


class Progress:
    """A progress bar on stderr: redrawn in place on a terminal, one line per row otherwise."""

    def __init__(self, stream=None, width=24):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width, self.t0 = width, time.perf_counter()

    def __call__(self, done, total, row):
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        ms = f"{row.time_s * 1e3:.3f} ms" if math.isfinite(row.time_s) else "-"
        text = (f"[{bar}] {done}/{total} {time.perf_counter() - self.t0:6.1f}s  {row.problem[:36]} "
                f"{row.direction}: {row.winner or '-'} {ms} ({row.status})")
        if self.tty:
            self.stream.write("\r\x1b[K" + text + ("\n" if done == total else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def cmd_tune(args):
    from ..threads import get_num_threads
    from . import db as _db
    from .warmup import format_table, tune

    database = _db.open_db(args.db)
    print(f"nbconv tune: {', '.join(args.workloads)}; directions {','.join(args.directions)}; "
          f"device {args.device}; threads {get_num_threads()}; database {database.path}", flush=True)
    t0 = time.perf_counter()
    try:
        rows = tune(args.workloads, directions=args.directions, db=database, force=args.force,
                    device=args.device, budget=args.budget, progress=Progress())
    except ValueError as exc:
        print(f"nbconv tune: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"{len(rows)} problems in {time.perf_counter() - t0:.1f} s; database {database.path}"
          + (f" (IN MEMORY ONLY: {database.fallback})" if database.fallback else ""))
    return 1 if any(r.status == "failed" for r in rows) else 0


def cmd_db(args):
    from . import db as _db
    from .fingerprint import current_id

    database = _db.open_db(args.db)
    device = args.device
    if args.db_command == "path":
        print(database.path)
        return 0
    if args.db_command == "show":
        mine = current_id(device)
        print(f"database {database.path}")
        print(f"this machine's fingerprint ({device}): {mine}")
        sections = database.sections(device)
        if not sections:
            print("no records")
            return 0
        print(f"{'fingerprint':16s} {'records':>7s}  {'updated':25s} trusted")
        for fid, s in sections.items():
            print(f"{fid:16s} {s['records']:7d}  {s['updated_at']!s:25s} {'yes' if s['trusted'] else 'no'}")
        rows = database.records(device, all_sections=args.all)
        if rows:
            print()
            print(f"{'winner':14s} {'ms':>9s} {'measured':25s} problem")
            for fid, trusted, key, rec in sorted(rows, key=lambda r: r[2]):
                winner = (rec.get("winner") or {}).get("algorithm", "-")
                ms = next((c.get("median_s") for c in rec.get("candidates", [])
                           if c.get("algorithm") == winner), None)
                ms = f"{ms * 1e3:9.3f}" if ms is not None else f"{'-':>9s}"
                mark = "" if trusted else f"  [other fingerprint {fid}]"
                print(f"{winner:14s} {ms} {rec.get('measured_at')!s:25s} {key}{mark}")
        return 0
    if args.db_command == "export":
        data = database.export(device, all_sections=args.all)
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        if args.output == "-":
            sys.stdout.write(text)
        else:
            with open(args.output, "w") as f:
                f.write(text)
            n = sum(len(s["records"]) for s in data["sections"].values())
            print(f"exported {n} records in {len(data['sections'])} section(s) to {args.output}", file=sys.stderr)
        return 0
    if args.db_command == "merge":
        total = 0
        for path in args.inputs:
            try:
                n = database.merge(path)
            except (OSError, ValueError) as exc:
                print(f"nbconv db merge: {path}: {exc}", file=sys.stderr)
                return 1
            print(f"{path}: {n} records added or updated")
            total += n
        _db.invalidate()
        print(f"merged {total} records into {database.path}")
        return 0
    if args.db_command == "clear":
        n = database.clear(device, all_sections=args.all)
        _db.invalidate()
        print(f"removed {n} records from {database.path}")
        return 0
    raise AssertionError(args.db_command)


def cmd_record(args):
    import runpy

    from .record import record

    script = os.path.abspath(args.script)
    sys.argv = [script] + list(args.args)
    sys.path.insert(0, os.path.dirname(script))
    with record(args.output) as r:
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (None, 0):
                print(f"nbconv record: {args.script} exited with {exc.code}", file=sys.stderr)
    print(f"recorded {len(r.problems)} distinct problems into {args.output}", file=sys.stderr)
    return 0
