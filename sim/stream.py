"""cocotb drivers and monitors for packet streams (``openvtep.hdl.stream``), shared by every
gateware testbench.

- :class:`SimClock` starts the clock, pulses reset and tells the current cycle number.
- :class:`PacketSource` drives whole frames (``bytes``) into a stream, with optional random
  idle cycles.
- :class:`PacketSink` collects frames from a stream, with optional random backpressure, and
  checks the stream rules on every cycle.
- :func:`assert_frames_equal` and :func:`hexdiff` report a mismatch with the seed and a hex diff.

Timing model: every driver wakes on the rising edge of ``clk``. What it reads then are the
values just *before* that edge (the DUT's registers update after the edge callbacks), i.e. the
values the DUT sampled; what it writes takes effect for the next edge. So a beat transferred at
an edge when the values read there show ``valid & ready``. Cycle numbers are rising-edge
indices counted from :meth:`SimClock.start`.

Payloads are packed and unpacked as whole ints with the bit offsets of the hardware's own
:class:`amaranth.lib.data.StructLayout` (``packet_layout(width)`` by default, or any layout
with ``data``/``keep``/``last`` fields plus extra per-beat fields).
"""

from random import Random

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import convert, get_sim_time
from cocotb.triggers import Event, First, RisingEdge, Timer

from openvtep.hdl.stream import packet_layout

__all__ = ["PacketSink", "PacketSource", "SimClock", "assert_frames_equal", "hexdiff"]


def _reader(handle):
    """A fast ``() -> int`` for ``handle``'s value; raises ``ValueError`` on X/Z bits."""
    raw = getattr(getattr(handle, "_handle", None), "get_signal_val_binstr", None)
    if raw is not None:  # skip building a LogicArray for every read
        return lambda: int(raw(), 2)
    return lambda: int(handle.value)


def _port(dut, name, member):
    try:
        return getattr(dut, f"{name}__{member}")
    except AttributeError:
        raise AttributeError(f"DUT has no stream port {name!r} (no {name}__{member})") from None


