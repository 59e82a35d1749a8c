"""Shared helpers of the external-oracle tests (tshark, the Linux VXLAN device, ovs-ofctl).

Valid random traffic and rules built from a seed, with plain ``struct`` packing (no code of ours
builds the input frames, so the oracles judge our output against independent input), and the
reconstruction of which rule emission produced each output frame.
"""

import os
import shutil
import struct
import subprocess
from pathlib import Path

from openvtep.errors import RuleError
from openvtep.frames import FrameBatch
from openvtep.headers import Port
from openvtep.rules import parse_rules

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"

# Addresses: tunnel endpoints only in 198.18.0.0/15 (RFC 2544 benchmarking range).
LOCAL_IP = 0xC6120001      # 198.18.0.1, our VTEP
PEER_IPS = (0xC6120002, 0xC6120003, 0xC6120004)
LOCAL_MAC = 0x020000000101
GATEWAY_MAC = 0x0200000001FE
VM_MACS = (0x020000000001, 0x020000000002, 0x020000000003, 0x02000000000A, 0x0A0000000B0C)
INNER_IPS = (0x0A000001, 0x0A000002, 0x0A010003, 0xC0A80101)
VIDS = (0, 10, 20, 4095)
VNIS = (42, 43, 0xABCDE1, 0xFFFFFF)
PORTS = (22, 53, 80, 443, 8080, 40000)
BROADCAST = 0xFFFFFFFFFFFF


def mac_bytes(value):
    return value.to_bytes(6, "big")


