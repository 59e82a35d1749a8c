"""Protocol constants and header layouts, defined once for the whole project.

The reference model, the gateware (``openvtep.hdl``), the host driver and the tests all import
these definitions; nothing else spells out an offset, an EtherType or a drop reason.

Header fields are given as ``(name, byte offset, byte width)`` in network byte order
(big-endian), counted from the start of their header.

References: IEEE 802.3 (Ethernet II), IEEE 802.1Q (VLAN tag), RFC 791 (IPv4), RFC 768 (UDP),
RFC 7348 §5 (VXLAN).
"""

import enum

import numpy as np

__all__ = [
    "Port", "IN_PORT_CODE", "DropReason", "ETH", "VLAN", "IPV4", "UDP", "VXLAN",
    "ETH_BYTES", "VLAN_BYTES", "IPV4_BYTES", "UDP_BYTES", "VXLAN_BYTES", "ENCAP_BYTES",
    "ETHERTYPE_IPV4", "ETHERTYPE_ARP", "ETHERTYPE_VLAN", "IPPROTO_TCP", "IPPROTO_UDP",
    "VXLAN_FLAG_I", "VXLAN_UDP_PORT", "IPV4_DF", "NO_VLAN",
    "MIN_FRAME", "MAX_FRAME_LIMIT", "OUTPUT_GROWTH", "SRC_PORT_BASE", "SRC_PORT_MASK",
    "HASH_WORDS", "HASH_ROTATIONS", "tunnel_src_port", "ipv4_checksum",
]


class Port(enum.IntEnum):
    """The VTEP's logical ports. The value is the port's number on the wire and in gateware."""
    HOST = 0        # hypervisor/VM side: plain Ethernet frames
    NET = 1         # underlay: VXLAN/UDP/IPv4 frames and plain frames
    CONTROLLER = 2  # frames punted to the host CPU

    @property
    def label(self):
        return self.name.lower()


# The output-port code of ``output:in_port`` in an emission (after the Port values): the frame
# leaves through the port it came in on.
IN_PORT_CODE = 3


class DropReason(enum.IntEnum):
    """Why a frame was dropped. The value is the index of its drop counter in gateware."""
    RUNT = 0             # shorter than an Ethernet header (14 bytes)
    OVERSIZE = 1         # longer than max_frame
    TRUNCATED = 2        # a header the frame announces does not fit in it
    BAD_IP_HEADER = 3    # tunnel candidate with IPv4 version != 4 or IHL != 5
    BAD_IP_CHECKSUM = 4  # tunnel candidate whose IPv4 header checksum is wrong
    BAD_IP_LENGTH = 5    # tunnel candidate whose IPv4 total length != bytes after L2
    IP_FRAGMENT = 6      # tunnel candidate that is a fragment (MF set or offset != 0)
    BAD_UDP_LENGTH = 7   # VXLAN frame whose UDP length != IPv4 payload length
    VXLAN_FLAGS = 8      # VXLAN header with the I flag clear
    TABLE_MISS = 9       # no rule matched
    ACTION_DROP = 10     # the matching rule's action list outputs nothing

    @property
    def label(self):
        return self.name.lower()


# Byte sizes of the headers.
ETH_BYTES = 14
VLAN_BYTES = 4
IPV4_BYTES = 20  # without options: encap always emits IHL 5, decap requires it
UDP_BYTES = 8
VXLAN_BYTES = 8
ENCAP_BYTES = ETH_BYTES + IPV4_BYTES + UDP_BYTES + VXLAN_BYTES  # 50

# Field layouts: (name, offset, width) in bytes, big-endian on the wire.
ETH = (("dst", 0, 6), ("src", 6, 6), ("type", 12, 2))
VLAN = (("tci", 0, 2), ("type", 2, 2))  # follows the outer EtherType 0x8100 at offset 12
IPV4 = (
    ("ver_ihl", 0, 1), ("tos", 1, 1), ("total_length", 2, 2), ("ident", 4, 2),
    ("flags_frag", 6, 2), ("ttl", 8, 1), ("proto", 9, 1), ("checksum", 10, 2),
    ("src", 12, 4), ("dst", 16, 4),
)
UDP = (("src_port", 0, 2), ("dst_port", 2, 2), ("length", 4, 2), ("checksum", 6, 2))
VXLAN = (("flags", 0, 1), ("reserved0", 1, 3), ("vni", 4, 3), ("reserved1", 7, 1))

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPV4_DF = 0x4000
IPV4_MF = 0x2000
IPV4_FRAG_OFFSET = 0x1FFF
VXLAN_FLAG_I = 0x08
VXLAN_UDP_PORT = 4789  # IANA, RFC 7348 §5
NO_VLAN = 0xFFFF       # dl_vlan of an untagged frame, as in OpenFlow/OVS

