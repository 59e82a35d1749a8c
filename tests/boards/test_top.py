"""Every board's top elaborates (PLL, design, LEDs, UART) and constrains the PLL clock; the
traffic harness keeps the stream rules. Elaboration only: no synthesis."""

import re

import pytest
from amaranth.hdl import Signal
from amaranth.sim import Simulator

from openvtep.boards.boards import BOARDS
from openvtep.boards.designs import DesignUnavailable, resolve_design
from openvtep.boards.top import BoardTop, PacketSource, fold
from openvtep.hdl.stream import packet_layout


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_top_prepares(name):
    board = BOARDS[name]
    top = BoardTop(board, board.default_width, design="fifo")
    plan = board.platform().prepare(top, name="top", debug_verilog=False)
    constraints = plan.files.get("top.pcf") or plan.files["top.lpf"]
    # iCE40: "set_frequency NET MHZ"; ECP5: "FREQUENCY NET "NET" HZ HZ;"
    found = [float(x) for x in re.findall(r"(?:set_frequency \S+|FREQUENCY NET \S+) ([\d.]+)",
                                          constraints)]
    scale = 1e6 if board.family == "ice40" else 1
    assert any(abs(f * scale - top.pll.f_out) < 1 for f in found), constraints
    # iCE40: the PLL takes a PLL pad itself, else the clock from a global buffer.
    primitive = ("EHXPLLL" if board.family == "ecp5" else
                 "SB_PLL40_PAD" if board.pll_pad else "SB_PLL40_CORE")
    assert f"cell \\{primitive} " in plan.files["top.il"]
    assert top.pll.f_out >= board.target_mhz(board.default_width) * 1e6


def test_clock_override():
    board = BOARDS["ulx3s"]
    top = BoardTop(board, 8, design="fifo", clock_mhz=156.25)
    assert top.pll.f_out == pytest.approx(156.25e6)


def test_unknown_design():
    with pytest.raises(DesignUnavailable, match="choose one of: auto, pipeline, datapath, fifo"):
        resolve_design("mystery", 4, None, None)


def test_fold_reaches_every_bit():
    x = Signal(13)
    folded = fold(x, 4)
    assert len(folded) == 4


def test_packet_source_frames():
    """Frames from the harness are well formed and hold while stalled."""
    width = 4
    dut = PacketSource(packet_layout(width), width)
    frames, errors = [], []

    async def testbench(ctx):
        current = bytearray()
        held = None
        for cycle in range(3000):
            ready = (cycle % 3) != 0
            ctx.set(dut.o.ready, ready)
            valid = ctx.get(dut.o.valid)
            payload = ctx.get(dut.o.payload)
            if held is not None and payload != held:
                errors.append(f"payload changed while stalled at cycle {cycle}")
            if valid:
                keep = payload.keep
                nbytes = (keep).bit_count()
                if keep != (1 << nbytes) - 1 or nbytes == 0:
                    errors.append(f"bad keep {keep:#x}")
                if not payload.last and nbytes != width:
                    errors.append("short beat before the last")
                held = None if ready else payload
                if ready:
                    current += payload.data.to_bytes(width, "little")[:nbytes]
                    if payload.last:
                        frames.append(len(current))
                        current = bytearray()
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    assert not errors, errors[:5]
    assert len(frames) >= 3
    assert all(57 <= n <= 1200 for n in frames), frames
