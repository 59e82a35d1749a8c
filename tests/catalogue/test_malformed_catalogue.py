"""The catalogue of malformed input: one named case per kind of bad thing a user or a wire
can hand openvtep, with what happens to it. It doubles as documentation: read the tables.

- FRAMES: every drop reason of docs/semantics.md (and the near misses that are *not* errors),
  through the reference model with the rules in ``RULES`` below.
- RULES_ERRORS: each error the rule compiler reports (``file:line:column: error: ...``).
- CONFIG_ERRORS: each error of the ``[vtep]`` configuration.
- PCAP_ERRORS: each way a capture file can be unreadable.
- PROTOCOL_ERRORS: each way a control-protocol line can fail to decode, and what the driver
  makes of each error status a device can reply.
"""

import struct
import zlib

import pytest

from openvtep import protocol as p
from openvtep.addr import parse_ipv4, parse_mac
from openvtep.config import VtepConfig, parse_config
from openvtep.driver import DeviceBusError, DeviceCommandError, _command_error
from openvtep.errors import ConfigError, PcapError, RuleError
from openvtep.frames import read_pcap
from openvtep.headers import DropReason, Port
from openvtep.reference import Reference
from openvtep.rules import parse_rules

H, N = Port.HOST, Port.NET
CONFIG = VtepConfig(parse_ipv4("198.18.0.1"), parse_mac("02:00:00:00:01:01"),
                    parse_mac("02:00:00:00:01:fe"), max_frame=200)
RULES = """\
priority=30,dl_dst=02:00:00:00:00:99,actions=drop
priority=20,in_port=net,tun_id=42,actions=output:host
priority=10,in_port=net,actions=controller
"""
# So: a decapsulated VNI 42 frame leaves on host, any other frame from net (plain, or a tunnel
# candidate that is not a tunnel) goes to the controller, a frame from host is a table miss.

# --- Frames --------------------------------------------------------------------------------

VM_A, VM_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def ether(dst=VM_A, src=VM_B, etype=0x0800, tag=None):
    tag_bytes = b"" if tag is None else struct.pack(">HH", 0x8100, tag)
    return dst + src + tag_bytes + struct.pack(">H", etype)


def inner_frame(size=60):
    return ether() + bytes(size - 14)


def ip_checksum(header):
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def vxlan(inner=None, *, ver_ihl=0x45, checksum=None, total_length=None, flags_frag=0x4000,
          dport=4789, udp_length=None, vxlan_flags=0x08, vni=42, outer_tag=None,
          dst="198.18.0.1", proto=17, cut=None):
    """A VXLAN frame to the VTEP (RFC 7348 §5) with one thing wrong, as asked."""
    inner = inner_frame() if inner is None else inner
    body = struct.pack(">BBBBI", vxlan_flags, 0, 0, 0, vni << 8) + inner
    udp = struct.pack(">HHHH", 49152, dport,
                      8 + len(body) if udp_length is None else udp_length, 0) + body
    length = 20 + len(udp) if total_length is None else total_length
    header = struct.pack(">BBHHHBBH4s4s", ver_ihl, 0, length, 0, flags_frag, 64, proto, 0,
                         bytes(map(int, ["198", "18", "0", "2"])),
                         bytes(map(int, dst.split("."))))
    good = ip_checksum(header)
    header = header[:10] + struct.pack(">H", good if checksum is None else checksum) + \
        header[12:]
    frame = ether(parse_mac("02:00:00:00:01:01").to_bytes(6, "big"),
                  parse_mac("02:00:00:00:01:fe").to_bytes(6, "big"), tag=outer_tag) + \
        header + udp
    return frame if cut is None else frame[:cut]


