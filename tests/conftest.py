import atexit
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

# make ``import reference`` / ``import helpers`` work whatever the import mode
sys.path.insert(0, os.path.dirname(__file__))

# The test-suite never reads or writes the user's tuning database (~/.cache/nbconv/tuning.json):
# every test process gets an empty one of its own, before nbconv can look at the variable (it is
# read lazily). Tests that need their own database pass tmp paths to nbconv.config(tuning_db=...).
_TUNING_DIR = tempfile.mkdtemp(prefix="nbconv-tests-")
os.environ["NBCONV_TUNING_DB"] = os.path.join(_TUNING_DIR, "tuning.json")
atexit.register(shutil.rmtree, _TUNING_DIR, ignore_errors=True)


@pytest.fixture
def rng():
    """A fresh, seeded generator per test (tests are reproducible and order-independent)."""
    return np.random.default_rng(20240611)


@pytest.fixture
def workspace_limit():
    """``workspace_limit(n)`` sets the workspace limit of the CPU algorithms for one test."""
    from nbconv.cpu import im2col

    saved = im2col.get_workspace_limit()
    yield im2col.set_workspace_limit
    im2col.set_workspace_limit(saved)


# tests/cuda needs Numba's CUDA simulator enabled before numba is imported (or a real GPU): this
# process does not collect it; tests/test_cuda_sim.py runs it in a subprocess. Collected here only
# with NUMBA_ENABLE_CUDASIM=1 or NBCONV_TEST_CUDA=1 (a machine with a GPU).
_CUDA_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")


def pytest_ignore_collect(collection_path, config):
    if str(collection_path) == _CUDA_TESTS:
        wanted = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0") or os.environ.get(
            "NBCONV_TEST_CUDA", "0") not in ("", "0")
        return None if wanted else True
    return None
