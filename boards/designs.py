"""Which gateware a board build holds: the largest piece of the VTEP that exists.

The board top builds one *design*, chosen here in one place:

- ``pipeline``: the real VTEP, ``hdl.top.VtepTop`` (``hdl.bridge.ControlBridge`` +
  ``hdl.pipeline.Pipeline``: parser -> classifier -> editor, tables and counters on the bus,
  frames injected and captured through the bridge) with the board UART in front of its byte
  streams (rx -> a 64-byte FIFO -> ``VtepTop.i``; ``VtepTop.o`` -> tx). 3 Mbaud on the FTDI
  boards (or the next FTDI rate the sync clock divides to within 2%: 2 Mbaud at the iCE40s'
  31.5 MHz), 115200 baud through an external adapter elsewhere (``Board.uart_baud``). Table
  geometry from --exact/--wildcard, else the board's default (``Board.geometry``); the
  wildcard CAM's chunk memories in LUT RAM or block RAM (:func:`cam_chunk_bits`);
- ``datapath``: ``hdl.datapath.Datapath`` (parser -> editor, the edit command riding along each
  frame), fed by an LFSR packet generator, its output folded into LEDs (and a UART status echo);
- ``fifo``: ``hdl.stream.PacketFifo`` in the same harness: the floor, for smoke tests.

``auto`` takes the first one available. The report says which one was built.
"""

import dataclasses
import importlib.util

__all__ = ["DESIGNS", "Design", "DesignUnavailable", "available_designs", "cam_chunk_bits",
           "resolve_design"]


class DesignUnavailable(Exception):
    """The design cannot be built from this tree (its modules are missing or do not match)."""


@dataclasses.dataclass(frozen=True)
class Design:
    """A built design: ``component`` (a ``wiring.Component`` with packet streams ``i``/``o``
    and any number of plain output ports), a one-line ``description`` for the report, and the
    table geometry it holds (0 entries when it has no classifier)."""
    name: str
    description: str
    component: object
    exact_entries: int = 0
    wildcard_entries: int = 0
    uses_uart: bool = False
    # "traffic": the board top feeds ``i``/``o`` (packet streams) from its LFSR harness;
    # "uart": ``i``/``o`` are byte streams behind the board UART at ``baud`` (``uart_divisor``
    # clock cycles a bit).
    harness: str = "traffic"
    baud: int = None
    uart_divisor: int = None


def _has_module(name):
    try:
        return importlib.util.find_spec(f"openvtep.hdl.{name}") is not None
    except ImportError:
        return False


# Rates an FTDI USB-UART makes exactly (3 MHz / n): the control UART steps down this list when
# the sync clock cannot divide to the board's preferred rate within hdl.uart's 2%.
FTDI_BAUDS = (3_000_000, 2_000_000, 1_500_000, 1_000_000, 921_600, 460_800, 230_400, 115_200)


def uart_baud(board, clk_freq):
    """``(baud, divisor)`` of the pipeline's control UART on ``board`` at ``clk_freq`` Hz: the
    board's ``uart_baud`` if the clock divides to it within 2%, else the next slower FTDI rate
    that it does."""
    from openvtep.hdl.uart import divisor
    rates = [board.uart_baud] + [b for b in FTDI_BAUDS if b < board.uart_baud]
    errors = []
    for baud in rates:
        try:
            return baud, divisor(clk_freq, baud)
        except ValueError as exc:
            errors.append(str(exc))
    raise DesignUnavailable(f"no UART rate for a {clk_freq / 1e6:g} MHz clock: "
                            + "; ".join(errors))


def board_geometry(board, geometry):
    """The table geometry of the pipeline on ``board``: ``geometry`` (from --exact/--wildcard)
    or the board's default."""
    from openvtep.tables import Geometry

    from .boards import Board
    if geometry is not None:
        return geometry
    exact, wildcard = (board or Board).geometry   # without a board, Board's default
    return Geometry(exact_entries=exact, wildcard_entries=wildcard)


# Wildcard positions up to which an ECP5 build keeps the wildcard CAM in LUT RAM.
LUT_CAM_POSITIONS = 32
# Key bits per CAM chunk memory in LUT RAM: 16 words (73 chunks, a TRELLIS_DPR16X4 per 4
# positions each); otherwise the classifier's default, 512 words of block RAM (33 chunks, a
# DP16KD each up to 36 positions).
LUT_CAM_CHUNK_BITS = 4


