"""Tests of ``openvtep.hdl.parser`` and ``openvtep.hdl.headers``: the byte-order helper and
header layouts, the checksum and source-port hash in gateware against ``openvtep.headers``
(Amaranth simulator), and the parser's records against ``openvtep.reference.parse`` on random
frames (cocotb on Icarus, testbench ``tb_parser.py``)."""

import random
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data
from amaranth.sim import Simulator
from vtep_frames import CONFIG

from openvtep import headers as h
from openvtep.hdl.editor import tunnel_src_port
from openvtep.hdl.headers import (
    UDP,
    VXLAN,
    EditCommand,
    Ethernet,
    IPv4,
    ParsedHeaders,
    byteswap,
    from_wire,
    pack,
    to_wire,
    unpack,
)
from openvtep.hdl.parser import Parser, ones_complement_sum
from openvtep.sim.cocotb_runner import run_cocotb

TB = Path(__file__).with_name("tb_parser.py")
WIDTHS = [4, 8, 16]


def _eval(make, inputs, cases):
    """``make(**signals)`` -> dict of output values; evaluated for each case of inputs."""
    m = Module()
    signals = {name: Signal(width, name=name) for name, width in inputs.items()}
    exprs = make(**signals)
    outs = {}
    for name, expr in exprs.items():
        outs[name] = Signal(len(expr), name=f"out_{name}")
        m.d.comb += outs[name].eq(expr)
    results = []

    async def bench(ctx):
        for case in cases:
            for name, value in case.items():
                ctx.set(signals[name], value)
            results.append({name: ctx.get(sig) for name, sig in outs.items()})

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    return results


def _header_bytes(rng, struct):
    return rng.randbytes(struct.WIRE_BYTES)


@pytest.mark.parametrize("struct,table", [(Ethernet, h.ETH), (IPv4, h.IPV4), (UDP, h.UDP),
                                          (VXLAN, h.VXLAN)])
def test_from_wire_to_wire(struct, table):
    """Each field's host value is its big-endian bytes at its offset; to_wire inverts it."""
    rng = random.Random(1)
    n = struct.WIRE_BYTES
    assert n == sum(width for _, _, width in table)
    assert data.Layout.cast(struct).size == 8 * n
    cases = [{"raw": int.from_bytes(_header_bytes(rng, struct), "little")} for _ in range(20)]

    def make(raw):
        view = from_wire(struct, raw)
        out = {name: getattr(view, name) for name, _, _ in table}
        out["back"] = to_wire(struct, view)
        return out

    for case, result in zip(cases, _eval(make, {"raw": 8 * n}, cases)):
        wire = case["raw"].to_bytes(n, "little")
        for name, offset, width in table:
            assert result[name] == int.from_bytes(wire[offset:offset + width], "big"), name
        assert result["back"] == case["raw"]


def test_byteswap():
    results = _eval(lambda x: {"y": byteswap(x, 4), "z": byteswap(byteswap(x, 4), 4)},
                    {"x": 32}, [{"x": 0x11223344}, {"x": 0xA0B0C0D0}])
    assert [r["y"] for r in results] == [0x44332211, 0xD0C0B0A0]
    assert [r["z"] for r in results] == [0x11223344, 0xA0B0C0D0]
    with pytest.raises(ValueError):
        byteswap(Signal(8), 0)


def test_to_wire_dict():
    results = _eval(lambda x: {"w": to_wire(UDP, {"src_port": x, "length": 0x0102})},
                    {"x": 16}, [{"x": 0xC0DE}])
    assert results[0]["w"].to_bytes(8, "little") == bytes.fromhex("c0de000001020000")
    with pytest.raises(ValueError):
        to_wire(UDP, {"nonsense": 1})


def test_ipv4_checksum():
    """ones_complement_sum of a header whose checksum is ipv4_checksum() folds to 0xFFFF."""
    rng = np.random.default_rng(2)
    headers = rng.integers(0, 256, (50, 20), dtype=np.uint8)
    headers[:, 10:12] = 0
    sums = h.ipv4_checksum(headers)
    headers[:, 10] = sums >> 8
    headers[:, 11] = sums & 0xFF
    headers[0] = 0  # all zero: its stored checksum 0 is wrong (the sum is 0, not 0xFFFF)

    def make(raw):
        return {"s": ones_complement_sum([byteswap(raw[16 * k:16 * k + 16], 2)
                                          for k in range(10)])}
    cases = [{"raw": int.from_bytes(row.tobytes(), "little")} for row in headers]
    results = _eval(make, {"raw": 160}, cases)
    assert results[0]["s"] == 0
    assert all(r["s"] == 0xFFFF for r in results[1:])


def test_tunnel_src_port():
    """The gateware hash equals openvtep.headers.tunnel_src_port."""
    rng = random.Random(3)
    widths = {"dl_dst": 48, "dl_src": 48, "dl_type": 16, "nw_src": 32, "nw_dst": 32,
              "nw_proto": 8, "tp_src": 16, "tp_dst": 16}
    cases = [{k: rng.getrandbits(w) for k, w in widths.items()} for _ in range(40)]
    results = _eval(lambda **kw: {"port": tunnel_src_port(**kw)}, widths, cases)
    want = h.tunnel_src_port(**{k: np.array([c[k] for c in cases]) for k in widths})
    assert [r["port"] for r in results] == want.tolist()


def test_pack_unpack():
    fields = {"drop": 1, "reason": int(h.DropReason.TABLE_MISS), "vni": 0xABCDEF}
    value = pack(EditCommand, fields)
    assert {k: v for k, v in unpack(EditCommand, value).items() if v} == fields
    with pytest.raises(ValueError):
        pack(ParsedHeaders, {"port": 4})


@pytest.mark.filterwarnings("ignore:.*created but never used")
@pytest.mark.parametrize("bad", [0, 2, 6, 12, 4.0])
def test_bad_width(bad):
    with pytest.raises(ValueError):
        Parser(bad, CONFIG)


@pytest.mark.parametrize("width", WIDTHS)
def test_records(width):
    run_cocotb(Parser(width, CONFIG), TB, name=f"parser_w{width}", testcase="records",
               params={"width": width, "frames": 300, "idle": 0.2, "backpressure": 0.3})


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_records_heavy(width):
    run_cocotb(Parser(width, CONFIG), TB, name=f"parser_w{width}", testcase="records",
               params={"width": width, "frames": 4000, "idle": 0.3, "backpressure": 0.5})