# (name, port, frame, outcome): outcome is a drop reason label, or the port the frame leaves on.
FRAMES = [
    ("empty frame", H, b"", "runt"),
    ("runt: 13 bytes", N, bytes(13), "runt"),
    ("shortest frame: 14 bytes", N, ether(), "controller"),
    ("oversize: max_frame + 1", N, ether() + bytes(CONFIG.max_frame + 1 - 14), "oversize"),
    ("largest frame: max_frame", N, ether() + bytes(CONFIG.max_frame - 14), "controller"),
    ("truncated VLAN tag: 0x8100 in a 16-byte frame", N, ether(etype=0x8100) + b"\x00\x0a",
     "truncated"),
    ("truncated VLAN tag on host too", H, ether(etype=0x8100) + b"\x00", "truncated"),
    ("good VXLAN frame", N, vxlan(), "host"),
    ("good VXLAN frame behind an outer VLAN tag", N, vxlan(outer_tag=5), "host"),
    ("VXLAN frame on host is not decapsulated", H, vxlan(), "table_miss"),
    ("IPv4 header with options (IHL 6)", N, vxlan(ver_ihl=0x46), "bad_ip_header"),
    ("IP version 6 in an IPv4 EtherType", N, vxlan(ver_ihl=0x65), "bad_ip_header"),
    ("bad IPv4 header checksum", N, vxlan(checksum=0x1234), "bad_ip_checksum"),
    ("IPv4 total length too long", N, vxlan(total_length=20 + 16 + 60 + 1), "bad_ip_length"),
    ("IPv4 total length too short", N, vxlan(total_length=20 + 16 + 60 - 1), "bad_ip_length"),
    ("IPv4 More Fragments flag", N, vxlan(flags_frag=0x2000), "ip_fragment"),
    ("IPv4 fragment offset", N, vxlan(flags_frag=0x0001), "ip_fragment"),
    ("UDP header cut short (IPv4 says 24 bytes)", N, vxlan(total_length=24, cut=14 + 24),
     "truncated"),
    ("other UDP port: not a tunnel, a plain frame", N, vxlan(dport=4790), "controller"),
    ("other IPv4 destination: not a tunnel", N, vxlan(dst="198.18.0.9"), "controller"),
    ("not UDP: not a tunnel", N, vxlan(proto=6), "controller"),
    ("UDP length wrong", N, vxlan(udp_length=8 + 8 + 60 + 2), "bad_udp_length"),
    ("VXLAN header cut short", N,
     vxlan(total_length=20 + 8 + 8 + 10, udp_length=8 + 8 + 10, cut=14 + 46),
     "truncated"),
    ("inner Ethernet header cut short (13 bytes)", N,
     vxlan(inner=inner_frame()[:13], total_length=20 + 16 + 13, udp_length=16 + 13),
     "truncated"),
    ("VXLAN I flag clear", N, vxlan(vxlan_flags=0x00), "vxlan_flags"),
    ("VXLAN reserved bits set are ignored", N, vxlan(vxlan_flags=0xFF), "host"),
    ("inner VLAN tag cut short", N,
     vxlan(inner=ether(etype=0x8100) + b"\x00", total_length=20 + 16 + 15,
           udp_length=16 + 15), "truncated"),
    ("other VNI: no rule, goes on as matched by in_port", N, vxlan(vni=43), "controller"),
    ("rule says drop", N, ether(dst=bytes.fromhex("020000000099")), "action_drop"),
    ("no rule for host frames", H, ether(), "table_miss"),
]


@pytest.mark.parametrize("name, port, frame, outcome", FRAMES, ids=[c[0] for c in FRAMES])
def test_frame(name, port, frame, outcome):
    result = Reference(CONFIG, parse_rules(RULES)).run([(port, frame)])
    drops = {k: v for k, v in result.stats["drops"].items() if v}
    outputs = {q.label: len(b) for q, b in result.outputs.items() if len(b)}
    if outcome in {q.label for q in Port}:
        assert (drops, outputs) == ({}, {outcome: 1})
    else:
        assert (drops, outputs) == ({outcome: 1}, {})


