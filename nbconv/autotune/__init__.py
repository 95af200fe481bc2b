"""Autotuning: policies, the injectable timer, the tuning database, warm-up runs and the recorder.

Layers (each imports only those above it in this list, plus nbconv's spec/registry/config):

    keys         problem keys and layer signatures
    fingerprint  what a measurement depends on besides the problem
    timing       timers per device (wall-clock; CUDA events on a GPU; a fake one for tests)
    tuner        Candidate, tune_spec: warm-up, checked result, adaptive repeats, tie-break
    db           the JSON database (sections per fingerprint, file lock, atomic replace)
    policy       what dispatch calls for a problem it has not decided yet
    record       ``with nbconv.record(path):``
    warmup       ``nbconv.tune(workloads)`` / ``nbconv tune``
"""
from .db import TuningDB, TuningDBWarning, open_db
from .db import current as current_db
from .fingerprint import fingerprint, fingerprint_id
from .keys import layer_signature, problem_key
from .record import Recorder, record
from .timing import (
    CudaEventTimer,
    FakeTimer,
    SyncWallTimer,
    WallTimer,
    get_timer,
    set_timer,
    use_timer,
)
from .tuner import (
    Candidate,
    DeviceAdapter,
    Measurement,
    Result,
    register_device,
    tune_spec,
)
from .warmup import TuneRow, format_table, tune

__all__ = [
    "Candidate", "CudaEventTimer", "DeviceAdapter", "FakeTimer", "Measurement", "Recorder", "Result",
    "SyncWallTimer", "TuneRow", "TuningDB", "TuningDBWarning", "WallTimer", "current_db", "fingerprint",
    "fingerprint_id", "format_table", "get_timer", "layer_signature", "open_db", "problem_key", "record",
    "register_device", "set_timer", "tune", "tune_spec", "use_timer",
]
