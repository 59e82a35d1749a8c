"""Tests of ``openvtep.hdl.stream``: the packet layout, and RegisterSlice and PacketFifo in
cocotb on Icarus (testbench: ``tb_stream.py``) with random frames, gaps and backpressure, and
exact cycle counts."""

from pathlib import Path

import pytest
from amaranth.hdl import Shape
from amaranth.lib import data

from openvtep.hdl.stream import PacketFifo, RegisterSlice, packet_layout, packet_signature
from openvtep.sim.cocotb_runner import run_cocotb
from openvtep.sim.stream import assert_frames_equal, hexdiff

TB = Path(__file__).with_name("tb_stream.py")
WIDTHS = [4, 8, 16]

BLOCKS = {
    # name: (constructor, latency in cycles)
    "slice": (lambda width: RegisterSlice(width), 1),
    "fifo": (lambda width: PacketFifo(width, 16), 2),
}


@pytest.mark.parametrize("width", [1, 4, 8, 16])
def test_layout(width):
    layout = packet_layout(width)
    assert [(name, field.offset, Shape.cast(field.shape).width) for name, field in layout] == \
        [("data", 0, 8 * width), ("keep", 8 * width, width), ("last", 9 * width, 1)]
    assert packet_signature(width) == packet_signature(width)


@pytest.mark.parametrize("bad", [0, -4, 2.0, "8", True, None])
def test_bad_width(bad):
    with pytest.raises(ValueError):
        packet_signature(bad)
    with pytest.raises(ValueError):
        RegisterSlice(bad)
    with pytest.raises(ValueError):
        PacketFifo(bad, 16)


def test_slice_of_another_payload():
    byte_last = data.StructLayout({"data": 8, "last": 1})
    piece = RegisterSlice(payload=byte_last)
    assert piece.i.payload.shape() == byte_last == piece.o.payload.shape()
    assert RegisterSlice(8).o.payload.shape() == packet_layout(8)
    for args, kwargs in [((), {}), ((8,), {"payload": byte_last})]:
        with pytest.raises(ValueError, match="width or a payload, one of them"):
            RegisterSlice(*args, **kwargs)


@pytest.mark.parametrize("depth", [0, 2, 4.0])
def test_bad_depth(depth):
    with pytest.raises(ValueError):
        PacketFifo(8, depth)


def test_assert_frames_equal_reports_seed_and_diff():
    good = [bytes(range(40)), b"\x01"]
    assert_frames_equal(good, list(good))
    bad = [good[0][:20] + b"\xff" + good[0][21:], b"\x01"]
    with pytest.raises(AssertionError, match=r"seed 1234.*frame 0") as info:
        assert_frames_equal(good, bad, seed=1234)
    assert "0010!" in str(info.value) and " ff " in str(info.value)
    with pytest.raises(AssertionError, match="2 expected, 1 received"):
        assert_frames_equal(good, good[:1])
    assert "expected 1 bytes, got 0 bytes" in hexdiff(b"\x00", b"")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("block", BLOCKS)
def test_random_frames(block, width):
    make, _ = BLOCKS[block]
    run_cocotb(make(width), TB, name=f"{block}_w{width}", testcase="random_frames",
               params={"width": width, "frames": 300, "max_len": 300,
                       "idle": 0.2, "backpressure": 0.3})


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("block", BLOCKS)
def test_back_to_back(block, width):
    make, latency = BLOCKS[block]
    run_cocotb(make(width), TB, name=f"{block}_w{width}", testcase="back_to_back",
               params={"width": width, "latency": latency})