def test_frames_on_gateware():
    """The whole frame catalogue, in one simulation of the gateware pipeline (the rtl engine):
    each frame meets the catalogue's outcome there too, with the reference's bytes. The empty
    frame is left out: no stream carries a 0-byte frame to the gateware."""
    from openvtep.rtl_engine import rtl_engine
    from openvtep.tables import Geometry

    cases = [case for case in FRAMES if case[2]]
    pairs = [(port, frame) for _, port, frame, _ in cases]
    ruleset = parse_rules(RULES)
    reference = Reference(CONFIG, ruleset).run(pairs)
    rtl = rtl_engine(CONFIG, ruleset, pairs, 8, geometry=Geometry(exact_entries=64,
                                                                   wildcard_entries=4))
    labels = {q: q.label for q in Port}
    reasons = {int(r): r.label for r in DropReason}
    for k, (name, _, _, outcome) in enumerate(cases):
        got = reasons[int(rtl.drop[k])] if rtl.drop[k] >= 0 else "emitted"
        if outcome in labels.values():
            assert got == "emitted", f"{name}: dropped as {got} by the gateware"
        else:
            assert got == outcome, f"{name}: gateware says {got}, the catalogue {outcome}"
    for port in Port:
        assert rtl.outputs[port].frames() == reference.outputs[port].frames(), labels[port]
    assert rtl.stats == reference.stats


# --- Rules ---------------------------------------------------------------------------------

# (name, rule line, column, message fragment)
RULE_ERRORS = [
    ("no actions", "priority=1,in_port=host", 1, "missing actions="),
    ("not FIELD=VALUE", "bogus,actions=drop", 1, "expected FIELD=VALUE"),
    ("unknown match field", "nw_tos=4,actions=drop", 1, "unknown match field 'nw_tos'"),
    ("priority out of range", "priority=65536,actions=drop", 10, "a priority must be in"),
    ("priority not a number", "priority=high,actions=drop", 10, "expected a priority"),
    ("in_port not host or net", "in_port=controller,actions=drop", 9,
     "in_port must be host or net"),
    ("bad MAC", "dl_dst=02:00:00:00:00,actions=drop", 8, "dl_dst:"),
    ("bad IPv4 address", "ip,nw_src=198.18.0.256,actions=drop", 11, "nw_src:"),
    ("prefix too long", "ip,nw_dst=10.0.0.0/33,actions=drop", 11, "prefix length must be 0..32"),
    ("dl_vlan with a mask", "dl_vlan=5/0xff,actions=drop", 9, "dl_vlan takes no mask"),
    ("dl_vlan out of range", "dl_vlan=4096,actions=drop", 9, "dl_vlan must be 0..4095 or"),
    ("VNI too large", "tun_id=0x1000000,actions=drop", 8, "a VNI must be in"),
    ("nw_* without ip", "nw_src=10.0.0.1,actions=drop", 1, "nw_src needs dl_type=0x0800"),
    ("tp_* without tcp or udp", "ip,tp_dst=53,actions=drop", 4, "tp_dst needs tcp or udp"),
    ("shorthand conflicts", "dl_type=0x0806,ip,actions=drop", 16, "ip conflicts with dl_type"),
    ("field twice", "tp_dst=1,udp,tp_dst=2,actions=drop", 14, "tp_dst given twice"),
    ("unknown action", "actions=flood", 9, "unknown action 'flood'"),
    ("bad output port", "actions=output:3", 9, "output port must be host, net"),
    ("drop with other actions", "actions=drop,output:host", 9, "drop must be the only action"),
    ("drop with an argument", "actions=drop:1", 9, "drop takes no argument"),
    ("set_field without ->", "actions=set_field:5", 9, "expected set_field:VALUE->FIELD"),
    ("set_field of another field", "actions=set_field:5->nw_tos", 9,
     "set_field supports ->tun_id and ->tun_dst"),
    ("tunnel without a destination", "actions=set_tunnel:5,output:net", 9,
     "set_tunnel without set_field:IP->tun_dst"),
    ("mod_vlan_vid out of range", "actions=mod_vlan_vid:4096", 9, "a VLAN id must be in"),
    ("bad MAC in an action", "actions=mod_dl_src:xx,output:host", 9, "mod_dl_src:"),
]


@pytest.mark.parametrize("name, line, column, fragment", RULE_ERRORS,
                         ids=[c[0] for c in RULE_ERRORS])
def test_rule_error(name, line, column, fragment):
    with pytest.raises(RuleError) as info:
        parse_rules(f"# a comment line first\n{line}\n", "bad.rules")
    assert len(info.value.errors) == 1
    got_line, got_column, message = info.value.errors[0]
    assert (got_line, got_column) == (2, column), message
    assert fragment in message
    assert str(info.value).startswith(f"bad.rules:2:{column}: error: ")


