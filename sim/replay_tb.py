"""cocotb test that replays frames through ``openvtep.hdl.pipeline.Pipeline``: the simulation
half of the ``rtl`` engine (:mod:`openvtep.rtl_engine`), also used by the pipeline tests.

Parameters (``test_params()``): ``width``; ``inputs`` (an ``.npz`` with the frames ``data``,
``length``, ``port`` and the table writes ``addr``, ``word``); ``results`` (the ``.npz`` to
write); ``rules`` (rule counters to read back); ``idle``, ``backpressure`` (probabilities);
``progress`` (a file rewritten about once a second with "frames cycles cycles_per_second").

Results: ``out_data`` (all output bytes), ``out_length``, ``out_port``, ``out_frame`` (the
input frame each output came from), per input frame ``hit``, ``rule``, ``emits``, ``punt``
(also sent as it arrived to the controller, right after its edited output), ``reason`` (the
drop reason, -1 for a frame that is emitted), ``out_start`` and ``in_start`` (cycles of first beats, for timing), ``rule_counters`` (N, 2),
``port_counters`` (ports, 4), ``drops``, ``cycles``, ``load_cycles``.
"""

import random
import time
from pathlib import Path

import cocotb
import numpy as np

from openvtep import regmap as rm
from openvtep.hdl.headers import port_packet_layout, unpack
from openvtep.hdl.pipeline import FrameDone
from openvtep.headers import DropReason, Port
from openvtep.sim.cocotb_runner import test_params, test_seed
from openvtep.sim.regbus import RegisterDriver, read_drops, read_port_counters, read_rule_counters
from openvtep.sim.stream import PacketSink, PacketSource, SimClock

__all__ = ["replay_frames", "watch_done"]


async def watch_done(dut, clock, done):
    """Append ``(hit, rule, emits, punt, reason)`` to ``done`` for every frame the pipeline
    decides (:class:`openvtep.hdl.pipeline.FrameDone`)."""
    handle = dut.done
    raw = getattr(getattr(handle, "_handle", None), "get_signal_val_binstr", None)
    read = (lambda: int(raw(), 2)) if raw is not None else (lambda: int(handle.value))
    while True:
        await clock.edge
        try:
            value = read()
        except ValueError:
            continue
        if value & 1:
            f = unpack(FrameDone, value)
            done.append((f["hit"], f["rule"], f["emits"], f["punt"], f["reason"]))


async def replay_frames(dut, p, seed):
    """Load the tables, stream every frame, wait for every verdict and output; return the
    results dict (see the module docstring)."""
    rng = random.Random(seed)
    width = p["width"]
    inputs = np.load(p["inputs"])
    layout = port_packet_layout(width)
    clock = SimClock(dut)
    source = PacketSource(dut, "i", width, clock=clock, idle=p.get("idle", 0.0), layout=layout,
                          rng=random.Random(rng.getrandbits(64)))
    sink = PacketSink(dut, "o", width, clock=clock, backpressure=p.get("backpressure", 0.0),
                      layout=layout, rng=random.Random(rng.getrandbits(64)))
    regs = RegisterDriver(dut, "bus", clock=clock)
    done = []
    cocotb.start_soon(watch_done(dut, clock, done))
    await clock.start()
    await regs.write_all(zip(inputs["addr"].tolist(), inputs["word"].tolist()))
    load_cycles = clock.cycle

    data, length, port = inputs["data"], inputs["length"].tolist(), inputs["port"].tolist()
    n = len(length)
    beats = sum(-(-x // width) for x in length)
    limit = clock.cycle + 60 * beats + 40 * n + 20000
    started, start_cycle, last_report = time.perf_counter(), clock.cycle, time.perf_counter()
    progress = p.get("progress")
    sent = 0
    while len(done) < n or len(sink.frames) < sum(d[2] + d[3] for d in done):
        # Keep a few hundred frames queued: the source's queue stays short.
        while sent < n and sent - len(done) < 256:
            source.send(data[sent, :length[sent]].tobytes(), port=int(port[sent]))
            sent += 1
        await clock.cycles(16)
        if clock.cycle > limit:
            raise AssertionError(f"seed {seed}: stuck: {len(done)} of {n} frames decided, "
                                 f"{len(sink.frames)} output, at cycle {clock.cycle}")
        now = time.perf_counter()
        if progress and now - last_report > 1.0:
            last_report = now
            rate = (clock.cycle - start_cycle) / (now - started)
            Path(progress).write_text(f"{len(done)} {clock.cycle} {rate:.0f}\n")
    await source.wait_idle()
    await clock.cycles(8)
    cycles = clock.cycle - start_cycle
    dut._log.info("%d frames, %d outputs in %d cycles (%.0f cycles/s); tables: %d cycles",
                  n, len(sink.frames), cycles, cycles / (time.perf_counter() - started),
                  load_cycles)
    rules = await read_rule_counters(regs, p["rules"])
    ports = await read_port_counters(regs)
    drops = await read_drops(regs)
    emits = np.array([d[2] for d in done], np.int64)
    punt = np.array([d[3] for d in done], np.int64)
    # Outputs leave in frame order; a punted frame's controller copy right after its output.
    out_frame = np.repeat(np.arange(len(done)), emits + punt)[:len(sink.frames)]
    return {
        "out_data": np.frombuffer(b"".join(sink.frames), np.uint8),
        "out_length": np.array([len(f) for f in sink.frames], np.int64),
        "out_port": np.array([f["port"] for f in sink.frame_fields], np.int64),
        "out_frame": out_frame,
        "out_start": np.array([c[0] for c in sink.frame_cycles], np.int64),
        "in_start": np.array([c[0] for c in source.frame_cycles], np.int64),
        "hit": np.array([d[0] for d in done], np.int64),
        "rule": np.array([d[1] for d in done], np.int64),
        "emits": emits,
        "punt": punt,
        "reason": np.where(emits != 0, -1, np.array([d[4] for d in done], np.int64)),
        "rule_counters": np.array(rules, np.uint64).reshape(-1, 2),
        "port_counters": np.array([[ports[q][c] for c in rm.PORT_COUNTERS] for q in Port],
                                  np.uint64),
        "drops": np.array([drops[r] for r in DropReason], np.int64),
        "cycles": cycles,
        "load_cycles": load_cycles,
    }


@cocotb.test()
async def replay(dut):
    p = test_params()
    results = await replay_frames(dut, p, test_seed())
    np.savez(p["results"], **results)
