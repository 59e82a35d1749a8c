"""cocotb testbench for ``openvtep.hdl.datapath.Datapath`` (parser -> editor), compared frame
for frame with the reference model (``openvtep.reference``).

Run from ``tests/hdl/test_editor.py``. Parameters (``test_params()``): ``width``, ``frames``,
``idle`` and ``backpressure`` (probabilities), ``max_frame``; for ``line_rate``: ``ops``,
``sizes``, ``count`` and optionally ``results`` (a JSON file to write the measurements to).
"""

import json
import random
import time

import cocotb

from openvtep.headers import DropReason, Port
from openvtep.hdl.datapath import datapath_layout
from openvtep.hdl.headers import port_packet_layout
from openvtep.sim.cocotb_runner import test_params
from openvtep.sim.stream import PacketSink, PacketSource, SimClock, hexdiff

import vtep_frames as vf


def _drops(dut):
    """The DUT's drop counters, per DropReason."""
    value = int(dut.drops.value)
    return [(value >> (32 * reason)) & 0xFFFFFFFF for reason in DropReason]


def _check_outputs(want, sink, seed, first=0):
    """``want``: expected (port, bytes) in order; the sink's frames from ``first`` on."""
    got = list(zip((Port(f["port"]) for f in sink.frame_fields[first:]), sink.frames[first:]))
    for index, (w, g) in enumerate(zip(want, got)):
        if w != g:
            raise AssertionError(
                f"output frame {index} differs (seed {seed}): expected on {w[0].label}, got on "
                f"{g[0].label}\n{hexdiff(w[1], g[1])}")
    assert len(want) == len(got), \
        f"seed {seed}: {len(want)} frames expected, {len(got)} received"


def _setup(dut, width, clock, rng, idle=0.0, backpressure=0.0):
    source = PacketSource(dut, "i", width, clock=clock, idle=idle, layout=datapath_layout(width),
                          rng=random.Random(rng.getrandbits(64)))
    sink = PacketSink(dut, "o", width, clock=clock, backpressure=backpressure,
                      layout=port_packet_layout(width), rng=random.Random(rng.getrandbits(64)))
    return source, sink


