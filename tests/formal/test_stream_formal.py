"""Formal contracts of the stream blocks (hdl/stream.py): RegisterSlice and PacketFifo.

What is proven, by k-induction, for every run of any length (width 1 byte, so the payload is
10 bits: ``data``, ``keep``, ``last``):

- handshake: a beat offered on ``o`` stays offered, unchanged, until it is taken (the source
  on ``i`` is assumed to obey the same rule, nothing more);
- conservation: beats in = beats out + beats held (the block's own occupancy), never more
  than its capacity;
- order and content: the beat with index k (an ``AnyConst``) leaves as the k-th beat with its
  value (an ``AnyConst``), so every beat leaves unchanged and in order, ``last`` included,
  which preserves the framing.

Each contract is also shown to reach its interesting cases (cover: a stall then a transfer, a
3-beat frame, a full FIFO) and to catch a deliberately broken block (the proof FAILS).
"""

import pytest
from amaranth.asserts import AnyConst
from amaranth.hdl import Assert, Assume, Cover, Elaboratable, Shape, Signal

from openvtep.hdl.stream import PacketFifo, RegisterSlice
from openvtep.sim import formal

from .contracts import ACCOUNT_BITS, contract_module, fair_sink, stream_sink, stream_source


class BeatContract(Elaboratable):
    """Handshake, conservation and order of a block that moves beats from ``i`` to ``o``
    unchanged. ``occupancy(dut)`` is the number of beats the block holds; ``capacity`` the
    most it may hold; ``max_stall`` (optional) bounds how long ``o.ready`` stays low (see
    :func:`fair_sink`)."""

    def __init__(self, dut, *, occupancy, capacity, max_stall=None):
        self.dut = dut
        self.occupancy = occupancy
        self.capacity = capacity
        self.max_stall = max_stall

    def elaborate(self, platform):
        m = contract_module()
        m.submodules.dut = dut = self.dut
        width = Shape.cast(dut.i.payload.shape()).width

        took_in = stream_source(m, dut.i, "i")
        ready = fair_sink(m, self.max_stall, "o") if self.max_stall else None
        took_out, out_stalled = stream_sink(m, dut.o, "o", ready=ready)

        n_in = Signal(ACCOUNT_BITS)
        n_out = Signal(ACCOUNT_BITS)
        m.d.sync += [n_in.eq(n_in + took_in), n_out.eq(n_out + took_out)]
        in_flight = Signal(ACCOUNT_BITS)
        m.d.comb += in_flight.eq(n_in - n_out)
        m.d.comb += [
            Assert(in_flight == self.occupancy(dut)),
            Assert(in_flight <= self.capacity),
        ]
        with m.If(dut.o.valid):
            m.d.comb += Assert(in_flight != 0)

        index = AnyConst(ACCOUNT_BITS)
        value = AnyConst(width)
        with m.If(took_in & (n_in == index)):
            m.d.comb += Assume(dut.i.payload.as_value() == value)
        with m.If(dut.o.valid & (n_out == index)):
            m.d.comb += Assert(dut.o.payload.as_value() == value)

        # Reachability: a stall then the transfer, a 3-beat frame, the block full.
        beat = Signal(2)  # beats of the current frame already out
        with m.If(took_out & dut.o.payload.last):
            m.d.sync += beat.eq(0)
        with m.Elif(took_out):
            m.d.sync += beat.eq(beat + 1)
        m.d.comb += [
            Cover(out_stalled & took_out),
            Cover(took_out & dut.o.payload.last & (beat == 2)),
            Cover((in_flight == self.capacity) & took_out),
        ]
        return m


# --- Deliberately broken blocks: the same contracts must catch them. ----------------------


class WithdrawingSlice(RegisterSlice):
    """Broken: gives up a stalled beat when nothing new is coming (``valid`` withdrawn)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self.o.valid & ~self.o.ready & ~self.i.valid):
            m.d.sync += self.o.valid.eq(0)
        return m


class OverwritingSlice(RegisterSlice):
    """Broken: always ready, so a new beat overwrites a stalled one (lost, and the payload
    changes under a stalled ``valid``)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.i.ready.eq(1)
        with m.If(self.i.valid):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(self.i.payload)]
        return m


class OverflowingFifo(PacketFifo):
    """Broken: claims to be ready while full, so beats arriving then are lost."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.i.ready.eq(1)
        return m


class LastDroppingFifo(PacketFifo):
    """Broken: loses ``last`` on a beat that leaves an otherwise empty FIFO (frames merge)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(self.level == 1):
            m.d.comb += self.o.payload.last.eq(0)
        return m


def slice_contract(cls=RegisterSlice):
    return BeatContract(cls(1), occupancy=lambda dut: dut.o.valid, capacity=1)


FIFO_DEPTH = 4
FIFO_STALL = 2


def fifo_contract(cls=PacketFifo, max_stall=FIFO_STALL):
    return BeatContract(cls(1, FIFO_DEPTH), occupancy=lambda dut: dut.level,
                        capacity=FIFO_DEPTH, max_stall=max_stall)


def test_register_slice_proof():
    formal.check(slice_contract(), "register_slice", mode="prove", depth=3)


def test_register_slice_cover():
    formal.check(slice_contract(), "register_slice", mode="cover", depth=8)


@pytest.mark.parametrize("cls", [WithdrawingSlice, OverwritingSlice], ids=lambda c: c.__name__)
def test_register_slice_broken(cls):
    formal.check_fails(slice_contract(cls), f"register_slice_{cls.__name__}",
                       mode="prove", depth=3)


def test_packet_fifo_proof():
    # Induction depth: a wrong beat in the RAM leaves within FIFO_DEPTH * (FIFO_STALL + 1)
    # cycles of fair output, so the induction window must be longer than that.
    formal.check(fifo_contract(), "packet_fifo", mode="prove",
                 depth=FIFO_DEPTH * (FIFO_STALL + 1) + 3)


@pytest.mark.slow
def test_packet_fifo_bmc_any_stall():
    # No fairness: any stall pattern, from reset, for 12 cycles.
    formal.check(fifo_contract(max_stall=None), "packet_fifo_any_stall", mode="bmc", depth=12)


def test_packet_fifo_cover():
    formal.check(fifo_contract(), "packet_fifo", mode="cover", depth=16)


@pytest.mark.parametrize("cls", [OverflowingFifo, LastDroppingFifo], ids=lambda c: c.__name__)
def test_packet_fifo_broken(cls):
    formal.check_fails(fifo_contract(cls), f"packet_fifo_{cls.__name__}", mode="prove",
                       depth=FIFO_DEPTH * (FIFO_STALL + 1) + 3)