class SimClock:
    """Clock, reset and cycle counter of a DUT converted from Amaranth (``clk``, ``rst``).

    ``await clock.start()`` starts a ``period_ns`` clock and holds ``rst`` high for
    ``reset_cycles`` rising edges; it returns on the first edge after reset. ``clock.cycle`` is
    the number of rising edges since the clock started (an exact count, from simulation time).

    Create the :class:`PacketSource`/:class:`PacketSink` of the DUT's ports *before*
    ``start()``, so that its inputs are driven (not Z) from reset on::

        clock = SimClock(dut)
        source = PacketSource(dut, "i", width, clock=clock)
        sink = PacketSink(dut, "o", width, clock=clock)
        await clock.start()
    """

    def __init__(self, dut, *, period_ns=10, clk="clk", rst="rst"):
        self.dut = dut
        self.clk = getattr(dut, clk)
        self.rst = getattr(dut, rst, None)
        self.period_ns = period_ns
        self.edge = RisingEdge(self.clk)
        self._t0 = None
        self._period_steps = None

    async def start(self, reset_cycles=2):
        if self.rst is not None:
            self.rst.value = 1
        self._t0 = get_sim_time("step")
        self._period_steps = convert(self.period_ns, "ns", to="step")
        # Low first, so the first rising edge is half a period in: cycle 1.
        Clock(self.clk, self.period_ns, unit="ns", impl="gpi").start(start_high=False)
        await self.cycles(reset_cycles)
        if self.rst is not None:
            self.rst.value = 0
        await self.edge

    @property
    def cycle(self):
        """Rising edges since :meth:`start`, counting the one the caller woke on."""
        return (get_sim_time("step") - self._t0 + self._period_steps // 2) // self._period_steps

    async def cycles(self, n):
        """Wait for ``n`` rising edges."""
        for _ in range(n):
            await self.edge


class _Packer:
    """Bit offsets of the data/keep/last fields (and any others) of a packet layout."""

    def __init__(self, width, layout):
        layout = packet_layout(width) if layout is None else layout
        self.width = width
        self.layout = layout
        self.data_off = layout["data"].offset
        self.keep_off = layout["keep"].offset
        self.last_off = layout["last"].offset
        if layout["data"].width != 8 * width or layout["keep"].width != width:
            raise ValueError(f"layout {layout!r} is not a {width}-byte packet layout")
        self.data_mask = (1 << 8 * width) - 1
        self.keep_mask = (1 << width) - 1
        self.full_keep = self.keep_mask
        self.size = layout.size
        self.extra = {name: (field.offset, (1 << field.width) - 1)
                      for name, field in layout if name not in ("data", "keep", "last")}

    def pack_frame(self, frame, fields):
        """The payload ints of ``frame``'s beats; ``fields`` set extra fields on every beat."""
        width = self.width
        if not frame:
            raise ValueError("cannot send an empty frame")
        common = 0
        for name, value in (fields or {}).items():
            offset, mask = self.extra[name]
            if value & ~mask:
                raise ValueError(f"{name}={value:#x} does not fit its field")
            common |= value << offset
        beats = []
        full = (self.full_keep << self.keep_off) | common
        for start in range(0, len(frame), width):
            chunk = frame[start:start + width]
            beat = int.from_bytes(chunk, "little") << self.data_off
            if start + width >= len(frame):
                beats.append(beat | ((1 << len(chunk)) - 1) << self.keep_off
                             | 1 << self.last_off | common)
            else:
                beats.append(beat | full)
        return beats

    def unpack_extra(self, payload):
        return {name: (payload >> offset) & mask for name, (offset, mask) in self.extra.items()}


class PacketSource:
    """Drives frames into the stream port ``name`` of ``dut`` (``<name>__valid``, ``__ready``,
    ``__payload``), as the producer side.

    ``send(frame)`` queues a frame (``bytes``, 1 byte or more) and returns at once; the source
    puts one beat per cycle on the port, holding ``valid`` and the payload until ``ready``.
    With ``idle`` > 0, each cycle where it could offer a new beat it stays idle (``valid`` low)
    with that probability, inside frames as well as between them (drawn from ``rng``).

    ``frame_cycles`` lists, per frame sent, the cycles of its first and last beat's transfer;
    ``await source.wait_idle()`` returns once every queued frame has been transferred.
    """

    def __init__(self, dut, name, width, *, clock, idle=0.0, rng=None, layout=None):
        self.clock = clock
        self.idle = idle
        self.rng = rng if rng is not None else Random(0)
        self._pack = _Packer(width, layout)
        self._valid = _port(dut, name, "valid")
        self._ready = _reader(_port(dut, name, "ready"))
        self._payload = _port(dut, name, "payload")
        if len(self._payload) != self._pack.size:
            raise ValueError(f"{name}__payload is {len(self._payload)} bits, "
                             f"layout is {self._pack.size}")
        self._beats = []      # payload ints still to offer, in order (consumed from _next)
        self._next = 0
        self._sent = 0        # frames fully transferred
        self._queued = 0      # frames queued
        self._first_cycle = None
        self.frame_cycles = []
        self._idle_event = Event()
        self._valid.value = 0
        cocotb.start_soon(self._run())

    def send(self, frame, **fields):
        """Queue ``frame``; keyword arguments set extra payload fields on every beat."""
        self._beats.extend(self._pack.pack_frame(bytes(frame), fields))
        self._queued += 1
        self._idle_event.clear()

    async def wait_idle(self):
        while self._sent < self._queued:
            await self._idle_event.wait()

    async def _run(self):
        edge, ready, valid, payload = self.clock.edge, self._ready, self._valid, self._payload
        last_bit = 1 << self._pack.last_off
        rng, idle = self.rng, self.idle
        current = None  # the beat on the port, not yet transferred
        driven = False  # valid as last written: writes cost, so only write changes
        while True:
            await edge
            if current is not None and ready():
                cycle = self.clock.cycle
                if self._first_cycle is None:
                    self._first_cycle = cycle
                if current & last_bit:
                    self.frame_cycles.append((self._first_cycle, cycle))
                    self._first_cycle = None
                    self._sent += 1
                    if self._sent == self._queued:
                        self._idle_event.set()
                current = None
            if current is None:
                if self._next < len(self._beats) and not (idle and rng.random() < idle):
                    current = self._beats[self._next]
                    self._next += 1
                    if self._next > 4096:  # keep the queue short without popping every beat
                        del self._beats[:self._next]
                        self._next = 0
                    payload.value = current
                    if not driven:
                        valid.value = driven = 1
                elif driven:
                    valid.value = driven = 0


class PacketSink:
    """Collects frames from the stream port ``name`` of ``dut``, as the consumer side, and
    checks the stream rules on every cycle.

    ``ready`` is driven high, or with ``backpressure`` > 0, low with that probability each
    cycle (drawn from ``rng``). Received frames accumulate in ``frames`` (``bytes``);
    ``frame_cycles`` holds the cycles of each frame's first and last beat transfer, and
    ``frame_fields`` the extra payload fields (other than data/keep/last) of each frame's first
    beat, if the layout has any.

    Checked on every cycle (raising ``AssertionError``, which fails the cocotb test): ``valid``
    and the payload are not X/Z; once ``valid`` is high it stays high until the transfer, with
    the payload unchanged; ``keep`` is non-zero and contiguous from lane 0, and all ones except
    on a ``last`` beat.
    """

    def __init__(self, dut, name, width, *, clock, backpressure=0.0, rng=None, layout=None):
        self.clock = clock
        self.name = name
        self.backpressure = backpressure
        self.rng = rng if rng is not None else Random(1)
        self._pack = _Packer(width, layout)
        self._valid = _reader(_port(dut, name, "valid"))
        self._ready = _port(dut, name, "ready")
        self._payload_handle = _port(dut, name, "payload")
        self._payload = _reader(self._payload_handle)
        if len(self._payload_handle) != self._pack.size:
            raise ValueError(f"{name}__payload is {len(self._payload_handle)} bits, "
                             f"layout is {self._pack.size}")
        self.frames = []
        self.frame_cycles = []
        self.frame_fields = []
        self.beats = 0
        self._target = None
        self._event = Event()
        self._ready.value = int(backpressure <= 0)
        cocotb.start_soon(self._run())

    async def wait_frames(self, count, *, timeout_cycles=None):
        """Wait until ``count`` frames have been received in all; with ``timeout_cycles``,
        raise ``AssertionError`` if that takes more cycles than that."""
        start = self.clock.cycle
        while len(self.frames) < count:
            self._target = count
            self._event.clear()
            if timeout_cycles is None:
                await self._event.wait()
            else:
                await First(self._event.wait(),
                            Timer(timeout_cycles * self.clock.period_ns, "ns"))
                if len(self.frames) < count and self.clock.cycle - start >= timeout_cycles:
                    raise AssertionError(
                        f"{self.name}: {len(self.frames)} of {count} frames after "
                        f"{timeout_cycles} cycles")

    def _fail(self, message):
        raise AssertionError(f"{self.name} @ cycle {self.clock.cycle}: {message}")

    async def _run(self):
        edge, rng, backpressure = self.clock.edge, self.rng, self.backpressure
        pack = self._pack
        width = pack.width
        data_off, data_mask = pack.data_off, pack.data_mask
        keep_off, keep_mask, full_keep = pack.keep_off, pack.keep_mask, pack.full_keep
        last_off = pack.last_off
        ready_handle, read_valid, read_payload = self._ready, self._valid, self._payload
        ready = backpressure <= 0
        stalled = None  # payload of a beat offered but not taken at the previous edge
        chunks = []     # data of the frame being received
        first_cycle = None
        while True:
            await edge
            try:
                valid = read_valid()
            except ValueError:
                self._fail("valid is X/Z")
            if valid:
                try:
                    payload = read_payload()
                except ValueError:
                    self._fail(f"payload has X/Z bits: {self._payload_handle.value}")
                if stalled is not None and payload != stalled:
                    self._fail(f"payload changed while stalled: {stalled:#x} -> {payload:#x}")
                keep = (payload >> keep_off) & keep_mask
                last = (payload >> last_off) & 1
                if keep & (keep + 1) or not keep or (not last and keep != full_keep):
                    self._fail(f"bad keep {keep:0{width}b} on a {'last' if last else 'non-last'}"
                               f" beat (beat {self.beats}, frame {len(self.frames)})")
                if ready:
                    if first_cycle is None:
                        first_cycle = self.clock.cycle
                        if pack.extra:
                            self.frame_fields.append(pack.unpack_extra(payload))
                    data = (payload >> data_off) & data_mask
                    chunks.append(data.to_bytes(width, "little")[:keep.bit_length()])
                    self.beats += 1
                    stalled = None
                    if last:
                        self.frames.append(b"".join(chunks))
                        self.frame_cycles.append((first_cycle, self.clock.cycle))
                        chunks = []
                        first_cycle = None
                        if self._target is not None and len(self.frames) >= self._target:
                            self._event.set()
                else:
                    stalled = payload
            elif stalled is not None:
                self._fail(f"valid dropped before the transfer (payload {stalled:#x})")
            if backpressure > 0:
                new_ready = rng.random() >= backpressure
                if new_ready != ready:
                    ready = new_ready
                    ready_handle.value = int(ready)


def hexdiff(expected, got, *, columns=16, context=2):
    """Side-by-side hex dump of two byte strings, rows that differ marked with ``!``; only rows
    within ``context`` of a difference are shown (all rows if there are few)."""
    rows = max(len(expected), len(got), 1)
    rows = (rows + columns - 1) // columns

    def cells(buf, row):
        chunk = buf[row * columns:(row + 1) * columns]
        return " ".join(f"{b:02x}" for b in chunk).ljust(3 * columns - 1)

    differ = [expected[r * columns:(r + 1) * columns] != got[r * columns:(r + 1) * columns]
              for r in range(rows)]
    show = [rows <= 8 or any(differ[max(0, r - context):r + context + 1]) for r in range(rows)]
    lines = [f"expected {len(expected)} bytes, got {len(got)} bytes",
             f"{'offset':<6}  {'expected':<{3 * columns - 1}}  got"]
    skipped = False
    for r in range(rows):
        if not show[r]:
            if not skipped:
                lines.append("...")
            skipped = True
            continue
        skipped = False
        mark = "!" if differ[r] else " "
        lines.append(f"{r * columns:04x}{mark}   {cells(expected, r)}  {cells(got, r)}".rstrip())
    return "\n".join(lines)


def assert_frames_equal(expected, got, *, seed=None, what="frames"):
    """Assert two lists of frames are equal; on failure, the message names the seed, the first
    differing frame and shows its :func:`hexdiff`."""
    expected, got = list(expected), list(got)
    if expected == got:
        return
    for index, (want, have) in enumerate(zip(expected, got)):
        if want != have:
            break
    else:
        index = min(len(expected), len(got))
    want = expected[index] if index < len(expected) else b""
    have = got[index] if index < len(got) else b""
    raise AssertionError(
        f"{what} differ (seed {seed}): {len(expected)} expected, {len(got)} received; "
        f"first difference at frame {index}\n{hexdiff(want, have)}")
