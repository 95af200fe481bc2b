"""The CUDA tests: run them in Numba's CUDA simulator or on a real GPU.

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda      # no GPU needed (what CI runs, via
                                                                # tests/test_cuda_sim.py)
    NBCONV_TEST_CUDA=1 python -m pytest -q tests/cuda          # on a machine with a GPU

The simulator must be enabled before numba is first imported, which is why the main test process
does not collect this directory (see tests/conftest.py) and tests/test_cuda_sim.py runs it in a
subprocess. Everything here is skipped when there is neither the simulator nor a GPU; tests marked
``gpu`` need a real GPU and are skipped in the simulator.

The simulator runs every GPU thread as a Python thread and polls them (each launch takes ~0.1 s or
more, each syncthreads a few ms), so the
session uses tiny launch configurations: a few threads per block, two blocks per grid-stride
launch, 4x8 / 8x4 GEMM tiles (rectangular, so a swapped index shows; 2x8x3 for GEMMs of <= 2
rows, where threads load fewer elements than they are and K rarely divides), targets that make split-K and
the split block reductions happen, grid caps that make the kernels loop over grid y/z.
"""
import sys

import numba
import pytest

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


def _real_gpu():
    if SIMULATOR:
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001  (no driver, broken install: no GPU)
        return False


GPU = _real_gpu()

SMALL = {
    "threads": 8, "max_blocks": 2, "reduce_threads": 4, "gemm_tile": (4, 8, 4, 2, 2),
    "gemm_tile_f64": (8, 4, 4, 2, 2), "gemm_tile_skinny": (2, 8, 3, 1, 2), "dw_tile": (2, 4), "dw_smem": 48, "max_grid_yz": 3,
    "target_blocks": 6, "min_split_work": 1,
}

if SIMULATOR:
    # the simulator's block manager busy-polls its threads: a short switch interval lets the
    # threads run (3-5x faster here)
    sys.setswitchinterval(5e-4)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real CUDA GPU (skipped in the simulator)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "cuda" not in item.path.parts:
            continue
        if not (SIMULATOR or GPU):
            item.add_marker(pytest.mark.skip(reason="no CUDA GPU, and the CUDA simulator is not enabled"))
        elif item.get_closest_marker("gpu") and not GPU:
            item.add_marker(pytest.mark.skip(reason="needs a real CUDA GPU"))


@pytest.fixture(autouse=True)
def _launch_config():
    """Tiny blocks in the simulator; the real configuration on a GPU."""
    if not SIMULATOR:
        yield
        return
    from nbconv.cuda import launch

    with launch.override(**SMALL):
        yield
