"""The frame editor: decap, encap, VLAN push/pop/modify and MAC rewrite, store-and-forward.

docs/semantics.md step 5 and "Encapsulation" (RFC 7348 §5, IEEE 802.1Q); the executable form is
``openvtep.reference.Reference._emit``.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import headers as h
from ..headers import DropReason, Port
from ..rules import VlanOp
from .headers import (
    UDP,
    VXLAN,
    EditCommand,
    Ethernet,
    IPv4,
    OutPort,
    ParsedHeaders,
    byteswap,
    port_packet_layout,
    to_wire,
)
from .parser import ones_complement_fold
from .stream import packet_signature

__all__ = ["HEADER_BYTES", "Editor", "tunnel_src_port"]

_MAC_BYTES = 12  # dl_dst, dl_src: what every non-raw output header starts with
# The longest header the editor writes in front of the copied tail: encap, MACs, a VLAN tag.
HEADER_BYTES = h.ENCAP_BYTES + _MAC_BYTES + h.VLAN_BYTES


def tunnel_src_port(dl_dst, dl_src, dl_type, nw_src, nw_dst, nw_proto, tp_src, tp_dst):
    """The VXLAN UDP source port (combinational): the gateware twin of
    :func:`openvtep.headers.tunnel_src_port`, XOR of rotated 16-bit words."""
    words = [
        dl_dst[32:48], dl_dst[16:32], dl_dst[0:16],
        dl_src[32:48], dl_src[16:32], dl_src[0:16],
        dl_type[0:16],
        nw_src[16:32], nw_src[0:16], nw_dst[16:32], nw_dst[0:16],
        Cat(nw_proto[0:8], Const(0, 8)),
        tp_src[0:16], tp_dst[0:16],
    ]
    assert len(words) == h.HASH_WORDS
    folded = Const(0, 16)
    for word, rotation in zip(words, h.HASH_ROTATIONS):
        folded = folded ^ word.rotate_left(rotation)
    return h.SRC_PORT_BASE | (folded & h.SRC_PORT_MASK)


def _bits_for(n):
    return max(1, (n - 1).bit_length())


class Editor(wiring.Component):
    """Store-and-forward frame editor.

    Every frame from ``i`` is written whole into a packet buffer in block RAM (one ``W``-byte
    word per beat, each frame starting on a word). Its :class:`ParsedHeaders` record (from the
    :class:`~openvtep.hdl.parser.Parser`, on ``i_hdr``) and :class:`EditCommand` (on ``i_cmd``,
    one per frame, in frame order) are joined once the frame is stored, and turned into an
    output plan: a header of up to :data:`HEADER_BYTES` bytes built in registers (the encap
    header with its IPv4 checksum, lengths and the hashed UDP source port; the possibly
    rewritten MACs; a VLAN tag) followed by the frame's bytes from some offset on. The output
    engine reads the buffer through two read ports (words ``k`` and ``k+1``) and realigns them
    to any byte shift, so every output beat takes one cycle: a frame leaves in
    ``ceil(out_bytes / W)`` cycles, right after the previous one.

    Drops (the parser's verdict, or the command's ``drop``) emit nothing; the frame is discarded
    from the buffer and counted in ``drops[reason]``.

    A command with ``punt`` emits the frame twice from the same stored words: the edited output,
    then (right after it, with no bubble) the frame exactly as it arrived on
    :attr:`Port.CONTROLLER` (docs/semantics.md step 5, ``controller``). The frame's words are
    freed after the copy. Per output port frames stay in input order; on the shared ``o`` the
    copy costs its own ``ceil(n_in / W)`` beats.

    Latency: from a frame's last input beat to its first output beat, about 6 cycles after its
    record and command are both available (more when the output is still busy): the join takes
    two stages (the decisions, then the headers and the plan), the output engine two.

    Backpressure: ``i`` stalls while the buffer has no free word or ``frames`` frames are
    stored; ``o`` may stall at any time (``o.valid``/``o.payload`` hold).

    Parameters
    ----------
    width : int
        Bytes per beat: a power of two, 4 or more.
    config : openvtep.config.VtepConfig
        ``local_ip``, ``local_mac``, ``gateway_mac``, ``udp_port``, ``ttl``, ``max_frame``.
    frames : int
        Frames the buffer may hold at once (descriptor queue depth).
    """

    def __init__(self, width, config, *, frames=16):
        if not isinstance(width, int) or width < 4 or width & (width - 1):
            raise ValueError(f"Editor width must be a power of two >= 4, not {width!r}")
        if not isinstance(frames, int) or frames < 2:
            raise ValueError(f"Editor frames must be an integer >= 2, not {frames!r}")
        self.width = width
        self.config = config
        self.frames = frames
        self.max_words = -(-config.max_frame // width)
        # Room for two frames of max_frame (one leaving while the next one arrives) and more.
        self.depth = 1 << _bits_for(2 * self.max_words + 4 * frames)
        super().__init__({
            "i": In(packet_signature(width)),
            "i_hdr": In(stream.Signature(ParsedHeaders)),
            "i_cmd": In(stream.Signature(EditCommand)),
            "o": Out(stream.Signature(port_packet_layout(width))),
            "drops": Out(data.ArrayLayout(32, len(DropReason))),
        })

    def elaborate(self, platform):
        m = Module()
        width, cfg = self.width, self.config
        shift = _bits_for(width)
        abits = _bits_for(self.depth)
        header_beats = -(-HEADER_BYTES // width)

        m.submodules.buffer = buf = Memory(shape=unsigned(8 * width), depth=self.depth, init=[])
        wp = buf.write_port()
        rp0 = buf.read_port()
        rp1 = buf.read_port()

        # Word pointers with a wrap bit.
        wr_ptr = Signal(abits + 1)
        free_ptr = Signal(abits + 1)
        stored = Signal(range(self.frames + 1))     # frames fully written and not yet freed
        unjoined = Signal(range(self.frames + 1))   # frames fully written, not yet joined
        frame_words = Signal(range(self.max_words + 1))

        # --- Write side. ---------------------------------------------------------------------
        used = Signal(abits + 1)
        m.d.comb += [
            used.eq(wr_ptr - free_ptr),
            self.i.ready.eq((used < self.depth) & (stored < self.frames)),
        ]
        wrote_last = Signal()
        freed = Signal()   # a frame leaves the buffer this cycle
        new_free = Signal(abits + 1)
        joined = Signal()
        took = self.i.valid & self.i.ready
        write = Signal()
        m.d.comb += [
            write.eq(took & (frame_words < self.max_words)),  # an over-long frame's tail is not
            wrote_last.eq(took & self.i.p.last),             # stored: it is dropped anyway
            wp.addr.eq(wr_ptr[:abits]),
            wp.data.eq(self.i.p.data),
            wp.en.eq(write),
        ]
        with m.If(write):
            m.d.sync += [wr_ptr.eq(wr_ptr + 1), frame_words.eq(frame_words + 1)]
        with m.If(wrote_last):
            m.d.sync += frame_words.eq(0)
        m.d.sync += [
            stored.eq(stored + wrote_last - freed),
            unjoined.eq(unjoined + wrote_last - joined),
        ]
        with m.If(freed):
            m.d.sync += free_ptr.eq(new_free)

        # --- Join: record + command of a stored frame -> output plan. -----------------------
        rec = self.i_hdr.p
        cmd = self.i_cmd.p
        desc_layout = data.StructLayout({
            "drop": 1,
            "end": abits + 1,       # the frame's words end here (the new free pointer)
            "start": abits,         # word read first (through rp0)
            "shift": shift,         # byte offset of the output in (word, next word)
            "header": 8 * width * header_beats,
            "header_len": range(HEADER_BYTES + 1),
            "out_len": 16,
            "port": 2,
            "punt": 1,              # then the frame as it arrived, to the controller
            "first": abits,         # the frame's first word
            "length": 16,           # the frame's length as it arrived
        })
        m.submodules.plans = plans = fifo.SyncFIFOBuffered(
            width=desc_layout.size, depth=self.frames)
        join_ptr = Signal(abits + 1)   # first word of the next frame to join
        # The join is two stages: J takes a record and command and registers what they decide
        # (port, lengths, VLAN, MACs), P computes the headers from those registers and queues
        # the plan (so no path runs from the classifier's verdict through the checksum).
        j_valid = Signal()
        j_ready = Signal()
        m.d.comb += [
            j_ready.eq(~j_valid | plans.w_rdy),
            joined.eq(self.i_hdr.valid & self.i_cmd.valid & (unjoined != 0) & j_ready),
        ]
        m.d.comb += [self.i_hdr.ready.eq(joined), self.i_cmd.ready.eq(joined)]

        words = Signal(range(self.max_words + 1))
        nbeats = (rec.length + (width - 1)) >> shift
        m.d.comb += words.eq(Mux(nbeats > self.max_words, self.max_words, nbeats))
        with m.If(joined):
            m.d.sync += join_ptr.eq(join_ptr + words)

        drop = Signal()
        reason = Signal(DropReason)
        m.d.comb += [
            drop.eq(rec.drop | cmd.drop),
            reason.eq(Mux(rec.drop, rec.reason, cmd.reason)),
        ]
        # A drop is counted the cycle after its join, from a one-hot register: each counter has
        # its own incrementer, with no path from the verdict through a counter select.
        dropped = Signal(len(DropReason))
        m.d.sync += dropped.eq(Mux(joined & drop, 1 << reason, 0))
        for k in range(len(DropReason)):
            with m.If(dropped[k]):
                m.d.sync += self.drops[k].eq(self.drops[k] + 1)

        port = Signal(2)
        m.d.comb += port.eq(Mux(cmd.port == OutPort.IN_PORT, rec.port, cmd.port))
        raw = port == Port.CONTROLLER   # the frame exactly as it arrived
        encap = cmd.encap & (port == Port.NET)
        tagged_in = rec.vlan_valid
        tagged_out = Signal()
        tci_out = Signal(16)
        op = cmd.vlan_op
        m.d.comb += [
            tagged_out.eq(Mux(op == VlanOp.KEEP, tagged_in, op != VlanOp.STRIP)),
            tci_out.eq(Mux(op == VlanOp.KEEP, rec.tci,
                           Mux(op == VlanOp.SET_VID,
                               Mux(tagged_in, rec.tci & 0xF000, 0) | cmd.vid, cmd.vid))),
        ]

        # The output is header[0:header_len] ++ frame[skip:]; the header replaces the frame's
        # outer headers (if decapsulated), MACs and VLAN tag.
        skip = Signal(range(64 + 16))
        header_len = Signal(range(HEADER_BYTES + 1))
        inner_len = Signal(16)   # the inner frame as emitted
        m.d.comb += [
            skip.eq(Mux(raw, 0, rec.strip + _MAC_BYTES + Mux(tagged_in, h.VLAN_BYTES, 0))),
            inner_len.eq(rec.length - rec.strip +
                         Mux(tagged_out, h.VLAN_BYTES, 0) - Mux(tagged_in, h.VLAN_BYTES, 0)),
            header_len.eq(Mux(raw, 0, Mux(encap, h.ENCAP_BYTES, 0) + _MAC_BYTES +
                                      Mux(tagged_out, h.VLAN_BYTES, 0))),
        ]
        # --- Stage J -> P registers. -------------------------------------------------------
        j = Signal(data.StructLayout({
            "drop": 1, "port": 2, "encap": 1, "tci": 16,
            "skip": range(64 + 16), "header_len": range(HEADER_BYTES + 1), "inner_len": 16,
            "dl_dst": 48, "dl_src": 48, "dl_type": 16, "nw_src": 32, "nw_dst": 32,
            "nw_proto": 8, "tp_src": 16, "tp_dst": 16, "tun_dst": 32, "vni": 24, "punt": 1,
            "length": 16, "join_ptr": abits + 1, "words": range(self.max_words + 1),
        }))
        with m.If(joined):
            m.d.sync += [
                j_valid.eq(1),
                j.drop.eq(drop),
                j.port.eq(port),
                j.encap.eq(encap),
                j.tci.eq(tci_out),
                j.skip.eq(skip),
                j.header_len.eq(header_len),
                j.inner_len.eq(inner_len),
                j.dl_dst.eq(Mux(cmd.set_dl_dst, cmd.dl_dst, rec.dl_dst)),
                j.dl_src.eq(Mux(cmd.set_dl_src, cmd.dl_src, rec.dl_src)),
                j.dl_type.eq(rec.dl_type),
                j.nw_src.eq(rec.nw_src),
                j.nw_dst.eq(rec.nw_dst),
                j.nw_proto.eq(rec.nw_proto),
                j.tp_src.eq(rec.tp_src),
                j.tp_dst.eq(rec.tp_dst),
                j.tun_dst.eq(cmd.tun_dst),
                j.vni.eq(Mux(cmd.set_vni, cmd.vni, rec.tun_id)),
                j.punt.eq(cmd.punt & ~raw),
                j.length.eq(rec.length),
                j.join_ptr.eq(join_ptr),
                j.words.eq(words),
            ]
        with m.Elif(plans.w_rdy):
            m.d.sync += j_valid.eq(0)

        # --- Stage P: the output header and the plan. ---------------------------------------
        dl_dst, dl_src = j.dl_dst, j.dl_src
        inner_header = Cat(
            to_wire(Ethernet, {"dst": dl_dst, "src": dl_src, "type": Const(h.ETHERTYPE_VLAN,
                                                                           16)}),
            byteswap(j.tci, 2))

        total_length = Signal(16)
        m.d.comb += total_length.eq(h.IPV4_BYTES + h.UDP_BYTES + h.VXLAN_BYTES + j.inner_len)
        ip_fields = {
            "ver_ihl": Const(0x45, 8), "total_length": total_length,
            "flags_frag": Const(h.IPV4_DF, 16), "ttl": Const(cfg.ttl, 8),
            "proto": Const(h.IPPROTO_UDP, 8), "src": Const(cfg.local_ip, 32),
            "dst": j.tun_dst,
        }
        # The header's constant words (version/IHL and TOS, flags, TTL and protocol, source
        # address; identification and checksum are 0) are summed here: the gateware adds three.
        constant_sum = (0x45 << 8) + h.IPV4_DF + (cfg.ttl << 8 | h.IPPROTO_UDP) + \
            (cfg.local_ip >> 16) + (cfg.local_ip & 0xFFFF)
        ip_sum = ones_complement_fold(constant_sum + total_length + j.tun_dst[16:32] +
                                      j.tun_dst[0:16])
        sport = tunnel_src_port(dl_dst, dl_src, j.dl_type, j.nw_src, j.nw_dst,
                                j.nw_proto, j.tp_src, j.tp_dst)
        outer_header = Cat(
            to_wire(Ethernet, {"dst": Const(cfg.gateway_mac, 48),
                               "src": Const(cfg.local_mac, 48),
                               "type": Const(h.ETHERTYPE_IPV4, 16)}),
            to_wire(IPv4, {**ip_fields, "checksum": ~ip_sum}),
            to_wire(UDP, {"src_port": sport, "dst_port": Const(cfg.udp_port, 16),
                          "length": (h.UDP_BYTES + h.VXLAN_BYTES + j.inner_len)[:16]}),
            to_wire(VXLAN, {"flags": Const(h.VXLAN_FLAG_I, 8),
                            "vni": j.vni}),
        )

        delta = Signal(signed(8))   # frame byte offset - output byte offset, for the tail
        m.d.comb += delta.eq(j.skip - j.header_len)
        plan = Signal(desc_layout)
        m.d.comb += [
            plan.drop.eq(j.drop),
            plan.end.eq(j.join_ptr + j.words),
            plan.start.eq((j.join_ptr + (delta >> shift))[:abits]),
            plan.shift.eq(delta[:shift]),
            plan.header.eq(Mux(j.encap, Cat(outer_header, inner_header), inner_header)),
            plan.header_len.eq(j.header_len),
            plan.out_len.eq(j.length - j.skip + j.header_len),
            plan.port.eq(j.port),
            plan.punt.eq(j.punt),
            plan.first.eq(j.join_ptr[:abits]),
            plan.length.eq(j.length),
            plans.w_data.eq(plan),
            plans.w_en.eq(j_valid),
        ]

        # --- Output engine: stage A walks the plan beat by beat and addresses the buffer;
        # stage B holds the read words and forms the beat. ----------------------------------
        head = Signal(desc_layout)
        m.d.comb += head.eq(Mux(plans.r_rdy, plans.r_data, 0))

        a_valid = Signal()
        a_addr = Signal(abits)
        a_header = Signal(8 * width * header_beats)
        a_header_left = Signal(range(HEADER_BYTES + 1))
        a_left = Signal(16)      # output bytes from this beat on
        a_shift = Signal(shift)
        a_port = Signal(2)
        a_end = Signal(abits + 1)
        a_last = a_left <= width
        a_punt = Signal()        # the controller copy follows this output
        a_first = Signal(abits)
        a_length = Signal(16)

        b_valid = Signal()
        b_header = Signal(8 * width)
        b_header_left = Signal(range(width + 1))
        b_bytes = Signal(range(width + 1))
        b_last = Signal()
        b_shift = Signal(shift)
        b_port = Signal(2)

        advance = Signal()
        m.d.comb += advance.eq(a_valid & (~b_valid | self.o.ready))
        m.d.comb += [
            rp0.addr.eq(a_addr),
            rp1.addr.eq(a_addr + 1),
            rp0.en.eq(advance),
            rp1.en.eq(advance),
        ]

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += b_valid.eq(0)
        with m.If(advance):
            m.d.sync += [
                b_valid.eq(1),
                b_header.eq(a_header[:8 * width]),
                b_header_left.eq(Mux(a_header_left > width, width, a_header_left)),
                b_bytes.eq(Mux(a_last, a_left, width)),
                b_last.eq(a_last),
                b_shift.eq(a_shift),
                b_port.eq(a_port),
                a_addr.eq(a_addr + 1),
                a_header.eq(a_header[8 * width:]),
                a_header_left.eq(Mux(a_header_left > width, a_header_left - width, 0)),
                a_left.eq(a_left - width),
            ]

        def load(plan):
            m.d.sync += [
                a_valid.eq(1),
                a_addr.eq(plan.start),
                a_header.eq(plan.header),
                a_header_left.eq(plan.header_len),
                a_left.eq(plan.out_len),
                a_shift.eq(plan.shift),
                a_port.eq(plan.port),
                a_end.eq(plan.end),
                a_punt.eq(plan.punt),
                a_first.eq(plan.first),
                a_length.eq(plan.length),
            ]

        def load_punt():
            # The same frame again, from its first word: no header, no shift, as it arrived.
            m.d.sync += [
                a_addr.eq(a_first),
                a_header_left.eq(0),
                a_left.eq(a_length),
                a_shift.eq(0),
                a_port.eq(Port.CONTROLLER),
                a_punt.eq(0),
            ]

        # Plain expressions rather than m.If for these controls: they hold from reset until the
        # first frame, and Icarus would leave an always @* block's outputs X until an input moves.
        finishing = Signal()   # the last beat of a frame's last output leaves stage A
        punting = Signal()     # the last beat of an output with a controller copy to follow
        drop_head = Signal()   # a dropped frame's words are freed in order: only with A empty
        load_head = Signal()
        m.d.comb += [
            finishing.eq(advance & a_last & ~a_punt),
            punting.eq(advance & a_last & a_punt),
            drop_head.eq(plans.r_rdy & head.drop & ~a_valid),
            load_head.eq(plans.r_rdy & ~head.drop & (~a_valid | finishing)),
            plans.r_en.eq(drop_head | load_head),
            freed.eq(finishing | drop_head),
            new_free.eq(Mux(finishing, a_end, head.end)),
        ]
        with m.If(finishing):
            m.d.sync += a_valid.eq(0)
        with m.If(load_head):
            load(head)
        with m.If(punting):
            load_punt()

        # Stage B: the beat is header bytes, then the frame's bytes realigned.
        pair = Cat(rp0.data, rp1.data)
        tail = pair.bit_select(b_shift * 8, 8 * width)
        lanes = []
        for lane in range(width):
            lanes.append(Mux(lane < b_header_left, b_header[8 * lane:8 * (lane + 1)],
                             tail[8 * lane:8 * (lane + 1)]))
        m.d.comb += [
            self.o.valid.eq(b_valid),
            self.o.p.data.eq(Cat(*lanes)),
            self.o.p.keep.eq(Cat(*(lane < b_bytes for lane in range(width)))),
            self.o.p.last.eq(b_last),
            self.o.p.port.eq(b_port),
        ]

        return m