def cam_chunk_bits(board, geometry):
    """Key bits per wildcard CAM chunk memory (``Classifier(chunk_bits=)``) of the pipeline on
    ``board`` with ``geometry``.

    On ECP5 up to :data:`LUT_CAM_POSITIONS` positions, LUT RAM: a block RAM chunk holds 512
    words of which few positions use 4 bits each, yet it takes a block on a block RAM row,
    and 33 of them there crowd its wires. The ULX3S's W=8 64/4 build with block RAM chunks
    (55 blocks) did not route with seeds 1 to 4 (best 249 overused wires); with LUT RAM chunks
    (22 blocks) it routed at iteration 48, and 64/32 (23 blocks, some 5,000 LUTs more) at 191.
    Past 32 positions is untried: block RAM there. iCE40s have no LUT RAM (Yosys would build
    each chunk from flip-flops): block RAM."""
    from openvtep.hdl.classifier import CAM_CHUNK_BITS
    if (board is not None and board.family == "ecp5"
            and geometry.wildcard_entries <= LUT_CAM_POSITIONS):
        return LUT_CAM_CHUNK_BITS
    return CAM_CHUNK_BITS


def _pipeline(width, geometry, config, board=None, clk_freq=None):
    if not (_has_module("top") and _has_module("uart")):
        raise DesignUnavailable("hdl/top.py (VtepTop) and hdl/uart.py do not exist")
    from openvtep.hdl.top import VtepTop
    geometry = board_geometry(board, geometry)
    if board is not None and clk_freq is not None:
        baud, div = uart_baud(board, clk_freq)
        via = board.uart_via
    else:
        baud, div, via = None, None, "a UART"
    rate = f"{baud / 1e6:g} Mbaud (divisor {div})" if baud else "the board's rate"
    chunk_bits = cam_chunk_bits(board, geometry)
    vtep = VtepTop(width, config, geometry, chunk_bits=chunk_bits)
    cam = "LUT" if chunk_bits == LUT_CAM_CHUNK_BITS else "block"
    return Design("pipeline",
                  f"hdl.top.VtepTop (ControlBridge + Pipeline: parser -> classifier -> editor, "
                  f"capture FIFO of {vtep.capture_depth} beats), W={width}, tables "
                  f"exact={geometry.exact_entries} (profiles={geometry.exact_profiles}) "
                  f"wildcard={geometry.wildcard_entries} (CAM in {cam} RAM, "
                  f"{chunk_bits}-bit chunks); control protocol on hdl.uart at "
                  f"{rate} via {via}, rx through a {RX_FIFO_DEPTH}-byte FIFO",
                  vtep, exact_entries=geometry.exact_entries,
                  wildcard_entries=geometry.wildcard_entries, uses_uart=True,
                  harness="uart", baud=baud, uart_divisor=div)


RX_FIFO_DEPTH = 64


def _datapath(width, geometry, config, board=None, clk_freq=None):
    if not _has_module("datapath"):
        raise DesignUnavailable("hdl/datapath.py does not exist")
    from openvtep.hdl.datapath import Datapath
    frames = 16
    return Design("datapath",
                  f"hdl.datapath.Datapath (parser -> editor, frames={frames}, max_frame="
                  f"{config.max_frame}), W={width}; the datapath alone, without classifier or "
                  f"bridge: fed by an LFSR packet generator (random frames, commands, gaps, "
                  f"backpressure), "
                  f"outputs and drop counters folded into LEDs (and a UART status echo on "
                  f"boards with a free UART)",
                  Datapath(width, config, frames=frames))


def _fifo(width, geometry, config, board=None, clk_freq=None):
    from openvtep.hdl.stream import PacketFifo
    depth = 512
    return Design("fifo",
                  f"hdl.stream.PacketFifo (depth={depth}), W={width}, fed by an LFSR packet "
                  f"generator, output folded into LEDs (a smoke-test design, not the VTEP)",
                  PacketFifo(width, depth))


DESIGNS = {"pipeline": _pipeline, "datapath": _datapath, "fifo": _fifo}


def available_designs():
    return ("auto", *DESIGNS)


def resolve_design(name, width, geometry, config, board=None, clk_freq=None):
    """Build the design ``name`` (or the first available one for ``auto``) for ``board`` (a
    :class:`~openvtep.boards.boards.Board`, for the pipeline's UART rate and default geometry)
    clocked at ``clk_freq`` Hz; returns ``(Design, notes)`` where ``notes`` says why larger
    designs were skipped."""
    notes = []
    if name != "auto":
        if name not in DESIGNS:
            raise DesignUnavailable(f"unknown design {name!r}; choose one of: "
                                    f"{', '.join(available_designs())}")
        return DESIGNS[name](width, geometry, config, board, clk_freq), notes
    for candidate, factory in DESIGNS.items():
        try:
            return factory(width, geometry, config, board, clk_freq), notes
        except DesignUnavailable as exc:
            notes.append(f"{candidate}: {exc}")
    raise DesignUnavailable("no design can be built: " + "; ".join(notes))
