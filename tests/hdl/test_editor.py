"""Tests of ``openvtep.hdl.editor`` (through ``openvtep.hdl.datapath``, parser -> editor):
byte-for-byte equality with the reference model on random frames and action combinations under
random gaps and backpressure, drops and their counters, a reset mid-frame, and exact line rate.

cocotb testbench: ``tb_datapath.py``; frames and expected results: ``vtep_frames.py``.
"""

from pathlib import Path

import pytest

from openvtep.hdl.datapath import Datapath
from openvtep.hdl.editor import Editor
from openvtep.sim.cocotb_runner import run_cocotb

from vtep_frames import CONFIG

TB = Path(__file__).with_name("tb_datapath.py")
WIDTHS = [4, 8, 16]
OPS = ["pass", "encap", "decap", "vlan_push", "vlan_pop"]


def _run(width, testcase, **params):
    run_cocotb(Datapath(width, CONFIG), TB, name=f"datapath_w{width}", testcase=testcase,
               params={"width": width, **params})


@pytest.mark.parametrize("bad", [0, 2, 6, 12, 4.0])
def test_bad_width(bad):
    with pytest.raises(ValueError):
        Editor(bad, CONFIG)


@pytest.mark.parametrize("width", WIDTHS)
def test_random_frames(width):
    _run(width, "random_frames", frames=250, idle=0.2, backpressure=0.3)


@pytest.mark.parametrize("width", WIDTHS)
def test_reset_mid_frame(width):
    _run(width, "reset_mid_frame")


@pytest.mark.parametrize("width", WIDTHS)
def test_line_rate(width):
    _run(width, "line_rate", ops=OPS, sizes=[14, 60, 64, 67, 129, 300], count=10)


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_random_frames_heavy(width):
    _run(width, "random_frames", frames=3000, idle=0.3, backpressure=0.4)


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_line_rate_all_sizes(width):
    _run(width, "line_rate", ops=OPS, sizes=[14, 15, 63, 64, 65, 66, 127, 256, 1000, 1518],
         count=8)
