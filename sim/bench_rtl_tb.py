"""The cocotb testbench of ``openvtep bench rtl`` (host/bench_rtl.py): line rate and latency of
the parser -> editor datapath, each output frame checked against the reference model."""

import itertools
import json
import math
import random
import time

import cocotb

from ..bench_rtl import MIN_SIZE, OPS, OUT_GROWTH, RULES, default_config, op_frame
from ..frames import FrameBatch
from ..hdl.datapath import datapath_layout
from ..hdl.headers import EditCommand, command_from_emission, pack, port_packet_layout
from ..headers import Port
from ..reference import Reference
from ..rules import parse_rules
from .cocotb_runner import test_params, test_seed
from .stream import PacketSink, PacketSource, SimClock, hexdiff


@cocotb.test()
async def line_rate(dut):
    """Back-to-back frames of n bytes, no gaps, no backpressure: in steady state each takes
    exactly ceil(max(n_in, n_out) / W) cycles (zero bubbles), for every operation; every
    output frame equals the reference model's."""
    p = test_params()
    width, count = p["width"], p.get("count", 8)
    config = default_config()
    rng = random.Random(test_seed())
    clock = SimClock(dut)
    source = PacketSource(dut, "i", width, clock=clock, layout=datapath_layout(width))
    sink = PacketSink(dut, "o", width, clock=clock, layout=port_packet_layout(width))
    await clock.start()
    records, failures = [], []
    started, start_cycle = time.perf_counter(), clock.cycle
    for op in p.get("ops", OPS):
        ruleset = parse_rules(RULES[op])
        command = pack(EditCommand, command_from_emission(ruleset.rules[0].emissions[0]))
        for size in p["sizes"]:
            if size < MIN_SIZE.get(op, 14):
                continue
            port, frame, _ = op_frame(rng, op, size, config)
            result = Reference(config, ruleset).run(FrameBatch.from_frames([(port, frame)]))
            want = [(q, f) for q in Port for f in result.outputs[q].frames()]
            assert len(want) == 1, f"{op} n={size}: the reference drops the frame"
            first_out, first_in = len(sink.frames), len(source.frame_cycles)
            for _ in range(count):
                source.send(frame, port=int(port), cmd=command)
            await sink.wait_frames(first_out + count, timeout_cycles=count * 500 + 500)
            for k in range(first_out, first_out + count):
                got = (Port(sink.frame_fields[k]["port"]), sink.frames[k])
                if got != want[0]:
                    raise AssertionError(
                        f"{op} n={size}: output frame {k - first_out} differs (seed "
                        f"{test_seed()}), expected on {want[0][0].label}, got on "
                        f"{got[0].label}\n{hexdiff(want[0][1], got[1])}")
            n_out = size + OUT_GROWTH[op]
            ideal = math.ceil(max(size, n_out) / width)
            starts = [c[0] for c in sink.frame_cycles[first_out:]]
            gaps = [b - a for a, b in itertools.pairwise(starts)]
            steady = gaps[len(gaps) // 2:]  # past the pipeline fill
            records.append({
                "op": op, "width": width, "frame_bytes": size,
                "cycles_per_frame": sum(steady) / len(steady), "ideal_cycles": ideal,
                "latency_cycles": sink.frame_cycles[first_out][0]
                - source.frame_cycles[first_in][0],
            })
            if any(g != ideal for g in steady):
                failures.append(f"{op} n={size}: output frames start {gaps} cycles apart, "
                                f"ideal {ideal}")
            await clock.cycles(40)  # drain before the next run
    elapsed = time.perf_counter() - started
    if p.get("results"):
        summary = {"records": records,
                   "cycles_per_second": (clock.cycle - start_cycle) / elapsed}
        with open(p["results"], "w") as f:  # noqa: ASYNC230 (once, at the end)
            json.dump(summary, f)
    assert not p.get("strict", True) or not failures, "\n".join(failures)
