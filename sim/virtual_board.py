"""The virtual board: a simulated gateware top behind a serial URL, so the host driver
(:class:`openvtep.driver.Device`) cannot tell it from a board on a USB serial port.

The top's byte streams (``i``: bytes from the host, ``o``: bytes to the host, those of its
:class:`~openvtep.hdl.bridge.ControlBridge`) are fed straight from a TCP socket
(``socket://127.0.0.1:PORT``, what pyserial's ``serial_for_url`` opens) or a pseudo-terminal
(its path, e.g. ``/dev/pts/7``), one byte per cycle, skipping the UART's bit timing.

Two simulators: cocotb on Icarus Verilog (:class:`IcarusBoard`, the default: a child process
serving the socket from a coroutine, :mod:`openvtep.sim.virtual_board_cocotb`) and Amaranth's
own (:class:`VirtualBoard`, a thread of the calling process, no build step). Measured on the
bridge test top while it works (a 1,000-word batch and its read-back, on a loaded 2-core
machine), Icarus runs about 2.5 k cycles/s and Amaranth about 1.6 k; Icarus starts in about
10 s (elaboration to find the cached build, then the simulator), Amaranth in about 1 s. Icarus
is the default, for long sessions; ``simulator="amaranth"`` suits short ones. The design's own
simulation dominates the cost: per-cycle Python is already batched away on Icarus
(:class:`ByteShell`). When the host is silent and the top says it is ``idle``, either one
sleeps instead of spinning: an idle virtual board costs no CPU, and simulated time only passes
while there is work.

API::

    from openvtep.sim.virtual_board import serve
    board = serve()                      # BridgeTestTop on socket://127.0.0.1:<free port>
    dev = Device(board.url)
    ...
    board.stop()

    serve(make_top, "socket://127.0.0.1:5555", block=True)   # the `openvtep serve` command
    serve(make_top, "pty")                                   # board.url is the pty's path

One host connection at a time; when it closes, the board keeps its state (like a board that
stays powered) and waits for the next one.
"""

import os
import select
import socket
import threading
import time
import tty
from urllib.parse import urlsplit

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

__all__ = ["ByteShell", "IcarusBoard", "VirtualBoard", "serve"]

POLL_CYCLES = 64       # cycles between socket polls while the simulation is busy
IDLE_CYCLES = 16       # idle cycles before the board sleeps waiting for the host


class _SocketEndpoint:
    def __init__(self, host, port):
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        host, port = self._listener.getsockname()[:2]
        self.url = f"socket://{host}:{port}"
        self._conn = None

    def fds(self):
        return [self._conn if self._conn is not None else self._listener]

    def read(self):
        if self._conn is None:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return b""
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
            return b""
        try:
            data = self._conn.recv(65536)
        except BlockingIOError:
            return b""
        except OSError:
            data = b""
        if not data:
            self._drop()
            return None  # disconnected
        return data

    def write(self, data):
        if self._conn is None:
            return
        try:
            self._conn.setblocking(True)
            self._conn.sendall(data)
            self._conn.setblocking(False)
        except OSError:
            self._drop()

    def _drop(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self):
        self._drop()
        self._listener.close()


class _PtyEndpoint:
    def __init__(self):
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self.url = os.ttyname(slave)
        self._slave = slave  # kept open so the pty survives between host connections
        os.set_blocking(self._master, False)

    def fds(self):
        return [self._master]

    def read(self):
        try:
            return os.read(self._master, 65536)
        except (BlockingIOError, OSError):
            return b""

    def write(self, data):
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                select.select([], [self._master], [], 0.1)

    def close(self):
        os.close(self._master)
        os.close(self._slave)


def _endpoint(listen):
    if listen == "pty":
        return _PtyEndpoint()
    parts = urlsplit(listen)
    if parts.scheme != "socket" or not parts.hostname:
        raise ValueError(f"virtual board: cannot listen on {listen!r}: use "
                         f"'socket://HOST:PORT' (PORT 0: any free port) or 'pty'")
    return _SocketEndpoint(parts.hostname, parts.port or 0)


