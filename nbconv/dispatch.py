"""From a validated spec and user arrays to a result: canonical arrays, algorithm choice, flip.

``filter_flip`` is applied here, once, for every algorithm that does not apply it itself
(``Algorithm.flips``): the weights are reversed along their three kernel axes while they are made
contiguous (the copy that canonicalisation may need anyway), and a weight gradient is reversed
back, so those algorithms only ever implement cross-correlation.

The algorithm comes from the per-call ``algo=`` or else the direction's policy in
:mod:`nbconv.config` (default ``guess_on_shape_change``): a policy name is decided by
:mod:`nbconv.autotune.policy` (database winner, guess or timing), any other name is an explicit
algorithm. Decisions are kept in an LRU keyed by (problem, request, device, thread count), so a
known problem costs one dictionary look-up, never a file read.
"""
from __future__ import annotations

import functools

import numpy as np

from . import config as _config
from . import registry
from .autotune import db as _db
from .autotune import policy as _policy
from .autotune.record import active as _recorders  # a list, mutated in place
from .config import policy as _policy_by_direction  # a dict, mutated in place
from .spec import GRAD_WEIGHTS, AlgorithmNotApplicable
from .threads import get_num_threads

_KERNEL_AXES_REVERSED = (Ellipsis, slice(None, None, -1), slice(None, None, -1), slice(None, None, -1))
_POLICIES = frozenset(_config.POLICIES)


def _make_cache(size):
    # functools' LRU is C code: a known problem costs one hash of the spec and a dict probe
    # (~0.3 us), where an OrderedDict with move_to_end cost ~2 us per call here
    @functools.lru_cache(maxsize=size)
    def decided(spec, request, device, threads):  # threads: a part of the key only
        return _decide(spec, request, device)

    return decided


_decided = _make_cache(_config.get("cache_size"))


def clear_cache():
    """Forget every decision (they are re-derived from the database and policies on next use)."""
    _decided.cache_clear()


def _config_changed(name):
    global _decided
    if name == "cache_size":
        _decided = _make_cache(_config.get("cache_size"))


_db.on_invalidate(clear_cache)
_config.on_change(_config_changed)


def canonical(a, shape, dtype):
    """``a`` as a C-contiguous array of ``dtype`` in the canonical (3-spatial-axis) ``shape``."""
    return np.ascontiguousarray(a, dtype=dtype).reshape(shape)


def canonical_weights(spec, w):
    """Canonical weights, kernel axes reversed when the spec flips (one copy at most)."""
    w = w.reshape(spec.w_shape)
    if spec.flip:
        w = w[_KERNEL_AXES_REVERSED]
    return np.ascontiguousarray(w, dtype=spec.np_dtype)


def choose(spec, algo=None, device="cpu"):
    """The algorithm that will compute ``spec``: ``algo`` (a policy or an algorithm name), or the
    policy ``nbconv.config`` sets for the spec's direction."""
    request = _policy_by_direction[spec.direction] if algo is None else algo
    return _decided(spec, request, device, get_num_threads())[0]


def explain(spec, algo=None, device="cpu"):
    """(algorithm, source) for ``spec``: source is 'explicit', 'db' (a tuned winner), 'once'
    (a *_once decision for the layer), 'guess' or 'timed' (just measured)."""
    request = _policy_by_direction[spec.direction] if algo is None else algo
    return _decided(spec, request, device, get_num_threads())


def _decide(spec, request, device):
    if not isinstance(request, str):
        raise TypeError(f"algo must be None, a policy {_config.POLICIES} or an algorithm name, got {request!r}")
    if request in _POLICIES:
        return _policy.decide(spec, request, device)
    alg = registry.get(request, device)
    if not alg.applicable(spec):
        raise AlgorithmNotApplicable(
            f"algo={request!r} does not support {spec.direction} of {spec.describe()}"
        )
    return alg, "explicit"


def execute(spec, a, b, algo=None, *, unflipped=False):
    """Run ``spec.direction`` on canonical operands; returns the user-shaped result.

    The weights (``b`` of forward and grad-input) are those of :func:`canonical_weights`, already
    flipped when ``spec.flip``; with ``unflipped=True`` they are the user's array, made canonical
    here (one copy at most) and flipped unless the chosen algorithm flips itself."""
    alg = choose(spec, algo)
    if _recorders:
        for r in _recorders:
            r.hit(spec)
    out_shape = spec.user_result_shape
    if 0 in out_shape:
        return np.zeros(out_shape, dtype=spec.np_dtype)
    # NaN/Inf operands propagate silently whichever algorithm runs: the BLAS-backed ones would
    # otherwise raise NumPy's RuntimeWarnings from inside nbconv and the Numba kernels none
    run, flip_out = alg.run[spec.direction], spec.flip and not alg.flips
    if unflipped and spec.direction != GRAD_WEIGHTS:
        b = canonical_weights(spec, b) if flip_out else canonical(b, spec.w_shape, spec.np_dtype)
    elif spec.flip and alg.flips and spec.direction != GRAD_WEIGHTS:
        spec = spec.correlation  # b was flipped already
    if alg.numba_only:
        out = run(spec, a, b)
    else:
        with np.errstate(invalid="ignore", over="ignore"):
            out = run(spec, a, b)
    if spec.direction == GRAD_WEIGHTS and flip_out:
        out = np.ascontiguousarray(out[_KERNEL_AXES_REVERSED])
    return out.reshape(out_shape)
