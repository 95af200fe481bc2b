"""nbconv's settings: the algorithm policy of each direction and the tuning database.

``nbconv.config`` is this module, made callable so that it doubles as a context manager::

    nbconv.config.algo_fwd = "time_once"                  # attribute access (validated)
    nbconv.config.set(algo_bwd_filter="im2col")           # several at once
    with nbconv.config(algo_fwd="time_on_shape_change", tuning_db="/tmp/t.json"):
        ...                                               # restored on exit, even on error

Settings (environment variables give the initial values):

``algo_fwd``, ``algo_bwd_data``, ``algo_bwd_filter`` (``NBCONV_ALGO_FWD``, ``NBCONV_ALGO_BWD_DATA``,
``NBCONV_ALGO_BWD_FILTER``)
    A policy of :data:`POLICIES` or a registered algorithm name, for the forward pass, the gradient
    w.r.t. the inputs and the gradient w.r.t. the weights. A per-call ``algo=`` overrides it.
    Default ``guess_on_shape_change``: a first call never spends seconds timing candidates, yet it
    runs the measured winner of every problem that a warm-up (``nbconv tune``) put in the database.
``tuning_db`` (``NBCONV_TUNING_DB``)
    Path of the tuning database, or ``":memory:"`` for a database that never touches the disk.
    Default ``$XDG_CACHE_HOME/nbconv/tuning.json`` (``~/.cache/nbconv/tuning.json``) on Linux, the
    platform's cache directory elsewhere. Reading it gives the effective path.
``tune_budget``
    Seconds of timed runs per candidate before the repeat count stops growing (default 0.05).
``tune_tie``
    Relative noise band: candidates whose medians lie within it of the fastest are a tie, broken by
    registration order so that the choice is reproducible (default 0.05).
``cache_size``
    Decisions dispatch keeps in memory (an LRU; default 4096).

The settings are process-wide (not per thread).
"""
from __future__ import annotations

import os
import sys
import types

#: Theano's policy names. ``*_once``: decide once per layer signature (everything but the batch
#: size and the spatial sizes) and reuse that algorithm for later shapes where it applies;
#: ``*_on_shape_change``: decide per full problem. ``guess_*`` rank the algorithms' estimates,
#: ``time_*`` time them and store the winner in the database. Every policy first uses a winner the
#: database already holds for the full problem.
POLICIES = ("guess_once", "guess_on_shape_change", "time_once", "time_on_shape_change")
DEFAULT_POLICY = "guess_on_shape_change"
MEMORY = ":memory:"

#: direction -> the setting holding its policy (Theano's dnn.conv.* names)
DIRECTION_SETTINGS = {
    "forward": "algo_fwd",
    "grad_input": "algo_bwd_data",
    "grad_weights": "algo_bwd_filter",
}
ENV_VARS = {
    "algo_fwd": "NBCONV_ALGO_FWD",
    "algo_bwd_data": "NBCONV_ALGO_BWD_DATA",
    "algo_bwd_filter": "NBCONV_ALGO_BWD_FILTER",
    "tuning_db": "NBCONV_TUNING_DB",
}
_DEFAULTS = {"tune_budget": 0.05, "tune_tie": 0.05, "cache_size": 4096}
SETTINGS = tuple(DIRECTION_SETTINGS.values()) + ("tuning_db",) + tuple(_DEFAULTS)

#: direction -> policy or algorithm name. Dispatch reads this dict on every call, so it is
#: updated in place rather than rebound.
policy: dict = {}

_values: dict = {}  # explicitly set values (tuning_db None = unset: environment, then default)
_listeners: list = []


def default_db_path():
    """The platform's per-user cache location of the tuning database."""
    if sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    elif os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~/AppData/Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.expanduser("~/.cache")
    return os.path.join(base, "nbconv", "tuning.json")


