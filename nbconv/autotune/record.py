"""Recording the problems a real run hits, as a workload file for a later warm-up.

::

    with nbconv.record("my_model.json"):
        train_one_step()                      # every convolution call is noted
    # then: python -m nbconv tune my_model.json

Each call contributes its *forward* problem (the key of all three directions) in the workload
format of :mod:`nbconv.problems`, once however often it recurs. When the file exists, the new
problems are appended to the ones it lists (deduplicated), so several runs can feed one file.
"""
from __future__ import annotations

import json
import os
import threading

from ..spec import FORWARD, NSPATIAL

#: the recorders in effect; dispatch tests this list on every call, so it is mutated in place
active: list = []


def problem_dict(spec):
    """The workload entry of ``spec``'s forward problem (user-rank shapes, Theano arguments)."""
    ex = NSPATIAL - spec.nd
    lo, hi = spec.pad_lo[ex:], spec.pad_hi[ex:]
    if not any(lo) and not any(hi):
        border = "valid"
    elif lo == hi and len(set(lo)) == 1:
        border = lo[0]
    elif lo == hi:
        border = list(lo)
    else:
        border = [[a, b] for a, b in zip(lo, hi)]
    fwd = spec if spec.direction == FORWARD else spec.with_direction(FORWARD)
    d = {
        "name": fwd.describe(), "nd": spec.nd, "input": list(spec.user_x_shape),
        "filters": list(spec.user_w_shape), "border_mode": border,
        "subsample": list(spec.stride[ex:]), "filter_dilation": list(spec.dilation[ex:]),
        "num_groups": spec.groups, "unshared": spec.unshared, "filter_flip": spec.flip,
        "dtype": spec.dtype,
    }
    return d


def _identity(d):
    """What makes two workload entries the same problem (everything but the name and label)."""
    from ..problems import Problem

    p = Problem.from_dict({k: v for k, v in d.items() if k in Problem.__dataclass_fields__})
    return p.spec(FORWARD).key()


class Recorder:
    def __init__(self, path, name=None, description=None):
        self.path = os.fspath(path)
        self.name = name or os.path.splitext(os.path.basename(self.path))[0]
        self.description = description or "Convolution problems recorded by nbconv.record"
        self._seen = set()  # forward keys of this recording
        self.problems = []  # workload entries, in first-hit order
        self.directions = {}  # forward key -> directions hit
        self._lock = threading.Lock()

    def hit(self, spec):
        if 0 in spec.x_shape:  # an empty batch is nothing to tune
            return
        key = spec.with_direction(FORWARD).key() if spec.direction != FORWARD else spec.key()
        with self._lock:
            self.directions.setdefault(key, set()).add(spec.direction)
            if key not in self._seen:
                self._seen.add(key)
                self.problems.append(problem_dict(spec))

    def __enter__(self):
        active.append(self)
        return self

    def __exit__(self, *exc):
        active.remove(self)
        self.save()
        return False

    def save(self):
        """Write the workload file, appending to the problems it already lists (deduplicated)."""
        existing, data = [], {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                data = json.load(f)
            existing = list(data.get("problems", []))
        known = set()
        for d in existing:
            try:
                known.add(_identity(d))
            except Exception:  # noqa: BLE001, S110  (an entry we cannot parse is kept as it is)
                pass
        merged = existing + [d for d in self.problems if _identity(d) not in known]
        data.setdefault("name", self.name)
        data.setdefault("description", self.description)
        data["problems"] = merged
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(_format(data))
        os.replace(tmp, self.path)
        return self.path


def _format(data):
    """One problem per line, like the shipped workloads."""
    head = {k: v for k, v in data.items() if k != "problems"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "problems": [')
    rows = [f"    {json.dumps(p)}" for p in data["problems"]]
    lines.append(",\n".join(rows))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def record(path, name=None, description=None):
    """``with nbconv.record("my.json"):`` writes the problems hit inside the block to ``my.json``."""
    return Recorder(path, name, description)