@cocotb.test()
async def random_frames(dut):
    """Random frames and action combinations, with random input gaps and output backpressure:
    every output frame, its port and the drop counters equal the reference model's."""
    p = test_params()
    width, seed = p["width"], cocotb.RANDOM_SEED
    rng = random.Random(seed)
    clock = SimClock(dut)
    source, sink = _setup(dut, width, clock, rng, p["idle"], p["backpressure"])
    await clock.start()
    frames, texts = vf.random_workload(seed, p["frames"])
    outputs, commands, drops = vf.expected(frames, texts)
    for (port, frame), command in zip(frames, commands):
        source.send(frame, port=int(port), cmd=command)
    want = [o for o in outputs if o is not None]
    beats = sum(-(-(len(f) + 54) // width) for _, f in frames)
    started = time.perf_counter()
    await sink.wait_frames(len(want), timeout_cycles=10 * beats + 1000)
    await source.wait_idle()
    await clock.cycles(20)
    dut._log.info("%d frames (%d out) in %d cycles, %.0f cycles/s", len(frames), len(want),
                  clock.cycle, clock.cycle / (time.perf_counter() - started))
    _check_outputs(want, sink, seed)
    got = _drops(dut)
    assert got == drops, "drop counters differ (seed %d): %s" % (seed, ", ".join(
        f"{r.label} {g} (expected {d})" for r, g, d in zip(DropReason, got, drops) if g != d))


@cocotb.test()
async def reset_mid_frame(dut):
    """A reset in the middle of a frame loses that frame; the frames after it (the rest of the
    interrupted frame arrives as a frame of its own) are handled as the reference says."""
    p = test_params()
    width, seed = p["width"], cocotb.RANDOM_SEED
    rng = random.Random(seed)
    clock = SimClock(dut)
    source, sink = _setup(dut, width, clock, rng)
    await clock.start()
    rule = "priority=0,actions=mod_vlan_vid:7,mod_dl_src:02:00:00:00:00:99,output:in_port"
    frames = [vf.random_frame(rng, vf.CONFIG.max_frame) for _ in range(6)]
    inner = vf.eth(vf.mac(rng), vf.mac(rng), 0x0800) + rng.randbytes(386)
    long = (Port.NET, vf.vxlan_frame(rng, inner))
    after = [vf.random_frame(rng, vf.CONFIG.max_frame) for _ in range(20)]

    outputs, commands, _ = vf.expected(frames, [rule] * len(frames))
    for (port, frame), command in zip(frames, commands):
        source.send(frame, port=int(port), cmd=command)
    before = [o for o in outputs if o is not None]
    await sink.wait_frames(len(before), timeout_cycles=5000)
    await source.wait_idle()
    await clock.cycles(30)
    _check_outputs(before, sink, seed)

    # The interrupted frame: reset after 5 of its beats. The source goes on with the beats it
    # had not handed over; count the ones the DUT takes out of reset: they make a frame.
    taken = [0, 0]
    monitor = cocotb.start_soon(_count_beats(dut, clock, taken))
    _, long_commands, _ = vf.expected([long], [rule])
    source.send(long[1], port=int(long[0]), cmd=long_commands[0])
    while taken[0] < 5:
        await clock.edge
    dut.rst.value = 1
    await clock.cycles(3)
    dut.rst.value = 0
    await source.wait_idle()
    await clock.cycles(2)
    monitor.cancel()
    sent_beats = -(-len(long[1]) // width)
    rest_beats = taken[1]
    assert 0 < rest_beats < sent_beats - 5, \
        f"{taken[0]} beats before the reset, {rest_beats} after, of {sent_beats}"
    rest = (long[0], long[1][(sent_beats - rest_beats) * width:])
    post = [rest] + after
    outputs, commands, drops = vf.expected(post, [rule] * len(post))
    for (port, frame), command in zip(after, commands[1:]):
        source.send(frame, port=int(port), cmd=command)
    want = [o for o in outputs if o is not None]
    first_out = len(sink.frames)
    await sink.wait_frames(first_out + len(want), timeout_cycles=20000)
    await source.wait_idle()
    await clock.cycles(30)
    _check_outputs(want, sink, seed, first=first_out)
    assert _drops(dut) == drops, f"drop counters after reset {_drops(dut)}, expected {drops}"


async def _count_beats(dut, clock, taken):
    """``taken[0]``: beats ``i`` took before a reset, ``taken[1]``: after it."""
    taken[:] = [0, 0]
    seen_reset = False
    while True:
        await clock.edge
        if int(dut.rst.value):
            seen_reset = True
        elif int(dut.i__valid.value) and int(dut.i__ready.value):
            taken[seen_reset] += 1


def op_frame(rng, op, size):
    """``(port, frame, rule)`` of a frame of ``size`` input bytes for a line-rate operation."""
    if op == "decap":
        inner = vf.eth(vf.mac(rng), vf.mac(rng), 0x0800) + rng.randbytes(size - 64)
        return Port.NET, vf.vxlan_frame(rng, inner, vni=42), "priority=0,actions=output:host"
    tagged = op == "vlan_pop"
    frame = vf.eth(vf.mac(rng), vf.mac(rng), 0x0800, 5 if tagged else None)
    frame += rng.randbytes(size - len(frame))
    rule = {
        "pass": "priority=0,actions=output:net",
        "encap": "priority=0,actions=set_tunnel:42,set_field:198.18.0.2->tun_dst,output:net",
        "vlan_push": "priority=0,actions=mod_vlan_vid:5,output:net",
        "vlan_pop": "priority=0,actions=strip_vlan,output:net",
    }[op]
    return Port.HOST, frame, rule


MIN_SIZE = {"decap": 64, "vlan_pop": 18}  # an outer header and 14 bytes; a tag
OUT_GROWTH = {"pass": 0, "encap": 50, "decap": -50, "vlan_push": 4, "vlan_pop": -4}


@cocotb.test()
async def line_rate(dut):
    """Back-to-back frames of n bytes, no gaps, no backpressure: in steady state each takes
    exactly ceil(max(n_in, n_out) / W) cycles (zero bubbles), for every operation."""
    p = test_params()
    width, seed, count = p["width"], cocotb.RANDOM_SEED, p.get("count", 12)
    rng = random.Random(seed)
    clock = SimClock(dut)
    source, sink = _setup(dut, width, clock, rng)
    await clock.start()
    records, failures = [], []
    started, start_cycle = time.perf_counter(), clock.cycle
    for op in p["ops"]:
        for size in p["sizes"]:
            if size < MIN_SIZE.get(op, 14):
                continue
            port, frame, rule = op_frame(rng, op, size)
            frames = [(port, frame)] * count
            outputs, commands, _ = vf.expected(frames, [rule] * count)
            assert all(o is not None for o in outputs), f"{op} n={size}: reference drops it"
            first_out = len(sink.frames)
            first_in = len(source.frame_cycles)
            for command in commands:
                source.send(frame, port=int(port), cmd=command)
            await sink.wait_frames(first_out + count, timeout_cycles=count * 200 + 200)
            _check_outputs(outputs, sink, seed, first=first_out)
            n_out = size + OUT_GROWTH[op]
            ideal = -(-max(size, n_out) // width)
            starts = [c[0] for c in sink.frame_cycles[first_out:]]
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            steady = gaps[len(gaps) // 2:]  # the second half: past the pipeline fill
            latency = sink.frame_cycles[first_out][0] - source.frame_cycles[first_in][0]
            per_frame = sum(steady) / len(steady)
            records.append({"op": op, "width": width, "frame_bytes": size,
                            "cycles_per_frame": per_frame, "ideal_cycles": ideal,
                            "latency_cycles": latency})
            if any(g != ideal for g in steady):
                failures.append(f"{op} n={size}: output frame starts {gaps} cycles apart, "
                                f"ideal {ideal}")
            await clock.cycles(40)  # drain before the next operation
    rate = (clock.cycle - start_cycle) / (time.perf_counter() - started)
    if p.get("results"):
        with open(p["results"], "w") as f:
            json.dump({"records": records, "cycles_per_second": rate}, f)
    for record in records:
        dut._log.info("%s", record)
    assert not failures, "\n".join(failures)
