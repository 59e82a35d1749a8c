"""Hypothesis strategies for the fuzz tests: frames, rule texts, configs, pcaps, messages.

Frames come four ways: raw random bytes; scapy stacks (Ether / Dot1Q / IP / UDP / VXLAN /
inner Ether / IP / TCP|UDP) whose fields are randomized by scapy's own ``fuzz()`` (seeded from
hypothesis, so a failure replays); valid VXLAN frames to the VTEP with a few bytes mutated or
the frame cut short; and valid VXLAN frames with header fields set at or next to what each
decap check tests, the checksum made right again (:func:`header_fuzzed_vxlan_frames`).

Also: comparing two engines' results frame by frame (:func:`outputs_by_frame`,
:func:`frame_mismatches`, :func:`describe_mismatch`).
"""

import random
import struct
from pathlib import Path

from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Dot1Q, Ether, Raw, conf, fuzz
from scapy.layers.vxlan import VXLAN

from openvtep.addr import parse_ipv4, parse_mac
from openvtep.config import VtepConfig
from openvtep.frames import FrameBatch, write_pcap
from openvtep.headers import Port

conf.verb = 0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LOCAL_IP = "198.18.0.1"
CONFIG = VtepConfig(parse_ipv4(LOCAL_IP), parse_mac("02:00:00:00:01:01"),
                    parse_mac("02:00:00:00:01:fe"), max_frame=256)
RULES_TEXT = (EXAMPLES / "rules.txt").read_text()
CONFIG_TEXT = (EXAMPLES / "vtep.toml").read_text()

# --- Frames ------------------------------------------------------------------------------


LAYERS = ("outer_ether", "outer_dot1q", "outer_ip", "outer_udp", "vxlan", "ether", "dot1q",
          "ip", "l4")


