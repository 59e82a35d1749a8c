"""cocotb testbench for the stream blocks of ``openvtep.hdl.stream`` (RegisterSlice,
PacketFifo): any block with a packet stream in ``i`` and the same frames out of ``o``.

Run from ``tests/hdl/test_stream.py``. Parameters (``test_params()``): ``width``, ``frames``,
``max_len``, ``idle`` and ``backpressure`` (probabilities), ``latency`` (for exact timing).
"""

import random

import cocotb

from openvtep.sim.cocotb_runner import test_params, test_seed
from openvtep.sim.stream import PacketSink, PacketSource, SimClock, assert_frames_equal


def _frames(rng, count, max_len, width):
    # A quarter of the lengths sit on beat edges (1, W-1, W, W+1, 2W), where keep and last
    # are most likely wrong; the rest are uniform.
    edges = [n for n in (1, width - 1, width, width + 1, 2 * width) if 1 <= n <= max_len]
    return [rng.randbytes(rng.choice(edges) if rng.random() < 0.25 else rng.randint(1, max_len))
            for _ in range(count)]


@cocotb.test()
async def random_frames(dut):
    """Random frames under random input gaps and output backpressure arrive unchanged."""
    p = test_params()
    width = p["width"]
    seed = test_seed()
    rng = random.Random(seed)
    clock = SimClock(dut)
    source = PacketSource(dut, "i", width, clock=clock, idle=p["idle"],
                          rng=random.Random(rng.getrandbits(64)))
    sink = PacketSink(dut, "o", width, clock=clock, backpressure=p["backpressure"],
                      rng=random.Random(rng.getrandbits(64)))
    await clock.start()
    frames = _frames(rng, p["frames"], p["max_len"], width)
    for frame in frames:
        source.send(frame)
    beats = sum(-(-len(frame) // width) for frame in frames)
    start = clock.cycle
    await sink.wait_frames(len(frames), timeout_cycles=20 * beats + 100)
    cycles = clock.cycle - start
    dut._log.info("%d frames, %d beats in %d cycles", len(frames), beats, cycles)
    assert_frames_equal(frames, sink.frames, seed=seed)
    await clock.cycles(5)  # no stray beats after the last frame
    assert sink.beats == beats, f"{sink.beats - beats} extra beats after the last frame"


@cocotb.test()
async def back_to_back(dut):
    """With no gaps and no backpressure, N frames of n bytes take exactly N*ceil(n/W) cycles
    plus the block's latency: no bubbles, inside frames or between them."""
    p = test_params()
    width, latency = p["width"], p["latency"]
    seed = test_seed()
    rng = random.Random(seed)
    clock = SimClock(dut)
    source = PacketSource(dut, "i", width, clock=clock)
    sink = PacketSink(dut, "o", width, clock=clock)
    await clock.start()
    for length in (1, width - 1, width, width + 1, 3 * width + 1, 64):
        if length < 1:
            continue
        count = 20
        beats = count * -(-length // width)
        frames = [rng.randbytes(length) for _ in range(count)]
        first_frame = len(sink.frames)
        for frame in frames:
            source.send(frame)
        await sink.wait_frames(first_frame + count, timeout_cycles=4 * beats + 100)
        assert_frames_equal(frames, sink.frames[first_frame:], seed=seed)
        first_in = source.frame_cycles[first_frame][0]
        last_in = source.frame_cycles[-1][1]
        first_out = sink.frame_cycles[first_frame][0]
        last_out = sink.frame_cycles[-1][1]
        assert last_in - first_in + 1 == beats, \
            f"source: {beats} beats took {last_in - first_in + 1} cycles (n={length})"
        assert first_out - first_in == latency, \
            f"latency {first_out - first_in}, expected {latency} (n={length})"
        assert last_out - first_in == beats + latency - 1, \
            f"n={length}: {count} frames, {beats} beats: first input beat to last output " \
            f"beat took {last_out - first_in + 1} cycles, expected {beats + latency}"
        await clock.cycles(3)
