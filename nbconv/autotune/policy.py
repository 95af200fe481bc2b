"""Deciding an algorithm for a problem dispatch has not seen yet, under a policy.

In order, for every policy (see :data:`nbconv.config.POLICIES`):

1. a winner the database holds for the full problem key (measured under this fingerprint) and
   still applicable -> use it (the database is what warm-up runs are for);
2. ``*_once``: the algorithm already decided for the layer signature (everything but batch and
   spatial sizes), when it applies to this problem;
3. ``guess_*``: the applicable algorithm with the lowest estimate; ``time_*``: time the candidates
   (:func:`~.tuner.tune_spec`) and store the result in the database; if nothing could be timed and
   checked, the guess.

``*_once`` remembers its decision per layer signature for the rest of the process, so it never
decides a layer twice; ``*_on_shape_change`` decides every new problem (dispatch remembers the
decision per problem, so a known problem costs a dictionary look-up either way).
"""
from __future__ import annotations

import threading
from collections import OrderedDict

from .. import config, registry
from ..spec import AlgorithmNotApplicable
from ..threads import get_num_threads
from . import db as _db
from .keys import layer_signature, problem_fields, problem_key
from .tuner import tune_spec

#: layer signature -> algorithm name decided by a *_once policy (an LRU, like dispatch's cache)
_once: OrderedDict = OrderedDict()
_ONCE_MAX = 4096
_lock = threading.Lock()


def forget():
    """Drop the *_once decisions (made under another database, or for tests)."""
    _once.clear()


config.on_change(lambda name: name == "tuning_db" and forget())


def usable(name, spec, device):
    """The registered algorithm ``name`` if it can compute ``spec`` within the workspace limit."""
    try:
        alg = registry.get(name, device)
    except ValueError:  # a winner recorded for an algorithm this build no longer has
        return None
    if not alg.applicable(spec):
        return None
    if device == "cpu":
        from ..cpu.im2col import get_workspace_limit

        try:
            if alg.workspace(spec) > get_workspace_limit():
                return None
        except Exception:  # noqa: BLE001  (a winner we cannot vet is not used)
            return None
    return alg


def from_db(spec, device="cpu", threads=None, db=None):
    """The database's winner for ``spec`` if there is one and it still applies, else None."""
    threads = get_num_threads() if threads is None else threads
    rec = (db or _db.current()).lookup(problem_key(spec, device, threads), device)
    winner = rec.get("winner") if rec else None
    if not isinstance(winner, dict) or "algorithm" not in winner:
        return None
    return usable(winner["algorithm"], spec, device)


def decide(spec, policy, device="cpu"):
    """(Algorithm, source) for ``spec`` under ``policy``; source is 'db', 'once', 'guess' or
    'timed'. Raises AlgorithmNotApplicable when no algorithm can compute the problem."""
    threads = get_num_threads()
    alg = from_db(spec, device, threads)
    once = policy.endswith("_once")
    sig = layer_signature(spec, device, threads) if once else None
    if alg is not None:
        if once:
            _remember(sig, alg.name, overwrite=False)
        return alg, "db"
    if once:
        name = _once.get(sig)
        alg = usable(name, spec, device) if name is not None else None
        if alg is not None:
            return alg, "once"
    source = "guess"
    if policy.startswith("time") and 0 not in spec.user_result_shape:  # nothing to time when empty
        result = tune_spec(spec, device=device)
        if result.winner is not None:
            db = _db.current()
            key = problem_key(spec, device, threads)
            db.store({key: result.to_record(problem_fields(spec, device, threads))}, device)
            alg, source = registry.get(result.winner.algorithm, device), "timed"
    if alg is None:
        alg = registry.guess(spec, device)
        if alg is None:
            raise AlgorithmNotApplicable(f"no {device} algorithm supports {spec.direction} of {spec.describe()}")
    if once:
        _remember(sig, alg.name, overwrite=False)
    return alg, source


def _remember(sig, name, overwrite):
    with _lock:
        if overwrite or sig not in _once:
            _once[sig] = name
            while len(_once) > _ONCE_MAX:
                _once.popitem(last=False)
