"""cocotb testbench for ``openvtep.hdl.datapath.Datapath`` (parser -> editor), compared frame
for frame with the reference model (``openvtep.reference``).

Run from ``tests/hdl/test_editor.py``. Parameters (``test_params()``): ``width``, ``frames``,
``idle`` and ``backpressure`` (probabilities); for ``line_rate`` (defined in
``openvtep.sim.bench_rtl_tb``, which ``openvtep bench rtl`` runs): ``ops``, ``sizes``, ``count``.
"""

import random
import time

import cocotb
import vtep_frames as vf

from openvtep.hdl.datapath import datapath_layout
from openvtep.hdl.headers import port_packet_layout
from openvtep.headers import DropReason, Port
from openvtep.sim.bench_rtl_tb import line_rate  # noqa: F401  (a cocotb test, run from here too)
from openvtep.sim.cocotb_runner import test_params
from openvtep.sim.stream import PacketSink, PacketSource, SimClock, hexdiff


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
    want = [o for outs in outputs for o in outs]
    beats = sum(-(-(2 * len(f) + 54) // width) for _, f in frames)  # controller copies too
    started = time.perf_counter()
    await sink.wait_frames(len(want), timeout_cycles=10 * beats + 1000)
    await source.wait_idle()
    await clock.cycles(20)
    dut._log.info("%d frames (%d out) in %d cycles, %.0f cycles/s", len(frames), len(want),
                  clock.cycle, clock.cycle / (time.perf_counter() - started))
    _check_outputs(want, sink, seed)
    got = _drops(dut)
    differ = ", ".join(f"{r.label} {g} (expected {d})"
                       for r, g, d in zip(DropReason, got, drops) if g != d)
    assert got == drops, f"drop counters differ (seed {seed}): {differ}"


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
    before = [o for outs in outputs for o in outs]
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
    want = [o for outs in outputs for o in outs]
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
