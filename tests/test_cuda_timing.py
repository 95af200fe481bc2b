"""GPU timing and fingerprint without a GPU: the CUDA-event timer's logic on a fake ``cuda`` module,
the timer the tuner picks for CUDA, the GPU fields of the fingerprint, the benchmark's timings.
(The same timer on the simulator's events: tests/cuda/test_cuda_timing.py.)"""
import sys
import types

import numba
import pytest

from nbconv.autotune import timing
from nbconv.autotune.timing import CudaEventTimer, SyncWallTimer, get_timer


class FakeCuda:
    """``event``/``synchronize``/``event_elapsed_time`` that log what happens, in order."""

    def __init__(self, elapsed_ms=2.5):
        self.log, self.elapsed_ms = [], elapsed_ms

    def synchronize(self):
        self.log.append("sync")

    def event(self, timing=False):
        cuda = self

        class Event:
            name = f"ev{sum(1 for x in cuda.log if x.startswith('new'))}"

            def record(self, stream=0):
                cuda.log.append(f"record {self.name} on {stream}")

            def synchronize(self):
                cuda.log.append(f"wait {self.name}")

        cuda.log.append(f"new timing={timing}")
        return Event()

    def event_elapsed_time(self, start, end):
        self.log.append(f"elapsed {start.name}->{end.name}")
        return self.elapsed_ms


def test_event_timer_records_around_the_call_after_a_synchronisation():
    cuda = FakeCuda(elapsed_ms=2.5)
    timer = CudaEventTimer(cuda, stream="s1")
    t = timer(None, lambda: cuda.log.append("call"))
    assert t == pytest.approx(2.5e-3)  # milliseconds -> seconds
    assert cuda.log == ["new timing=True", "new timing=True", "sync", "record ev0 on s1", "call",
                        "record ev1 on s1", "wait ev1", "elapsed ev0->ev1"]


class SimulatorLikeCuda(FakeCuda):
    """The simulator's API: ``event()`` takes no ``timing``, no ``event_elapsed_time``."""

    event_elapsed_time = None

    def event(self):
        ev = FakeCuda.event(self)
        ev.elapsed_time = lambda end: self.log.append("elapsed_time") or 0.0
        return ev


def test_event_timer_uses_what_the_simulator_provides():
    cuda = SimulatorLikeCuda()
    calls = []
    assert CudaEventTimer(cuda)(None, lambda: calls.append(1)) == 0.0
    assert calls == [1] and cuda.log[-1] == "elapsed_time"


@pytest.fixture
def no_cuda_timer():
    old = timing._timers.pop("cuda", None)
    yield
    timing._timers.pop("cuda", None)
    if old is not None:
        timing._timers["cuda"] = old


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM, reason="the simulator gets the wall-clock timer")
def test_the_tuner_times_cuda_candidates_with_events(no_cuda_timer):
    timer = get_timer("cuda")
    assert isinstance(timer, CudaEventTimer) and get_timer("cuda") is timer
    assert get_timer("cpu").name == "wall"
    # set_timer still replaces it, and SyncWallTimer is still there to set
    with timing.use_timer(SyncWallTimer(lambda: None), device="cuda") as other:
        assert get_timer("cuda") is other
    assert get_timer("cuda") is timer


class _Dev:
    name = b"Fake GPU 80GB"
    compute_capability = (9, 0)


def _fake_gpu(monkeypatch, runtime_version):
    from numba import cuda

    class Driver:
        def get_version(self):
            return (12, 8)

    class Runtime:
        def get_version(self):
            if isinstance(runtime_version, Exception):
                raise runtime_version
            return runtime_version

    monkeypatch.setattr(cuda, "get_current_device", lambda: _Dev())
    monkeypatch.setattr(cuda.cudadrv.driver, "driver", Driver())
    monkeypatch.setattr(cuda, "runtime", Runtime())
    return sys.modules["nbconv.autotune.fingerprint"]  # the package exports a function of that name


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM, reason="fakes the real numba.cuda")
def test_cuda_fingerprint_has_gpu_compute_capability_driver_and_runtime(monkeypatch):
    fp = _fake_gpu(monkeypatch, (12, 4))._cuda()
    assert fp == {"gpu": "Fake GPU 80GB", "compute_capability": [9, 0], "driver": "(12, 8)",
                  "runtime": "12.4"}


@pytest.mark.skipif(numba.config.ENABLE_CUDASIM, reason="fakes the real numba.cuda")
def test_cuda_fingerprint_without_a_runtime_library_keeps_the_gpu(monkeypatch):
    fp = _fake_gpu(monkeypatch, OSError("libcudart.so not found"))._cuda()
    assert fp["gpu"] == "Fake GPU 80GB" and fp["driver"] == "(12, 8)"
    assert fp["runtime"] == "unavailable (OSError)"


def test_bench_times_both_sides_with_events_after_a_synchronisation(monkeypatch):
    from numba import cuda

    from nbconv.cuda import bench

    fake = FakeCuda(elapsed_ms=4.0)
    for name in ("event", "synchronize", "event_elapsed_time"):
        monkeypatch.setattr(cuda, name, getattr(fake, name))
    assert bench._time_numba(lambda: fake.log.append("call"), 3) == pytest.approx(4.0)
    assert fake.log.count("call") == 3 and fake.log.count("sync") == 3
    first = fake.log.index("call")
    assert fake.log[first - 2:first] == ["sync", "record ev0 on 0"]

    log = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.n = sum(1 for x in log if x.startswith("new"))
            log.append("new")

        def record(self):
            log.append(f"record {self.n}")

        def synchronize(self):
            log.append(f"wait {self.n}")

        def elapsed_time(self, end):
            return 7.0

    torch = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=Event, synchronize=lambda: log.append("sync")))
    assert bench._time_torch(torch, lambda: log.append("call"), 2) == 7.0
    assert log[:7] == ["new", "new", "sync", "record 0", "call", "record 1", "wait 1"]
