"""Benchmarks of the suite: scaled-down smoke runs by default, full size with ``-m large``."""
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _large(config):
    return "large" in (config.getoption("markexpr") or "")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    config.addinivalue_line(
        "markers", "large: full-size benchmark cases (run with -m large; deselected otherwise)"
    )
    # the scaled-down smoke runs execute once, without timing tables in the normal test output
    # (--benchmark-enable brings the tables back). Run as `pytest tests/benchmarks` this conftest
    # is configured before pytest-benchmark reads its option; as part of `pytest tests` it is
    # found later, once the benchmark session exists, so that is switched off directly.
    if not _large(config) and not config.getoption("benchmark_enable", False):
        config.option.benchmark_disable = True
        session = getattr(config, "_benchmarksession", None)
        if session is not None:
            session.disabled = True


def pytest_collection_modifyitems(config, items):
    """Leave the full-size cases out of a run that did not ask for them with ``-m large``."""
    if _large(config):
        return
    keep, drop = [], []
    for item in items:
        mine = str(item.fspath).startswith(HERE)
        (drop if mine and item.get_closest_marker("large") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
