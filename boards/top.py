"""The board top: PLL clock, the design (:mod:`openvtep.boards.designs`) and its board I/O.

The ``pipeline`` design (``hdl.top.VtepTop``) is driven by the host over the board UART: rx ->
a 64-byte FIFO -> ``VtepTop.i``, ``VtepTop.o`` -> tx; the LEDs show busy, a sticky receive
error, and rx/tx activity.

The smaller designs (``datapath``, ``fifo``) have no control bridge: their streams are fed and
drained by real logic the tools cannot optimize away:

- :class:`PacketSource` makes well-formed frames (random lengths of about 60..1100 bytes, random
  payload, random idle beats, and every other per-frame field, such as the datapath's port and
  edit command, from a register refreshed by an LFSR at each frame start), and folds an input
  pin (a button or the UART receive line) into its LFSR;
- :class:`PacketSink` takes beats under random backpressure and XOR-folds every beat taken,
  and every other output of the design (drop counters, ...), into a status byte;
- the status byte drives the LEDs and, on boards with a free UART, answers each byte received
  (``hdl.uart`` at 115200 baud) with ``byte ^ status``.
"""

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, Value
from amaranth.lib import data, io, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from .designs import resolve_design
from .pll import PLLClock, ecp5_pll, ice40_pll

__all__ = ["BoardTop", "Lfsr", "PacketSink", "PacketSource", "fold"]

STATUS_BITS = 8
UART_BAUD = 115200

# Fibonacci LFSR taps (XAPP052): length -> taps.
_TAPS = {32: (32, 22, 2, 1), 64: (64, 63, 61, 60), 128: (128, 126, 101, 99)}


def fold(value, bits):
    """XOR ``value`` down to ``bits`` bits, chunk by chunk: every input bit reaches the output."""
    value = Value.cast(value)
    result = Const(0, bits)
    for start in range(0, len(value), bits):
        chunk = value[start:start + bits]
        result = result ^ Cat(chunk, Const(0, bits - len(chunk)))
    return result


class Lfsr(wiring.Component):
    """A free-running Fibonacci LFSR of ``length`` bits (32, 64 or 128) with ``entropy`` XORed
    into its feedback (a pin, so no bit of it is a constant to the tools)."""

    def __init__(self, length):
        self.length = length
        super().__init__({"entropy": In(1), "state": Out(length)})

    def elaborate(self, platform):
        m = Module()
        state = Signal(self.length, init=0x1D872B41)
        feedback = self.entropy
        for tap in _TAPS[self.length]:
            feedback = feedback ^ state[tap - 1]
        m.d.sync += state.eq(Cat(feedback, state[:-1]))
        m.d.comb += self.state.eq(state)
        return m