def _check_algo(name, value):
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"{name} must be a policy {POLICIES} or an algorithm name, got {value!r}")
    value = value.strip()
    if value in POLICIES:
        return value
    from . import registry

    known = frozenset(registry.names())
    # Before the algorithm modules are imported the registry is empty: dispatch checks later.
    if known and value not in known:
        raise ValueError(
            f"{name}={value!r} is neither a policy {POLICIES} nor a registered algorithm "
            f"({', '.join(sorted(known))})"
        )
    return value


def _check(name, value):
    if name in ENV_VARS and name != "tuning_db":
        return _check_algo(name, value)
    if name == "tuning_db":
        if value is None:
            return None
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise TypeError(f"tuning_db must be a path, {MEMORY!r} or None, got {value!r}")
        value = os.fspath(value)
        return value if value == MEMORY else os.path.abspath(os.path.expanduser(value))
    if name in ("tune_budget", "tune_tie"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        return float(value)
    if name == "cache_size":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"cache_size must be a positive int, got {value!r}")
        return value
    raise AttributeError(f"nbconv.config has no setting {name!r} (settings: {', '.join(SETTINGS)})")


def get(name):
    if name == "tuning_db":
        value = _values.get("tuning_db")
        if value is None:
            env = os.environ.get(ENV_VARS["tuning_db"], "").strip()
            value = _check("tuning_db", env) if env else default_db_path()
        return value
    if name not in SETTINGS:
        raise AttributeError(f"nbconv.config has no setting {name!r} (settings: {', '.join(SETTINGS)})")
    return _values[name]


def set(**settings):
    """Validate every setting first, then apply them all (never half of them)."""
    checked = {name: _check(name, value) for name, value in settings.items()}
    _apply(checked)


def _apply(checked):
    changed = [n for n, v in checked.items() if _values.get(n) != v]
    _values.update(checked)
    for direction, name in DIRECTION_SETTINGS.items():
        policy[direction] = _values[name]
    for name in changed:
        for fn in _listeners:
            fn(name)


def settings():
    """The effective value of every setting."""
    return {name: get(name) for name in SETTINGS}


def reset():
    """Every setting back to its environment variable or default."""
    _apply(_initial())


def on_change(fn):
    """Call ``fn(setting_name)`` after a setting changes (dispatch drops decisions made under
    another database)."""
    _listeners.append(fn)
    return fn


def _initial():
    values = dict(_DEFAULTS, tuning_db=None)
    for name in DIRECTION_SETTINGS.values():
        env = os.environ.get(ENV_VARS[name], "").strip()
        values[name] = _check_algo(ENV_VARS[name], env) if env else DEFAULT_POLICY
    return values


class _Overrides:
    """``with nbconv.config(...)``: the settings are validated when the object is made, applied on
    entry and restored on exit."""

    def __init__(self, settings):
        self._new = {name: _check(name, value) for name, value in settings.items()}
        self._saved = None

    def __enter__(self):
        self._saved = {name: _values.get(name) for name in self._new}
        _apply(self._new)
        return sys.modules[__name__]

    def __exit__(self, *exc):
        _apply(self._saved)
        return False


class _ConfigModule(types.ModuleType):
    def __call__(self, **settings):
        return _Overrides(settings)

    def __getattr__(self, name):  # only reached for names not in the module dict
        if name in SETTINGS:
            return get(name)
        raise AttributeError(f"nbconv.config has no setting {name!r} (settings: {', '.join(SETTINGS)})")

    def __setattr__(self, name, value):
        if name in SETTINGS:
            set(**{name: value})
        elif name.startswith("_") or name in self.__dict__:
            super().__setattr__(name, value)
        else:
            raise AttributeError(f"nbconv.config has no setting {name!r} (settings: {', '.join(SETTINGS)})")

    def __dir__(self):
        return sorted(frozenset(super().__dir__()) | frozenset(SETTINGS))

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in settings().items())
        return f"nbconv.config({inner})"


_apply(_initial())
sys.modules[__name__].__class__ = _ConfigModule
