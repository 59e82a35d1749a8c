"""The whole VTEP behind the control bridge: what the virtual board serves and a board top wraps
(with a UART in front of ``i``/``o``).

:class:`VtepTop` is a :class:`~openvtep.hdl.bridge.ControlBridge` and a
:class:`~openvtep.hdl.pipeline.Pipeline`:

- the bridge's bus goes to a :class:`~openvtep.hdl.bus.BusDecoder` with the pipeline's bus
  (tables, rule/port/drop counters: :mod:`openvtep.regmap`), behind a
  :class:`~openvtep.hdl.bus.BusRegister`, at :data:`PIPELINE_BASE` and the top's own registers
  (:data:`TOP_REGS`) at :data:`TOP_BASE`;
- frames injected through the bridge (``INJECT``) enter the pipeline on their port: on boards
  without an Ethernet PHY (and on the virtual board) this is how host and net frames arrive;
- every frame the pipeline emits goes, with its output port, through a capture FIFO (a few
  largest frames deep, so captures queue while the host polls) to the bridge (``CAPTURE``).

``IDENTIFY`` reports W, the table sizes (:class:`~openvtep.tables.Geometry`) and a build id
(:func:`build_id`: a CRC of W, the configuration and the geometry), so the host can tell
whether a board was built for the configuration it compares with.

Backpressure: the pipeline's output stalls while the capture FIFO has room for fewer than
two beats (a register says so, the cycle after); the FIFO drains as the host captures.
Inject stalls while the pipeline's input buffer is full.
"""

from amaranth.hdl import Module, Mux, Shape, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .. import protocol as p
from .. import regmap as rm
from ..tables import Geometry
from .bridge import ControlBridge, frame_layout
from .bus import BusDecoder, BusRegister, RegisterFile
from .classifier import CAM_CHUNK_BITS
from .pipeline import Pipeline

__all__ = ["ENCAP_GROWTH", "PIPELINE_BASE", "TOP_BASE", "TOP_ID", "TOP_REGS", "VtepTop",
           "build_id"]

PIPELINE_BASE = 0x000000          # the pipeline's bus (regmap addresses) on the bridge's bus
TOP_BASE = 0x010000               # the top's registers
TOP_ID = 0x0E7E_7001
# Words of the top's registers (offsets from TOP_BASE). All read-only but ``tables``: a word
# the host writes after loading the tables (reset clears it), so a later session can tell
# whether the tables still hold their reset contents.
TOP_REGS = {"id": 0, "build_id": 1, "capture_level": 2, "capture_depth": 3, "cycles": 4,
            "tables": 5}
# Bytes a frame may grow by in the pipeline: a VXLAN encapsulation (50) and a VLAN push (4).
ENCAP_GROWTH = 54
IDLE_QUIET = 64                   # cycles without frame traffic before the top reports idle


def build_id(width, config, geometry):
    """A 32-bit identifier of what the gateware was built for (W, config, geometry)."""
    text = f"openvtep w={width} {config!r} {geometry!r}"
    return p.crc32(text.encode())


