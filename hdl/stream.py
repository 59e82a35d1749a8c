"""Packet streams: the payload layout every openvtep block speaks, and the basic stream blocks.

A packet stream is an :class:`amaranth.lib.stream.Signature` whose payload is
:func:`packet_layout`: ``data`` (``width`` bytes, frame byte 0 in the lowest byte lane, i.e.
bits ``[7:0]``), ``keep`` (``width`` byte enables) and ``last`` (the beat ends the frame).

Stream rules (see ``docs/stdlib/stream.rst`` of Amaranth, and DESIGN.md):

- A beat transfers on a cycle where ``valid & ready``.
- ``valid`` never depends on ``ready``; once raised it stays high until the transfer, and the
  payload does not change while ``valid & ~ready`` (stalled).
- ``keep`` is contiguous from lane 0; it is all ones on every beat except possibly the ``last``
  one, which holds 1 to ``width`` bytes (never zero: there are no empty beats or frames).

The blocks here move beats without looking at them, so they work for any payload; they are typed
with :func:`packet_signature` because that is what the pipeline connects (:class:`RegisterSlice`
also takes any other payload layout).
"""

from amaranth.hdl import Module, Shape
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PacketFifo", "RegisterSlice", "packet_layout", "packet_signature"]


def _check_width(width):
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"Stream width must be a positive integer number of bytes, "
                         f"not {width!r}")


def packet_layout(width):
    """The payload layout of a ``width``-byte packet stream.

    Fields, LSB first: ``data`` (``8 * width`` bits, frame byte ``k`` of the beat in bits
    ``[8k+7:8k]``), ``keep`` (``width`` bits, bit ``k`` enables byte ``k``), ``last`` (1 bit).
    Simulation helpers (``openvtep.sim.stream``) take their bit offsets from this layout.

    Raises :class:`ValueError` unless ``width`` is an integer >= 1.
    """
    _check_width(width)
    return data.StructLayout({
        "data": 8 * width,
        "keep": width,
        "last": 1,
    })


def packet_signature(width):
    """The :class:`amaranth.lib.stream.Signature` of a ``width``-byte packet stream
    (payload :func:`packet_layout`). Raises :class:`ValueError` on a bad ``width``."""
    return stream.Signature(packet_layout(width))


class RegisterSlice(wiring.Component):
    """Register slice: one pipeline register on a packet stream (or a stream of any payload).

    Takes a beat whenever its register is empty or is being emptied in the same cycle
    (``i.ready = ~o.valid | o.ready``), so it runs at full throughput, one beat per cycle.

    Latency: 1 cycle (a beat accepted on ``i`` in cycle *t* is offered on ``o`` in cycle *t+1*).

    Backpressure: ``o.valid`` and ``o.payload`` are registers: they break the forward
    (valid/payload) timing path, and hold while ``o`` is stalled. ``i.ready`` is combinational
    from ``o.ready`` (the backward path is not registered; use :class:`PacketFifo` or a skid
    buffer for that).

    Parameters
    ----------
    width : int
        Bytes per beat (>= 1) of a packet stream; ``None`` with ``payload``.
    payload : shape-castable
        The payload of a stream that is not a packet stream (instead of ``width``), e.g. the
        control bridge's reply bytes.
    """

    def __init__(self, width=None, *, payload=None):
        if (width is None) == (payload is None):
            raise ValueError("RegisterSlice takes a packet stream's width or a payload, "
                             "one of them")
        if payload is None:
            _check_width(width)
            payload = packet_layout(width)
        self.width = width
        super().__init__({
            "i": In(stream.Signature(payload)),
            "o": Out(stream.Signature(payload)),
        })

    def elaborate(self, platform):
        m = Module()

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += self.o.valid.eq(self.i.valid)
            with m.If(self.i.valid):
                m.d.sync += self.o.payload.eq(self.i.payload)

        return m


class PacketFifo(wiring.Component):
    """First-in first-out queue of packet stream beats, in block RAM.

    The project's one stream-typed adapter around :class:`amaranth.lib.fifo.SyncFIFOBuffered`
    (whose storage is synchronous-read memory, so it maps to FPGA block RAM). Beats go through
    unchanged; it does not look at ``last``, so it holds ``depth`` beats, not ``depth`` frames.

    Throughput: one beat per cycle in and out at once (needs ``depth >= 3``).

    Latency: 2 cycles from a beat accepted on ``i`` into an empty queue to it being offered on
    ``o``.

    Backpressure: ``i.ready`` is low while ``depth`` beats are stored (more exactly, while the
    RAM part, ``depth - 1`` beats, is full); it is a register output and does not depend
    combinationally on ``o.ready``. ``o.valid``/``o.payload`` hold while ``o`` is stalled.

    Parameters
    ----------
    width : int
        Bytes per beat (>= 1).
    depth : int
        Capacity in beats (>= 3).

    Attributes
    ----------
    level : Signal(range(depth + 1))
        Beats stored, for status and tests.
    """

    def __init__(self, width, depth):
        _check_width(width)
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 3:
            raise ValueError(f"PacketFifo depth must be an integer >= 3 (full throughput), "
                             f"not {depth!r}")
        self.width = width
        self.depth = depth
        self._fifo = fifo.SyncFIFOBuffered(width=Shape.cast(packet_layout(width)).width,
                                           depth=depth)
        self.level = self._fifo.level
        super().__init__({
            "i": In(packet_signature(width)),
            "o": Out(packet_signature(width)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = buf = self._fifo

        m.d.comb += [
            buf.w_data.eq(self.i.payload),
            buf.w_en.eq(self.i.valid),
            self.i.ready.eq(buf.w_rdy),

            self.o.payload.eq(buf.r_data),
            self.o.valid.eq(buf.r_rdy),
            buf.r_en.eq(self.o.ready),
        ]

        return m
