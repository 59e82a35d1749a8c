"""cocotb side of the virtual board on Icarus Verilog (see :mod:`openvtep.sim.virtual_board`):
serves the top's byte streams ``i``/``o`` on a socket or pty from a coroutine.

Parameters (JSON in ``$OPENVTEP_VBOARD``): ``listen`` (``socket://HOST:PORT`` or ``pty``), ``control``
(a directory: the served URL is written to ``url``, the run's statistics to ``stats.json``;
the board stops when a file ``stop`` appears there).
"""

import json
import os
import select
import time

import cocotb
from openvtep.sim.stream import SimClock
from openvtep.sim.virtual_board import IDLE_CYCLES, POLL_CYCLES, _endpoint


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
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    dut.o__ready.value = 1
    await clock.start()
    endpoint = _endpoint(params["listen"])
    with open(os.path.join(control, "url.tmp"), "w") as f:  # noqa: ASYNC230 (before any I/O)
        f.write(endpoint.url)
    os.rename(os.path.join(control, "url.tmp"), os.path.join(control, "url"))

    i_valid, i_payload = dut.i__valid, dut.i__payload
    i_ready, o_valid, o_payload = (_reader(dut.i__ready), _reader(dut.o__valid),
                                   _reader(dut.o__payload))
    idle_signal = _reader(dut.idle) if hasattr(dut, "idle") else (lambda: 1)
    edge = clock.edge
    pending, pos = b"", 0
    out = bytearray()
    driven = False
    idle_run = since_poll = cycles = 0
    busy = 0.0
    started = time.perf_counter()
    while True:
        if pos < len(pending):
            i_payload.value = pending[pos]
            if not driven:
                i_valid.value = 1
                driven = True
        elif driven:
            i_valid.value = 0
            driven = False
        await edge
        cycles += 1
        if driven and i_ready():
            pos += 1
        ov = o_valid()
        if ov:
            out.append(o_payload())
        idle = not ov and pos >= len(pending) and idle_signal()
        idle_run = idle_run + 1 if idle else 0
        since_poll += 1
        if since_poll < POLL_CYCLES and idle_run < IDLE_CYCLES and \
                (pos < len(pending) or since_poll < 8):
            continue
        since_poll = 0
        if out:
            endpoint.write(bytes(out))
            out.clear()
        if pos >= len(pending):
            if idle_run >= IDLE_CYCLES:
                busy += time.perf_counter() - started
                stopped = False
                while True:  # the simulator waits with us: no simulated time passes
                    if os.path.exists(stop_file):
                        stopped = True
                        break
                    readable, _, _ = select.select(endpoint.fds(), [], [], 0.05)
                    if readable:
                        break
                started = time.perf_counter()
                idle_run = 0
                if stopped:
                    break
            data = endpoint.read()
            if data:
                pending, pos = data, 0
        elif os.path.exists(stop_file):
            break
    busy += time.perf_counter() - started
    endpoint.close()
    with open(os.path.join(control, "stats.json"), "w") as f:  # noqa: ASYNC230 (at the end)
        json.dump({"cycles": cycles, "busy_seconds": busy}, f)