class VtepTop(wiring.Component):
    """Control bridge + pipeline + capture FIFO. Byte streams ``i`` (requests) and ``o``
    (replies), ``idle`` (nothing in progress: no message, no frame in flight, for the virtual
    board's sleep).

    Parameters
    ----------
    width : int
        Bytes per beat of the pipeline.
    config : openvtep.config.VtepConfig
        The VTEP configuration the gateware is built with.
    geometry : openvtep.tables.Geometry
        Table sizes (default ``Geometry()``).
    capture_frames : int
        Largest frames the capture FIFO holds.
    frames : int
        Frames the pipeline's editor buffer holds.
    chunk_bits : int
        Key bits per wildcard CAM memory of the classifier (``hdl.classifier.Classifier``).
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))
    idle: Out(1)

    def __init__(self, width, config, geometry=None, *, capture_frames=4, frames=16,
                 bus_timeout=4096, chunk_bits=CAM_CHUNK_BITS):
        geometry = Geometry() if geometry is None else geometry
        if not isinstance(capture_frames, int) or capture_frames < 1:
            raise ValueError(f"capture_frames must be a positive integer, not "
                             f"{capture_frames!r}")
        self.width = width
        self.config = config
        self.geometry = geometry
        self.build_id = build_id(width, config, geometry)
        # Captured frames may be longer than injected ones (encap, VLAN push).
        max_frame = config.max_frame + ENCAP_GROWTH
        self.pipeline = Pipeline(width, config, geometry, frames=frames, chunk_bits=chunk_bits)
        self.bridge = ControlBridge(
            width, max_frame=max_frame, max_request=max(2048, max_frame + 64),
            bus_timeout=bus_timeout, exact_entries=geometry.exact_entries,
            wildcard_entries=geometry.wildcard_entries, counters=geometry.rules & 0xFFFF,
            build_id=self.build_id)
        beats = -(-max_frame // width) * capture_frames
        self.capture_depth = 1 << (beats - 1).bit_length()
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = self.bridge
        m.submodules.pipeline = pipeline = self.pipeline
        wiring.connect(m, wiring.flipped(self.i), bridge.i)
        wiring.connect(m, bridge.o, wiring.flipped(self.o))

        # Inject -> pipeline (the layouts have the same fields: data, keep, last, port).
        inj = bridge.o_inject
        m.d.comb += [
            pipeline.i.valid.eq(inj.valid),
            pipeline.i.payload.eq(inj.payload),
            inj.ready.eq(pipeline.i.ready),
        ]

        # Pipeline -> capture FIFO -> bridge.
        layout = frame_layout(self.width)
        m.submodules.capture = capture = fifo.SyncFIFOBuffered(
            width=Shape.cast(layout).width, depth=self.capture_depth)
        out, cap = pipeline.o, bridge.i_capture
        # The pipeline's output is taken while a register says there is room for two more
        # beats (one may be written in the cycle the register loads): the FIFO's level compare
        # no longer feeds the editor's output logic (the W=8 ULX3S build's critical path).
        room = Signal()
        m.d.sync += room.eq(capture.level < self.capture_depth - 2)
        m.d.comb += [
            capture.w_data.eq(out.payload), capture.w_en.eq(out.valid & room),
            out.ready.eq(room),
            cap.payload.eq(capture.r_data), cap.valid.eq(capture.r_rdy),
            capture.r_en.eq(cap.ready),
        ]

        cycles = Signal(32)
        m.d.sync += cycles.eq(cycles + 1)
        regs = RegisterFile(len(TOP_REGS), read_only={
            TOP_REGS["id"]: TOP_ID,
            TOP_REGS["build_id"]: self.build_id,
            TOP_REGS["capture_level"]: capture.level,
            TOP_REGS["capture_depth"]: self.capture_depth,
            TOP_REGS["cycles"]: cycles,
        })  # "tables" is a plain read/write word
        m.submodules.regs = regs
        m.submodules.decoder = decoder = BusDecoder(p.ADDR_BITS)
        m.submodules.pipeline_bus = pipeline_bus = BusRegister(rm.ADDR_BITS)
        wiring.connect(m, pipeline_bus.o, pipeline.bus)
        decoder.add(pipeline_bus.i, addr=PIPELINE_BASE, size=1 << rm.ADDR_BITS)
        decoder.add(regs.bus, addr=TOP_BASE, size=8)
        wiring.connect(m, bridge.bus, decoder.bus)

        # Idle: the bridge has nothing to do, no frame is between the pipeline's input and
        # its verdict, and no frame has moved for a while (the editor's output and the capture
        # buffer's fill take a few cycles after the verdict). A frame stalled behind a full
        # capture buffer waits for the host, which wakes the board.
        in_flight = Signal(range(64))
        entered = pipeline.i.valid & pipeline.i.ready & pipeline.i.payload.last
        decided = pipeline.done.valid
        m.d.sync += in_flight.eq(in_flight + entered - decided)
        moving = ((inj.valid & inj.ready) | (out.valid & out.ready) | (cap.valid & cap.ready)
                  | decided)
        quiet = Signal(range(IDLE_QUIET + 1))
        m.d.sync += quiet.eq(Mux(moving, 0, Mux(quiet == IDLE_QUIET, quiet, quiet + 1)))
        m.d.comb += self.idle.eq(bridge.idle & (in_flight == 0) & (quiet == IDLE_QUIET))
        return m