class VirtualBoard:
    """A simulated top served on :attr:`url`. Made by :func:`serve`; :meth:`stop` ends it.

    Attributes: ``url`` (for :class:`openvtep.driver.Device`), ``cycles`` (simulated so far:
    published at every socket poll, before any byte goes to the host, so a host that has a
    reply sees at least the cycles that made it), ``busy_seconds`` (wall time spent
    simulating, sleeps excluded), ``error`` (an exception that ended the simulation, if any).
    """

    def __init__(self, top, listen):
        self.top = top
        self._endpoint = _endpoint(listen)
        self.url = self._endpoint.url
        self.cycles = 0
        self.busy_seconds = 0.0
        self.error = None
        self._stop = threading.Event()
        self._thread = None
        # Elaborate here, so a broken top fails in the caller, not in the thread.
        self._sim = Simulator(top)
        self._sim.add_clock(1e-8)
        self._sim.add_testbench(self._bench)

    @property
    def cycles_per_second(self):
        return self.cycles / self.busy_seconds if self.busy_seconds else 0.0

    def start(self):
        self._thread = threading.Thread(target=self.run, name=f"virtual board {self.url}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"virtual board {self.url} failed") from self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def run(self):
        """Simulate until :meth:`stop` (in the calling thread)."""
        try:
            self._sim.run()
        except BaseException as exc:  # noqa: BLE001 (reported by stop())
            self.error = exc
        finally:
            self._endpoint.close()

    async def _bench(self, ctx):
        top, endpoint, stop = self.top, self._endpoint, self._stop
        i_valid, i_payload, i_ready = top.i.valid, top.i.payload, top.i.ready
        o_valid, o_payload = top.o.valid, top.o.payload
        idle_signal = getattr(top, "idle", None)
        sample = (i_ready, o_valid, o_payload) + ((idle_signal,) if idle_signal is not None
                                                  else ())
        ctx.set(top.o.ready, 1)
        pending, pos = b"", 0
        out = bytearray()
        driven = False  # i.valid as last set
        idle_run = 0
        since_poll = 0
        cycles = 0
        started = time.perf_counter()

        def publish():
            # Before the host can see the effect of these cycles (a reply), not only when the
            # board goes to sleep: a reader of ``cycles`` must not race the simulation.
            nonlocal cycles, started
            now = time.perf_counter()
            self.cycles += cycles
            self.busy_seconds += now - started
            cycles, started = 0, now

        while not stop.is_set():
            if pos < len(pending):
                ctx.set(i_payload, pending[pos])
                if not driven:
                    ctx.set(i_valid, 1)
                    driven = True
            elif driven:
                ctx.set(i_valid, 0)
                driven = False
            values = await ctx.tick().sample(*sample)
            cycles += 1
            if driven and values[2]:
                pos += 1
            if values[3]:
                out.append(values[4])
            idle = (values[5] if idle_signal is not None else True) and not values[3]
            idle_run = idle_run + 1 if idle and pos >= len(pending) else 0
            since_poll += 1
            if since_poll < POLL_CYCLES and idle_run < IDLE_CYCLES and \
                    (pos < len(pending) or since_poll < 8):
                continue
            since_poll = 0
            publish()
            if out:
                endpoint.write(bytes(out))
                out.clear()
            if pos >= len(pending):
                if idle_run >= IDLE_CYCLES:
                    # Nothing to do: sleep until the host sends something (or stop()).
                    while not stop.is_set():
                        readable, _, _ = select.select(endpoint.fds(), [], [], 0.05)
                        if readable:
                            break
                    started = time.perf_counter()
                    idle_run = 0
                data = endpoint.read()
                if data:
                    pending, pos = data, 0
        publish()


_PARAMS_ENV = "OPENVTEP_VBOARD"  # JSON parameters for virtual_board_cocotb
SHELL_BYTES = 32  # bytes a chunk through ByteShell


class ByteShell(wiring.Component):
    """Wraps a top for :class:`IcarusBoard` so that Python exchanges bytes with it a chunk of
    ``chunk`` bytes at a time instead of every cycle (cocotb's per-cycle callbacks cost more
    than the simulation itself).

    Input: while ``in_pending`` is 0, the testbench puts up to ``chunk`` bytes in ``in_data``
    (byte 0 lowest), their number in ``in_count`` and raises ``in_load`` for one cycle; the
    shell feeds them to the top's ``i`` in order. Output: bytes from the top's ``o`` collect in
    a register (``o`` stalls when it is full); a cycle with ``out_take`` moves them to
    ``out_data``/``out_count``, where the testbench reads them. ``idle``: the top is idle and
    the shell holds no bytes.
    """

    def __init__(self, top, chunk=SHELL_BYTES):
        self.top = top
        self.chunk = chunk
        super().__init__({
            "in_data": In(8 * chunk), "in_count": In(range(chunk + 1)), "in_load": In(1),
            "in_pending": Out(range(chunk + 1)),
            "out_take": In(1), "out_data": Out(8 * chunk), "out_count": Out(range(chunk + 1)),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.top = top = self.top
        k = self.chunk
        inbuf = Signal(8 * k)
        m.d.comb += [top.i.valid.eq(self.in_pending != 0), top.i.payload.eq(inbuf[:8])]
        with m.If(top.i.valid & top.i.ready):
            m.d.sync += [inbuf.eq(inbuf >> 8), self.in_pending.eq(self.in_pending - 1)]
        with m.Elif(self.in_load & (self.in_pending == 0)):
            m.d.sync += [inbuf.eq(self.in_data), self.in_pending.eq(self.in_count)]

        outbuf = Signal(8 * k)
        count = Signal(range(k + 1))
        m.d.comb += top.o.ready.eq(count != k)
        accepted = top.o.valid & top.o.ready
        with m.If(self.out_take):
            m.d.sync += [self.out_data.eq(outbuf), self.out_count.eq(count),
                         outbuf.eq(top.o.payload), count.eq(accepted)]
        with m.Elif(accepted):
            m.d.sync += [outbuf.word_select(count, 8).eq(top.o.payload), count.eq(count + 1)]
        top_idle = getattr(top, "idle", 1)
        m.d.comb += self.idle.eq(top_idle & ~top.o.valid & (count == 0) &
                                 (self.in_pending == 0))
        return m


def _icarus_build(top, name):
    """Build ``top`` for Icarus once per distinct design (the cache of
    :mod:`openvtep.sim.cocotb_runner`); return ``(runner, build_dir)``."""
    from cocotb_tools.runner import get_runner

    from .cocotb_runner import _build
    return get_runner("icarus"), _build(top, name, waves=False)


class IcarusBoard:
    """Like :class:`VirtualBoard`, but the top runs on Icarus Verilog under cocotb (module
    :mod:`openvtep.sim.virtual_board_cocotb`), in a simulator process started through
    :func:`openvtep.sim.cocotb_runner.run_cocotb` (the Verilog build is cached). ``cycles``
    and ``busy_seconds`` are known after :meth:`stop`."""

    def __init__(self, top, listen, *, name=None, start_timeout=300):
        import shutil
        import tempfile
        self.top = top
        self.cycles = 0
        self.busy_seconds = 0.0
        self.error = None
        self._name = name or "vboard_" + type(top).__name__.lower()
        # The build (cached; minutes the first time, longer on a busy machine) is done here,
        # so ``start_timeout`` counts only the simulator's start.
        self._runner, self._build_dir = _icarus_build(ByteShell(top), self._name)
        self._control = tempfile.mkdtemp(prefix="openvtep-vboard-")
        self._listen = listen
        self._thread = threading.Thread(target=self._run, name="virtual board (icarus)",
                                        daemon=True)
        self._thread.start()
        url_file = os.path.join(self._control, "url")
        deadline = time.monotonic() + start_timeout
        while not os.path.exists(url_file):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._thread.join(1)
                shutil.rmtree(self._control, ignore_errors=True)
                raise RuntimeError(f"virtual board on Icarus did not start on {listen}") \
                    from self.error
            time.sleep(0.02)
        with open(url_file) as f:
            self.url = f.read()

    @property
    def cycles_per_second(self):
        return self.cycles / self.busy_seconds if self.busy_seconds else 0.0

    def _run(self):
        import json
        try:
            self._runner.test(test_module="openvtep.sim.virtual_board_cocotb",
                              hdl_toplevel=self._name, hdl_toplevel_lang="verilog",
                              build_dir=self._build_dir, test_dir=self._control,
                              results_xml=os.path.join(self._control, "results.xml"),
                              extra_env={_PARAMS_ENV: json.dumps({"listen": self._listen,
                                                                  "control": self._control}),
                                         "COCOTB_ANSI_OUTPUT": "0"},
                              log_file=os.path.join(self._control, "sim.log"))
        except BaseException as exc:  # noqa: BLE001 (reported by stop() or __init__)
            self.error = exc
        if self.error or not os.path.exists(os.path.join(self._control, "stats.json")):
            log = os.path.join(self._control, "sim.log")
            try:
                with open(log) as f:
                    tail = f.read()[-4000:]
            except OSError:
                tail = "(no log)"
            self.error = RuntimeError(f"cocotb virtual board failed; end of its log:\n{tail}")

    def start(self):
        return self

    def stop(self, timeout=30):
        """Stop the simulation (idempotent). The simulator process is asked to stop through a
        file and, if it has not ended after ``timeout`` seconds, killed."""
        import json
        import shutil
        import signal
        if not os.path.isdir(self._control):
            return
        open(os.path.join(self._control, "stop"), "w").close()
        self._thread.join(timeout)
        try:
            with open(os.path.join(self._control, "pid")) as f:
                pid = int(f.read())
            os.kill(pid, 0)
        except (OSError, ValueError):
            pid = None
        if pid is not None:  # still running: it did not see the stop file
            os.kill(pid, signal.SIGKILL)
            self._thread.join(timeout)
        try:
            with open(os.path.join(self._control, "stats.json")) as f:
                stats = json.load(f)
            self.cycles, self.busy_seconds = stats["cycles"], stats["busy_seconds"]
        except OSError:
            pass
        shutil.rmtree(self._control, ignore_errors=True)
        if self.error is not None:
            raise RuntimeError(f"virtual board {self.url} failed") from self.error

    def run(self):
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


SIMULATORS = {"icarus": IcarusBoard, "amaranth": VirtualBoard}


def serve(top_factory=None, listen="socket://127.0.0.1:0", *, block=False,
          simulator="icarus"):
    """Serve a simulated top on ``listen`` and return the :class:`VirtualBoard` (its ``url``
    says where it listens; port 0 picks a free port).

    ``top_factory`` is a callable returning a fresh top: a component with the byte streams
    ``i`` (``In(stream.Signature(8))``), ``o`` (``Out(stream.Signature(8))``) and, optionally,
    ``idle`` (``Out(1)``: nothing in progress, the board may sleep). Default:
    :class:`openvtep.sim.bridge_top.BridgeTestTop`. ``listen``: ``socket://HOST:PORT`` or
    ``pty``.

    ``simulator``: ``"icarus"`` (default: cocotb on Icarus Verilog, in a child process; the
    first start of a design builds it, later starts reuse the build) or ``"amaranth"``
    (Amaranth's simulator in a thread: no build, several times slower per cycle).

    With ``block=False`` (default) the simulation runs in the background and ``serve`` returns
    once the board listens; with ``block=True`` it runs until interrupted (Ctrl-C) and returns
    the stopped board.
    """
    if top_factory is None:
        from .bridge_top import BridgeTestTop
        top_factory = BridgeTestTop
    if simulator not in SIMULATORS:
        raise ValueError(f"virtual board: unknown simulator {simulator!r}: use one of "
                         f"{', '.join(SIMULATORS)}")
    board = SIMULATORS[simulator](top_factory(), listen)
    if not block:
        return board.start()
    try:
        board.run()
    except KeyboardInterrupt:
        pass
    return board
