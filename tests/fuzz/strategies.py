"""Hypothesis strategies for the fuzz tests: frames, rule texts, configs, pcaps, messages.

Frames come three ways: raw random bytes; scapy stacks (Ether / Dot1Q / IP / UDP / VXLAN /
inner Ether / IP / TCP|UDP) whose fields are randomized by scapy's own ``fuzz()`` (seeded from
hypothesis, so a failure replays); and valid VXLAN frames to the VTEP with a few bytes
mutated or the frame cut short, which is what reaches the decap checks.
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


def _stack(rng, fuzzed=()):
    """A VXLAN frame to the VTEP (or, one time in four, a plain frame), as scapy layers; the
    layers named in ``fuzzed`` get scapy's random field values."""
    def layer(name, packet):
        return fuzz(packet) if name in fuzzed else packet

    inner = [layer("ether", Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02"))]
    if rng.random() < 0.3:
        inner.append(layer("dot1q", Dot1Q(vlan=rng.randrange(4096))))
    inner.append(layer("ip", IP(src="10.0.0.1", dst="10.0.0.2")))
    proto = TCP if rng.random() < 0.5 else UDP
    inner.append(layer("l4", proto(sport=rng.randrange(65536), dport=rng.randrange(65536))))
    inner.append(Raw(b"x" * rng.randrange(0, 40)))
    outer = []
    if rng.random() < 0.75:
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


random_frames = st.tuples(st.sampled_from((Port.HOST, Port.NET)), st.binary(max_size=300))
frames = st.one_of(random_frames, scapy_fuzzed_frames(), mutated_vxlan_frames())

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
