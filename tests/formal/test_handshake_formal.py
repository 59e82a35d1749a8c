"""Handshake contracts of the byte-stream stages of the control path: UARTRx (hdl/uart.py)
and CobsEncoder (hdl/bridge.py). (UARTTx and CobsDecoder have fuller contracts in their own
files; the parser, classifier and editor in theirs.)

Proven by k-induction, for every run of any length with arbitrary inputs (the ``rx`` line
free on every cycle; message bytes from a well-behaved source): a byte offered on ``o`` is
neither withdrawn nor changed until it is taken. Each proof has a cover (a stall, then the
transfer) and a deliberately broken variant the contract must catch (the proof FAILS).
"""

from amaranth.asserts import AnySeq
from amaranth.hdl import Cover, Elaboratable

from openvtep.hdl.bridge import CobsEncoder
from openvtep.hdl.uart import UARTRx
from openvtep.sim import formal

from .contracts import Withdrawing, contract_module, stream_sink, stream_source

DIVISOR = 4
# A byte on the line takes 10 bit times; the broken receivers need two bytes (an overrun).
RX_BYTE = 10 * DIVISOR + 4


class HandshakeContract(Elaboratable):
    """``o`` of ``dut`` obeys the stream rules; ``drive(m, dut)`` drives its inputs."""

    def __init__(self, dut, drive):
        self.dut = dut
        self.drive = drive

    def elaborate(self, platform):
        m = contract_module()
        m.submodules.dut = dut = self.dut
        self.drive(m, dut)
        took, stalled = stream_sink(m, dut.o, "o")
        m.d.comb += Cover(stalled & took)
        return m


def drive_rx(m, dut):
    m.d.comb += dut.rx.eq(AnySeq(1))


def drive_encoder(m, dut):
    stream_source(m, dut.i, "i")


class OverrunDroppingRx(UARTRx):
    """Broken: on an overrun the waiting byte is given up (its ``valid`` withdrawn)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self.overrun):
            m.d.sync += self.o.valid.eq(0)
        return m


def test_uart_rx_handshake_proof():
    formal.check(HandshakeContract(UARTRx(DIVISOR), drive_rx), "uart_rx_handshake",
                 mode="prove", depth=4)


def test_uart_rx_handshake_cover():
    formal.check(HandshakeContract(UARTRx(DIVISOR), drive_rx), "uart_rx_handshake",
                 mode="cover", depth=RX_BYTE)


def test_uart_rx_handshake_broken():
    formal.check_fails(HandshakeContract(OverrunDroppingRx(DIVISOR), drive_rx),
                       "uart_rx_overrun_dropping", mode="bmc", depth=2 * RX_BYTE)


def test_cobs_encoder_handshake_proof():
    formal.check(HandshakeContract(CobsEncoder(), drive_encoder), "cobs_encoder_handshake",
                 mode="prove", depth=4)


def test_cobs_encoder_handshake_cover():
    formal.check(HandshakeContract(CobsEncoder(), drive_encoder), "cobs_encoder_handshake",
                 mode="cover", depth=8)


def test_cobs_encoder_handshake_broken():
    broken = Withdrawing(CobsEncoder(), lambda wrapper: wrapper.i.valid)
    formal.check_fails(HandshakeContract(broken, drive_encoder), "cobs_encoder_withdrawing",
                       mode="prove", depth=8)
