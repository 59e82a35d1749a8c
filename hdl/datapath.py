"""The parser -> editor datapath, with each frame's edit command riding along its beats.

Until the classifier exists, the command that says what to do with a frame arrives with the
frame itself: the input payload has ``port`` and ``cmd`` (an
:class:`~openvtep.hdl.headers.EditCommand`) fields next to ``data``/``keep``/``last``, constant
over the frame and sampled on its last beat. The classifier will later drive the editor's
``i_cmd`` from the parser's records instead.
"""

from amaranth.hdl import Module
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ..headers import DropReason
from .editor import Editor
from .headers import EditCommand, port_packet_layout
from .parser import Parser

__all__ = ["Datapath", "datapath_layout"]


def datapath_layout(width):
    """The :class:`Datapath` input payload: a packet beat with ``port`` and ``cmd``."""
    return port_packet_layout(width, cmd=EditCommand)


class Datapath(wiring.Component):
    """:class:`~openvtep.hdl.parser.Parser` then :class:`~openvtep.hdl.editor.Editor`.

    ``i`` carries frames with their input port and edit command; ``o`` the edited frames with
    their output port; ``drops`` counts dropped frames per :class:`DropReason`. Throughput,
    latency and backpressure are the editor's (the parser adds no latency to beats).

    Parameters
    ----------
    width : int
        Bytes per beat: a power of two, 4 or more.
    config : openvtep.config.VtepConfig
    frames : int
        Frames the editor's buffer may hold.
    """

    def __init__(self, width, config, *, frames=16):
        self.width = width
        self.config = config
        self.parser = Parser(width, config)
        self.editor = Editor(width, config, frames=frames)
        super().__init__({
            "i": In(stream.Signature(datapath_layout(width))),
            "o": Out(stream.Signature(port_packet_layout(width))),
            "drops": Out(data.ArrayLayout(32, len(DropReason))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.parser = parser = self.parser
        m.submodules.editor = editor = self.editor
        # One command per frame whose record the parser has not handed over yet: the parser
        # holds at most queue_depth + its pipeline of those.
        m.submodules.commands = commands = fifo.SyncFIFOBuffered(
            width=data.Layout.cast(EditCommand).size, depth=parser.queue_depth + 4)

        i = self.i
        m.d.comb += [
            parser.i.valid.eq(i.valid & commands.w_rdy),
            parser.i.p.data.eq(i.p.data),
            parser.i.p.keep.eq(i.p.keep),
            parser.i.p.last.eq(i.p.last),
            parser.i.p.port.eq(i.p.port),
            i.ready.eq(parser.i.ready & commands.w_rdy),
            commands.w_data.eq(i.p.cmd),
            commands.w_en.eq(i.valid & i.ready & i.p.last),
            editor.i_cmd.valid.eq(commands.r_rdy),
            editor.i_cmd.p.eq(commands.r_data),
            commands.r_en.eq(editor.i_cmd.ready),
            self.drops.eq(editor.drops),
        ]
        wiring.connect(m, parser.o, editor.i)
        wiring.connect(m, parser.o_hdr, editor.i_hdr)
        wiring.connect(m, editor.o, wiring.flipped(self.o))
        return m
