"""Warm-up runs: time every problem of some workloads and store the winners in a database.

``nbconv.tune("resnet50")`` or ``python -m nbconv tune resnet50``. A problem already in the database
(same key, same fingerprint) is not timed again unless ``force``; identical problems listed by
several workloads are timed once.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .. import registry
from ..spec import DIRECTIONS
from ..threads import get_num_threads
from . import db as _db
from .keys import problem_fields, problem_key
from .tuner import tune_spec


@dataclass
class TuneRow:
    problem: str
    direction: str
    key: str
    status: str  # "tuned", "cached" (already in the database) or "failed"
    winner: str = None
    time_s: float = math.inf
    guess: str = None
    guess_s: float = math.inf
    seconds: float = 0.0  # wall time this row took to tune
    error: str = None

    @property
    def speedup(self):
        """Time of the guess's choice over the winner's (1.0 when the guess won)."""
        if self.winner and self.winner == self.guess:
            return 1.0
        if math.isfinite(self.guess_s) and self.time_s > 0:
            return self.guess_s / self.time_s
        return math.nan


def _row_from_record(name, direction, key, status, rec, seconds=0.0):
    row = TuneRow(name, direction, key, status, seconds=seconds, guess=rec.get("guess"))
    winner = rec.get("winner") or {}
    row.winner = winner.get("algorithm")
    for c in rec.get("candidates", []):
        if c.get("algorithm") == row.winner:
            row.time_s = c.get("median_s", math.inf)
        if c.get("algorithm") == row.guess:
            row.guess_s = c.get("median_s", math.inf)
    return row


def _problems(workloads):
    from ..problems import Problem, load_workload

    if isinstance(workloads, (str, bytes)) or hasattr(workloads, "__fspath__"):
        workloads = [workloads]
    out = []
    for w in workloads:
        if isinstance(w, Problem):
            out.append(w)
        else:
            out.extend(load_workload(w)[1])
    return out


def tune(workloads, directions=None, db=None, force=False, device="cpu", timer=None,
         budget=None, progress=None):
    """Time the problems of ``workloads`` (names, paths or Problem objects) in ``directions``
    (default all three) and store the winners in ``db`` (a path, a TuningDB or None for
    ``nbconv.config.tuning_db``). Returns a :class:`TuneRow` per (problem, direction).
    ``progress(done, total, row)`` is called after each row."""
    if isinstance(directions, str):
        directions = [d.strip() for d in directions.split(",") if d.strip()]
    directions = list(directions or DIRECTIONS)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"unknown direction(s) {bad}; choose from {', '.join(DIRECTIONS)}")
    if device not in registry.DEVICES:
        raise ValueError(f"device must be one of {registry.DEVICES}, got {device!r}")
    if device == "cuda":
        from .. import cuda  # noqa: F401  (registers the CUDA algorithms; nbconv imports it lazily)
    if not registry.algorithms(device):
        raise ValueError(f"no {device} algorithms are registered")
    database = _db.open_db(db)
    threads = get_num_threads()
    jobs, seen = [], set()
    for p in _problems(workloads):
        for d in directions:
            spec = p.spec(d)
            key = problem_key(spec, device, threads)
            if key not in seen:
                seen.add(key)
                jobs.append((p.name, d, spec, key))
    rows = []
    for i, (name, d, spec, key) in enumerate(jobs):
        rec = None if force else database.lookup(key, device)
        if rec is not None and (rec.get("winner") or {}).get("algorithm"):
            row = _row_from_record(name, d, key, "cached", rec)
        else:
            t0 = time.perf_counter()
            result = tune_spec(spec, device=device, timer=timer, budget=budget)
            rec = result.to_record(problem_fields(spec, device, threads))
            seconds = time.perf_counter() - t0
            if result.winner is not None:
                database.store({key: rec}, device)
                row = _row_from_record(name, d, key, "tuned", rec, seconds)
            else:
                row = _row_from_record(name, d, key, "failed", rec, seconds)
                row.error = "; ".join(f"{m.candidate.algorithm}: {m.error}" for m in result.measurements)
        rows.append(row)
        if progress is not None:
            progress(i + 1, len(jobs), row)
    if database is _db.current():
        _db.invalidate()  # dispatch may hold guesses for problems that now have a winner
    return rows


def format_table(rows):
    """The closing table of ``nbconv tune``: problem, direction, winner, its time, speed-up over
    the guess."""
    header = f"{'problem':44s} {'direction':13s} {'winner':14s} {'ms':>9s} {'guess':14s} {'speed-up':>8s}  status"
    lines = [header, "-" * len(header)]
    for r in rows:
        ms = f"{r.time_s * 1e3:9.3f}" if math.isfinite(r.time_s) else f"{'-':>9s}"
        sp = f"{r.speedup:7.2f}x" if math.isfinite(r.speedup) else f"{'-':>8s}"
        lines.append(f"{r.problem[:44]:44s} {r.direction:13s} {r.winner or '-'!s:14s} {ms} "
                     f"{r.guess or '-'!s:14s} {sp}  {r.status}")
    sps = [r.speedup for r in rows if math.isfinite(r.speedup) and r.speedup > 0]
    if sps:
        g = math.exp(sum(math.log(v) for v in sps) / len(sps))
        lines.append(f"geometric mean speed-up over the guess: {g:.3f}x over {len(sps)} rows; "
                     f"{sum(r.status == 'tuned' for r in rows)} tuned, "
                     f"{sum(r.status == 'cached' for r in rows)} already in the database, "
                     f"{sum(r.status == 'failed' for r in rows)} failed")
    return "\n".join(lines)
