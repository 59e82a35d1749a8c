"""cocotb side of the virtual board on Icarus Verilog (see :mod:`openvtep.sim.virtual_board`):
serves a top, wrapped in :class:`~openvtep.sim.virtual_board.ByteShell`, on a socket or pty.

Bytes go in and out a chunk at a time: each step loads up to a chunk of input, takes the
output collected so far, and lets the simulator run a chunk's worth of cycles on its own (a
single timer, no Python per cycle). When the top is idle and the host silent, the coroutine
blocks on the socket, and the simulator with it: no simulated time passes.

Parameters (JSON in ``$OPENVTEP_VBOARD``): ``listen`` (``socket://HOST:PORT`` or ``pty``),
``control`` (a directory: the served URL is written to ``url``, the run's statistics to
``stats.json``; the board stops when a file ``stop`` appears there).
"""

import json
import os
import select
import time

import cocotb
from cocotb.triggers import RisingEdge, Timer

from openvtep.sim.stream import SimClock
from openvtep.sim.virtual_board import _endpoint

IDLE_STEPS = 2  # idle steps in a row before the board sleeps


def _reader(handle):
    raw = getattr(getattr(handle, "_handle", None), "get_signal_val_binstr", None)
    if raw is not None:
        return lambda: int(raw(), 2)
    return lambda: int(handle.value)


@cocotb.test()
async def serve(dut):
    params = json.loads(os.environ["OPENVTEP_VBOARD"])
    control = params["control"]
    stop_file = os.path.join(control, "stop")
    clock = SimClock(dut)
    chunk = len(dut.in_data) // 8
    for name in ("in_data", "in_count", "in_load", "out_take"):
        getattr(dut, name).value = 0
    await clock.start()
    endpoint = _endpoint(params["listen"])
    with open(os.path.join(control, "pid"), "w") as f:  # noqa: ASYNC230 (before any I/O)
        f.write(str(os.getpid()))  # the simulator's: stop() ends it if it outlives the stop file
    with open(os.path.join(control, "url.tmp"), "w") as f:  # noqa: ASYNC230 (before any I/O)
        f.write(endpoint.url)
    os.rename(os.path.join(control, "url.tmp"), os.path.join(control, "url"))

    in_data, in_count, in_load, out_take = dut.in_data, dut.in_count, dut.in_load, dut.out_take
    in_pending, out_data, out_count, idle = (_reader(dut.in_pending), _reader(dut.out_data),
                                             _reader(dut.out_count), _reader(dut.idle))
    edge = RisingEdge(dut.clk)
    run = Timer(clock.period_ns * (chunk - 1) + clock.period_ns // 2, "ns")
    pending = bytearray()
    cycles = idle_steps = 0
    busy = 0.0
    started = time.perf_counter()
    stopped = False
    while not stopped:
        load = bool(pending) and in_pending() == 0
        if load:
            piece = pending[:chunk]
            del pending[:chunk]
            in_data.value = int.from_bytes(piece, "little")
            in_count.value = len(piece)
            in_load.value = 1
        out_take.value = 1
        await edge  # the shell loads the chunk and hands over its output here
        if load:
            in_load.value = 0
        out_take.value = 0
        await run
        await edge
        cycles += chunk
        count = out_count()
        if count:
            endpoint.write(out_data().to_bytes(chunk, "little")[:count])
        quiet = not count and not pending and idle()
        idle_steps = idle_steps + 1 if quiet else 0
        if idle_steps >= IDLE_STEPS:
            busy += time.perf_counter() - started
            while True:  # the simulator waits with us: no simulated time passes
                if os.path.exists(stop_file):
                    stopped = True
                    break
                readable, _, _ = select.select(endpoint.fds(), [], [], 0.05)
                if readable:
                    break
            started = time.perf_counter()
            idle_steps = 0
        if len(pending) < 4 * chunk:
            data = endpoint.read()
            if data:
                pending += data
        if not idle_steps and cycles % 4096 < chunk and os.path.exists(stop_file):
            stopped = True
    busy += time.perf_counter() - started
    endpoint.close()
    with open(os.path.join(control, "stats.json"), "w") as f:  # noqa: ASYNC230 (at the end)
        json.dump({"cycles": cycles, "busy_seconds": busy}, f)
