"""Project-wide test settings: heavy sweeps (``@pytest.mark.slow``) run only when asked for,
with ``-m slow`` (``make test-slow``), whichever folder they are in."""

import pytest


def pytest_collection_modifyitems(config, items):
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow (make test-slow)")
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(skip)
