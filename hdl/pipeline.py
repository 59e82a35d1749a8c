"""The openvtep pipeline: parser -> classifier -> editor, with counters and the control bus.

The full datapath between the board's ports (MACs, frame inject/capture) and the control
bridge: what docs/semantics.md describes end to end, and what the reference model
(``openvtep.reference``) must equal frame for frame.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .. import regmap as rm
from ..headers import DropReason, Port
from ..tables import Geometry
from .bus import BusDecoder, BusRegister, CounterBlock, RegisterFile
from .bus import Signature as BusSignature
from .classifier import CAM_CHUNK_BITS, Classifier
from .editor import Editor
from .headers import port_packet_layout
from .parser import Parser

__all__ = ["FrameDone", "Pipeline"]


class FrameDone(data.Struct):
    """A strobe per frame, as the editor takes its verdict (frame order): whether it matched a
    rule (``hit``, ``rule`` index), whether the editor will emit it (``emits``) and then also
    send it as it arrived to the controller (``punt``), or else why it is dropped
    (``reason``, a :class:`DropReason`; meaningless while ``emits``)."""
    valid: 1
    hit: 1
    rule: rm.INDEX_BITS
    emits: 1
    punt: 1
    reason: DropReason


class Pipeline(wiring.Component):
    """Parser, classifier and editor, with per-port and drop counters.

    ``i`` carries frames (``port``: host or net, constant over a frame); ``o`` the frames
    emitted, each with its output port (host, net or controller), in input frame order; a
    frame whose rule also sends it to the controller (the classifier's ``Verdict.punt``) leaves twice:
    edited, then as it arrived on the controller port.

    Throughput: the editor's (a frame of n bytes takes ``ceil(max(n_in, n_out) / W)`` cycles in
    steady state) as long as the classifier keeps up: ``max(1, active profiles)`` cycles per
    frame, so with up to 4 profiles every frame of 64 bytes and more at W = 8 passes without
    bubbles.

    Latency: the editor's store-and-forward (a frame leaves after its last beat arrived) plus
    the parser's record (5-6 cycles) and the classifier's lookup (``profiles + 4`` cycles).

    Backpressure: ``o`` may stall at any time; ``i`` stalls when the editor's buffer is full.

    Control (``bus``, :class:`openvtep.hdl.bus.Signature`, map in :mod:`openvtep.regmap`): the
    classifier's tables and rule counters (``CLASSIFIER``), the 64-bit per-port
    ``rx/tx_packets/bytes`` counters (``PORTS_RANGE``), the editor's drop counters per
    :class:`DropReason` (``DROPS_RANGE``). The classifier's range is behind a
    :class:`~openvtep.hdl.bus.BusRegister` (2 cycles more per access).

    ``done`` (:class:`FrameDone`) is a status strobe for testbenches and statistics.

    Parameters
    ----------
    width : int
        Bytes per beat: a power of two, 4 or more.
    config : openvtep.config.VtepConfig
    geometry : openvtep.tables.Geometry
        Classifier table sizes (default ``Geometry()``).
    frames : int
        Frames the editor's buffer may hold.
    chunk_bits : int
        Key bits per wildcard CAM memory of the classifier (:class:`Classifier`).
    """

    def __init__(self, width, config, geometry=None, *, frames=16,
                 chunk_bits=CAM_CHUNK_BITS):
        geometry = Geometry() if geometry is None else geometry
        self.width = width
        self.config = config
        self.geometry = geometry
        self.parser = Parser(width, config)
        self.classifier = Classifier(geometry, chunk_bits=chunk_bits)
        self.editor = Editor(width, config, frames=frames)
        super().__init__({
            "i": In(stream.Signature(port_packet_layout(width))),
            "o": Out(stream.Signature(port_packet_layout(width))),
            "bus": In(BusSignature(rm.ADDR_BITS)),
            "done": Out(FrameDone),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.parser = parser = self.parser
        m.submodules.classifier = classifier = self.classifier
        m.submodules.editor = editor = self.editor

        wiring.connect(m, wiring.flipped(self.i), parser.i)
        wiring.connect(m, parser.o, editor.i)
        wiring.connect(m, parser.o_hdr, classifier.i)
        # The editor takes a frame's record and command together (its i_hdr.ready and
        # i_cmd.ready are the same signal), so one verdict stream feeds both.
        # The action table keeps the controller copy in its own bit (Verdict.punt), not in the
        # command it stores: it goes into the command here.
        verdict = classifier.o
        emits = ~verdict.p.hdr.drop & ~verdict.p.cmd.drop
        m.d.comb += [
            editor.i_hdr.valid.eq(verdict.valid),
            editor.i_hdr.p.eq(verdict.p.hdr),
            editor.i_cmd.valid.eq(verdict.valid),
            editor.i_cmd.p.eq(verdict.p.cmd),
            editor.i_cmd.p.punt.eq(verdict.p.punt),
            verdict.ready.eq(editor.i_hdr.ready),
            self.done.valid.eq(verdict.valid & verdict.ready),
            self.done.hit.eq(verdict.p.hit),
            self.done.rule.eq(verdict.p.rule),
            self.done.emits.eq(emits),
            self.done.punt.eq(emits & verdict.p.punt),
            self.done.reason.eq(Mux(verdict.p.hdr.drop, verdict.p.hdr.reason,
                                    verdict.p.cmd.reason)),
        ]
        wiring.connect(m, editor.o, wiring.flipped(self.o))

        # Per-port counters: counter 4 * port + k, k in PORT_COUNTERS order.
        n_counters = len(Port) * len(rm.PORT_COUNTERS)
        m.submodules.port_counters = counters = CounterBlock(n_counters, amount_width=8)
        for stream_, first in ((self.i, 0), (self.o, 2)):
            took = Signal(name=f"took_{first}")
            nbytes = Signal(8, name=f"bytes_{first}")
            m.d.comb += [
                took.eq(stream_.valid & stream_.ready),
                nbytes.eq(sum(stream_.p.keep[k] for k in range(self.width))),
            ]
            for port in Port:
                here = took & (stream_.p.port == port)
                base = 4 * port + first
                m.d.comb += [
                    counters.add[base].eq(here & stream_.p.last),
                    counters.add[base + 1].eq(Mux(here, nbytes, 0)),
                ]

        # Read only, as the register map says: the words past the reasons read 0 (they were
        # writable registers, 192 flip-flops that nothing used).
        drops = RegisterFile(rm.DROPS_RANGE[1], read_only={
            k: editor.drops[k] if k < len(DropReason) else 0 for k in range(rm.DROPS_RANGE[1])})
        m.submodules.drops = drops

        m.submodules.decoder = decoder = BusDecoder(rm.ADDR_BITS)
        # The classifier's register port behind a register stage of its own, which the placer
        # can put beside it: from the top's bus register (beside the bridge) through the
        # decoder to the port's read mux was the ULX3S 128/32 build's critical path, 18.9 ns,
        # 7.1 of them one route across the die.
        m.submodules.classifier_bus = classifier_bus = BusRegister(rm.ADDR_BITS)
        wiring.connect(m, classifier_bus.o, classifier.bus)
        decoder.add(classifier_bus.i, addr=rm.CLASSIFIER[0], size=rm.CLASSIFIER[1])
        decoder.add(counters.bus, addr=rm.PORTS_RANGE[0], size=rm.PORTS_RANGE[1])
        decoder.add(drops.bus, addr=rm.DROPS_RANGE[0], size=rm.DROPS_RANGE[1])
        wiring.connect(m, wiring.flipped(self.bus), decoder.bus)
        return m

