"""Timers: how long one call of a candidate takes. Pluggable per device.

A timer is a callable ``timer(candidate, fn, spec) -> seconds`` that runs ``fn()`` (a complete call
of the candidate on fixed operands) once and returns its duration. CPU kernels return when they are
done, so wall-clock time is right there; a GPU timer would record events around ``fn`` and
synchronise. Tests plug in :class:`FakeTimer` to decide winners without depending on the machine.
"""
from __future__ import annotations

import time
from contextlib import contextmanager


class WallTimer:
    """``time.perf_counter`` around one synchronous call."""

    name = "wall"

    def __call__(self, candidate, fn, spec=None):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


class SyncWallTimer:
    """Wall-clock time between two device synchronisations (GPU launches return at once). A
    CUDA-event timer measures the kernels alone and can replace it with :func:`set_timer`."""

    name = "sync-wall"

    def __init__(self, synchronize):
        self.synchronize = synchronize

    def __call__(self, candidate, fn, spec=None):
        self.synchronize()
        t0 = time.perf_counter()
        fn()
        self.synchronize()
        return time.perf_counter() - t0


class FakeTimer:
    """A fixed duration per algorithm name: ``times`` is a dict (name -> seconds, or a list of
    seconds returned in turn) or a callable ``times(name, spec) -> seconds``. ``fn`` is not run
    unless ``run=True``; ``calls`` lists the names timed, in order."""

    name = "fake"

    def __init__(self, times, default=None, run=False):
        self.times, self.default, self.run = times, default, run
        self.calls = []
        self._turn: dict = {}

    def __call__(self, candidate, fn, spec=None):
        name = candidate.algorithm
        self.calls.append(name)
        if self.run:
            fn()
        if callable(self.times):
            return float(self.times(name, spec))
        t = self.times.get(name, self.default)
        if t is None:
            raise KeyError(f"FakeTimer has no time for {name!r}")
        if isinstance(t, (list, tuple)):
            i = self._turn.get(name, 0)
            self._turn[name] = i + 1
            return float(t[i % len(t)])
        return float(t)


_timers = {"cpu": WallTimer()}


def get_timer(device="cpu"):
    """The timer used for ``device`` (wall-clock unless one was set; on CUDA, wall-clock between
    synchronisations)."""
    timer = _timers.get(device)
    if timer is None and device == "cuda":
        from numba import cuda

        timer = _timers["cuda"] = SyncWallTimer(cuda.synchronize)
    return timer if timer is not None else WallTimer()


def set_timer(timer, device="cpu"):
    """Use ``timer`` for ``device`` from now on (None: back to wall-clock). Returns the old one."""
    old = _timers.get(device)
    if timer is None:
        _timers.pop(device, None)
    else:
        _timers[device] = timer
    return old


@contextmanager
def use_timer(timer, device="cpu"):
    """``with use_timer(FakeTimer({...})):`` time ``device`` candidates with ``timer``."""
    old = set_timer(timer, device)
    try:
        yield timer
    finally:
        set_timer(old, device)
