"""The CUDA-event timer and the CUDA fingerprint on what numba.cuda provides: the simulator's events
(no timing argument, nothing recorded: 0.0) or a real GPU's. Their logic on fakes:
tests/test_cuda_timing.py."""
import re
import warnings

import numba
import numpy as np
from numba import cuda

from nbconv.autotune import CudaEventTimer, SyncWallTimer, get_timer, set_timer
from nbconv.autotune.fingerprint import fingerprint
from nbconv.cuda import launch

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


def test_event_timer_times_a_kernel_launch():
    a = cuda.device_array(1000, np.float32)
    runs = []

    def fn():
        runs.append(1)
        launch.fill(a, 3.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulator warns that its timings are bogus
        t = CudaEventTimer()(None, fn)
    assert runs == [1] and (a.copy_to_host() == 3.0).all()
    assert isinstance(t, float)
    if SIMULATOR:
        assert t == 0.0  # its events record nothing
    else:
        assert 0.0 < t < 1.0


def test_the_cuda_timer_of_the_tuner():
    old = set_timer(None, "cuda")
    try:
        timer = get_timer("cuda")
        # the simulator's events time nothing: there, wall-clock between synchronisations
        assert isinstance(timer, SyncWallTimer if SIMULATOR else CudaEventTimer)
        assert timer(None, lambda: None) >= 0.0
    finally:
        set_timer(old, "cuda")


def test_the_cuda_fingerprint_names_gpu_compute_capability_driver_and_runtime():
    fp = fingerprint("cuda")["cuda"]
    assert set(fp) == {"gpu", "compute_capability", "driver", "runtime"}
    assert len(fp["compute_capability"]) == 2
    if SIMULATOR:
        assert fp["gpu"] == "CUDA simulator" and fp["runtime"] == "-1.-1"
    else:
        assert "unavailable" not in fp["gpu"] and re.fullmatch(r"\d+\.\d+", fp["runtime"])
