"""The packet parser: validates each frame and extracts its match fields.

Implements docs/semantics.md steps 1-3 (the executable form is ``openvtep.reference``):
length checks, the VXLAN tunnel-candidate checks in their documented order (RFC 791 header
checksum, RFC 7348 §5 VXLAN I flag), decapsulation, and the match fields of the (inner) frame.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .. import headers as h
from ..headers import DropReason, Port
from .headers import (
    UDP,
    VXLAN,
    Ethernet,
    IPv4,
    ParsedHeaders,
    byteswap,
    from_wire,
    port_packet_layout,
)
from .stream import packet_signature

__all__ = ["INNER_WINDOW_BYTES", "WINDOW_BYTES", "Parser", "ones_complement_fold",
           "ones_complement_sum"]

_TAGGED_L2 = h.ETH_BYTES + h.VLAN_BYTES
_TUNNEL_HEADERS = h.IPV4_BYTES + h.UDP_BYTES + h.VXLAN_BYTES  # 36: after the outer L2 header
_MAX_IHL = 15
# The inner frame's bytes the match fields can reach: tagged L2, the longest IPv4 header
# (IHL 15), the TCP/UDP ports.
INNER_WINDOW_BYTES = _TAGGED_L2 + 4 * _MAX_IHL + 4
# The frame's bytes the parser keeps: the longest outer header and an inner window after it.
WINDOW_BYTES = _TAGGED_L2 + _TUNNEL_HEADERS + INNER_WINDOW_BYTES
_LENGTH_MAX = 0xFFFF  # the byte count saturates here (any longer frame is oversize anyway)


def ones_complement_sum(words):
    """RFC 1071 one's-complement sum of up to 2**16 16-bit values, folded to 16 bits
    (combinational). A correct IPv4 header, checksum included, sums to 0xFFFF."""
    return ones_complement_fold(sum(words[1:], words[0]))


def ones_complement_fold(total):
    """Fold a plain sum of up to 2**16 16-bit values to their 16-bit one's-complement sum."""
    total = total[:16] + total[16:32]     # at most 0xFFFF + 0xFFFF: 17 bits
    return (total[:16] + total[16])[:16]  # the end-around carry cannot carry again


def _bytes(window, offset, count):
    """Wire bytes ``offset .. offset + count`` of a window value (byte 0 lowest)."""
    return window[8 * offset:8 * (offset + count)]


def _mux_offset(window, offsets, select, count):
    """``count`` wire bytes at ``offsets[select]`` of ``window``."""
    return Array(_bytes(window, offset, count) for offset in offsets)[select]


