"""Formal contract of the parser's stream behaviour (hdl/parser.py, Parser, width 4).

- Pass-through (k-induction): ``o`` is ``i``: the same ``data``/``keep``/``last`` on every
  cycle, and a beat transfers on ``o`` exactly when it transfers on ``i``; ``o`` obeys the
  handshake (a beat offered is neither withdrawn nor changed until taken).
- One record per frame, in order (bounded, 10 cycles from reset: up to 5 one-beat frames, any stalls on all three
  ports): records out never outnumber frames ended; no more than ``queue_depth`` frames wait
  for their record; a frame that ended gets a record offered within 6 cycles unless another
  one is waiting; the record of the frame picked by ``AnyConst`` carries that frame's port, so
  records leave in frame order.

- Record handshake (bounded, ``BMC_DEPTH`` cycles from reset; frames and both outputs'
  ``ready`` arbitrary): a record offered on ``o_hdr`` is neither withdrawn nor changed until
  taken, and ``o`` keeps its rules while ``o_hdr`` is drained. Not inductive: from a state no
  run reaches (a record offered while the internal ``pending`` count is 0), popping it wraps
  ``pending`` and withdraws ``o.valid``.

The accounting is bounded, not inductive: an induction would need the parser's internal
``pending`` count, which the block does not expose.

All of these are marked slow: the parser's header window makes even the conversion take half a
minute, and each BMC step beyond 10 doubles the solver time (16 steps: over 5 minutes).
"""

import pytest
from amaranth.asserts import AnyConst
from amaranth.hdl import Assert, Cover, Elaboratable, Signal

from openvtep.config import VtepConfig
from openvtep.hdl.parser import Parser
from openvtep.sim import formal

from .contracts import ACCOUNT_BITS, Withdrawing, contract_module, stream_sink, stream_source

CONFIG = VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE)
QUEUE_DEPTH = 4
RECORD_LATENCY = 6
BMC_DEPTH = 10


class ParserContract(Elaboratable):
    def __init__(self, dut, *, accounting=True):
        self.dut = dut
        self.accounting = accounting

    def elaborate(self, platform):
        m = contract_module()
        m.submodules.dut = dut = self.dut
        took_in = stream_source(m, dut.i, "i")
        took_out, _ = stream_sink(m, dut.o, "o")
        m.d.comb += [
            Assert(dut.o.p.data == dut.i.p.data),
            Assert(dut.o.p.keep == dut.i.p.keep),
            Assert(dut.o.p.last == dut.i.p.last),
            Assert(took_out == took_in),
        ]
        if not self.accounting:
            return m

        took_hdr, _ = stream_sink(m, dut.o_hdr, "o_hdr")
        ended = took_in & dut.i.p.last
        frames = Signal(ACCOUNT_BITS)
        records = Signal(ACCOUNT_BITS)
        m.d.sync += [frames.eq(frames + ended), records.eq(records + took_hdr)]
        waiting = Signal(ACCOUNT_BITS)
        m.d.comb += waiting.eq(frames - records)
        m.d.comb += Assert(waiting <= QUEUE_DEPTH)
        with m.If(dut.o_hdr.valid):
            m.d.comb += Assert(waiting != 0)

        late = Signal(range(RECORD_LATENCY + 2))  # cycles a frame has waited with no record
        with m.If((waiting != 0) & ~dut.o_hdr.valid):
            m.d.sync += late.eq(late + 1)
        with m.Else():
            m.d.sync += late.eq(0)
        m.d.comb += Assert(late < RECORD_LATENCY)

        index = AnyConst(ACCOUNT_BITS)
        port = Signal(2)
        with m.If(ended & (frames == index)):
            m.d.sync += port.eq(dut.i.p.port)
        with m.If(dut.o_hdr.valid & (records == index)):
            m.d.comb += Assert(dut.o_hdr.p.port == port)

        beats = Signal(2)
        with m.If(took_in & dut.i.p.last):
            m.d.sync += beats.eq(0)
        with m.Elif(took_in):
            m.d.sync += beats.eq(beats + 1)
        m.d.comb += [
            Cover(ended & (beats == 2) & (records == 1)),  # a 3-beat frame after a record
            Cover(records == 3),
        ]
        return m


class RecordHandshakeContract(Elaboratable):
    def __init__(self, dut):
        self.dut = dut

    def elaborate(self, platform):
        m = contract_module()
        m.submodules.dut = dut = self.dut
        stream_source(m, dut.i, "i")
        stream_sink(m, dut.o, "o")
        took, stalled = stream_sink(m, dut.o_hdr, "o_hdr")
        m.d.comb += Cover(stalled & took)
        return m


class RecordDroppingParser(Parser):
    """Broken: never waits for queue space, so records of frames ending while the queue is
    full are lost."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += [self.o.valid.eq(self.i.valid), self.i.ready.eq(self.o.ready)]
        return m


def parser(cls=Parser):
    return cls(4, CONFIG, queue_depth=QUEUE_DEPTH)


@pytest.mark.slow
def test_parser_pass_through_proof():
    formal.check(ParserContract(parser(), accounting=False), "parser_pass_through",
                 mode="prove", depth=3)


@pytest.mark.slow
def test_parser_records_bmc():
    formal.check(ParserContract(parser()), "parser_records", mode="bmc", depth=BMC_DEPTH)


@pytest.mark.slow
def test_parser_cover():
    formal.check(ParserContract(parser()), "parser_records", mode="cover", depth=12)


@pytest.mark.slow
def test_parser_broken_drops_records():
    formal.check_fails(ParserContract(parser(RecordDroppingParser)), "parser_dropping",
                       mode="bmc", depth=BMC_DEPTH)


@pytest.mark.slow
def test_parser_record_handshake_bmc():
    formal.check(RecordHandshakeContract(parser()), "parser_record_handshake", mode="bmc",
                 depth=BMC_DEPTH)


@pytest.mark.slow
def test_parser_record_handshake_broken():
    broken = Withdrawing(parser(), lambda wrapper: wrapper.i.valid, out="o_hdr")
    formal.check_fails(RecordHandshakeContract(broken), "parser_record_handshake_withdrawing",
                       mode="bmc", depth=BMC_DEPTH)