def test_rule_error_duplicate():
    with pytest.raises(RuleError, match=r"bad.rules:3:1: error: same priority and match as the "
                                        r"rule on line 1"):
        parse_rules("priority=5,ip,actions=drop\n\npriority=5,dl_type=0x800,actions=drop\n",
                    "bad.rules")


def test_rule_errors_all_reported():
    with pytest.raises(RuleError) as info:
        parse_rules("actions=flood\nok=1\nactions=drop\npriority=x,actions=drop\n", "bad.rules")
    assert [line for line, _, _ in info.value.errors] == [1, 2, 4]


# --- Configs -------------------------------------------------------------------------------

GOOD = {"local_ip": '"198.18.0.1"', "local_mac": '"02:00:00:00:01:01"',
        "gateway_mac": '"02:00:00:00:01:fe"'}


def config_text(**changes):
    values = {**GOOD, **changes}
    return "[vtep]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)


# (name, text, message fragment)
CONFIG_ERRORS = [
    ("not TOML", "[vtep\n", "not valid TOML"),
    ("no [vtep] table", "", "missing [vtep] table"),
    ("[vtep] not a table", "vtep = 1\n", "missing [vtep] table"),
    ("another table", config_text() + "[extra]\n", "unknown table(s) extra"),
    ("unknown key", config_text(mtu="1500"), "unknown key(s) mtu"),
    ("missing key", config_text(gateway_mac=None), "is missing gateway_mac"),
    ("bad IPv4 address", config_text(local_ip='"198.18.0"'), "[vtep] local_ip:"),
    ("IPv4 address as a number", config_text(local_ip="3323068417"), "[vtep] local_ip:"),
    ("bad MAC", config_text(local_mac='"02:00:00:00:01"'), "[vtep] local_mac:"),
    ("udp_port 0", config_text(udp_port="0"), "udp_port must be an integer in 1..65535"),
    ("udp_port a string", config_text(udp_port='"4789"'), "udp_port must be an integer"),
    ("ttl 0", config_text(ttl="0"), "ttl must be an integer in 1..255"),
    ("ttl a boolean", config_text(ttl="true"), "ttl must be an integer"),
    ("max_frame too small", config_text(max_frame="63"), "max_frame must be an integer in 64.."),
    ("max_frame too large", config_text(max_frame="9217"), "max_frame must be an integer"),
    ("max_frame a float", config_text(max_frame="1518.0"), "max_frame must be an integer"),
]


