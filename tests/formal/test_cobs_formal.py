"""Formal contract of the COBS decoder of the control bridge (hdl/bridge.py, CobsDecoder).

- Handshake (k-induction, any run length): the token offered on ``o`` is neither withdrawn
  nor changed until taken; the line side is a well-behaved byte source.
- No byte lost (bounded, 14 cycles from reset: messages of a few bytes with any stalls): a
  small model of the COBS group structure beside the decoder says which line bytes are data
  (not a code byte, not a delimiter); every data byte leaves as a data token with its value,
  in order (the byte picked by ``AnyConst`` stands for all); every delimiter that closes a
  message leaves as exactly one end token, flagged ``error`` exactly when it came inside a
  code group. Latency 1: what came in and is not out yet is the one token on ``o``.

The accounting is bounded, not inductive: an induction would need the decoder's internal
group counter, which the block does not expose.
"""

from amaranth.asserts import AnyConst
from amaranth.hdl import Assert, Assume, Cover, Elaboratable, Signal

from openvtep.hdl.bridge import CobsDecoder
from openvtep.sim import formal

from .contracts import ACCOUNT_BITS, contract_module, stream_sink, stream_source


class CobsDecoderContract(Elaboratable):
    def __init__(self, dut, *, accounting=True):
        self.dut = dut
        self.accounting = accounting

    def elaborate(self, platform):
        m = contract_module()
        m.submodules.dut = dut = self.dut
        took_in = stream_source(m, dut.i, "i")
        took_out, _ = stream_sink(m, dut.o, "o")
        if not self.accounting:
            return m

        byte = dut.i.payload
        left = Signal(8)       # model: bytes left in the current code group
        in_message = Signal()
        n_data_in = Signal(ACCOUNT_BITS)
        n_end_in = Signal(ACCOUNT_BITS)
        end_error = Signal()   # model: the error flag of the last end of message
        is_data = Signal()
        m.d.comb += is_data.eq(took_in & (byte != 0) & (left != 0))
        with m.If(took_in & (byte == 0)):
            m.d.sync += [left.eq(0), in_message.eq(0)]
            with m.If(in_message):
                m.d.sync += [n_end_in.eq(n_end_in + 1), end_error.eq(left != 0)]
        with m.Elif(took_in & (left == 0)):
            m.d.sync += [left.eq(byte - 1), in_message.eq(1)]
        with m.Elif(is_data):
            m.d.sync += [left.eq(left - 1), n_data_in.eq(n_data_in + 1)]

        token = dut.o.payload
        data_token = Signal()
        m.d.comb += data_token.eq(dut.o.valid & ~token.end & (token.data != 0))
        n_data_out = Signal(ACCOUNT_BITS)
        n_end_out = Signal(ACCOUNT_BITS)
        m.d.sync += [n_data_out.eq(n_data_out + (took_out & data_token)),
                     n_end_out.eq(n_end_out + (took_out & token.end))]
        m.d.comb += [
            Assert((n_data_in - n_data_out)[:ACCOUNT_BITS] == data_token),
            Assert((n_end_in - n_end_out)[:ACCOUNT_BITS] == (dut.o.valid & token.end)),
        ]
        with m.If(dut.o.valid & token.end):
            m.d.comb += Assert(token.error == end_error)

        index = AnyConst(ACCOUNT_BITS)
        value = AnyConst(8)
        with m.If(is_data & (n_data_in == index)):
            m.d.comb += Assume(byte == value)
        with m.If(data_token & (n_data_out == index)):
            m.d.comb += Assert(token.data == value)

        zeros = Signal(2)  # implied zeros decoded, for the cover
        with m.If(took_out & dut.o.valid & ~token.end & (token.data == 0)):
            m.d.sync += zeros.eq(zeros + 1)
        m.d.comb += [
            Cover(took_out & token.end & ~token.error & (n_data_out == 2) & (zeros != 0)),
            Cover(took_out & token.end & token.error),
        ]
        return m


class OverwritingDecoder(CobsDecoder):
    """Broken: always ready, so a stalled token is overwritten by the next byte's."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.i.ready.eq(1)
        return m


class EndlessDecoder(CobsDecoder):
    """Broken: a delimiter closes the message but emits no end token."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self.i.valid & self.i.ready & (self.i.payload == 0)):
            m.d.sync += self.o.valid.eq(0)
        return m


def test_cobs_decoder_handshake_proof():
    formal.check(CobsDecoderContract(CobsDecoder(), accounting=False), "cobs_decoder_handshake",
                 mode="prove", depth=6)


def test_cobs_decoder_accounting_bmc():
    formal.check(CobsDecoderContract(CobsDecoder()), "cobs_decoder", mode="bmc", depth=14)


def test_cobs_decoder_cover():
    formal.check(CobsDecoderContract(CobsDecoder()), "cobs_decoder", mode="cover", depth=10)


def test_cobs_decoder_broken_overwrites():
    formal.check_fails(CobsDecoderContract(OverwritingDecoder(), accounting=False),
                       "cobs_decoder_overwriting", mode="prove", depth=6)


def test_cobs_decoder_broken_loses_end():
    formal.check_fails(CobsDecoderContract(EndlessDecoder()), "cobs_decoder_endless",
                       mode="bmc", depth=14)
