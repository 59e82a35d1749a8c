"""UART physical layer: 8 data bits, no parity, 1 stop bit (8N1), LSB first, idle high.

The bit time is a whole number of clock cycles, ``divisor``, fixed at build time
(:func:`divisor` picks it from the clock frequency and the baud rate, e.g. 3 Mbaud, the fastest
rate of FTDI FT2232H/FT232H boards). Bytes come and go as :class:`amaranth.lib.stream`
streams of 8-bit payloads, so :class:`openvtep.hdl.bridge.ControlBridge` sits behind it on a
board and takes bytes straight from a socket on the virtual board.
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

__all__ = ["UART", "UARTRx", "UARTTx", "divisor"]

BAUD_TOLERANCE = 0.02  # largest rate error divisor() accepts (the receiver copes with ~4%)


def divisor(clk_freq, baud):
    """Clock cycles per bit for ``baud`` at ``clk_freq`` Hz. Raises :class:`ValueError` if the
    rate it gives is more than 2% off, or the bit is shorter than 4 cycles."""
    if clk_freq <= 0 or baud <= 0:
        raise ValueError(f"Clock frequency and baud rate must be positive, not {clk_freq!r}, "
                         f"{baud!r}")
    cycles = round(clk_freq / baud)
    if cycles < 4:
        raise ValueError(f"{baud} baud needs at least 4 cycles a bit; {clk_freq} Hz gives "
                         f"{clk_freq / baud:.2f}")
    error = abs(clk_freq / cycles - baud) / baud
    if error > BAUD_TOLERANCE:
        raise ValueError(f"{baud} baud at {clk_freq} Hz is {100 * error:.1f}% off with a "
                         f"divisor of {cycles} (more than {100 * BAUD_TOLERANCE:.0f}%)")
    return cycles


def _check_divisor(value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 4:
        raise ValueError(f"UART divisor must be an integer >= 4, not {value!r}")


class UARTRx(wiring.Component):
    """UART receiver.

    ``rx`` is synchronized (2 flip-flops), so it may come straight from a pin. A falling edge
    starts a byte; the start bit is checked at its middle (a shorter glitch is ignored), the
    data bits and the stop bit are sampled at their middles, timed from the start edge. That
    tolerates a sender rate a few percent off (the stop bit's middle must still fall inside it:
    about +-4.5% with a large divisor).

    ``o`` offers each byte from the middle of its stop bit (latency: 9.5 bit times plus 3 cycles
    after the start edge). There is no flow control on a UART: if the previous byte still waits
    on ``o`` when the next one is complete, the new byte is dropped and ``overrun`` pulses (put
    a FIFO behind the receiver if its consumer can stall). A stop bit that reads 0 (a framing
    error, or a break) drops the byte and pulses ``framing_error``; the receiver then waits for
    the line to go idle (high) before looking for the next start bit.
    """

    rx: In(1)
    o: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)

    def __init__(self, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        rx = Signal(init=1)
        m.submodules.sync_rx = FFSynchronizer(self.rx, rx, init=1)

        timer = Signal(range(self.divisor))
        bit = Signal(range(8))
        shreg = Signal(8)

        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(timer != 0):
            m.d.sync += timer.eq(timer - 1)

        with m.FSM():
            with m.State("Idle"), m.If(~rx):
                m.d.sync += timer.eq(self.divisor // 2 - 1)
                m.next = "Start"
            with m.State("Start"), m.If(timer == 0):
                with m.If(~rx):
                    m.d.sync += [timer.eq(self.divisor - 1), bit.eq(0)]
                    m.next = "Data"
                with m.Else():
                    m.next = "Idle"
            with m.State("Data"), m.If(timer == 0):
                m.d.sync += [shreg.eq(Cat(shreg[1:], rx)), timer.eq(self.divisor - 1),
                             bit.eq(bit + 1)]
                with m.If(bit == 7):
                    m.next = "Stop"
            with m.State("Stop"), m.If(timer == 0):
                with m.If(rx):
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.comb += self.overrun.eq(1)
                    with m.Else():
                        m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(shreg)]
                    m.next = "Idle"
                with m.Else():
                    m.d.comb += self.framing_error.eq(1)
                    m.next = "Break"
            with m.State("Break"), m.If(rx):
                m.next = "Idle"
        return m


class UARTTx(wiring.Component):
    """UART transmitter: sends each byte of ``i`` as start bit, 8 data bits LSB first, stop
    bit, back to back while bytes keep coming. ``tx`` is a register, high when idle.

    Backpressure: ``i.ready`` is high only while the transmitter is idle, so a byte is taken
    when the previous one's stop bit has been sent (one byte every ``10 * divisor`` cycles).
    """

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor):
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        timer = Signal(range(self.divisor))
        bits = Signal(range(10))
        shreg = Signal(9)  # data bits then the stop bit; the start bit goes straight to tx

        with m.FSM():
            with m.State("Idle"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [self.tx.eq(0), shreg.eq(Cat(self.i.payload, 1)),
                                 timer.eq(self.divisor - 1), bits.eq(9)]
                    m.next = "Send"
            with m.State("Send"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                    # Leave a cycle early, so the next start bit follows a stop bit of exactly
                    # one bit time.
                    with m.If((timer == 1) & (bits == 0)):
                        m.next = "Idle"
                with m.Else():
                    m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1),
                                 timer.eq(self.divisor - 1), bits.eq(bits - 1)]
        return m


class UART(wiring.Component):
    """:class:`UARTRx` and :class:`UARTTx` at one rate: ``rx``/``tx`` pins, ``o`` the received
    bytes, ``i`` the bytes to send, ``framing_error`` and ``overrun`` pulses.

    Parameters: ``clk_freq`` (Hz) and ``baud``, or ``divisor`` (cycles per bit) directly.
    """

    rx: In(1)
    tx: Out(1, init=1)
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)

    def __init__(self, *, clk_freq=None, baud=3_000_000, divisor=None):
        if divisor is None:
            if clk_freq is None:
                raise ValueError("UART needs clk_freq (with baud) or divisor")
            divisor = globals()["divisor"](clk_freq, baud)
        _check_divisor(divisor)
        self.divisor = divisor
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = UARTRx(self.divisor)
        m.submodules.tx = tx = UARTTx(self.divisor)
        m.d.comb += [
            rx.rx.eq(self.rx),
            self.tx.eq(tx.tx),
            self.framing_error.eq(rx.framing_error),
            self.overrun.eq(rx.overrun),
        ]
        wiring.connect(m, rx.o, wiring.flipped(self.o))
        wiring.connect(m, wiring.flipped(self.i), tx.i)
        return m
