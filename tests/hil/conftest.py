"""Fixtures for the hardware-in-the-loop tests.

``test_top`` serves :class:`openvtep.sim.bridge_top.BridgeTestTop` on a virtual board (one per
test session and xdist worker: starting one costs seconds) and yields it. Tests share it, so
each uses its own addresses and checks counters by differences. The bridge tests need that top's memory map, so they always
run on the virtual board; tests of the full pipeline will take a real board's port from
``OPENVTEP_PORT``.
"""

import os

import pytest

from openvtep.driver import Device
from openvtep.sim.virtual_board import serve

# Seconds without a reply before the driver retransmits. The simulated bridge runs a few
# thousand cycles a second, and a full batch message costs ~4,500 cycles.
SIM_TIMEOUT = float(os.environ.get("OPENVTEP_SIM_TIMEOUT", "8"))


@pytest.fixture(scope="session")
def sim_timeout():
    return SIM_TIMEOUT


@pytest.fixture(scope="session")
def test_top():
    board = serve()
    yield board
    board.stop()


@pytest.fixture(scope="module")
def device(test_top):
    with Device(test_top.url, timeout=SIM_TIMEOUT, retries=3) as dev:
        yield dev
