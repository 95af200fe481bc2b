"""Timers: how long one call of a candidate takes. Pluggable per device.

A timer is a callable ``timer(candidate, fn, spec) -> seconds`` that runs ``fn()`` (a complete call
of the candidate on fixed operands) once and returns its duration. CPU kernels return when they are
done, so wall-clock time is right there; on CUDA, :class:`CudaEventTimer` records events around
``fn`` after a synchronisation. Tests plug in :class:`FakeTimer` to decide winners without
depending on the machine.
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
    """Wall-clock time between two device synchronisations (GPU launches return at once). Used
    for CUDA in Numba's simulator, whose events record no time; on a GPU :class:`CudaEventTimer`."""

    name = "sync-wall"

    def __init__(self, synchronize):
        self.synchronize = synchronize

    def __call__(self, candidate, fn, spec=None):
        self.synchronize()
        t0 = time.perf_counter()
        fn()
        self.synchronize()
        return time.perf_counter() - t0


class CudaEventTimer:
    """The GPU's own time between two CUDA events recorded on ``stream`` around the call.

    The device is synchronised first, so work queued before (copies, the warm-up call) is not
    inside the interval, and host-side stalls of ``fn`` between its launches are (they leave the
    GPU idle for the caller too). ``cuda`` is the module providing ``event``, ``synchronize`` and
    ``event_elapsed_time`` (default ``numba.cuda``): injectable so the logic is testable without
    a GPU. Numba's simulator has events that take no ``timing`` argument, no
    ``event_elapsed_time`` and record nothing: there this timer runs and returns 0.0.
    """

    name = "cuda-events"

    def __init__(self, cuda=None, stream=0):
        self._cuda, self.stream = cuda, stream

    @property
    def cuda(self):
        if self._cuda is None:
            from numba import cuda

            self._cuda = cuda
        return self._cuda

    def _event(self):
        try:
            return self.cuda.event(timing=True)
        except TypeError:  # the simulator's Event() takes no arguments
            return self.cuda.event()

    def __call__(self, candidate, fn, spec=None):
        cuda = self.cuda
        start, end = self._event(), self._event()
        cuda.synchronize()
        start.record(self.stream)
        fn()
        end.record(self.stream)
        end.synchronize()
        elapsed = getattr(cuda, "event_elapsed_time", None)
        ms = elapsed(start, end) if elapsed is not None else start.elapsed_time(end)
        return ms / 1e3


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
    """The timer used for ``device`` (wall-clock unless one was set; on CUDA, CUDA events, or
    wall-clock between synchronisations in the simulator)."""
    timer = _timers.get(device)
    if timer is None and device == "cuda":
        import numba
        from numba import cuda

        # the simulator's events record no time: every candidate would tie at 0
        timer = SyncWallTimer(cuda.synchronize) if numba.config.ENABLE_CUDASIM else CudaEventTimer(cuda)
        _timers["cuda"] = timer
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
