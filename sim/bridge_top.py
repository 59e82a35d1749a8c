"""A test top for the control bridge: what the virtual board serves until the pipeline top
exists, and what ``tests/hdl/test_bridge.py`` and ``tests/hil`` run against.

:class:`BridgeTestTop` is a :class:`~openvtep.hdl.bridge.ControlBridge` with, on its bus
(word addresses, see :data:`MAP`):

- ``regs`` (0x000000, 16 words): word 0 reads :data:`ID_WORD`, word 1 the cycle counter's low
  half (read-only); words 2..15 are scratch registers;
- ``ram`` (0x001000, 4096 words): a :class:`~openvtep.hdl.bus.MemoryTarget`, standing in for a
  table;
- ``counters`` (0x002000, 8 x 64 bit): a :class:`~openvtep.hdl.bus.CounterBlock`, counters as
  in :data:`COUNTERS`.

Injected frames loop back to capture through a FIFO, keeping their port.
"""

from amaranth.hdl import Module, Mux, Shape, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..hdl.bridge import ControlBridge, frame_layout
from ..hdl.bus import BusDecoder, CounterBlock, MemoryTarget, RegisterFile

__all__ = ["COUNTERS", "ID_WORD", "MAP", "UNMAPPED", "BridgeTestTop"]

ID_WORD = 0x7654_0001
MAP = {"regs": (0x000000, 16), "ram": (0x001000, 4096), "counters": (0x002000, 16)}
UNMAPPED = 0x800000  # no target answers here: bus error
COUNTERS = ("inject_frames", "inject_bytes", "capture_frames", "capture_bytes", "cycles",
            "spare5", "spare6", "spare7")


class BridgeTestTop(wiring.Component):
    """Bridge + register file + RAM + counters + inject->capture loopback. Byte ports ``i``
    and ``o`` (the bridge's), ``idle`` (the bridge's). Parameters go to the bridge."""

    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))
    idle: Out(1)

    def __init__(self, width=8, *, fifo_depth=512, **bridge_params):
        self.width = width
        self.fifo_depth = fifo_depth
        bridge_params.setdefault("counters", len(COUNTERS))
        bridge_params.setdefault("exact_entries", MAP["ram"][1])
        self.bridge = ControlBridge(width, **bridge_params)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        wiring.connect(m, wiring.flipped(self.i), bridge.i)
        wiring.connect(m, bridge.o, wiring.flipped(self.o))
        m.d.comb += self.idle.eq(bridge.idle)

        cycles = Signal(64)
        m.d.sync += cycles.eq(cycles + 1)
        m.submodules.decoder = decoder = BusDecoder()
        m.submodules.regs = regs = RegisterFile(16, read_only={0: ID_WORD, 1: cycles[:32]})
        m.submodules.ram = ram = MemoryTarget(MAP["ram"][1])
        m.submodules.counters = counters = CounterBlock(len(COUNTERS))
        for name, target in (("regs", regs), ("ram", ram), ("counters", counters)):
            decoder.add(target.bus, addr=MAP[name][0], size=MAP[name][1])
        wiring.connect(m, bridge.bus, decoder.bus)

        # Loopback: inject -> FIFO -> capture, the port kept with each beat.
        layout = frame_layout(self.width)
        m.submodules.loop = loop = fifo.SyncFIFOBuffered(width=Shape.cast(layout).width,
                                                         depth=self.fifo_depth)
        inj, cap = bridge.o_inject, bridge.i_capture
        m.d.comb += [
            loop.w_data.eq(inj.payload), loop.w_en.eq(inj.valid), inj.ready.eq(loop.w_rdy),
            cap.payload.eq(loop.r_data), cap.valid.eq(loop.r_rdy), loop.r_en.eq(cap.ready),
        ]

        def popcount(bits):
            return sum(bits[k] for k in range(len(bits)))

        inj_go = inj.valid & inj.ready
        cap_go = cap.valid & cap.ready
        index = {name: k for k, name in enumerate(COUNTERS)}
        # Mux, not a product: an idle FIFO's payload is X in Verilog, and X * 0 is X.
        m.d.comb += [
            counters.add[index["inject_frames"]].eq(Mux(inj_go, inj.payload.last, 0)),
            counters.add[index["inject_bytes"]].eq(Mux(inj_go, popcount(inj.payload.keep), 0)),
            counters.add[index["capture_frames"]].eq(Mux(cap_go, cap.payload.last, 0)),
            counters.add[index["capture_bytes"]].eq(Mux(cap_go, popcount(cap.payload.keep), 0)),
            counters.add[index["cycles"]].eq(1),
        ]
        return m