class PacketSource(wiring.Component):
    """Random well-formed frames on ``o`` (any packet layout with ``data``/``keep``/``last``;
    its other fields are per-frame, constant over the frame). Obeys the stream rules: ``valid``
    and the payload are registers and hold while stalled."""

    def __init__(self, layout, width):
        self.layout = data.Layout.cast(layout)
        self.width = width
        super().__init__({"o": Out(stream.Signature(self.layout)), "entropy": In(1)})

    def elaborate(self, platform):
        m = Module()
        width = self.width
        m.submodules.lfsr = lfsr = Lfsr(64 if width <= 8 else 128)
        m.submodules.entropy_sync = FFSynchronizer(self.entropy, lfsr.entropy)
        rnd = lfsr.state

        extra_fields = [(name, field) for name, field in self.layout
                        if name not in ("data", "keep", "last")]
        extra_bits = sum(field.width for _, field in extra_fields)
        extra = Signal(max(extra_bits, 1))

        # Frames of about 60 bytes and more, the last beat holding 1..width bytes.
        # Counting beats, not bytes, keeps the harness off the design's critical paths: a beat
        # is the last when ``rest == 1``, its ``keep`` was chosen when the frame began.
        shift = (width - 1).bit_length()
        extra_beats = max(1, 10 - shift)           # up to ~1 kB
        min_beats = -(-60 // width)
        rest = Signal(extra_beats + 2)             # beats of this frame still to make
        in_frame = Signal()
        tail_keep = Signal(width)
        tail_bytes = 1 + rnd[48:48 + shift] if shift else Const(1, 1)
        last = Signal()
        m.d.comb += last.eq(in_frame & (rest == 1))

        o = self.o
        with m.If(~o.valid | o.ready):
            # About one idle cycle in eight (bits of the LFSR the beat does not use directly).
            m.d.sync += o.valid.eq(rnd[40:43] != 0)
            with m.If(rnd[40:43] != 0):
                m.d.sync += [
                    o.p.data.eq(rnd[:8 * width]),
                    o.p.keep.eq(Mux(last, tail_keep, (1 << width) - 1)),
                    o.p.last.eq(last),
                    rest.eq(rest - 1),
                    in_frame.eq(~last),
                ]
                with m.If(~in_frame):
                    # A new frame: its length, and 32 fresh bits of its per-frame fields.
                    m.d.sync += [
                        rest.eq(min_beats - 1 + rnd[52:52 + extra_beats]),
                        tail_keep.eq(Cat(*(tail_bytes > k for k in range(width)))),
                        extra.eq(Cat(rnd[8:40], extra)[:len(extra)]),
                    ]
        offset = 0
        for name, field in extra_fields:
            m.d.comb += o.p[name].eq(extra[offset:offset + field.width])
            offset += field.width
        return m


class PacketSink(wiring.Component):
    """Takes beats from ``i`` under random backpressure (``rnd`` bits) and XOR-folds every
    beat taken, and ``other`` (every other output of the design), into ``status``."""

    def __init__(self, layout, other_bits):
        self.layout = data.Layout.cast(layout)
        super().__init__({
            "i": In(stream.Signature(self.layout)),
            "rnd": In(3),
            "other": In(max(other_bits, 1)),
            "status": Out(STATUS_BITS),
        })

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(self.rnd != 0)
        acc = Signal(STATUS_BITS)
        taken = Signal(STATUS_BITS)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += taken.eq(fold(self.i.payload.as_value(), STATUS_BITS))
        with m.Else():
            m.d.sync += taken.eq(0)
        m.d.sync += acc.eq(acc ^ taken ^ fold(self.other, STATUS_BITS))
        m.d.comb += self.status.eq(acc)
        return m


def _request_bit(platform, spec, direction, requested):
    """An io.Buffer on the pin named by ``spec`` = (resource, number[, subsignal]);
    ``requested`` remembers resources already taken (one request per resource)."""
    key = (spec[0], spec[1])
    if key not in requested:
        requested[key] = platform.request(spec[0], spec[1], dir="-")
    resource = requested[key]
    port = getattr(resource, spec[2]) if len(spec) > 2 else resource
    return io.Buffer(direction, port)


class BoardTop(Elaboratable):
    """Everything on a board: the PLL clock, the design, and its I/O.

    Parameters
    ----------
    board : openvtep.boards.boards.Board
        Which board (pins, family); the platform is the one ``elaborate`` is given.
    width : int
        Datapath bytes per beat.
    geometry : openvtep.tables.Geometry or None
        Table sizes for a design with a classifier.
    design : str
        ``auto`` or a name in :data:`openvtep.boards.designs.DESIGNS`.
    clock_mhz : float or None
        Requested ``sync`` frequency (default: the board's target for ``width``); the PLL makes
        the nearest frequency at or above it (``self.pll.f_out``).
    config : openvtep.config.VtepConfig or None
        Device configuration (default: the bundled example's).
    """

    def __init__(self, board, width, *, geometry=None, design="auto", clock_mhz=None,
                 config=None):
        from openvtep.config import VtepConfig
        self.board = board
        self.width = width
        self.geometry = geometry
        self.config = config or VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101,
                                           gateway_mac=0x0200000001FE)
        self.requested_mhz = clock_mhz or board.target_mhz(width)
        f_in = board.platform().default_clk_frequency
        pll = ice40_pll if board.family == "ice40" else ecp5_pll
        self.pll = pll(f_in, self.requested_mhz * 1e6)
        self.design, self.design_notes = resolve_design(design, width, geometry, self.config,
                                                        board=board, clk_freq=self.pll.f_out)

    def elaborate(self, platform):
        m = Module()
        m.submodules.clock = PLLClock(self.pll, pad=self.board.pll_pad)
        dut = self.design.component
        m.submodules.dut = dut
        if self.design.harness == "uart":
            self._elaborate_uart(m, platform, dut)
            return m

        members = dut.signature.members
        i_layout = members["i"].signature.members["payload"].shape
        o_layout = members["o"].signature.members["payload"].shape
        other = [getattr(dut, name) for name, member in members.items()
                 if name not in ("i", "o") and member.is_port and member.flow == Out]

        m.submodules.source = source = PacketSource(i_layout, self.width)
        m.submodules.sink = sink = PacketSink(o_layout, sum(len(Value.cast(v)) for v in other))
        wiring.connect(m, source.o, dut.i)
        wiring.connect(m, dut.o, sink.i)
        m.d.comb += sink.rnd.eq(source.o.p.data[3:6] ^ source.o.p.data[11:14])
        if other:
            m.d.comb += sink.other.eq(Cat(*other))

        board = self.board
        status = sink.status
        requested = {}
        use_uart = board.uart and _has_uart()
        if use_uart or board.entropy[0] == "uart":
            uart_pins = platform.request("uart", 0, dir="-")
            m.submodules.uart_rx = rx_buf = io.Buffer("i", uart_pins.rx)
        if board.entropy[0] == "uart":
            m.d.comb += source.entropy.eq(rx_buf.i)
        else:
            m.submodules.entropy = entropy = _request_bit(platform, board.entropy, "i", requested)
            m.d.comb += source.entropy.eq(entropy.i)

        if use_uart:
            from openvtep.hdl.uart import UART
            m.submodules.uart_tx = tx_buf = io.Buffer("o", uart_pins.tx)
            m.submodules.uart = uart = UART(clk_freq=self.pll.f_out, baud=UART_BAUD)
            # Echo: each byte received comes back XORed with the status byte.
            m.d.comb += [
                uart.rx.eq(rx_buf.i),
                tx_buf.o.eq(uart.tx),
                uart.i.valid.eq(uart.o.valid),
                uart.i.payload.eq(uart.o.payload ^ status),
                uart.o.ready.eq(uart.i.ready),
            ]

        leds = fold(status, len(board.leds))
        for k, spec in enumerate(board.leds):
            buf = _request_bit(platform, spec, "o", requested)
            m.submodules[f"led_{k}"] = buf
            m.d.sync += buf.o.eq(leds[k])
        return m


