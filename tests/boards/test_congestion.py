"""``openvtep.boards.congestion``: wire length and the hottest tile of a placed design, on
small hand-made placements whose answers are worked out here."""

import json

import pytest

from openvtep.boards import congestion


def _cell(bel, **connections):
    outputs = {port for port in connections if port.startswith("Q")}
    return {"attributes": {"NEXTPNR_BEL": bel} if bel else {},
            "port_directions": {p: "output" if p in outputs else "input" for p in connections},
            "connections": connections}


def _design(cells):
    return {"modules": {"top": {"cells": cells}}}


# Net 10: driven from X1/Y1 by dut.a.x, read at X4/Y1 and X1/Y3: a 4 x 3 box, HPWL 3 + 2.
# Net 11: driven from X4/Y1 by dut.b.y, read at X4/Y2: a 1 x 2 box, HPWL 1.
# Net 12: within tile X1/Y1: no wire between tiles.
CELLS = {
    "dut.a.x_TRELLIS_FF_Q": _cell("X1/Y1/SLICEA", Q=[10], D=[12]),
    "dut.a.z_LUT4_Z": _cell("X1/Y1/SLICEB", Q=[12]),
    "dut.b.y_LUT4_Z": _cell("X4/Y1/SLICEA", A=[10], Q=[11]),
    "dut.c.w_TRELLIS_FF_Q": _cell("X1/Y3/SLICEC", D=[10, "0"]),
    "dut.c.v_TRELLIS_FF_Q": _cell("X4/Y2/SLICEA", D=[11]),
    "unplaced": _cell(None, D=[10]),
}


def test_wire_length_by_driving_module():
    nets = congestion.load_nets(_design(CELLS))
    assert sorted(net.box for net in nets) == [(1, 1, 1, 1), (1, 1, 4, 3), (4, 1, 4, 2)]
    assert congestion.wire_length(nets, depth=2) == [("dut.a", 5, 2), ("dut.b", 1, 1)]
    assert congestion.module_of("dut.pipeline.classifier.bank0_DP16KD_DOA0", 4) == \
        "dut.pipeline.classifier.bank0"


def test_hot_spot():
    nets = congestion.load_nets(_design(CELLS))
    hottest, crossing, median = congestion.hot_spot(nets, depth=2, tiles=3)
    # Net 10 spreads 7/12 over its 12 tiles, net 11 1.5 over its 2: X4/Y1 and X4/Y2 carry
    # both, the rest of net 10's box 7/12.
    assert [(x, y) for x, y, _ in hottest[:2]] == [(4, 1), (4, 2)]
    assert hottest[0][2] == pytest.approx(7 / 12 + 1.5)
    assert dict(crossing) == pytest.approx({"dut.a": 7 / 12, "dut.b": 1.5})
    assert median == pytest.approx(7 / 12)


def test_main_prints_both_tables(tmp_path, capsys):
    path = tmp_path / "placed.json"
    path.write_text(json.dumps(_design(CELLS)))
    assert congestion.main([str(path), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 tiles of wire" in out and "dut.a" in out and "X4/Y1" in out


@pytest.mark.parametrize("text, message", [
    ("{not json", "Expecting property name"),
    (json.dumps(_design({"x": _cell(None, D=[1])})), "no placed cells"),
    (json.dumps({"modules": {}}), "expected one flattened top module"),
])
def test_bad_input_names_the_file(tmp_path, capsys, text, message):
    path = tmp_path / "placed.json"
    path.write_text(text)
    assert congestion.main([str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and message in err


def test_missing_file(tmp_path, capsys):
    assert congestion.main([str(tmp_path / "nope.json")]) == 1
    assert "nope.json" in capsys.readouterr().err
