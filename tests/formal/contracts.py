"""Contract pieces shared by the formal specs: stream sources, sinks and beat accounting.

Every contract here drives the block's inputs with ``AnySeq``/``AnyConst`` (an undriven input
is a constant 0, which would make a proof vacuous), restricts them only by the stream rules a
well-behaved neighbour obeys (``Assume``), and states the block's side of the rules
(``Assert``). The style follows Amaranth's own FIFO contract (``tests/test_lib_fifo.py``):
a beat picked by ``AnyConst`` (its index and its value) stands for every beat.
"""

from amaranth.asserts import AnySeq
from amaranth.hdl import Assert, Assume, Module, Shape, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ACCOUNT_BITS", "Withdrawing", "contract_module", "fair_sink", "internals",
           "stream_rules", "stream_sink", "stream_source"]

ACCOUNT_BITS = 5  # beat/frame counters wrap at 32: more than any block here holds in flight


def contract_module():
    """A module for a contract (:func:`openvtep.sim.formal.run` supplies the reset-less
    ``sync`` domain)."""
    return Module()


def internals(m, dut, platform, names, *, submodule="dut"):
    """Elaborate ``dut`` now, as ``m``'s submodule, and return ``(module, signals)``: its
    :class:`Module` (whose ``submodules`` are not yet elaborated, so a contract may still add
    memory ports to them) and a dict of the registers it drives named in ``names`` (a block's
    tables are not ports; the contract reads them, and may free their initial value)."""
    module = dut.elaborate(platform)
    dut._MustUse__used = True
    m.submodules[submodule] = module
    found = {signal.name: signal for signal in module._driving if signal.name in names}
    missing = sorted(set(names) - set(found))
    if missing:
        raise LookupError(f"{type(dut).__name__} drives no signal named {', '.join(missing)}")
    return module, found


def stream_source(m, port, name, *, payload=None):
    """Drive ``port`` (an ``In`` stream of the block) as a free but well-behaved source:
    ``valid``/``payload`` are arbitrary, except that once offered a beat stays offered,
    unchanged, until it is taken. Returns the transfer signal."""
    width = Shape.cast(port.payload.shape()).width
    m.d.comb += port.valid.eq(AnySeq(1))
    m.d.comb += port.payload.eq(AnySeq(width) if payload is None else payload)
    stalled = Signal(name=f"{name}_src_stalled")
    held = Signal(width, name=f"{name}_src_held")
    m.d.sync += [stalled.eq(port.valid & ~port.ready), held.eq(port.payload)]
    with m.If(stalled):
        m.d.comb += Assume(port.valid & (Value.cast(port.payload) == held))
    took = Signal(name=f"{name}_took")
    m.d.comb += took.eq(port.valid & port.ready)
    return took


def stream_sink(m, port, name, *, ready=None):
    """Take from ``port`` (an ``Out`` stream of the block) with an arbitrary ``ready`` (or
    ``ready`` given), and assert the block's side of the stream rules: a beat once offered is
    neither withdrawn nor changed until it is taken. Returns ``(took, stalled_before)``."""
    m.d.comb += port.ready.eq(AnySeq(1) if ready is None else ready)
    return stream_rules(m, port, name)


def stream_rules(m, port, name):
    """Assert that the source of ``port`` (a stream whose ``ready`` someone else drives: an
    output, or a stream between two submodules) obeys the stream rules: a beat once offered is
    neither withdrawn nor changed until it is taken. Returns ``(took, stalled_before)``."""
    width = Shape.cast(port.payload.shape()).width
    stalled = Signal(name=f"{name}_sink_stalled")
    held = Signal(width, name=f"{name}_sink_held")
    m.d.sync += [stalled.eq(port.valid & ~port.ready), held.eq(port.payload)]
    with m.If(stalled):
        m.d.comb += Assert(port.valid)
        m.d.comb += Assert(Value.cast(port.payload) == held)
    took = Signal(name=f"{name}_took")
    m.d.comb += took.eq(port.valid & port.ready)
    return took, stalled


def fair_sink(m, max_stall, name="sink"):
    """A ``ready`` that is arbitrary but never low for ``max_stall`` cycles in a row.

    Fairness is what lets k-induction see through a block's storage: a beat sitting in a RAM
    leaves within a bounded time, so a state holding a wrong beat shows up within the
    induction depth. (The blocks have no timers, so a longer stall changes nothing but time.)
    """
    ready = Signal(name=f"{name}_ready")
    low = Signal(range(max_stall + 1), name=f"{name}_low")  # cycles ready was low, in a row
    m.d.comb += ready.eq(AnySeq(1))
    with m.If(ready):
        m.d.sync += low.eq(0)
    with m.Else():
        m.d.sync += low.eq(low + 1)
    m.d.comb += Assume(ready | (low < max_stall))
    return ready



class Withdrawing(wiring.Component):
    """A deliberately broken block for handshake contracts: ``inner`` with every port passed
    through, except that a beat stalled on its ``out`` stream is withdrawn (``valid`` low) for
    a cycle whenever ``trigger(self)`` (a signal of the wrapper's inputs) is high."""

    def __init__(self, inner, trigger, *, out="o"):
        self.inner = inner
        self.trigger = trigger
        self.out = out
        super().__init__(inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        for name, member in self.signature.members.items():
            outer, wrapped = getattr(self, name), getattr(inner, name)
            if member.is_port:
                m.d.comb += (wrapped.eq(outer) if member.flow == In else outer.eq(wrapped))
            elif member.flow == Out:
                wiring.connect(m, wrapped, wiring.flipped(outer))
            else:
                wiring.connect(m, wiring.flipped(outer), wrapped)
        port, wrapped = getattr(self, self.out), getattr(inner, self.out)
        stalled = Signal()
        m.d.sync += stalled.eq(port.valid & ~port.ready)
        m.d.comb += port.valid.eq(wrapped.valid & ~(stalled & self.trigger(self)))
        return m