def _stack(rng, fuzzed=(), outer=None):
    """A VXLAN frame to the VTEP (or, one time in four, a plain frame; ``outer`` True or
    False decides), as scapy layers; the layers named in ``fuzzed`` get scapy's random field
    values."""
    def layer(name, packet):
        return fuzz(packet) if name in fuzzed else packet

    inner = [layer("ether", Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02"))]
    if rng.random() < 0.3:
        inner.append(layer("dot1q", Dot1Q(vlan=rng.randrange(4096))))
    inner.append(layer("ip", IP(src="10.0.0.1", dst="10.0.0.2")))
    proto = TCP if rng.random() < 0.5 else UDP
    inner.append(layer("l4", proto(sport=rng.randrange(65536), dport=rng.randrange(65536))))
    inner.append(Raw(b"x" * rng.randrange(0, 40)))
    use_outer = rng.random() < 0.75 if outer is None else outer
    outer = []
    if use_outer:
        outer.append(layer("outer_ether", Ether(dst="02:00:00:00:01:01",
                                                src="02:00:00:00:01:fe")))
        if rng.random() < 0.2:
            outer.append(layer("outer_dot1q", Dot1Q(vlan=rng.randrange(4096))))
        outer += [layer("outer_ip", IP(src="198.18.0.2", dst=LOCAL_IP, flags="DF")),
                  layer("outer_udp", UDP(sport=49152, dport=4789)),
                  layer("vxlan", VXLAN(vni=rng.choice((42, 43, 7)), flags=0x08))]
    packet = outer[0] if outer else inner[0]
    for part in (outer[1:] + inner) if outer else inner[1:]:
        packet = packet / part
    return packet


@st.composite
def scapy_fuzzed_frames(draw):
    """A VXLAN or plain stack with some layers' fields randomized by scapy's ``fuzz()``
    (seeded from hypothesis, so a failing example replays)."""
    seed = draw(st.integers(0, 2**32 - 1))
    fuzzed = draw(st.sets(st.sampled_from(LAYERS), min_size=1, max_size=3))
    state = random.getstate()
    random.seed(seed)  # scapy's random field values come from the random module
    try:
        try:
            data = bytes(_stack(random.Random(seed), fuzzed))
        except Exception:  # noqa: BLE001 -- scapy cannot build some random values
            data = bytes(_stack(random.Random(seed)))
    finally:
        random.setstate(state)
    port = draw(st.sampled_from((Port.HOST, Port.NET)))
    return port, data[:draw(st.integers(0, 300))]


@st.composite
def mutated_vxlan_frames(draw):
    """A valid VXLAN frame to the VTEP, then bytes flipped or the frame cut short."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    data = bytearray(bytes(_stack(rng)))
    for _ in range(draw(st.integers(0, 3))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return Port.NET, bytes(data)


def _ipv4_checksum(header):
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# VXLAN header fields by offset from the outer IPv4 header (l2), width, and values near the
# checks of docs/semantics.md step 2 (None: the field's correct value; a callable: of it).
def _near_length(v):
    return [v, v - 1, v + 1, v - 8, v + 8, 0, 0xFFFF]


VXLAN_FIELDS = {
    "ethertype": (-2, 2, lambda v: [0x0800, 0x8100, 0x86DD, 0x0806]),
    "ver_ihl": (0, 1, lambda v: [0x45, 0x44, 0x46, 0x4F, 0x55, 0x65, 0x05]),
    "total_length": (2, 2, _near_length),
    "flags_fragment": (6, 2, lambda v: [0x0000, 0x2000, 0x4000, 0x6000, 0x0001, 0x1FFF]),
    "protocol": (9, 1, lambda v: [17, 6, 1, 0x11 ^ 0x80]),
    "ip_dst": (16, 4, lambda v: [v, v ^ 1, v ^ 0x80000000, 0xFFFFFFFF]),
    "udp_dport": (22, 2, lambda v: [v, v ^ 1, v + 1, 8472, 0]),
    "udp_length": (24, 2, _near_length),
    "udp_checksum": (26, 2, lambda v: [0, 0xFFFF, 0x1234]),
    "vxlan_flags": (28, 1, lambda v: [0x08, 0x00, 0x0C, 0xF7, 0xFF, 0x80]),
    "vxlan_reserved": (29, 3, lambda v: [0, 0xFFFFFF, 1]),
    "vni": (32, 3, lambda v: [42, 43, 7, 0, 0xFFFFFF, 42 ^ 0x800000]),
    "inner_ethertype": (48, 2, lambda v: [0x0800, 0x8100, 0x0806, 0x88A8, 0]),
}


@st.composite
def header_fuzzed_vxlan_frames(draw):
    """A valid VXLAN frame to the VTEP with one to three header fields (outer EtherType,
    IPv4 version/IHL, lengths, fragment bits, protocol, destination, UDP port, length and
    checksum, VXLAN flags, reserved bits, VNI, inner EtherType) set to values at or next to
    what the decap checks test; then the IPv4 checksum mostly made right again, so the frame
    gets past it; maybe cut at a header boundary, with its lengths made to agree or not."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    data = bytearray(bytes(_stack(rng, outer=True)))
    l2 = 18 if data[12:14] == b"\x81\x00" else 14
    for name in draw(st.lists(st.sampled_from(sorted(VXLAN_FIELDS)), min_size=1, max_size=3)):
        offset, size, values = VXLAN_FIELDS[name]
        at = l2 + offset
        if at + size > len(data):
            continue
        current = int.from_bytes(data[at:at + size], "big")
        value = draw(st.one_of(st.sampled_from(values(current)),
                               st.integers(0, (1 << 8 * size) - 1)))
        data[at:at + size] = (value % (1 << 8 * size)).to_bytes(size, "big")
    if draw(st.booleans()):
        cut = draw(st.sampled_from([l2 + 19, l2 + 20, l2 + 27, l2 + 28, l2 + 49, l2 + 50,
                                    l2 + 53, l2 + 54, l2 + 64]))
        data = data[:cut]
        if draw(st.booleans()) and len(data) >= l2 + 28:  # lengths that agree with the cut
            data[l2 + 2:l2 + 4] = (len(data) - l2).to_bytes(2, "big")
            data[l2 + 24:l2 + 26] = (len(data) - l2 - 20).to_bytes(2, "big")
    if len(data) >= l2 + 20 and draw(st.integers(0, 9)) < 8:
        data[l2 + 10:l2 + 12] = b"\0\0"
        data[l2 + 10:l2 + 12] = _ipv4_checksum(bytes(data[l2:l2 + 20])).to_bytes(2, "big")
    return Port.NET, bytes(data)


random_frames = st.tuples(st.sampled_from((Port.HOST, Port.NET)), st.binary(max_size=300))
frames = st.one_of(random_frames, scapy_fuzzed_frames(), mutated_vxlan_frames())


@st.composite
def resized_frames(draw, max_frame=CONFIG.max_frame):
    """A frame of ``frames`` or a header-fuzzed VXLAN frame, padded or cut to a length at
    an edge: around ``max_frame`` (oversize; the longest frame that still gets its 50-byte
    encapsulation), the 14/18-byte Ethernet headers, 60/64 bytes."""
    port, data = draw(st.one_of(frames, header_fuzzed_vxlan_frames()))
    size = draw(st.sampled_from([max_frame - 1, max_frame, max_frame + 1, 13, 14, 15, 17, 18,
                                 19, 60, 64, 65]))
    pad = random.Random(draw(st.integers(0, 2**32 - 1))).randbytes(max(0, size - len(data)))
    return port, (data + pad)[:size]

# --- Text mutations ------------------------------------------------------------------------

RULE_ALPHABET = ",=:/->.#0123456789abcdefx \t_" + "priorityactions"


@st.composite
def mutated_text(draw, text, alphabet):
    """``text`` with a few characters inserted, deleted or replaced, lines swapped or cut."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(("insert", "delete", "replace", "cut")))
        pos = draw(st.integers(0, max(len(chars) - 1, 0)))
        char = draw(st.one_of(st.sampled_from(alphabet), st.characters(codec="utf-8")))
        if op == "insert" or not chars:
            chars.insert(pos, char)
        elif op == "delete":
            del chars[pos]
        elif op == "replace":
            chars[pos] = char
        else:
            chars = chars[:pos]
    return "".join(chars)


rule_texts = st.one_of(mutated_text(RULES_TEXT, RULE_ALPHABET), st.text(max_size=200))

_toml_values = st.one_of(
    st.integers(-2**63, 2**63 - 1).map(str), st.booleans().map(lambda b: str(b).lower()),
    st.floats(allow_nan=False).map(repr),
    st.text(max_size=20).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"')
                             .replace("\n", "\\n") + '"'),
    st.sampled_from(['"198.18.0.1"', '"02:00:00:00:01:01"', "[1, 2]", "{a = 1}", "4789",
                     '"::1"', '"1.2.3"', '"02:00:00:00:01"', "0x10", "1e3"]))
_toml_keys = st.sampled_from(("local_ip", "local_mac", "gateway_mac", "udp_port", "ttl",
                              "max_frame", "bogus"))


@st.composite
def generated_configs(draw):
    table = draw(st.sampled_from(("[vtep]", "[vtep]", "[other]", "", "[[vtep]]")))
    lines = [table] + [f"{draw(_toml_keys)} = {draw(_toml_values)}"
                       for _ in range(draw(st.integers(0, 7)))]
    return "\n".join(lines) + "\n"


config_texts = st.one_of(mutated_text(CONFIG_TEXT, '[]="#.:0123456789abcdef \n'),
                         generated_configs(), st.text(max_size=200))

# --- pcaps ---------------------------------------------------------------------------------


def pcap_bytes(frame_list, tmp):
    batch = FrameBatch.from_frames(frame_list, port=Port.HOST)
    write_pcap(tmp, batch)
    return tmp.read_bytes()


@st.composite
def mutated_pcaps(draw, valid):
    """A valid pcap with bytes changed, inserted or cut; or its header with a random body."""
    data = bytearray(valid)
    kind = draw(st.sampled_from(("flip", "cut", "grow", "header")))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif kind == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif kind == "grow":
        data += draw(st.binary(max_size=40))
    else:
        data = data[:24] + draw(st.binary(max_size=80))
    if draw(st.booleans()) and len(data) >= 40:  # a record length field set to anything
        struct.pack_into("<I", data, 32, draw(st.integers(0, 2**32 - 1)))
    return bytes(data)

# --- Engines, frame by frame ----------------------------------------------------------------


def outputs_by_frame(result, n):
    """Per input frame (timestamps 0..n-1, as ``FrameBatch.from_frames`` gives them): its
    outputs ``[(Port, bytes)]``, by port, each port's in emission order. The reference model's
    and the rtl engine's results compare frame by frame this way."""
    out = [[] for _ in range(n)]
    for port in Port:
        batch = result.outputs[port]
        for t, frame in zip(batch.time_ns.tolist(), batch.frames()):
            out[t].append((port, frame))
    return out


def frame_mismatches(ref, rtl, n):
    """Indices of the input frames whose outputs, matched rule or drop reason differ between
    two results (:class:`openvtep.reference.Result`, :class:`openvtep.rtl_engine.RtlResult`)."""
    a, b = outputs_by_frame(ref, n), outputs_by_frame(rtl, n)
    return [i for i in range(n) if a[i] != b[i] or int(ref.rule[i]) != int(rtl.rule[i])
            or int(ref.drop[i]) != int(rtl.drop[i])]


def describe_mismatch(ref, rtl, frames, i):
    """A report of input frame ``i`` (of ``frames``, ``(port, bytes)`` pairs): its bytes, and
    what each engine did with it."""
    from openvtep.headers import DropReason
    from openvtep.sim.stream import hexdiff

    def verdict(result):
        drop = int(result.drop[i])
        return f"rule {int(result.rule[i])}, " + (f"dropped {DropReason(drop).label}"
                                                  if drop >= 0 else "emitted")

    port, data = frames[i]
    want = outputs_by_frame(ref, len(frames))[i]
    got = outputs_by_frame(rtl, len(frames))[i]
    lines = [f"frame {i} on {Port(port).label} ({len(data)} bytes): {data.hex()}",
             f"  reference: {verdict(ref)}, outputs {[(p.label, len(f)) for p, f in want]}",
             f"  gateware:  {verdict(rtl)}, outputs {[(p.label, len(f)) for p, f in got]}"]
    for (pw, w), (pg, g) in zip(want, got):
        if (pw, w) != (pg, g):
            lines.append(f"  first differing output ({pw.label} vs {pg.label}):\n"
                         + hexdiff(w, g))
            break
    return "\n".join(lines)
