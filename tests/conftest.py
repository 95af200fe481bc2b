import os
import sys

import numpy as np
import pytest

# make ``import reference`` / ``import helpers`` work whatever the import mode
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def rng():
    """A fresh, seeded generator per test (tests are reproducible and order-independent)."""
    return np.random.default_rng(20240611)
