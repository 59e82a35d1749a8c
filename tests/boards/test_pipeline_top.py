"""The pipeline design on the boards: ``hdl.top.VtepTop`` behind the board UART elaborates to
RTLIL for every board (no synthesis), ``auto`` picks it, the UART rate and the table geometry
are the board's (or --exact/--wildcard's)."""

import re
import subprocess

import pytest

from openvtep.boards.boards import BOARDS
from openvtep.boards.build import RELAXED_COLLISIONS, check_args, prepare_plan, resolve_tool
from openvtep.boards.designs import resolve_design, uart_baud
from openvtep.boards.top import BoardTop
from openvtep.hdl.top import VtepTop
from openvtep.tables import Geometry

FTDI = ("icebreaker", "ice40-hx8k", "ulx3s", "ulx3s-45f", "ulx3s-25f", "ulx3s-12f")


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_pipeline_top_elaborates(name):
    board = BOARDS[name]
    top = BoardTop(board, board.default_width, design="pipeline")
    design = top.design
    assert design.name == "pipeline" and design.harness == "uart"
    assert isinstance(design.component, VtepTop)
    assert (design.exact_entries, design.wildcard_entries) == board.geometry
    exact, wildcard = board.geometry
    assert design.component.geometry == Geometry(exact_entries=exact, wildcard_entries=wildcard)
    if name in FTDI:
        assert design.baud >= 2_000_000  # 3 Mbaud, or 2 Mbaud at the iCE40s' 31.5 MHz
    else:
        assert design.baud == 115200
    assert abs(top.pll.f_out / design.uart_divisor - design.baud) <= 0.02 * design.baud
    plan = board.platform().prepare(top, name="top", debug_verilog=False)
    rtlil = plan.files["top.il"]
    assert "rx_fifo" in rtlil and "pipeline" in rtlil and "bridge" in rtlil
    constraints = plan.files.get("top.pcf") or plan.files["top.lpf"]
    assert "uart" in constraints


def test_ulx3s_at_3_mbaud():
    assert uart_baud(BOARDS["ulx3s"], 125e6) == (3_000_000, 42)
    assert uart_baud(BOARDS["icebreaker"], 31.5e6) == (2_000_000, 16)


@pytest.mark.parametrize("name", ["icebreaker", "ulx3s", "orangecrab"])
def test_auto_picks_pipeline(name):
    board = BOARDS[name]
    clk_freq = board.target_mhz(board.default_width) * 1e6
    design, notes = resolve_design("auto", board.default_width, None, _config(), board=board,
                                   clk_freq=clk_freq)
    assert design.name == "pipeline" and notes == []


def test_geometry_from_options():
    board, width, geometry = check_args("ulx3s", 4, "yowasp", 256, 8)
    top = BoardTop(board, width, geometry=geometry)   # design auto
    assert top.design.name == "pipeline"
    assert (top.design.exact_entries, top.design.wildcard_entries) == (256, 8)
    assert top.design.component.geometry == geometry


def test_one_table_option_keeps_the_board_default_of_the_other():
    board = BOARDS["ulx3s"]
    exact, wildcard = board.geometry
    assert (exact, wildcard) != (4096, 32)   # Geometry()'s, which these once fell back to
    _, _, geometry = check_args("ulx3s", None, "yowasp", None, 8)
    assert (geometry.exact_entries, geometry.wildcard_entries) == (exact, 8)
    _, _, geometry = check_args("ulx3s", None, "yowasp", 512, None)
    assert (geometry.exact_entries, geometry.wildcard_entries) == (512, wildcard)


@pytest.mark.parametrize("board_name,wildcard,chunk_bits", [
    ("ulx3s", None, 4), ("ulx3s", 32, 4), ("ulx3s", 33, 9), ("orangecrab", None, 4),
    ("icebreaker", None, 9)])
def test_wildcard_cam_in_lut_ram_on_ecp5_for_few_positions(board_name, wildcard, chunk_bits):
    """The ECP5 boards' CAM chunks are 16-word LUT RAMs up to LUT_CAM_POSITIONS positions;
    iCE40s (no LUT RAM) and larger CAMs keep 512-word block RAM chunks."""
    board, width, geometry = check_args(board_name, None, "yowasp", None, wildcard)
    top = BoardTop(board, width, geometry=geometry, design="pipeline")
    assert top.design.component.pipeline.classifier.chunk_bits == chunk_bits
    assert f"{chunk_bits}-bit chunks" in top.design.description


def _config():
    from openvtep.config import VtepConfig
    return VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE)


def test_collisions_relaxed_on_the_classifier_memories_only(tmp_path):
    """The board build's Yosys script marks a read meeting a write to the same word don't-care
    (no registers and muxes emulating the old word at the block RAM outputs) on every memory
    of the classifier, and on no other memory (the bridge's, the editor's, the FIFOs' keep
    the old word)."""
    board = BOARDS["ulx3s"]
    _, width, geometry = check_args("ulx3s", 4, "yowasp", 64, 4)
    plan = prepare_plan(board, BoardTop(board, width, geometry=geometry, design="pipeline"))
    assert RELAXED_COLLISIONS in plan.files["top.ys"]
    (tmp_path / "top.il").write_text(plan.files["top.il"])
    subprocess.run([resolve_tool("yosys", "yowasp"), "-q", "-p",
                    f"read_rtlil top.il; {RELAXED_COLLISIONS}; "
                    "tee -q -o ports.txt dump t:$memrd_v2"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=300)
    masks = {}
    for cell in (tmp_path / "ports.txt").read_text().split("cell $memrd_v2 ")[1:]:
        memid = re.search(r'MEMID "([^"]+)"', cell).group(1).lstrip("\\")
        masks.setdefault(memid, set()).add(re.search(r"COLLISION_X_MASK (\S+)", cell).group(1))
    classifier = re.compile(r"bank\d|actions\d*|counters\d*|wild_chunk\d+|wild_entries")
    relaxed = {memid for memid, mask in masks.items() if mask == {"1'1"}}
    assert relaxed == {memid for memid in masks if classifier.fullmatch(memid)}
    assert {"bank0", "bank1", "actions", "counters", "wild_chunk0", "wild_entries"} <= relaxed
    assert {"request", "capture", "buffer", "storage"} <= set(masks) - relaxed