def _uart_pins(platform, board):
    """The board's ``uart`` resource; on a board without one, first added on
    ``board.uart_pins`` (rx, tx, connector)."""
    if board.uart_pins:
        from amaranth.build import Attrs, ResourceError
        from amaranth_boards.resources import UARTResource
        rx, tx, conn = board.uart_pins
        try:
            platform.lookup("uart", 0)
        except ResourceError:  # not defined
            platform.add_resources([UARTResource(0, rx=rx, tx=tx, conn=conn,
                                                 attrs=Attrs(IO_TYPE="LVCMOS33"))])
    return platform.request("uart", 0, dir="-")


def _elaborate_uart(self, m, platform, dut):
    """The pipeline design: UART rx -> byte FIFO -> ``dut.i``; ``dut.o`` -> UART tx. The LEDs
    show activity: busy (not ``idle``), then a sticky receive error (overrun of the FIFO,
    framing), then received/sent byte toggles; boards whose LED shares the UART pins get none."""
    from amaranth.lib.fifo import SyncFIFO

    from openvtep.hdl.uart import UART

    from .designs import RX_FIFO_DEPTH
    board = self.board
    pins = _uart_pins(platform, board)
    m.submodules.uart_rx = rx_buf = io.Buffer("i", pins.rx)
    m.submodules.uart_tx = tx_buf = io.Buffer("o", pins.tx)
    m.submodules.uart = uart = UART(divisor=self.design.uart_divisor)
    m.submodules.rx_fifo = rx_fifo = SyncFIFO(width=8, depth=RX_FIFO_DEPTH)
    m.d.comb += [
        uart.rx.eq(rx_buf.i),
        tx_buf.o.eq(uart.tx),
        rx_fifo.w_data.eq(uart.o.payload),
        rx_fifo.w_en.eq(uart.o.valid),
        uart.o.ready.eq(rx_fifo.w_rdy),
        dut.i.payload.eq(rx_fifo.r_data),
        dut.i.valid.eq(rx_fifo.r_rdy),
        rx_fifo.r_en.eq(dut.i.ready),
    ]
    wiring.connect(m, dut.o, uart.i)

    if board.uart_via.endswith("(no LED then)"):
        return
    error = Signal()
    rx_toggle = Signal()
    tx_toggle = Signal()
    m.d.sync += error.eq(error | uart.overrun | uart.framing_error)
    with m.If(uart.o.valid & uart.o.ready):
        m.d.sync += rx_toggle.eq(~rx_toggle)
    with m.If(uart.i.valid & uart.i.ready):
        m.d.sync += tx_toggle.eq(~tx_toggle)
    status = Cat(~dut.idle, error, rx_toggle, tx_toggle)
    requested = {}
    for k, spec in enumerate(board.leds):
        buf = _request_bit(platform, spec, "o", requested)
        m.submodules[f"led_{k}"] = buf
        m.d.sync += buf.o.eq(status[k] if k < len(status) else 0)


BoardTop._elaborate_uart = _elaborate_uart


def _has_uart():
    import importlib.util
    return importlib.util.find_spec("openvtep.hdl.uart") is not None