def checksum16(data):
    """RFC 1071 Internet checksum of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(dst, src, ethertype, vlan=None):
    """An Ethernet II header, with one 802.1Q tag when ``vlan`` is a (pcp, vid) pair."""
    head = mac_bytes(dst) + mac_bytes(src)
    if vlan is not None:
        pcp, vid = vlan
        head += struct.pack(">HH", 0x8100, pcp << 13 | vid)
    return head + struct.pack(">H", ethertype)


def ipv4(src, dst, proto, payload, ident=0, df=False, ttl=64, tos=0, options=b"", frag=0):
    """An IPv4 packet (RFC 791) with a correct header checksum; ``options`` a multiple of 4;
    ``frag`` the MF flag and fragment offset bits."""
    ihl = 5 + len(options) // 4
    head = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, tos, 4 * ihl + len(payload), ident,
                       (0x4000 if df else 0) | frag, ttl, proto, 0, src.to_bytes(4, "big"),
                       dst.to_bytes(4, "big")) + options
    head = head[:10] + struct.pack(">H", checksum16(head)) + head[12:]
    return head + payload


def _pseudo(src, dst, proto, length):
    return struct.pack(">4s4sBBH", src.to_bytes(4, "big"), dst.to_bytes(4, "big"), 0, proto,
                       length)


def udp(src_ip, dst_ip, sport, dport, payload, with_checksum=True):
    """A UDP datagram (RFC 768); checksum computed, or 0 (none) when not ``with_checksum``."""
    seg = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    if with_checksum:
        csum = checksum16(_pseudo(src_ip, dst_ip, 17, len(seg)) + seg) or 0xFFFF
        seg = seg[:6] + struct.pack(">H", csum) + seg[8:]
    return seg


def tcp(src_ip, dst_ip, sport, dport, seq, ack, payload):
    """A TCP segment (RFC 793), PSH|ACK, no options, correct checksum."""
    seg = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 5 << 4, 0x18, 8192, 0, 0) + payload
    csum = checksum16(_pseudo(src_ip, dst_ip, 6, len(seg)) + seg)
    return seg[:16] + struct.pack(">H", csum) + seg[18:]


def arp(op, sha, spa, tha, tpa):
    return struct.pack(">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac_bytes(sha),
                       spa.to_bytes(4, "big"), mac_bytes(tha), tpa.to_bytes(4, "big"))


def vxlan(outer_dst, outer_src, src_ip, dst_ip, sport, vni, inner, udp_port=4789, vlan=None,
          ident=0, df=True, ttl=64):
    """A VXLAN frame (RFC 7348 §5): Ethernet/IPv4/UDP (checksum 0)/VXLAN (I flag)/inner."""
    payload = struct.pack(">BxxxI", 0x08, vni << 8) + inner
    return ethernet(outer_dst, outer_src, 0x0800, vlan) + ipv4(
        src_ip, dst_ip, 17, udp(src_ip, dst_ip, sport, udp_port, payload, with_checksum=False),
        ident=ident, df=df, ttl=ttl)


def random_payload(rng, low, high):
    # Mostly short payloads, now and then a long one: both ends of the length range matter.
    n = rng.randint(low, high) if rng.random() < 0.2 else rng.randint(low, min(high, low + 120))
    return rng.randbytes(n)


def random_inner(rng, max_payload=1400, src_macs=VM_MACS, l4_ports=PORTS):
    """One valid Ethernet frame: IPv4 TCP/UDP/other protocol (sometimes with IP options or a
    fragment), ARP, or an experimental EtherType; untagged or with one 802.1Q tag. Unicast
    source MAC."""
    dst = rng.choice(VM_MACS + (BROADCAST,))
    src = rng.choice(src_macs)
    vlan = (rng.randrange(8), rng.choice(VIDS)) if rng.random() < 0.3 else None
    kind = rng.choices(("tcp", "udp", "ip", "arp", "other"), (30, 30, 10, 15, 15))[0]
    if kind == "arp":
        return ethernet(dst, src, 0x0806, vlan) + arp(
            rng.choice((1, 2)), src, rng.choice(INNER_IPS), rng.choice(VM_MACS),
            rng.choice(INNER_IPS))
    if kind == "other":
        return ethernet(dst, src, rng.choice((0x88B5, 0x88B6)), vlan) + \
            random_payload(rng, 0, max_payload)
    s_ip, d_ip = rng.choice(INNER_IPS), rng.choice(INNER_IPS)
    body = random_payload(rng, 0, max_payload - 60)
    if kind == "tcp":
        proto = 6
        l4 = tcp(s_ip, d_ip, rng.choice(l4_ports), rng.choice(l4_ports),
                 rng.getrandbits(32), rng.getrandbits(32), body)
    elif kind == "udp":
        proto = 17
        l4 = udp(s_ip, d_ip, rng.choice(l4_ports), rng.choice(l4_ports), body,
                 with_checksum=rng.random() < 0.8)
    else:
        proto, l4 = rng.choice((47, 50, 253)), body
    options = b"\x01" * 4 * rng.randint(1, 3) if rng.random() < 0.1 else b""
    # Now and then a fragment: the first (MF, offset 0: its L4 ports count) or a later one.
    frag = rng.choice((0x2000, rng.randint(1, 0x1FFF), 0x2000 | rng.randint(1, 0x1FFF))) \
        if rng.random() < 0.08 else 0
    return ethernet(dst, src, 0x0800, vlan) + ipv4(
        s_ip, d_ip, proto, l4, ident=rng.getrandbits(16), df=not frag and rng.random() < 0.5,
        ttl=rng.randint(1, 255), tos=rng.getrandbits(8) & 0xFC, options=options, frag=frag)


def random_traffic(rng, config, n):
    """``n`` valid input frames for a VTEP with ``config``: host frames, and net frames that are
    VXLAN to ``local_ip:udp_port`` (sometimes with an outer tag) or plain. Returns
    ``(frames, vnis)``: ``(Port, bytes)`` pairs and per frame the VNI it carries (None: plain)."""
    frames, vnis = [], []
    for _ in range(n):
        if rng.random() < 0.5:
            frames.append((Port.HOST, random_inner(rng)))
            vnis.append(None)
        elif rng.random() < 0.7:
            vni = rng.choice(VNIS)
            outer_vlan = (0, rng.choice(VIDS[1:])) if rng.random() < 0.1 else None
            frame = vxlan(config.local_mac, config.gateway_mac, rng.choice(PEER_IPS),
                          config.local_ip, rng.randint(49152, 65535), vni,
                          random_inner(rng, max_payload=1300), config.udp_port, outer_vlan,
                          ident=rng.getrandbits(16), df=rng.random() < 0.5,
                          ttl=rng.randint(1, 255))
            frames.append((Port.NET, frame))
            vnis.append(vni)
        else:
            frames.append((Port.NET, random_inner(rng)))
            vnis.append(None)
    return frames, vnis


def _fmt_mac(value):
    return ":".join(f"{b:02x}" for b in mac_bytes(value))


def _fmt_ip(value):
    return ".".join(str(b) for b in value.to_bytes(4, "big"))


def random_rules(rng, n):
    """A valid random rule set of about ``n`` rules over the values ``random_traffic`` uses (so
    that rules do match), with every action kind, as text. Retries until our compiler takes
    it (a random draw can name set_tunnel before an output:in_port without a tun_dst)."""
    for _ in range(100):
        lines = [_random_rule(rng) for _ in range(n)]
        lines.append("priority=100,in_port=net,tun_id=42,actions=output:host")
        lines.append("priority=101,arp,actions=controller")
        if rng.random() < 0.7:  # a catch-all that encapsulates: many encapsulated outputs
            lines.append(f"priority=0,actions=set_tunnel:{rng.choice(VNIS)},"
                         f"set_field:{_fmt_ip(rng.choice(PEER_IPS))}->tun_dst,output:net")
        text = "\n".join(lines) + "\n"
        try:
            return parse_rules(text, "<random>")
        except RuleError:
            continue
    raise AssertionError("could not draw a valid rule set in 100 tries")


def _random_rule(rng):
    match = []
    if rng.random() < 0.6:
        match.append(f"in_port={rng.choice(('host', 'net'))}")
    if rng.random() < 0.3:
        match.append(f"dl_dst={_fmt_mac(rng.choice(VM_MACS + (BROADCAST,)))}")
    if rng.random() < 0.2:
        match.append(f"dl_src={_fmt_mac(rng.choice(VM_MACS))}")
    if rng.random() < 0.2:
        match.append(f"dl_vlan={rng.choice(VIDS + (0xFFFF,))}")
    if rng.random() < 0.2:
        match.append(f"tun_id={rng.choice(VNIS)}")
    if rng.random() < 0.1:
        match.append(f"tun_src={_fmt_ip(rng.choice(PEER_IPS))}")
    l3 = rng.choice((None, None, "ip", "tcp", "udp", "arp"))
    if l3:
        match.append(l3)
    if l3 in ("ip", "tcp", "udp") and rng.random() < 0.4:
        match.append(f"nw_dst={_fmt_ip(rng.choice(INNER_IPS))}/{rng.choice((8, 16, 24, 32))}")
    if l3 in ("tcp", "udp") and rng.random() < 0.4:
        match.append(f"tp_dst={rng.choice(PORTS)}")
    # Specific rules rank above broad ones, so that no single broad rule takes all traffic.
    match.insert(0, f"priority={40 * len(match) + rng.randint(1, 60)}")
    actions = []
    for _ in range(rng.choice((0, 1, 1, 2, 3))):
        kind = rng.choice(("vlan", "strip", "src", "dst"))
        if kind == "vlan":
            actions.append(f"mod_vlan_vid:{rng.choice(VIDS)}")
        elif kind == "strip":
            actions.append("strip_vlan")
        else:
            actions.append(f"mod_dl_{kind}:{_fmt_mac(rng.choice(VM_MACS))}")
    outputs = rng.choice((["net_encap"], ["net_encap"], ["host"], ["in_port"], ["net"],
                          ["controller"], ["net_encap", "controller"], ["host", "net_encap"],
                          ["drop"]))
    if outputs == ["drop"]:
        actions = ["drop"]
    for out in outputs:
        if out == "net_encap":
            if rng.random() < 0.8:
                actions.append(f"set_tunnel:{rng.choice(VNIS)}")
            actions += [f"set_field:{_fmt_ip(rng.choice(PEER_IPS))}->tun_dst", "output:net"]
        elif out != "drop":
            actions.append(f"output:{out}")
    return ",".join(match) + ",actions=" + ",".join(actions)


def expected_emissions(ruleset, in_ports, result):
    """Per output port, ``(input index, Emission)`` for each frame the reference emitted, in
    emission order (docs/semantics.md: by input frame, then action order). ``in_ports``: the
    port of each input frame."""
    rules = list(ruleset)
    out = {port: [] for port in Port}
    for i, r in enumerate(result.rule.tolist()):
        if r < 0:
            continue
        for emission in rules[r].emissions:
            port = Port(int(in_ports[i])) if emission.port is None else emission.port
            out[port].append((i, emission))
    return out


def batch(frames, port):
    return FrameBatch.from_frames(frames, port=port)


# --- tshark ---------------------------------------------------------------------------------

TSHARK = shutil.which("tshark")
# Protocols tshark keeps: the layers a VTEP writes or edits. Everything above them is turned off
# so that random payloads cannot trip an application dissector.
TSHARK_PROTOCOLS = ("frame", "eth", "ethertype", "vlan", "ip", "udp", "tcp", "arp", "vxlan",
                    "data")
EXPERT_ERROR = 0x00800000  # PI_ERROR in epan/proto.h
CHECKSUM_GOOD, CHECKSUM_BAD = "1", "0"  # proto_checksum_enum_e in epan/proto.h


def tshark_profile(directory):
    """Make an XDG config home under ``directory`` whose wireshark ``disabled_protos`` turns off
    every protocol but TSHARK_PROTOCOLS (and tshark's own ``_ws.*`` and option sub-dissectors).
    tshark 4.0 has no ``--disable-protocol ALL``. Returns the XDG_CONFIG_HOME path."""
    listing = subprocess.run([TSHARK, "-G", "protocols"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    keep = set(TSHARK_PROTOCOLS)
    disabled = []
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        name = parts[2]
        if name in keep or name.startswith(("_ws.", "ip.options.", "tcp.options.")):
            continue
        disabled.append(name)
    assert "dns" in disabled and "vxlan" not in disabled
    home = os.path.join(directory, "xdg")
    os.makedirs(os.path.join(home, "wireshark"), exist_ok=True)
    with open(os.path.join(home, "wireshark", "disabled_protos"), "w") as f:
        f.write("\n".join(disabled) + "\n")
    return home


TSHARK_FIELDS = (
    "frame.len", "frame.protocols", "_ws.malformed", "_ws.expert.severity",
    "_ws.expert.message", "ip.checksum.status", "udp.checksum.status", "tcp.checksum.status",
    "eth.dst", "eth.src", "eth.type", "vlan.id", "vlan.priority", "vlan.etype", "ip.src",
    "ip.dst", "ip.ttl", "ip.id", "ip.flags.df", "ip.flags.mf", "ip.frag_offset", "ip.hdr_len",
    "ip.len", "ip.proto",
    "udp.srcport", "udp.dstport", "udp.length", "udp.checksum", "tcp.srcport", "tcp.dstport",
    "vxlan.flags", "vxlan.vni",
)


def run_tshark(config_home, pcap, udp_port=4789, fields=TSHARK_FIELDS):
    """Decode ``pcap`` with tshark, header checksums validated; one dict per frame mapping each
    field to the list of its occurrences, outermost first."""
    cmd = [TSHARK, "-n", "-r", str(pcap),
           "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
           "-o", "tcp.check_checksum:TRUE", "-o", "tcp.analyze_sequence_numbers:FALSE",
           "-o", "ip.defragment:FALSE",
           "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=|",
           "-E", "quote=n"]
    if udp_port != 4789:
        cmd += ["-d", f"udp.port=={udp_port},vxlan"]
    for field in fields:
        cmd += ["-e", field]
    env = dict(os.environ, XDG_CONFIG_HOME=str(config_home))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, f"tshark failed ({proc.returncode}): {proc.stderr}"
    records = []
    for line in proc.stdout.splitlines():
        values = line.split("\t")
        assert len(values) == len(fields), f"tshark printed {line!r}"
        records.append({f: v.split("|") if v else [] for f, v in zip(fields, values, strict=True)})
    return records


def tshark_problems(record):
    """What tshark found wrong with one frame: malformed, expert errors, bad checksums."""
    problems = []
    if record["_ws.malformed"]:
        problems.append("malformed packet")
    if any(int(severity) >= EXPERT_ERROR for severity in record["_ws.expert.severity"]):
        problems.append(f"expert error: {' | '.join(record['_ws.expert.message'])}")
    for field in ("ip.checksum.status",):
        if any(status != CHECKSUM_GOOD for status in record[field]):
            problems.append(f"{field} {record[field]} (1 = good)")
    for field in ("udp.checksum.status", "tcp.checksum.status"):
        if CHECKSUM_BAD in record[field]:
            problems.append(f"{field} {record[field]} (0 = bad)")
    return problems