MIN_FRAME = ETH_BYTES
MAX_FRAME_LIMIT = 9216            # largest max_frame a configuration may ask for
OUTPUT_GROWTH = ENCAP_BYTES + VLAN_BYTES  # an output frame is at most max_frame + this


def offset(layout, name):
    """The byte offset of field ``name`` in ``layout``."""
    for field, off, _ in layout:
        if field == name:
            return off
    raise KeyError(name)


# --- The VXLAN UDP source-port hash -------------------------------------------------------------
#
# RFC 7348 §5 recommends a source port from a hash of the inner frame so that underlay ECMP
# spreads flows. openvtep's hash is chosen to cost almost nothing in gateware: XOR of rotated
# 16-bit words, no carries and no state.
#
# The words, all big-endian 16-bit: the MACs of the inner frame *as it is emitted* (after any
# mod_dl_src/mod_dl_dst earlier in the action list), the other fields as the frame was matched
# (docs/semantics.md step 3; VLAN actions do not change them):
#   dl_dst[0:2], dl_dst[2:4], dl_dst[4:6], dl_src[0:2], dl_src[2:4], dl_src[4:6],
#   dl_type (the EtherType after an 802.1Q tag, if any),
#   nw_src[hi], nw_src[lo], nw_dst[hi], nw_dst[lo], nw_proto (zero-extended),
#   tp_src, tp_dst.
# Fields the frame does not have (nw_* of a non-IPv4 frame, tp_* of a non-TCP/UDP frame) are 0.
#
#   h = XOR over i of rotl16(word[i], HASH_ROTATIONS[i])
#   src_port = 49152 + (h & 0x3FFF)           -- always in 49152..65535 (RFC 6335 dynamic range)
#
# HASH_ROTATIONS[i] = (5 * (13 - i)) mod 16, i.e. the rotate-by-5-then-XOR fold of the words
# unrolled, so that swapping two words changes the hash.
HASH_WORDS = 14
HASH_ROTATIONS = tuple((5 * (HASH_WORDS - 1 - i)) % 16 for i in range(HASH_WORDS))
SRC_PORT_BASE = 0xC000
SRC_PORT_MASK = 0x3FFF


def tunnel_src_port(dl_dst, dl_src, dl_type, nw_src, nw_dst, nw_proto, tp_src, tp_dst):
    """The VXLAN UDP source port for each frame (see the comment above). Arguments are numpy
    integer arrays of the field values (MACs as 48-bit integers), absent fields 0."""
    dl_dst = np.asarray(dl_dst, dtype=np.uint64)
    dl_src = np.asarray(dl_src, dtype=np.uint64)
    nw_src = np.asarray(nw_src, dtype=np.uint64)
    nw_dst = np.asarray(nw_dst, dtype=np.uint64)
    words = (
        dl_dst >> np.uint64(32), dl_dst >> np.uint64(16), dl_dst,
        dl_src >> np.uint64(32), dl_src >> np.uint64(16), dl_src,
        dl_type, nw_src >> np.uint64(16), nw_src, nw_dst >> np.uint64(16), nw_dst,
        nw_proto, tp_src, tp_dst,
    )
    h = np.zeros(np.broadcast(*words).shape, dtype=np.uint32)
    for word, rot in zip(words, HASH_ROTATIONS):
        w = np.asarray(word).astype(np.uint32) & 0xFFFF
        h ^= (w << rot | w >> (16 - rot)) if rot else w
    return (SRC_PORT_BASE | (h & SRC_PORT_MASK)).astype(np.uint16)


def ipv4_checksum(headers):
    """RFC 791 header checksum of each row of ``headers`` (uint8, shape (N, 20)) with its
    checksum field as stored. Returns uint16; a correct header (checksum included) gives 0."""
    if headers.strides[1] != 1:
        headers = np.ascontiguousarray(headers)
    words = headers.view(">u2")
    total = words[:, 0].astype(np.uint32)
    for k in range(1, words.shape[1]):
        total += words[:, k]
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).astype(np.uint16)