class Parser(wiring.Component):
    """Frame parser (docs/semantics.md steps 1-3).

    Beats go from ``i`` to ``o`` unchanged and without delay (``o`` is a combinational view of
    ``i``; ``i.ready`` is ``o.ready`` gated by the record queue's space). For every frame, one
    :class:`~openvtep.hdl.headers.ParsedHeaders` record leaves on ``o_hdr``, in frame order,
    5 to 6 cycles after the frame's last beat: the verdict (``drop``/``reason``), whether and how
    much to decapsulate, and the match fields of the (inner) frame. The frame's ``port`` (on
    ``i``, constant over the frame) is sampled on its last beat.

    Latency: 0 cycles for beats; the record is computed in four pipeline stages from a window
    of the frame's first :data:`WINDOW_BYTES` bytes (the checks' operands; the verdict and
    decapsulation; the inner frame's fields and length checks; the record), then queued
    (``queue_depth`` records).

    Backpressure: beats and records are independent streams; ``i`` stalls only while
    ``queue_depth`` frames have ended whose records were not yet taken from ``o_hdr``. An invalid
    frame is still passed on whole (so the store-and-forward editor can discard it) and its
    record says ``drop`` with the first failing check as ``reason``.

    Parameters
    ----------
    width : int
        Bytes per beat: a power of two, 4 or more.
    config : openvtep.config.VtepConfig
        ``local_ip``, ``udp_port`` and ``max_frame`` are used.
    queue_depth : int
        Records that may wait on ``o_hdr`` (>= 4; the pipeline holds up to 5 more).
    """

    def __init__(self, width, config, *, queue_depth=8):
        if not isinstance(width, int) or width < 4 or width & (width - 1):
            raise ValueError(f"Parser width must be a power of two >= 4, not {width!r}")
        if not isinstance(queue_depth, int) or queue_depth < 4:
            raise ValueError(f"Parser queue_depth must be an integer >= 4, not {queue_depth!r}")
        self.width = width
        self.config = config
        self.queue_depth = queue_depth
        super().__init__({
            "i": In(stream.Signature(port_packet_layout(width))),
            "o": Out(packet_signature(width)),
            "o_hdr": Out(stream.Signature(ParsedHeaders)),
        })

    def elaborate(self, platform):
        m = Module()
        width, cfg = self.width, self.config
        window_beats = -(-WINDOW_BYTES // width)

        # --- Beats: pass through, and keep the first bytes of the frame in a window. ----------
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(
            width=data.Layout.cast(ParsedHeaders).size, depth=self.queue_depth)
        pending = Signal(range(self.queue_depth + 2))  # frames ended, record not yet taken
        space = Signal()
        m.d.comb += [
            space.eq(pending < self.queue_depth),
            self.o.valid.eq(self.i.valid & space),
            self.o.p.data.eq(self.i.p.data),
            self.o.p.keep.eq(self.i.p.keep),
            self.o.p.last.eq(self.i.p.last),
            self.i.ready.eq(self.o.ready & space),
        ]

        window = Signal(8 * width * window_beats)
        beat = Signal(range(window_beats + 1))
        count = Signal(16)  # bytes of this frame before the current beat (saturating)
        keep_bytes = Signal(range(width + 1))
        m.d.comb += keep_bytes.eq(sum(self.i.p.keep))
        end_length = Signal(17)
        m.d.comb += end_length.eq(count + keep_bytes)

        # Stage 1 registers: the frame just ended (its window stays intact for this one cycle:
        # the next frame overwrites the first beat of it at the earliest at the end of it).
        s1_valid = Signal()
        s1_length = Signal(16)
        s1_port = Signal(Port)

        took = self.i.valid & self.i.ready
        m.d.sync += s1_valid.eq(0)
        with m.If(took):
            with m.If(beat < window_beats):
                m.d.sync += [
                    window.word_select(beat, 8 * width).eq(self.i.p.data),
                    beat.eq(beat + 1),
                ]
            m.d.sync += count.eq(Mux(count > _LENGTH_MAX - width, _LENGTH_MAX, count + width))
            with m.If(self.i.p.last):
                m.d.sync += [
                    beat.eq(0),
                    count.eq(0),
                    s1_valid.eq(1),
                    s1_length.eq(Mux(end_length > _LENGTH_MAX, _LENGTH_MAX, end_length)),
                    s1_port.eq(self.i.p.port),
                ]

        # --- Stage 1: the checks' operands (steps 1-2), from the window while it is intact. ---
        # Each condition is registered on its own, the IPv4 header sum unfolded, and the window
        # copied whole: stage 2 decides and decapsulates from these registers alone, so no path
        # runs from the window through the checksum to the inner frame's bytes.
        length = s1_length
        eth = from_wire(Ethernet, _bytes(window, 0, h.ETH_BYTES))
        tagged = eth.type == h.ETHERTYPE_VLAN
        l2 = Mux(tagged, _TAGGED_L2, h.ETH_BYTES)
        etype = Mux(tagged, byteswap(_bytes(window, h.ETH_BYTES + 2, 2), 2), eth.type)

        def at_l2(offset, count):  # wire bytes at l2 + offset
            return Mux(tagged, _bytes(window, _TAGGED_L2 + offset, count),
                       _bytes(window, h.ETH_BYTES + offset, count))

        ip = from_wire(IPv4, at_l2(0, h.IPV4_BYTES))
        udp = from_wire(UDP, at_l2(h.IPV4_BYTES, h.UDP_BYTES))
        vxlan = from_wire(VXLAN, at_l2(h.IPV4_BYTES + h.UDP_BYTES, h.VXLAN_BYTES))

        def header_sum(l2_bytes):  # the unfolded sum of the IPv4 header's 16-bit words
            raw = _bytes(window, l2_bytes, h.IPV4_BYTES)
            words = [byteswap(raw[16 * k:16 * (k + 1)], 2) for k in range(h.IPV4_BYTES // 2)]
            return sum(words[1:], words[0])

        candidate = ((s1_port == Port.NET) & (etype == h.ETHERTYPE_IPV4) &
                     (length >= l2 + h.IPV4_BYTES) & (ip.dst == cfg.local_ip) &
                     (ip.proto == h.IPPROTO_UDP))
        # (condition, reason or None for "not a tunnel") in the documented order; the checksum
        # (None here) is completed in stage 2.
        checks = [
            (length < h.MIN_FRAME, DropReason.RUNT),
            (length > cfg.max_frame, DropReason.OVERSIZE),
            (tagged & (length < _TAGGED_L2), DropReason.TRUNCATED),
            (~candidate, None),
            (ip.ver_ihl != 0x45, DropReason.BAD_IP_HEADER),
            (None, DropReason.BAD_IP_CHECKSUM),
            (ip.total_length != length - l2, DropReason.BAD_IP_LENGTH),
            ((ip.flags_frag & (h.IPV4_MF | h.IPV4_FRAG_OFFSET)) != 0, DropReason.IP_FRAGMENT),
            (length < l2 + h.IPV4_BYTES + h.UDP_BYTES, DropReason.TRUNCATED),
            (udp.dst_port != cfg.udp_port, None),
            (udp.length != ip.total_length - h.IPV4_BYTES, DropReason.BAD_UDP_LENGTH),
            (length < l2 + _TUNNEL_HEADERS + h.ETH_BYTES, DropReason.TRUNCATED),
            ((vxlan.flags & h.VXLAN_FLAG_I) == 0, DropReason.VXLAN_FLAGS),
        ]

        c_valid = Signal()
        c_failed = Signal(len(checks))   # bit k: checks[k] fails
        c_sum = Signal(20)               # the IPv4 header sum, unfolded
        c_window = Signal.like(window)
        c_tagged = Signal()
        c_length = Signal(16)
        c_port = Signal(Port)
        c_vni = Signal(24)
        c_ip_src = Signal(32)
        m.d.sync += c_valid.eq(s1_valid)
        with m.If(s1_valid):
            m.d.sync += [
                c_failed.eq(Cat(*(0 if condition is None else condition
                                  for condition, _ in checks))),
                c_sum.eq(Mux(tagged, header_sum(_TAGGED_L2), header_sum(h.ETH_BYTES))),
                c_window.eq(window),
                c_tagged.eq(tagged),
                c_length.eq(length),
                c_port.eq(s1_port),
                c_vni.eq(vxlan.vni),
                c_ip_src.eq(ip.src),
            ]

        # --- Stage 2: the verdict and decapsulation. -----------------------------------------
        ip_sum = ones_complement_fold(c_sum)
        failed = [c_failed[k] if condition is not None else ip_sum != 0xFFFF
                  for k, (condition, _) in enumerate(checks)]
        # A priority chain of plain expressions (not m.If): Icarus may leave an always @*
        # block X until one of its inputs moves; continuous assignments have no such issue.
        drop1 = Signal()
        reason1 = Signal(DropReason)
        decap1 = Signal()
        drop_expr, reason_expr, decap_expr = 0, 0, 1
        for condition, (_, reason) in reversed(list(zip(failed, checks))):
            drop_expr = Mux(condition, reason is not None, drop_expr)
            reason_expr = Mux(condition, 0 if reason is None else reason, reason_expr)
            decap_expr = Mux(condition, 0, decap_expr)
        m.d.comb += [drop1.eq(drop_expr), reason1.eq(reason_expr), decap1.eq(decap_expr)]

        strip_plain = h.ETH_BYTES + _TUNNEL_HEADERS    # 50
        strip_tagged = _TAGGED_L2 + _TUNNEL_HEADERS    # 54
        inner1 = Mux(decap1,
                     Mux(c_tagged, _bytes(c_window, strip_tagged, INNER_WINDOW_BYTES),
                         _bytes(c_window, strip_plain, INNER_WINDOW_BYTES)),
                     _bytes(c_window, 0, INNER_WINDOW_BYTES))

        s2_valid = Signal()
        s2 = Signal(ParsedHeaders)
        s2_inner = Signal(8 * INNER_WINDOW_BYTES)
        s2_inner_length = Signal(16)
        m.d.sync += s2_valid.eq(c_valid)
        with m.If(c_valid):
            strip = Mux(decap1, Mux(c_tagged, strip_tagged, strip_plain), 0)
            m.d.sync += [
                s2.eq(0),
                s2.length.eq(c_length),
                s2.port.eq(c_port),
                s2.drop.eq(drop1),
                s2.reason.eq(reason1),
                s2.decap.eq(decap1),
                s2.strip.eq(strip),
                s2.tun_id.eq(Mux(decap1, c_vni, 0)),
                s2.tun_src.eq(Mux(decap1, c_ip_src, 0)),
                s2_inner.eq(inner1),
                s2_inner_length.eq(c_length - strip),
            ]

        # --- Stage 3: the inner frame's fields and length checks (step 3), registered. -------
        ilen = s2_inner_length
        ieth = from_wire(Ethernet, _bytes(s2_inner, 0, h.ETH_BYTES))
        itagged = ieth.type == h.ETHERTYPE_VLAN
        il2 = Mux(itagged, _TAGGED_L2, h.ETH_BYTES)

        def ipv4_at(l2):
            """For an IPv4 header at byte ``l2`` of the inner frame: the header, the 4 bytes
            where the ports would be (``l2 + 4*IHL``; an IHL below 5 makes no ports), and
            whether the frame holds the options and the ports."""
            ip = from_wire(IPv4, _bytes(s2_inner, l2, h.IPV4_BYTES))
            ihl = ip.ver_ihl[0:4]
            ports = _mux_offset(s2_inner, [l2 + 4 * max(k, 5) for k in range(_MAX_IHL + 1)],
                                ihl, 4)
            return ip, ports, ilen >= l2 + 4 * ihl, ilen >= l2 + 4 * ihl + 4

        # Both cases, untagged and tagged, are read where their header would be, then picked:
        # the ports' offset computed from ``itagged`` went through an adder into a 22-way mux
        # (the ULX3S 128/32 build's critical path, 11 logic levels, 22.6 ns).
        iip, itp, iroom_options, iroom_ports = (
            Mux(itagged, tagged, untagged)
            for untagged, tagged in zip(ipv4_at(h.ETH_BYTES), ipv4_at(_TAGGED_L2)))

        s3_valid = Signal()
        s3 = Signal(ParsedHeaders)          # stage 2's record, and the inner L2 fields
        s3_ip = Signal(IPv4)
        s3_tp = Signal(32)                  # the wire bytes where the ports would be
        s3_room_ip = Signal()               # the frame holds an IPv4 header ...
        s3_room_options = Signal()          # ... and its options ...
        s3_room_ports = Signal()            # ... and the ports
        s3_truncated = Signal()             # a decapsulated frame's inner VLAN tag is cut short
        m.d.sync += s3_valid.eq(s2_valid)
        with m.If(s2_valid):
            m.d.sync += [
                s3.eq(s2),
                s3.dl_dst.eq(ieth.dst),
                s3.dl_src.eq(ieth.src),
                s3.vlan_valid.eq(itagged),
                s3.tci.eq(Mux(itagged, byteswap(_bytes(s2_inner, h.ETH_BYTES, 2), 2), 0)),
                s3.dl_type.eq(Mux(itagged, byteswap(_bytes(s2_inner, h.ETH_BYTES + 2, 2), 2),
                                  ieth.type)),
                s3_ip.eq(iip),
                s3_tp.eq(itp),
                s3_room_ip.eq(ilen >= il2 + h.IPV4_BYTES),
                s3_room_options.eq(iroom_options),
                s3_room_ports.eq(iroom_ports),
                s3_truncated.eq(s2.decap & itagged & (ilen < _TAGGED_L2)),
            ]

        # --- Stage 4: the record. ------------------------------------------------------------
        nw_valid = ((s3.dl_type == h.ETHERTYPE_IPV4) & s3_room_ip &
                    (s3_ip.ver_ihl[4:8] == 4) & (s3_ip.ver_ihl[0:4] >= 5) & s3_room_options)
        tp_valid = (nw_valid & ((s3_ip.proto == h.IPPROTO_TCP) | (s3_ip.proto == h.IPPROTO_UDP)) &
                    ((s3_ip.flags_frag & h.IPV4_FRAG_OFFSET) == 0) & s3_room_ports)

        rec = Signal(ParsedHeaders)
        m.d.comb += [
            rec.eq(s3),
            rec.nw_valid.eq(nw_valid),
            rec.tp_valid.eq(tp_valid),
            rec.nw_src.eq(Mux(nw_valid, s3_ip.src, 0)),
            rec.nw_dst.eq(Mux(nw_valid, s3_ip.dst, 0)),
            rec.nw_proto.eq(Mux(nw_valid, s3_ip.proto, 0)),
            rec.tp_src.eq(Mux(tp_valid, byteswap(s3_tp[0:16], 2), 0)),
            rec.tp_dst.eq(Mux(tp_valid, byteswap(s3_tp[16:32], 2), 0)),
            rec.drop.eq(s3.drop | s3_truncated),
            rec.reason.eq(Mux(s3_truncated, DropReason.TRUNCATED, s3.reason)),
            rec.decap.eq(s3.decap & ~s3_truncated),
        ]

        # --- Records queue. ------------------------------------------------------------------
        m.d.comb += [
            queue.w_data.eq(rec),
            queue.w_en.eq(s3_valid),
            self.o_hdr.valid.eq(queue.r_rdy),
            self.o_hdr.p.eq(queue.r_data),
            queue.r_en.eq(self.o_hdr.ready),
        ]
        ended = took & self.i.p.last
        popped = self.o_hdr.valid & self.o_hdr.ready
        m.d.sync += pending.eq(pending + ended - popped)

        return m
