"""cocotb testbench for ``openvtep.hdl.parser.Parser``: per frame, the parsed-header record
(verdict, decap, match fields) equals ``openvtep.reference.parse``, and the beats pass through
unchanged, under random input gaps and backpressure on both outputs.

Run from ``tests/hdl/test_parser.py``. Parameters: ``width``, ``frames``, ``idle``,
``backpressure``.
"""

import random

import cocotb
import vtep_frames as vf
from amaranth.lib import data

from openvtep.frames import FrameBatch
from openvtep.hdl.headers import ParsedHeaders, port_packet_layout, unpack
from openvtep.headers import DropReason
from openvtep.reference import parse
from openvtep.sim.cocotb_runner import test_params
from openvtep.sim.stream import PacketSink, PacketSource, SimClock, assert_frames_equal

# Record field -> reference Parsed field (compared when the frame is not dropped).
FIELDS = {
    "decap": "decap", "strip": "inner_off", "tun_id": "tun_id", "tun_src": "tun_src",
    "port": "in_port", "dl_dst": "dl_dst", "dl_src": "dl_src", "vlan_valid": "tagged",
    "tci": "tci", "dl_type": "dl_type", "nw_valid": "has_ip", "nw_src": "nw_src",
    "nw_dst": "nw_dst", "nw_proto": "nw_proto", "tp_valid": "has_l4", "tp_src": "tp_src",
    "tp_dst": "tp_dst",
}


async def _collect_records(dut, clock, records, rng, backpressure):
    """Take records from ``o_hdr``, with random backpressure."""
    valid, ready, payload = dut.o_hdr__valid, dut.o_hdr__ready, dut.o_hdr__payload
    ready.value = 1
    now_ready = True
    while True:
        await clock.edge
        if now_ready and int(valid.value):
            value = payload.value
            if not value.is_resolvable:
                layout = data.Layout.cast(ParsedHeaders)
                bits = str(value)[::-1]  # LSB first
                bad = [name for name, field in layout
                       if any(b not in "01" for b in bits[field.offset:field.offset + field.width])]
                raise AssertionError(f"record {len(records)} has X/Z bits in {bad}")
            records.append(unpack(ParsedHeaders, int(value)))
        now_ready = rng.random() >= backpressure
        ready.value = int(now_ready)


@cocotb.test()
async def records(dut):
    p = test_params()
    width, seed = p["width"], cocotb.RANDOM_SEED
    rng = random.Random(seed)
    clock = SimClock(dut)
    source = PacketSource(dut, "i", width, clock=clock, idle=p["idle"],
                          layout=port_packet_layout(width), rng=random.Random(rng.getrandbits(64)))
    sink = PacketSink(dut, "o", width, clock=clock, backpressure=p["backpressure"],
                      rng=random.Random(rng.getrandbits(64)))
    got = []
    cocotb.start_soon(_collect_records(dut, clock, got, random.Random(rng.getrandbits(64)),
                                       p["backpressure"]))
    await clock.start()
    frames, _ = vf.random_workload(seed, p["frames"])
    for port, frame in frames:
        source.send(frame, port=int(port))
    beats = sum(-(-len(f) // width) for _, f in frames)
    await sink.wait_frames(len(frames), timeout_cycles=10 * beats + 1000)
    await clock.cycles(40)
    assert_frames_equal([f for _, f in frames], sink.frames, seed=seed)
    assert len(got) == len(frames), f"{len(got)} records for {len(frames)} frames"

    want = parse(FrameBatch.from_frames(frames), vf.CONFIG)
    reasons = {}
    for k, (record, (port, frame)) in enumerate(zip(got, frames)):
        where = f"seed {seed}, frame {k} ({len(frame)} bytes on {port.label}): {frame.hex()}"
        drop = int(want.drop[k])
        assert record["length"] == min(len(frame), 0xFFFF), where
        hw_drop = record["reason"] if record["drop"] else -1
        assert hw_drop == drop, \
            f"verdict {_reason(hw_drop)}, reference {_reason(drop)}; {where}"
        reasons[_reason(drop)] = reasons.get(_reason(drop), 0) + 1
        if drop >= 0:
            continue
        for name, ref_name in FIELDS.items():
            assert record[name] == int(getattr(want, ref_name)[k]), \
                f"{name} = {record[name]:#x}, reference {int(getattr(want, ref_name)[k]):#x}; " \
                f"{where}"
    dut._log.info("verdicts: %s", reasons)


def _reason(value):
    return "pass" if value < 0 else DropReason(value).label
