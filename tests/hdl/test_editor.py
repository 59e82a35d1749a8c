"""Tests of ``openvtep.hdl.editor`` (through ``openvtep.hdl.datapath``: parser -> editor).

In cocotb on Icarus (testbench ``tb_datapath.py``; frames and expected results from the
reference model via ``vtep_frames.py``):

- ``random_frames``: byte-for-byte equality with the reference on random frames of every kind
  (VXLAN and plain, tagged and untagged, 14..max_frame bytes, runts, over-long, each invalid
  tunnel header) under every action combination, with random input gaps and output
  backpressure; the drop counters equal the reference's;
- ``reset_mid_frame``: a reset in the middle of a frame, and the frames after it;
- ``line_rate`` (from ``openvtep.sim.bench_rtl_tb``): exact cycle counts, ceil(max(n_in, n_out)/W)
  cycles per back-to-back frame for pass, encap, decap, VLAN push and pop.

All three run in one simulation per width (one Verilog conversion, the slow part of setup);
a failure names the cocotb test, the seed and the first differing frame as a hex diff.
"""

from pathlib import Path

import pytest
from vtep_frames import CONFIG

from openvtep.bench_rtl import OPS
from openvtep.hdl.datapath import Datapath
from openvtep.hdl.editor import Editor
from openvtep.sim.cocotb_runner import run_cocotb

TB = Path(__file__).with_name("tb_datapath.py")
WIDTHS = [4, 8, 16]
TESTS = ["random_frames", "reset_mid_frame", "line_rate"]


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("bad", [0, 2, 6, 12, 4.0])
def test_bad_width(bad):
    with pytest.raises(ValueError):
        Editor(bad, CONFIG)


@pytest.mark.parametrize("width", WIDTHS)
def test_datapath(width):
    """~200 random frames, the reset test and line rate at 5 sizes, for each op."""
    run_cocotb(lambda: Datapath(width, CONFIG), TB, name=f"datapath_w{width}", testcase=TESTS,
               design_key=(Datapath, width, CONFIG),
               params={"width": width, "frames": 200, "idle": 0.2, "backpressure": 0.3,
                       "ops": list(OPS), "sizes": [14, 18, 60, 67, 129], "count": 8})


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_datapath_heavy(width):
    """3000 random frames per width; line rate at the edges of beats and up to max_frame."""
    run_cocotb(lambda: Datapath(width, CONFIG), TB, name=f"datapath_w{width}", testcase=TESTS,
               design_key=(Datapath, width, CONFIG),
               params={"width": width, "frames": 3000, "idle": 0.3, "backpressure": 0.5,
                       "ops": list(OPS), "count": 10,
                       "sizes": [14, 15, 17, 18, 63, 64, 65, 66, 127, 256, 1000, 1517, 1518]})