@pytest.mark.parametrize("name, text, fragment", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_error(name, text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.toml")
    assert str(info.value).startswith("bad.toml: ")
    assert fragment in str(info.value)


# --- pcaps ---------------------------------------------------------------------------------

HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


def record(frame, incl=None, orig=None):
    incl = len(frame) if incl is None else incl
    return struct.pack("<IIII", 0, 0, incl, len(frame) if orig is None else orig) + frame


# (name, file bytes or None for a missing file, message fragment)
PCAP_ERRORS = [
    ("missing file", None, "cannot read pcap"),
    ("empty file", b"", "not a pcap file (only 0 bytes"),
    ("short header", HEADER[:20], "not a pcap file (only 20 bytes"),
    ("pcapng", struct.pack("<I", 0x0A0D0D0A) + bytes(28), "pcapng is not supported"),
    ("bad magic", b"GIF89a" + bytes(30), "not a pcap file (magic"),
    ("not Ethernet", HEADER[:20] + struct.pack("<I", 105), "link type 105 is not Ethernet"),
    ("record header cut short", HEADER + bytes(10), "record 1 at byte 24: truncated record"),
    ("record data cut short", HEADER + record(bytes(60))[:50], "truncated or corrupt (claims 60"),
    ("record longer than the snaplen", HEADER + record(bytes(16), incl=70000),
     "truncated or corrupt (claims 70000"),
    ("frame captured truncated", HEADER + record(bytes(60), orig=1500),
     "captured truncated (60 of 1500 bytes)"),
    ("second record broken", HEADER + record(bytes(60)) + bytes(3), "record 2 at byte 100"),
]


@pytest.mark.parametrize("name, blob, fragment", PCAP_ERRORS, ids=[c[0] for c in PCAP_ERRORS])
def test_pcap_error(tmp_path, name, blob, fragment):
    path = tmp_path / "bad.pcap"
    if blob is not None:
        path.write_bytes(blob)
    with pytest.raises(PcapError) as info:
        read_pcap(path, Port.HOST)
    assert str(info.value).startswith(str(path))
    assert fragment in str(info.value)


# --- Control protocol ----------------------------------------------------------------------


def crc_framed(message):
    return p.cobs_encode(message + struct.pack("<I", zlib.crc32(message)))


# (name, decoder, line bytes without the delimiter, message fragment)
PROTOCOL_ERRORS = [
    ("0x00 inside a frame", p.cobs_decode, b"\x02\x01\x00\x01", "0x00 inside a COBS frame"),
    ("code group past the end", p.cobs_decode, b"\x05\x01\x02", "runs past the end"),
    ("request too short", p.decode_request, crc_framed(b"\x01\x00\x00"),
     "message of 7 bytes is too short"),
    ("reply too short", p.decode_reply, crc_framed(b"\x01\x00\x00\x01"),
     "message of 8 bytes is too short"),
    ("request with a bad CRC", p.decode_request,
     p.cobs_encode(b"\x01\x00\x00\x01" + b"\xde\xad\xbe\xef"), "bad CRC"),
    ("reply with a flipped bit", p.decode_reply,
     p.encode_reply(1, 2, p.Command.READ, p.Status.OK, b"\x00" * 4)[:-1].replace(
         b"\x02", b"\x03", 1), "bad CRC"),
    ("field table longer than the body", lambda b: p.unpack_fields(p.IDENTIFY_BODY, b),
     bytes(10), "10 bytes, need 34"),
]


@pytest.mark.parametrize("name, decode, line, fragment", PROTOCOL_ERRORS,
                         ids=[c[0] for c in PROTOCOL_ERRORS])
def test_protocol_error(name, decode, line, fragment):
    with pytest.raises(p.ProtocolError, match=fragment):
        decode(line)


# Every error status a device replies with, and the driver's error for it.
STATUS_ERRORS = [
    (p.Status.UNKNOWN_COMMAND, 0x99, DeviceCommandError, "reports UNKNOWN_COMMAND (info 0x99)"),
    (p.Status.BAD_CRC, 12, DeviceCommandError, "device reports BAD_CRC"),
    (p.Status.BAD_LENGTH, 3, DeviceCommandError, "device reports BAD_LENGTH"),
    (p.Status.OVERSIZE, 2048, DeviceCommandError, "device reports OVERSIZE (info 0x800)"),
    (p.Status.BAD_FRAME, 0, DeviceCommandError, "device reports BAD_FRAME"),
    (p.Status.SEQUENCE, 7, DeviceCommandError, "device reports SEQUENCE"),
    (p.Status.BAD_ARGUMENT, 5, DeviceCommandError, "device reports BAD_ARGUMENT"),
    (p.Status.BUS_ERROR, 0x123, DeviceBusError, "bus error (no target there, or a read-only word) at address 0x000123"),
    (p.Status.BUS_TIMEOUT, 0x40, DeviceBusError, "target timed out at address 0x000040"),
    (0x7F, 1, DeviceCommandError, "device reports status 127"),
]


@pytest.mark.parametrize("status, info, error, fragment", STATUS_ERRORS,
                         ids=[getattr(c[0], "name", str(c[0])) for c in STATUS_ERRORS])
def test_status_error(status, info, error, fragment):
    body = p.pack_fields(p.ERROR_BODY, expected_seq=0, info=info)
    reply = p.decode_reply(p.encode_reply(3, 1, p.Command.WRITE, status, body)[:-1])
    exc = _command_error("socket://board", "write", reply)
    assert type(exc) is error
    assert str(exc).startswith("socket://board: write: ")
    assert fragment in str(exc)
