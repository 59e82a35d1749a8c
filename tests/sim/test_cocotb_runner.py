"""Tests of ``openvtep.sim.cocotb_runner``'s build cache: with a ``design_key``, a cached build
is found without making or converting the design; without one, the RTLIL is the key."""

import pytest

from openvtep.hdl.stream import RegisterSlice
from openvtep.sim.cocotb_runner import _build


def test_design_key_skips_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENVTEP_SIM_BUILD", str(tmp_path))
    made = []

    def factory():
        made.append(1)
        return RegisterSlice(4)

    first = _build(factory, "slice_key", waves=False, design_key=(RegisterSlice, 4))
    assert (first / "sim.vvp").is_file() and len(made) == 1
    assert _build(factory, "slice_key", waves=False, design_key=(RegisterSlice, 4)) == first
    assert len(made) == 1, "a cached build with a known key made the design again"
    # Another key for the same design: converted once more, the same build (RTLIL key).
    assert _build(factory, "slice_key", waves=False, design_key=(RegisterSlice, 4, 1)) == first
    assert len(made) == 2
    # No key: the component itself, converted every time (the behaviour before keys).
    assert _build(RegisterSlice(4), "slice_key", waves=False) == first


def test_design_key_by_address_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENVTEP_SIM_BUILD", str(tmp_path))
    with pytest.raises(ValueError, match="by address"):
        _build(lambda: RegisterSlice(4), "slice_key", waves=False, design_key=(object(),))


def test_sources_of_a_design():
    """The sources hashed for a design class: what its module imports, transitively."""
    from openvtep.sim.cocotb_runner import _source_files
    files = _source_files(["openvtep.hdl.datapath"])
    assert {"openvtep.hdl.editor", "openvtep.hdl.parser", "openvtep.headers"} <= set(files)
    assert "openvtep.hdl.bridge" not in files and "openvtep.cli" not in files
