"""Handshake contracts of the stream stages of the control path: UARTRx (hdl/uart.py),
CobsEncoder and ControlBridge (hdl/bridge.py). (UARTTx and CobsDecoder have fuller contracts
in their own files; the parser, classifier and editor in theirs.)

Proven by k-induction, for every run of any length with arbitrary inputs (the ``rx`` line
free on every cycle; message bytes, captured frames and bus answers from well-behaved but
otherwise arbitrary neighbours): a beat offered on an output stream is neither withdrawn nor
changed until it is taken. For the bridge that is its reply bytes ``o`` and its injected
frames ``o_inject`` (the cover shows a stalled reply byte; an injected frame needs a whole
CRC-checked message, beyond the cover's reach). The reply stream the bridge feeds its own COBS
encoder (between two of its submodules) obeys the same rules in every run of ``BRIDGE_BMC``
cycles from reset (bounded: k-induction fails there on states no run reaches, a captured frame
being sent while the capture buffer is free to be refilled). Each proof has a cover (a stall,
then the transfer) and a deliberately broken variant the contract must catch (it FAILS).
"""

from amaranth.asserts import AnySeq
from amaranth.hdl import Cover, Elaboratable

from openvtep.hdl.bridge import CobsEncoder, ControlBridge
from openvtep.hdl.uart import UARTRx
from openvtep.protocol import REQUEST_OVERHEAD
from openvtep.sim import formal

from .contracts import (
    Withdrawing,
    contract_module,
    internals,
    stream_rules,
    stream_sink,
    stream_source,
)

DIVISOR = 4
# A byte on the line takes 10 bit times; the broken receivers need two bytes (an overrun).
RX_BYTE = 10 * DIVISOR + 4
BRIDGE_MAX_FRAME = 14
BRIDGE_REPLY = 10   # cycles from reset past a stalled reply byte (a bad message gets one at 7)
BRIDGE_BMC = 19  # the solver time jumps at the 20th cycle (2 minutes for that one)


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


class BridgeContract(Elaboratable):
    """``inner``: also the stream the bridge feeds its own COBS encoder with (the replies)."""

    def __init__(self, dut, *, inner=False):
        self.dut = dut
        self.inner = inner

    def elaborate(self, platform):
        m = contract_module()
        dut = self.dut
        module, _ = internals(m, dut, platform, ())
        stream_source(m, dut.i, "i")
        stream_source(m, dut.i_capture, "i_capture")
        bus = dut.bus
        for name in ("ready", "r_valid", "r_data", "r_err"):
            m.d.comb += getattr(bus, name).eq(AnySeq(len(getattr(bus, name))))
        stream_sink(m, dut.o_inject, "o_inject")
        took, stalled = stream_sink(m, dut.o, "o")
        m.d.comb += Cover(stalled & took)   # a reply byte (to a bad message: a short run)
        if self.inner:
            took, stalled = stream_rules(m, module.submodules.encoder.i, "tx")
            m.d.comb += Cover(stalled & took)
        return m


def bridge(**kwargs):
    return ControlBridge(4, max_frame=BRIDGE_MAX_FRAME,
                         max_request=BRIDGE_MAX_FRAME + 1 + REQUEST_OVERHEAD, max_block=2,
                         bus_timeout=4, **kwargs)


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


def test_bridge_handshake_proof():
    formal.check(BridgeContract(bridge()), "bridge_handshake", mode="prove", depth=4)


def test_bridge_replies_bmc():
    # The reply stream into the encoder, bounded: induction fails on states no run reaches
    # (a captured frame being sent while the capture buffer is free to be rewritten).
    formal.check(BridgeContract(bridge(), inner=True), "bridge_replies", mode="bmc",
                 depth=BRIDGE_BMC)


def test_bridge_handshake_cover():
    formal.check(BridgeContract(bridge(), inner=True), "bridge_replies", mode="cover",
                 depth=BRIDGE_REPLY)


def test_bridge_handshake_broken():
    broken = Withdrawing(bridge(), lambda wrapper: wrapper.i.valid)
    formal.check_fails(BridgeContract(broken), "bridge_handshake_withdrawing", mode="bmc",
                       depth=BRIDGE_REPLY)
