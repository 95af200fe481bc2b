"""The peak-memory probe the benchmark uses to compare nbconv's and the peer's forward passes."""
import numpy as np
import pytest

from nbconv import memory

pytestmark = pytest.mark.skipif(not memory.supported(), reason="needs Linux /proc/self/clear_refs")


def test_peak_bytes_sees_a_touched_allocation():
    n = 64 * 2**20
    peak = memory.peak_bytes(lambda: np.ones(n // 8))
    assert 0.9 * n <= peak <= 1.5 * n


def test_peak_bytes_counts_a_temporary_freed_before_return():
    n = 48 * 2**20

    def fn():
        tmp = np.ones(n // 8)
        return float(tmp[-1])

    assert memory.peak_bytes(fn) >= 0.9 * n


def test_measure_in_a_fresh_process_is_at_least_the_result():
    peak = memory.measure("demo", "r50_3x3_56")  # y is (1, 64, 56, 56) float32: 784 KiB
    assert peak >= 64 * 56 * 56 * 4 * 0.9
