"""Bit-level tests of ``openvtep.hdl.uart`` in Amaranth's simulator: exact transmit timing,
reception at the nominal rate and +-3% off, framing errors, overrun, and a TX->RX loopback."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from openvtep.hdl.uart import UART, UARTRx, UARTTx, divisor

DIV = 8  # cycles per bit: small, so the tests are fast; the logic does not depend on it


def _run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()  # until the testbench returns


def _line_bits(byte, stop=1):
    return [0] + [(byte >> k) & 1 for k in range(8)] + [stop]


def test_divisor():
    assert divisor(48e6, 3_000_000) == 16
    assert divisor(12e6, 3_000_000) == 4
    assert divisor(100e6, 115200) == 868
    with pytest.raises(ValueError, match="4 cycles"):
        divisor(8e6, 3_000_000)
    with pytest.raises(ValueError, match="off"):
        divisor(25e6, 3_000_000)  # 8.33 -> 8: 4% fast
    with pytest.raises(ValueError):
        UARTRx(3)
    with pytest.raises(ValueError):
        UART()


def test_tx_timing():
    """Every bit lasts exactly DIV cycles, bytes go back to back, the line idles high."""
    dut = UARTTx(DIV)
    rng = random.Random(1)
    data = [0x00, 0xFF, 0x55] + [rng.randrange(256) for _ in range(5)]
    line = []

    async def bench(ctx):
        pending = list(data)
        for _ in range(len(data) * 10 * DIV + 40):
            if pending:
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, pending[0])
            else:
                ctx.set(dut.i.valid, 0)
            _, _, ready, tx = await ctx.tick().sample(dut.i.ready, dut.tx)
            line.append(tx)
            if pending and ready:
                pending.pop(0)

    _run(dut, bench)
    start = line.index(0)
    assert all(line[:start])
    expected = [bit for byte in data for bit in _line_bits(byte) for _ in range(DIV)]
    assert line[start:start + len(expected)] == expected
    assert all(line[start + len(expected):])


def _schedule(frames, bit_cycles, rng, gap=(0, 3)):
    """Line levels per cycle for ``frames`` (lists of bits) sent at ``bit_cycles`` (a float)
    per bit, with random idle gaps; edges at rounded fractional times."""
    levels = [1] * 5
    time = 5.0
    for bits in frames:
        time += rng.randint(*gap)
        for bit in bits:
            end = time + bit_cycles
            levels += [bit] * (round(end) - len(levels))
            time = end
    return levels + [1] * (3 * DIV)


@pytest.mark.parametrize("rate", [0.97, 1.0, 1.03])
def test_rx_rate_tolerance(rate):
    """Bytes sent 3% slow or fast are received, back to back and with gaps."""
    dut = UARTRx(16)
    rng = random.Random(int(rate * 100))
    data = [0x00, 0xFF, 0x80, 0x01] + [rng.randrange(256) for _ in range(30)]
    schedule = _schedule([_line_bits(b) for b in data], 16 * rate, rng)
    got, errors = [], []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.rx, 1)
        for level in schedule:
            ctx.set(dut.rx, level)
            _, _, valid, payload, ferr, ovr = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.framing_error, dut.overrun)
            if valid:
                got.append(payload)
            if ferr or ovr:
                errors.append((ferr, ovr))

    _run(dut, bench)
    assert errors == []
    assert got == data


def test_rx_framing_error_and_overrun():
    """A zero stop bit drops the byte and pulses framing_error once, also when the line stays
    low (a break); the byte after it is received. A byte not taken before the next one is
    complete is kept, and the next one dropped with an overrun pulse."""
    dut = UARTRx(DIV)
    rng = random.Random(2)
    frames = [_line_bits(0x41), _line_bits(0x42, stop=0), [0] * 30 + [1] * 2, _line_bits(0x43),
              _line_bits(0x44), _line_bits(0x45)]
    schedule = _schedule(frames, DIV, rng)
    got = []
    counts = {"framing_error": 0, "overrun": 0}

    async def bench(ctx):
        ctx.set(dut.rx, 1)
        for level in schedule:
            ctx.set(dut.rx, level)
            # Stall the consumer while 0x44 and 0x45 arrive: 0x45 overruns.
            stall = len(got) == 2
            ctx.set(dut.o.ready, 0 if stall else 1)
            _, _, valid, payload, ferr, ovr = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.framing_error, dut.overrun)
            counts["framing_error"] += ferr
            counts["overrun"] += ovr
            if valid and not stall:
                got.append(payload)
        for _ in range(5):
            ctx.set(dut.o.ready, 1)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if valid:
                got.append(payload)

    _run(dut, bench)
    assert counts == {"framing_error": 1, "overrun": 1}
    assert got == [0x41, 0x43, 0x44]


def test_loopback():
    """TX wired to RX: random bytes through both, with consumer backpressure."""
    m = Module()
    m.submodules.uart = uart = UART(divisor=DIV)
    m.d.comb += uart.rx.eq(uart.tx)
    rng = random.Random(3)
    data = [rng.randrange(256) for _ in range(40)]
    got = []

    async def bench(ctx):
        pending = list(data)
        for _ in range(len(data) * 11 * DIV):
            ctx.set(uart.i.valid, bool(pending))
            ctx.set(uart.i.payload, pending[0] if pending else 0)
            ctx.set(uart.o.ready, rng.random() < 0.7)
            _, _, ready, valid, taken, payload = await ctx.tick().sample(
                uart.i.ready, uart.o.valid, uart.o.ready, uart.o.payload)
            if pending and ready:
                pending.pop(0)
            if valid and taken:
                got.append(payload)
            if len(got) == len(data):
                break

    _run(m, bench)
    assert got == data


def test_uart_in_front_of_the_bridge():
    """The board path: UART receiver -> FIFO -> ControlBridge -> UART transmitter, bit level.
    An IDENTIFY request sent as line bits gets a reply that decodes, CRC and all."""
    from amaranth.lib import fifo

    from openvtep import protocol as p
    from openvtep.hdl.bridge import ControlBridge

    m = Module()
    m.submodules.uart = uart = UART(divisor=4)
    m.submodules.rxq = rxq = fifo.SyncFIFOBuffered(width=8, depth=16)
    m.submodules.bridge = bridge = ControlBridge(4, max_frame=64, max_request=128)
    m.d.comb += [
        rxq.w_data.eq(uart.o.payload), rxq.w_en.eq(uart.o.valid), uart.o.ready.eq(1),
        bridge.i.payload.eq(rxq.r_data), bridge.i.valid.eq(rxq.r_rdy),
        rxq.r_en.eq(bridge.i.ready),
        uart.i.payload.eq(bridge.o.payload), uart.i.valid.eq(bridge.o.valid),
        bridge.o.ready.eq(uart.i.ready),
    ]
    request = p.encode_request(7, 9, p.Command.IDENTIFY)
    line = [1] * 8 + [bit for byte in request for bit in _line_bits(byte) for _ in range(4)]
    tx_line = []

    async def bench(ctx):
        for level in line + [1] * (4 * 10 * 60):
            ctx.set(uart.rx, level)
            _, _, tx = await ctx.tick().sample(uart.tx)
            tx_line.append(tx)

    _run(m, bench)
    # Decode the transmitted line: sample each bit in its middle after a start edge.
    received, k = bytearray(), 0
    while k < len(tx_line):
        if tx_line[k] == 0:
            bits = [tx_line[k + 2 + 4 * n] for n in range(10)]
            assert bits[0] == 0 and bits[9] == 1, "bad frame on tx"
            received.append(sum(bit << n for n, bit in enumerate(bits[1:9])))
            k += 40
        else:
            k += 1
    frames = p.Deframer().feed(bytes(received))
    assert len(frames) == 1
    reply = p.decode_reply(frames[0])
    assert (reply.seq, reply.tag, reply.cmd, reply.status) == (7, 9, p.Command.IDENTIFY, 0)
    info = p.unpack_fields(p.IDENTIFY_BODY, reply.body)
    assert (info["magic"], info["width"], info["max_request"]) == (p.MAGIC, 4, 128)
