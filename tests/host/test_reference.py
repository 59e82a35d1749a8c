"""Tests of ``openvtep.reference``: every rule of docs/semantics.md, frame by frame.

Frames are built with scapy; every output is parsed back with scapy *and* dpkt and checked field
by field. Property tests (hypothesis) run random traffic through random rule sets and compare
the batch engine with a plain per-frame Python model written here from docs/semantics.md
(``Naive``), with itself one frame at a time and with tiny chunks, and check that every output
parses, every input is accounted for, and no tenant leaks into another.
"""

import dataclasses
import socket
import struct
from collections import Counter
from pathlib import Path

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import ARP, IP, TCP, UDP, Dot1Q, Ether, IPOption_NOP, Raw, conf
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum as scapy_checksum

import openvtep.reference
from openvtep.addr import format_ipv4, format_mac, parse_ipv4, parse_mac
from openvtep.config import VtepConfig
from openvtep.errors import RuleError
from openvtep.frames import FrameBatch
from openvtep.headers import HASH_ROTATIONS, OUTPUT_GROWTH, DropReason, Port, tunnel_src_port
from openvtep.reference import Reference
from openvtep.rules import parse_rules

conf.verb = 0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

H, N, C = Port.HOST, Port.NET, Port.CONTROLLER
LOCAL_IP, LOCAL_MAC, GW_MAC = "198.18.0.1", "02:00:00:00:01:01", "02:00:00:00:01:fe"
PEER, PEER2, STRANGER = "198.18.0.2", "198.18.0.3", "198.18.0.9"
VM1, VM2, VM3, VM4 = (f"02:00:00:00:00:0{i}" for i in range(1, 5))
BCAST = "ff:ff:ff:ff:ff:ff"
CFG = VtepConfig(parse_ipv4(LOCAL_IP), parse_mac(LOCAL_MAC), parse_mac(GW_MAC))
TO_PEER = f"set_field:{PEER}->tun_dst"

SLOW = {"max_examples": 400, "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
FAST = {"max_examples": 25, "deadline": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


# --- Building frames (scapy) ----------------------------------------------------------------

def payload(n, seed=0):
    return Raw(bytes((seed * 31 + i * 7) & 0xFF for i in range(n)))


def vm(dst=VM2, src=VM1, proto="udp", sport=1000, dport=2000, nw_src="10.0.0.1",
       nw_dst="10.0.0.2", vlan=None, prio=0, n=32, seed=0, **ip):
    """A VM's frame: Ethernet [802.1Q] IPv4 UDP/TCP payload."""
    frame = Ether(dst=dst, src=src)
    if vlan is not None:
        frame = frame / Dot1Q(vlan=vlan, prio=prio)
    l4 = (UDP(sport=sport, dport=dport) if proto == "udp" else
          TCP(sport=sport, dport=dport) if proto == "tcp" else Raw(b""))
    return frame / IP(src=nw_src, dst=nw_dst, proto={"udp": 17, "tcp": 6}.get(proto, 1),
                      **ip) / l4 / payload(n, seed)


def arp(src=VM1, vlan=None):
    frame = Ether(dst=BCAST, src=src)
    if vlan is not None:
        frame = frame / Dot1Q(vlan=vlan)
    return frame / ARP(hwsrc=src, psrc="10.0.0.1", pdst="10.0.0.2")


def vxlan(inner, vni=42, src=PEER, dst=LOCAL_IP, dport=4789, sport=51000, vx_flags=0x08,
          outer_vlan=None, udp_len=None, eth_dst=LOCAL_MAC, **ip):
    """A VXLAN frame from the underlay (RFC 7348 §5) around ``inner``."""
    frame = Ether(dst=eth_dst, src=GW_MAC)
    if outer_vlan is not None:
        frame = frame / Dot1Q(vlan=outer_vlan)
    header = Raw(bytes([vx_flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0")
    return (frame / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport, len=udp_len)
            / header / Raw(bytes(inner)))


def run(rules, frames, config=CFG):
    """Run ``frames`` (``(port, frame)`` pairs) through the reference for ``rules``."""
    ruleset = parse_rules(rules, "t.rules") if isinstance(rules, str) else rules
    batch = FrameBatch.from_frames([(port, bytes(f)) for port, f in frames])
    return Reference(config, ruleset).run(batch)


def out(result, port):
    return result.outputs[port].frames()


def drops(result):
    return {k: v for k, v in result.stats["drops"].items() if v}


def be16(b, off):
    return int.from_bytes(b[off:off + 2], "big")


# --- Parsing outputs back (scapy and dpkt) --------------------------------------------------

def mac_bytes(text):
    return bytes.fromhex(text.replace(":", ""))


def parse_both(frame):
    """Both parsers must accept the frame and agree with its bytes on the Ethernet header."""
    s = Ether(frame)
    d = dpkt.ethernet.Ethernet(frame)
    assert mac_bytes(s.dst) == d.dst == frame[0:6]
    assert mac_bytes(s.src) == d.src == frame[6:12]
    assert s.type == be16(frame, 12)
    return s, d


def flow_fields(frame):
    """The match fields of a frame per docs/semantics.md step 3 (absent: missing key),
    extracted with plain byte arithmetic."""
    n = len(frame)
    etype = be16(frame, 12)
    tagged = etype == 0x8100
    l2 = 18 if tagged else 14
    f = {"dl_dst": int.from_bytes(frame[0:6], "big"), "dl_src": int.from_bytes(frame[6:12], "big"),
         "dl_type": be16(frame, 16) if tagged else etype,
         "dl_vlan": be16(frame, 14) & 0xFFF if tagged else 0xFFFF,
         "tci": be16(frame, 14) if tagged else None}
    if f["dl_type"] == 0x0800 and n >= l2 + 20 and frame[l2] >> 4 == 4:
        ihl = frame[l2] & 15
        if ihl >= 5 and n >= l2 + 4 * ihl:
            f["nw_src"] = int.from_bytes(frame[l2 + 12:l2 + 16], "big")
            f["nw_dst"] = int.from_bytes(frame[l2 + 16:l2 + 20], "big")
            f["nw_proto"] = frame[l2 + 9]
            l4 = l2 + 4 * ihl
            if (f["nw_proto"] in (6, 17) and be16(frame, l2 + 6) & 0x1FFF == 0
                    and n >= l4 + 4):
                f["tp_src"], f["tp_dst"] = be16(frame, l4), be16(frame, l4 + 2)
    return f


def documented_hash(f):
    """The VXLAN source port, computed from the comment in host/headers.py in plain Python."""
    words = [f["dl_dst"] >> 32, f["dl_dst"] >> 16, f["dl_dst"], f["dl_src"] >> 32,
             f["dl_src"] >> 16, f["dl_src"], f["dl_type"], f.get("nw_src", 0) >> 16,
             f.get("nw_src", 0), f.get("nw_dst", 0) >> 16, f.get("nw_dst", 0),
             f.get("nw_proto", 0), f.get("tp_src", 0), f.get("tp_dst", 0)]
    h = 0
    for i, word in enumerate(words):
        word &= 0xFFFF
        r = (5 * (13 - i)) % 16
        h ^= ((word << r) | (word >> (16 - r))) & 0xFFFF
    return 49152 + (h & 0x3FFF)


def lib_hash(f):
    """``openvtep.headers.tunnel_src_port`` of the fields of one frame."""
    return int(tunnel_src_port(
        [f["dl_dst"]], [f["dl_src"]], [f["dl_type"]], [f.get("nw_src", 0)],
        [f.get("nw_dst", 0)], [f.get("nw_proto", 0)], [f.get("tp_src", 0)],
        [f.get("tp_dst", 0)])[0])


def check_encap(frame, inner, vni, tun_dst, config=CFG, matched=None):
    """``frame`` is ``inner`` VXLAN-encapsulated by ``config`` towards ``tun_dst`` with ``vni``;
    checked field by field with scapy and with dpkt. The source port hashes the MACs of
    ``inner`` and the other fields of ``matched`` (the frame as matched, default ``inner``).
    Returns the UDP source port."""
    inner = bytes(inner)
    assert len(frame) == len(inner) + 50
    gw, local = format_mac(config.gateway_mac), format_mac(config.local_mac)
    local_ip = format_ipv4(config.local_ip)
    # scapy
    s = Ether(frame)
    assert (s.dst, s.src, s.type) == (gw, local, 0x0800)
    ip = s[IP]
    assert (ip.version, ip.ihl, ip.tos, ip.id, int(ip.flags), ip.frag, ip.ttl, ip.proto) == \
        (4, 5, 0, 0, 2, 0, config.ttl, 17)
    assert (ip.src, ip.dst, ip.len) == (local_ip, tun_dst, len(inner) + 36)
    header = bytearray(frame[14:34])
    header[10:12] = b"\0\0"
    assert scapy_checksum(bytes(header)) == ip.chksum
    rebuilt = IP(frame[14:34])
    del rebuilt.chksum
    assert IP(bytes(rebuilt)).chksum == ip.chksum
    udp = UDP(frame[34:42])
    assert 49152 <= udp.sport <= 65535
    assert (udp.dport, udp.len, udp.chksum) == (config.udp_port, len(inner) + 16, 0)
    vx = VXLAN(frame[42:50])
    assert int(vx.flags) == 0x08 and vx.vni == vni and vx.reserved2 == 0
    assert frame[43:46] == b"\0\0\0"
    # dpkt
    e = dpkt.ethernet.Ethernet(frame)
    assert (e.dst, e.src, e.type) == (mac_bytes(gw), mac_bytes(local), 0x0800)
    dip = e.data
    assert isinstance(dip, dpkt.ip.IP)
    assert (dip.v, dip.hl, dip.tos, dip.id, dip.df, dip.mf, dip.offset, dip.ttl, dip.p) == \
        (4, 5, 0, 0, 1, 0, 0, config.ttl, 17)
    assert (dip.src, dip.dst) == (socket.inet_aton(local_ip), socket.inet_aton(tun_dst))
    assert dip.len == len(inner) + 36
    assert dpkt.dpkt.in_cksum(bytes(header)) == dip.sum
    dudp = dip.data
    assert isinstance(dudp, dpkt.udp.UDP)
    assert (dudp.sport, dudp.dport, dudp.ulen, dudp.sum) == \
        (udp.sport, config.udp_port, len(inner) + 16, 0)
    body = bytes(dudp.data)
    assert body[0] == 0x08 and body[1:4] == b"\0\0\0" and body[7] == 0
    assert int.from_bytes(body[4:7], "big") == vni
    assert body[8:] == inner == frame[50:]
    # The source port is the documented hash of the emitted MACs and the matched fields.
    fields = flow_fields(bytes(inner if matched is None else matched))
    fields.update(dl_dst=int.from_bytes(inner[0:6], "big"),
                  dl_src=int.from_bytes(inner[6:12], "big"))
    assert udp.sport == lib_hash(fields) == documented_hash(fields)
    return udp.sport


# --- A per-frame model written from docs/semantics.md, for the property tests ----------------

def ipv4_checksum(header):
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Naive:
    """docs/semantics.md, one frame at a time, in plain Python (no numpy, no emissions)."""

    def __init__(self, config, ruleset):
        self.config, self.rules = config, list(ruleset)
        self.ranked = sorted(range(len(self.rules)),
                             key=lambda i: (-self.rules[i].priority, self.rules[i].line))

    def step2(self, port, frame):
        """(drop reason or None, matched frame, tun_id, tun_src)."""
        cfg, n = self.config, len(frame)
        if n < 14:
            return DropReason.RUNT, None, 0, 0
        if n > cfg.max_frame:
            return DropReason.OVERSIZE, None, 0, 0
        tagged = be16(frame, 12) == 0x8100
        if tagged and n < 18:
            return DropReason.TRUNCATED, None, 0, 0
        l2 = 18 if tagged else 14
        etype = be16(frame, l2 - 2)
        if (port == N and etype == 0x0800 and n >= l2 + 20
                and int.from_bytes(frame[l2 + 16:l2 + 20], "big") == cfg.local_ip
                and frame[l2 + 9] == 17):
            ip = frame[l2:l2 + 20]
            total = be16(ip, 2)
            if ip[0] != 0x45:
                return DropReason.BAD_IP_HEADER, None, 0, 0
            if ipv4_checksum(ip) != 0:
                return DropReason.BAD_IP_CHECKSUM, None, 0, 0
            if total != n - l2:
                return DropReason.BAD_IP_LENGTH, None, 0, 0
            if be16(ip, 6) & 0x3FFF:
                return DropReason.IP_FRAGMENT, None, 0, 0
            if n < l2 + 28:
                return DropReason.TRUNCATED, None, 0, 0
            if be16(frame, l2 + 22) == cfg.udp_port:
                if be16(frame, l2 + 24) != total - 20:
                    return DropReason.BAD_UDP_LENGTH, None, 0, 0
                if n < l2 + 50:
                    return DropReason.TRUNCATED, None, 0, 0
                if not frame[l2 + 28] & 0x08:
                    return DropReason.VXLAN_FLAGS, None, 0, 0
                inner = frame[l2 + 36:]
                if be16(inner, 12) == 0x8100 and len(inner) < 18:
                    return DropReason.TRUNCATED, None, 0, 0
                return (None, inner, int.from_bytes(frame[l2 + 32:l2 + 35], "big"),
                        int.from_bytes(ip[12:16], "big"))
        return None, frame, 0, 0

    def encap(self, inner, matched, vni, tun_dst):
        """``inner`` (the working copy) encapsulated. The source-port hash takes the MACs of
        ``inner`` and the other fields of the frame as matched (host/headers.py)."""
        cfg = self.config
        fields = flow_fields(matched)
        fields.update(dl_dst=int.from_bytes(inner[0:6], "big"),
                      dl_src=int.from_bytes(inner[6:12], "big"))
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36 + len(inner), 0, 0x4000,
                                   cfg.ttl, 17, 0, cfg.local_ip.to_bytes(4, "big"),
                                   tun_dst.to_bytes(4, "big")))
        ip[10:12] = ipv4_checksum(bytes(ip)).to_bytes(2, "big")
        udp = struct.pack("!HHHH", documented_hash(fields), cfg.udp_port,
                          16 + len(inner), 0)
        vx = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
        return (cfg.gateway_mac.to_bytes(6, "big") + cfg.local_mac.to_bytes(6, "big")
                + b"\x08\x00" + bytes(ip) + udp + vx + inner)

    def run(self, frames):
        """Returns (outputs {Port: [(bytes, encap info or None, input index)]}, stats,
        rule per frame, drop per frame)."""
        outputs = {p: [] for p in Port}
        n_rules = len(self.rules)
        rule_packets, rule_bytes = [0] * n_rules, [0] * n_rules
        ports = {p: Counter() for p in Port}
        dropped = Counter()
        rules_out, drops_out = [], []
        for index, (port, frame) in enumerate(frames):
            port, frame = Port(port), bytes(frame)
            ports[port]["rx_packets"] += 1
            ports[port]["rx_bytes"] += len(frame)
            reason, inner, tun_id, tun_src = self.step2(port, frame)
            rule = -1
            if reason is None:
                f = flow_fields(inner)
                f.update(in_port=int(port), tun_id=tun_id, tun_src=tun_src)
                for i in self.ranked:
                    if all(f.get(name) is not None and f[name] & mask == value
                           for name, value, mask in self.rules[i].match):
                        rule = i
                        break
                if rule < 0:
                    reason = DropReason.TABLE_MISS
                else:
                    rule_packets[rule] += 1
                    rule_bytes[rule] += len(inner)
                    emitted = self.actions(self.rules[rule], port, frame, inner, tun_id, index)
                    for out_port, out_frame, info in emitted:
                        outputs[out_port].append((out_frame, info, index))
                    if not emitted:
                        reason = DropReason.ACTION_DROP
            if reason is not None:
                dropped[reason] += 1
            rules_out.append(rule)
            drops_out.append(-1 if reason is None else int(reason))
        for p in Port:
            ports[p]["tx_packets"] = len(outputs[p])
            ports[p]["tx_bytes"] = sum(len(f) for f, _, _ in outputs[p])
        stats = {
            "rules": [{"line": r.line, "rule": r.text, "n_packets": p, "n_bytes": b}
                      for r, p, b in zip(self.rules, rule_packets, rule_bytes)],
            "ports": {p.label: {k: ports[p][k] for k in
                                ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")}
                      for p in Port},
            "drops": {r.label: dropped[r] for r in DropReason},
        }
        return outputs, stats, rules_out, drops_out

    def actions(self, rule, in_port, arrived, inner, tun_id, index):
        work = bytearray(inner)
        vni = tun_dst = None
        emitted = []
        # VLAN actions act on the one tag the frame was parsed with: a second 0x8100 after
        # it is payload, not a tag (docs/semantics.md step 5).
        tagged = be16(work, 12) == 0x8100
        for name, arg in rule.actions:
            if name == "mod_dl_src":
                work[6:12] = arg.to_bytes(6, "big")
            elif name == "mod_dl_dst":
                work[0:6] = arg.to_bytes(6, "big")
            elif name == "mod_vlan_vid":
                if tagged:
                    work[14:16] = ((be16(work, 14) & 0xF000) | arg).to_bytes(2, "big")
                else:
                    work[12:12] = b"\x81\x00" + arg.to_bytes(2, "big")
                    tagged = True
            elif name == "strip_vlan":
                if tagged:
                    del work[12:16]
                    tagged = False
            elif name == "set_tunnel":
                vni = arg
            elif name == "set_tun_dst":
                tun_dst = arg
            elif name == "controller":
                emitted.append((C, arrived, None))
            elif name == "output":
                port = in_port if arg is None else arg
                if port == N and tun_dst is not None:
                    v = tun_id if vni is None else vni
                    emitted.append((N, self.encap(bytes(work), inner, v, tun_dst),
                                    (bytes(work), v, format_ipv4(tun_dst), inner)))
                else:
                    emitted.append((port, bytes(work), None))
            else:
                raise AssertionError(f"unknown action {name}")
        return emitted


# --- Encapsulation ---------------------------------------------------------------------------

ENCAP_RULE = f"in_port=host,actions=set_tunnel:42,{TO_PEER},output:net"


@pytest.mark.parametrize("inner", [
    vm(), vm(proto="tcp", sport=40000, dport=80, n=100), vm(vlan=10, prio=3),
    vm(n=0), arp(), arp(vlan=7), Ether(dst=VM2, src=VM1, type=0x88B5) / payload(46),
    Ether(dst=VM2, src=VM1, type=0x1234), vm(options=[IPOption_NOP()] * 4),
    vm(flags="MF"), vm(frag=10), vm(n=1518 - 14 - 20 - 8),
], ids=["udp", "tcp", "tagged", "empty_udp", "arp", "tagged_arp", "ethertype", "min14",
        "ip_options", "first_fragment", "later_fragment", "max_frame"])
def test_encap_headers(inner):
    result = run(ENCAP_RULE, [(H, inner)])
    [frame] = out(result, N)
    sport = check_encap(frame, inner, 42, PEER)
    parse_both(frame[50:])
    fields = flow_fields(bytes(inner))
    if "tp_src" in fields:
        assert fields["tp_src"] == inner[UDP if UDP in inner else TCP].sport
    assert sport == documented_hash(fields)
    assert out(result, H) == out(result, C) == []
    assert result.stats["ports"]["net"] == {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 1,
                                            "tx_bytes": len(inner) + 50}


@pytest.mark.parametrize("config", [
    dataclasses.replace(CFG, ttl=1, udp_port=8472),
    dataclasses.replace(CFG, ttl=255, local_ip=parse_ipv4("10.255.0.1"),
                        local_mac=parse_mac("0a:0b:0c:0d:0e:0f"),
                        gateway_mac=parse_mac("fe:dc:ba:98:76:54"), udp_port=65535),
])
def test_encap_follows_config(config):
    inner = vm(n=60)
    [frame] = out(run(f"actions=set_tunnel:0xffffff,set_field:{STRANGER}->tun_dst,output:net",
                      [(H, inner)], config), N)
    check_encap(frame, inner, 0xFFFFFF, STRANGER, config)


def test_encap_same_flow_same_port_and_flows_spread():
    flows = [vm(sport=1000 + i, n=i) for i in range(64)]
    again = [vm(sport=1000 + i, n=100 - i, seed=i) for i in range(64)]  # same flows, new bytes
    result = run(ENCAP_RULE, [(H, f) for f in flows + again])
    frames = out(result, N)
    ports = [check_encap(frame, inner, 42, PEER) for frame, inner in zip(frames, flows + again)]
    assert ports[:64] == ports[64:]
    assert len(set(ports[:64])) > 48
    # Every hash word counts: changing any one field changes the port.
    base = vm()
    variants = [vm(dst=VM3), vm(src=VM3), vm(nw_src="10.0.0.9"), vm(nw_dst="10.0.0.9"),
                vm(proto="tcp"), vm(sport=1001), vm(dport=2001)]
    result = run(ENCAP_RULE, [(H, f) for f in [base] + variants])
    ports = [check_encap(f, i, 42, PEER) for f, i in zip(out(result, N), [base] + variants)]
    assert ports[0] not in ports[1:]


@given(st.lists(st.integers(0, 2**48 - 1), min_size=2, max_size=2),
       st.integers(0, 0xFFFF), st.lists(st.integers(0, 2**32 - 1), min_size=2, max_size=2),
       st.integers(0, 255), st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2))
@settings(max_examples=200, deadline=None)
def test_tunnel_src_port_is_the_documented_hash(macs, dl_type, ips, proto, ports):
    f = {"dl_dst": macs[0], "dl_src": macs[1], "dl_type": dl_type, "nw_src": ips[0],
         "nw_dst": ips[1], "nw_proto": proto, "tp_src": ports[0], "tp_dst": ports[1]}
    assert lib_hash(f) == documented_hash(f)
    assert HASH_ROTATIONS == tuple((5 * (13 - i)) % 16 for i in range(14))


def test_encap_port_hashes_the_emitted_frame():
    inner = vm(vlan=5, prio=2)
    rules = (f"in_port=host,actions=mod_dl_dst:{VM4},mod_dl_src:{VM3},strip_vlan,"
             f"set_tunnel:7,{TO_PEER},output:net")
    [frame] = out(run(rules, [(H, inner)]), N)
    emitted = bytes(vm(dst=VM4, src=VM3))
    check_encap(frame, emitted, 7, PEER)
    assert documented_hash(flow_fields(emitted)) != documented_hash(flow_fields(bytes(inner)))


def qinq(outer_vid=10, inner_vid=20):
    """A double-tagged frame: only the first tag is parsed; 0x8100 after it is payload."""
    return (Ether(dst=VM2, src=VM1) / Dot1Q(vlan=outer_vid, prio=3) / Dot1Q(vlan=inner_vid)
            / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=2000) / payload(20))


def test_encap_hash_uses_matched_fields_after_vlan_actions():
    frame = qinq()
    once = bytes(Ether(dst=VM4, src=VM1) / Dot1Q(vlan=20) / IP(src="10.0.0.1", dst="10.0.0.2")
                 / UDP(sport=1000, dport=2000) / payload(20))
    rules = f"actions=strip_vlan,mod_dl_dst:{VM4},set_tunnel:5,{TO_PEER},output:net"
    [out_frame] = out(run(rules, [(H, frame)]), N)
    sport = check_encap(out_frame, once, 5, PEER, matched=frame)
    matched = flow_fields(bytes(frame))
    assert (matched["dl_type"], "nw_src" in matched) == (0x8100, False)
    emitted = flow_fields(once)
    assert (emitted["dl_type"], "nw_src" in emitted) == (0x0800, True)
    assert sport != documented_hash(emitted)


def test_vlan_actions_act_on_the_parsed_tag_only():
    frame = qinq()
    rules = ("in_port=host,actions=strip_vlan,strip_vlan,output:host\n"
             "in_port=net,actions=strip_vlan,mod_vlan_vid:30,output:host\n")
    host_out, net_out = out(run(rules, [(H, frame), (N, frame)]), H)
    assert host_out == bytes(Ether(dst=VM2, src=VM1) / Dot1Q(vlan=20)
                             / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=2000)
                             / payload(20))
    assert net_out == bytes(Ether(dst=VM2, src=VM1) / Dot1Q(vlan=30, prio=0) / Dot1Q(vlan=20)
                            / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=2000)
                            / payload(20))
    _, d = parse_both(net_out)
    assert [t.id for t in d.vlan_tags] == [30, 20]


def test_encap_keeps_vni_of_decapsulated_frame():
    # tun_dst without set_tunnel: the frame keeps its own tun_id (0 for a plain frame).
    inner = vm()
    rules = (f"in_port=net,actions=set_field:{PEER2}->tun_dst,output:net\n"
             f"in_port=host,actions={TO_PEER},output:net\n")
    result = run(rules, [(N, vxlan(inner, vni=1234)), (H, inner)])
    first, second = out(result, N)
    check_encap(first, inner, 1234, PEER2)
    check_encap(second, inner, 0, PEER)


def test_vni_translation_only_when_a_rule_says_so():
    inner = vm()
    rules = (f"priority=10,in_port=net,tun_id=42,actions=set_tunnel:43,{TO_PEER},output:net\n"
             f"priority=10,in_port=net,tun_id=44,actions={TO_PEER},output:net\n")
    result = run(rules, [(N, vxlan(inner, vni=42)), (N, vxlan(inner, vni=44)),
                         (N, vxlan(inner, vni=45))])
    first, second = out(result, N)
    check_encap(first, inner, 43, PEER)
    check_encap(second, inner, 44, PEER)
    assert drops(result) == {"table_miss": 1}


# --- Decapsulation ---------------------------------------------------------------------------

def test_decap_to_host():
    inner = vm(dst=VM1, src=VM2, proto="tcp", n=64)
    frame = vxlan(inner, vni=42)
    result = run("in_port=net,tun_id=42,tun_src=198.18.0.2,actions=output:host", [(N, frame)])
    [got] = out(result, H)
    assert got == bytes(inner)
    s, d = parse_both(got)
    assert (s.dst, s.src, s[TCP].sport, s[TCP].dport) == (VM1, VM2, 1000, 2000)
    assert isinstance(d.data.data, dpkt.tcp.TCP) and d.data.data.dport == 2000
    assert result.stats["rules"][0]["n_bytes"] == len(inner)
    assert result.stats["ports"]["net"]["rx_bytes"] == len(frame)


@pytest.mark.parametrize("frame", [
    vxlan(vm(), outer_vlan=100),
    vxlan(vm(), sport=4789),
    vxlan(vm(), eth_dst=BCAST),                   # outer MAC is not checked
    vxlan(vm(), vx_flags=0xFF),                   # reserved bits ignored
    vxlan(vm(), vx_flags=0x0C, id=77, ttl=1, tos=0xB8),
    vxlan(vm(vlan=9, prio=7)),
    vxlan(Ether(dst=VM1, src=VM2, type=0x9000)),  # inner of exactly 14 bytes
], ids=["outer_vlan", "sport_4789", "any_outer_mac", "reserved_flags", "outer_fields",
        "inner_vlan", "inner_min"])
def test_decap_variants(frame):
    frame = bytes(frame)
    inner = frame[(18 if be16(frame, 12) == 0x8100 else 14) + 36:]
    assert UDP(frame[-len(inner) - 16:]).chksum != 0  # the UDP checksum is not checked
    result = run("in_port=net,tun_id=42,actions=output:host", [(N, frame)])
    assert out(result, H) == [inner]
    parse_both(inner)


@pytest.mark.parametrize("frame, port", [
    (vxlan(vm(), dst=PEER), N),                   # another IP
    (vxlan(vm(), dport=4790), N),                 # another UDP port
    (vxlan(vm(), dport=8472), N),
    (vxlan(vm(), proto=6), N),                    # not UDP
    (vxlan(vm()), H),                             # arrived on host
    (bytes(vxlan(vm(), outer_vlan=3))[:18 + 19], N),  # IPv4 header cut: not a candidate
], ids=["other_ip", "port_4790", "port_8472", "tcp", "on_host", "short_ip"])
def test_not_a_tunnel_goes_on_plain(frame, port):
    frame = bytes(frame)
    rules = ("priority=10,tun_id=42,actions=drop\n"
             "priority=5,tun_id=0,tun_src=0.0.0.0,actions=output:in_port,controller\n")
    result = run(rules, [(port, frame)])
    assert out(result, port) == [frame]
    assert out(result, C) == [frame]
    assert result.stats["rules"][1]["n_bytes"] == len(frame)
    parse_both(frame)


def test_plain_frame_matches_outer_fields_on_net():
    frame = bytes(vxlan(vm(), dport=4790))
    rules = f"udp,in_port=net,nw_dst={LOCAL_IP},tp_dst=4790,actions=output:host"
    assert out(run(rules, [(N, frame)]), H) == [frame]


# --- Outer header errors: named drop, no output, next frame still passes -----------------------

def _with(frame, offset, value):
    frame = bytearray(bytes(frame))
    frame[offset:offset + len(value)] = value
    return bytes(frame)


def _recompute_checksum(frame, l2=14):
    frame = bytearray(frame)
    frame[l2 + 10:l2 + 12] = b"\0\0"
    frame[l2 + 10:l2 + 12] = ipv4_checksum(bytes(frame[l2:l2 + 20])).to_bytes(2, "big")
    return bytes(frame)


GOOD_INNER = vm(dst=VM1, src=VM2)
UDP_TO_LOCAL = Ether(dst=LOCAL_MAC, src=GW_MAC) / IP(src=PEER, dst=LOCAL_IP, proto=17)
OUTER_ERRORS = {
    "version_6": (_recompute_checksum(_with(vxlan(GOOD_INNER), 14, b"\x65")), "bad_ip_header"),
    "ihl_6": (vxlan(GOOD_INNER, options=[IPOption_NOP()] * 4), "bad_ip_header"),
    "ihl_4": (_recompute_checksum(_with(vxlan(GOOD_INNER), 14, b"\x44")), "bad_ip_header"),
    "ihl_6_tagged": (vxlan(GOOD_INNER, outer_vlan=4, options=[IPOption_NOP()] * 4),
                     "bad_ip_header"),
    "checksum": (vxlan(GOOD_INNER, chksum=0x1234), "bad_ip_checksum"),
    "checksum_zero": (vxlan(GOOD_INNER, chksum=0), "bad_ip_checksum"),
    "checksum_tagged": (vxlan(GOOD_INNER, outer_vlan=4, chksum=1), "bad_ip_checksum"),
    "total_length_long": (vxlan(GOOD_INNER, len=36 + len(GOOD_INNER) + 1), "bad_ip_length"),
    "total_length_short": (vxlan(GOOD_INNER, len=36 + len(GOOD_INNER) - 1), "bad_ip_length"),
    "ethernet_padding": (bytes(vxlan(GOOD_INNER)) + b"\0\0", "bad_ip_length"),
    "mf": (vxlan(GOOD_INNER, flags="MF"), "ip_fragment"),
    "offset": (vxlan(GOOD_INNER, frag=1), "ip_fragment"),
    "offset_df": (vxlan(GOOD_INNER, frag=0x1FFF, flags="DF"), "ip_fragment"),
    "truncated_udp": (UDP_TO_LOCAL / Raw(b"\xc0\x00\x12"), "truncated"),
    "truncated_udp_other_port": (UDP_TO_LOCAL / Raw(b"\xc0\x00\x00\x35"), "truncated"),
    "truncated_vxlan": (UDP_TO_LOCAL / UDP(sport=1, dport=4789) / Raw(b"\x08\0\0\0"),
                        "truncated"),
    "truncated_inner_eth": (vxlan(Raw(bytes(GOOD_INNER)[:13])), "truncated"),
    "truncated_inner_vlan": (vxlan(Ether(dst=VM1, src=VM2, type=0x8100) / Raw(b"\0\x05\x08")),
                             "truncated"),
    "udp_length_long": (vxlan(GOOD_INNER, udp_len=16 + len(GOOD_INNER) + 1), "bad_udp_length"),
    "udp_length_short": (vxlan(GOOD_INNER, udp_len=16 + len(GOOD_INNER) - 1), "bad_udp_length"),
    "udp_length_zero": (vxlan(GOOD_INNER, udp_len=0), "bad_udp_length"),
    "i_flag_clear": (vxlan(GOOD_INNER, vx_flags=0x00), "vxlan_flags"),
    "i_flag_clear_others_set": (vxlan(GOOD_INNER, vx_flags=0xF7), "vxlan_flags"),
    "i_flag_clear_tagged": (vxlan(GOOD_INNER, vx_flags=0x04, outer_vlan=9), "vxlan_flags"),
}


@pytest.mark.parametrize("name", list(OUTER_ERRORS))
def test_outer_error_drops(name):
    bad, reason = OUTER_ERRORS[name]
    bad = bytes(bad)
    good = bytes(vxlan(GOOD_INNER))
    rules = "priority=1,in_port=net,actions=output:host,controller\n"
    result = run(rules, [(N, bad), (N, good), (N, bad), (N, good)])
    assert out(result, H) == [bytes(GOOD_INNER)] * 2
    assert out(result, C) == [good, good]
    assert out(result, N) == []
    assert drops(result) == {reason: 2}
    assert result.drop.tolist() == [int(DropReason[reason.upper()]), -1] * 2
    assert result.rule.tolist() == [-1, 0, -1, 0]
    assert result.stats["rules"][0]["n_packets"] == 2
    assert result.stats["ports"]["net"]["rx_packets"] == 4
    assert result.stats["ports"]["net"]["rx_bytes"] == 2 * (len(bad) + len(good))


def test_outer_checks_run_in_documented_order():
    # Several errors at once: the first in docs/semantics.md's order names the drop.
    frame = vxlan(GOOD_INNER, chksum=1, len=999, flags="MF", udp_len=3)
    assert drops(run("actions=output:host", [(N, frame)])) == {"bad_ip_checksum": 1}
    frame = vxlan(GOOD_INNER, len=999, flags="MF", udp_len=3)
    assert drops(run("actions=output:host", [(N, frame)])) == {"bad_ip_length": 1}
    frame = vxlan(GOOD_INNER, frag=3, udp_len=3, vx_flags=0)
    assert drops(run("actions=output:host", [(N, frame)])) == {"ip_fragment": 1}
    frame = vxlan(GOOD_INNER, udp_len=3, vx_flags=0)
    assert drops(run("actions=output:host", [(N, frame)])) == {"bad_udp_length": 1}


def test_outer_errors_only_for_local_ip():
    # The same malformed headers to another address are plain frames, not drops.
    rules = "actions=output:host"
    for frame in (vxlan(GOOD_INNER, dst=PEER, chksum=1), vxlan(GOOD_INNER, dst=PEER, vx_flags=0),
                  vxlan(GOOD_INNER, dst=PEER, frag=5), vxlan(GOOD_INNER, dport=99, udp_len=3)):
        assert out(run(rules, [(N, frame)]), H) == [bytes(frame)]


# --- Step 1: length checks -------------------------------------------------------------------

@pytest.mark.parametrize("port", [H, N])
def test_runt_oversize_truncated_tag(port):
    cfg = dataclasses.replace(CFG, max_frame=100)
    tagged = bytes(Ether(dst=VM2, src=VM1) / Dot1Q(vlan=5, type=0x9000))
    frames = [b"", b"\x02", bytes(13), bytes(14), bytes(vm(n=100 - 42)), bytes(vm(n=101 - 42)),
              tagged[:17], tagged[:18], bytes(vm(n=2000))]
    result = run("actions=output:in_port", [(port, f) for f in frames], cfg)
    assert out(result, port) == [frames[3], frames[4], frames[7]]
    assert drops(result) == {"runt": 3, "oversize": 2, "truncated": 1}
    assert result.drop.tolist() == [0, 0, 0, -1, -1, 1, 2, -1, 1]
    assert result.stats["ports"][port.label]["rx_packets"] == len(frames)
    assert result.stats["ports"][port.label]["rx_bytes"] == sum(map(len, frames))
    assert result.stats["rules"][0]["n_packets"] == 3


def test_oversize_checked_before_decap():
    cfg = dataclasses.replace(CFG, max_frame=200)
    frame = bytes(vxlan(vm(n=160 - 42)))
    assert len(frame) > 200 and len(frame) - 50 < 200
    assert drops(run("actions=output:host", [(N, frame)], cfg)) == {"oversize": 1}


# --- VLAN, MAC rewrite ------------------------------------------------------------------------

def _vlan_out(rules, frame, port=H):
    [got] = out(run(rules, [(H, frame)]), port)
    s, d = parse_both(got)
    return got, s, d


def test_mod_vlan_vid_keeps_pcp():
    frame = vm(vlan=10, prio=5)
    got, s, d = _vlan_out("actions=mod_vlan_vid:20,output:host", frame)
    assert (s[Dot1Q].vlan, s[Dot1Q].prio, s[Dot1Q].type) == (20, 5, 0x0800)
    assert (d.vlan_tags[0].id, d.vlan_tags[0].pri) == (20, 5)
    assert got == bytes(vm(vlan=20, prio=5))


def test_mod_vlan_vid_pushes_pcp0():
    frame = vm()
    got, s, d = _vlan_out("actions=mod_vlan_vid:4095,output:host", frame)
    assert len(got) == len(frame) + 4
    assert be16(got, 12) == 0x8100
    assert (s[Dot1Q].vlan, s[Dot1Q].prio, s[Dot1Q].dei, s[Dot1Q].type) == (4095, 0, 0, 0x0800)
    assert (d.vlan_tags[0].id, d.vlan_tags[0].pri) == (4095, 0)
    assert got == bytes(vm(vlan=4095, prio=0))
    assert s[UDP].dport == 2000 and isinstance(d.data, dpkt.ip.IP)


def test_strip_vlan():
    got, s, d = _vlan_out("actions=strip_vlan,output:host", vm(vlan=10, prio=5))
    assert Dot1Q not in s and not getattr(d, "vlan_tags", [])
    assert got == bytes(vm())
    got, _, _ = _vlan_out("actions=strip_vlan,output:host", vm())
    assert got == bytes(vm())


def test_strip_then_mod_gives_pcp0():
    got, s, _ = _vlan_out("actions=strip_vlan,mod_vlan_vid:30,output:host", vm(vlan=10, prio=5))
    assert (s[Dot1Q].vlan, s[Dot1Q].prio) == (30, 0)
    assert got == bytes(vm(vlan=30, prio=0))
    got, _, _ = _vlan_out("actions=mod_vlan_vid:30,strip_vlan,output:host", vm(vlan=10, prio=5))
    assert got == bytes(vm())


def test_vlan_edits_on_decapsulated_frame():
    inner = vm(dst=VM1, src=VM2, vlan=10, prio=6)
    result = run("in_port=net,tun_id=43,actions=mod_vlan_vid:11,output:host,strip_vlan,"
                 "output:host,mod_vlan_vid:12,output:host",
                 [(N, vxlan(inner, vni=43))])
    assert out(result, H) == [bytes(vm(dst=VM1, src=VM2, vlan=11, prio=6)),
                              bytes(vm(dst=VM1, src=VM2)),
                              bytes(vm(dst=VM1, src=VM2, vlan=12, prio=0))]


def test_vlan_push_then_encap():
    inner = vm(vlan=None)
    [frame] = out(run(f"actions=mod_vlan_vid:100,set_tunnel:5,{TO_PEER},output:net",
                      [(H, inner)]), N)
    pushed = bytes(vm(vlan=100))
    check_encap(frame, pushed, 5, PEER)
    assert Ether(frame[50:])[Dot1Q].vlan == 100


def test_mod_dl_src_dst():
    rules = f"actions=mod_dl_src:{VM3},mod_dl_dst:{VM4},output:host"
    got, s, _ = _vlan_out(rules, vm(vlan=7))
    assert (s.src, s.dst) == (VM3, VM4)
    assert got == bytes(vm(dst=VM4, src=VM3, vlan=7))
    # On a decapsulated frame the inner MACs are rewritten.
    result = run(rules, [(N, vxlan(vm()))])
    assert out(result, H) == [bytes(vm(dst=VM4, src=VM3))]


def test_mod_dl_then_encap_outer_macs_from_config():
    rules = f"actions=mod_dl_dst:{VM4},{TO_PEER},set_tunnel:9,output:net"
    [frame] = out(run(rules, [(H, vm())]), N)
    check_encap(frame, vm(dst=VM4), 9, PEER)


# --- Outputs ----------------------------------------------------------------------------------

def test_output_in_port():
    frame = bytes(vm())
    rules = "actions=output:in_port"
    result = run(rules, [(H, frame), (N, frame)])
    assert out(result, H) == [frame] and out(result, N) == [frame]
    # A decapsulated frame sent back to in_port with a tunnel is re-encapsulated.
    result = run(f"in_port=net,actions=set_tunnel:8,{TO_PEER},output:in_port,output:host",
                 [(N, vxlan(vm(), vni=7))])
    [back] = out(result, N)
    check_encap(back, vm(), 8, PEER)
    assert out(result, H) == [bytes(vm())]
    # ... and to host with a tunnel set, no encapsulation.
    result = run(f"in_port=host,actions=set_tunnel:8,{TO_PEER},output:in_port",
                 [(H, vm())])
    assert out(result, H) == [bytes(vm())] and out(result, N) == []


def test_controller_gets_frame_as_it_arrived():
    inner = vm(vlan=10, prio=4)
    tunnelled = bytes(vxlan(inner, vni=42))
    rules = (f"in_port=net,actions=mod_dl_dst:{VM4},strip_vlan,mod_vlan_vid:99,set_tunnel:5,"
             f"{TO_PEER},output:host,controller,output:controller\n"
             f"in_port=host,actions=mod_dl_src:{VM3},strip_vlan,controller\n")
    result = run(rules, [(N, tunnelled), (H, inner)])
    assert out(result, C) == [tunnelled, tunnelled, bytes(inner)]
    s, _ = parse_both(out(result, C)[0])
    assert s[IP].dst == LOCAL_IP and s[UDP].dport == 4789
    assert out(result, H) == [bytes(vm(dst=VM4, vlan=99, prio=0))]
    assert result.stats["ports"]["controller"]["tx_bytes"] == 2 * len(tunnelled) + len(inner)


def test_outputs_in_action_order():
    frame = vm(vlan=3, prio=1)
    rules = (f"actions=output:host,mod_dl_dst:{VM4},output:host,controller,strip_vlan,"
             f"output:host,mod_dl_dst:{VM3},mod_vlan_vid:6,output:host,output:net")
    result = run(rules, [(H, frame), (H, vm(n=1))])
    assert out(result, H) == [
        bytes(frame), bytes(vm(dst=VM4, vlan=3, prio=1)), bytes(vm(dst=VM4)),
        bytes(vm(dst=VM3, vlan=6)),
        bytes(vm(n=1)), bytes(vm(dst=VM4, n=1)), bytes(vm(dst=VM4, n=1)),
        bytes(vm(dst=VM3, vlan=6, n=1))]
    assert out(result, N) == [bytes(vm(dst=VM3, vlan=6)), bytes(vm(dst=VM3, vlan=6, n=1))]
    assert out(result, C) == [bytes(frame), bytes(vm(n=1))]
    assert result.outputs[H].time_ns.tolist() == [0] * 4 + [1] * 4


def test_later_actions_do_not_change_earlier_outputs():
    inner = vm()
    rules = (f"actions=output:net,{TO_PEER},output:net,mod_dl_dst:{VM4},set_tunnel:3,"
             f"output:net,set_field:{PEER2}->tun_dst,output:host")
    result = run(rules, [(H, inner)])
    plain, frame0, frame3 = out(result, N)
    assert plain == bytes(inner)
    check_encap(frame0, inner, 0, PEER)          # a host frame's own tun_id is 0
    check_encap(frame3, vm(dst=VM4), 3, PEER)
    assert out(result, H) == [bytes(vm(dst=VM4))]


def test_drop_and_empty_actions():
    rules = "priority=2,in_port=host,actions=drop\npriority=2,in_port=net,actions=\n" \
            f"priority=3,dl_dst={VM4},actions=set_tunnel:3,mod_dl_dst:{VM1}\n"
    result = run(rules, [(H, vm()), (N, vm()), (H, vm(dst=VM4))])
    assert all(out(result, p) == [] for p in Port)
    assert drops(result) == {"action_drop": 3}
    assert [r["n_packets"] for r in result.stats["rules"]] == [1, 1, 1]


# --- Priority and classification ------------------------------------------------------------

def test_highest_priority_wins():
    rules = ("priority=10,actions=output:host\n"
             "priority=30,in_port=host,actions=output:net\n"
             "priority=20,dl_dst=02:00:00:00:00:02,actions=controller\n")
    result = run(rules, [(H, vm()), (N, vm()), (N, vm(dst=VM3))])
    assert result.rule.tolist() == [1, 2, 0]


def test_equal_priority_earlier_line_wins():
    a = "priority=10,in_port=host,actions=output:host"
    b = "priority=10,dl_dst=02:00:00:00:00:02,actions=output:net"
    assert run(f"{a}\n{b}\n", [(H, vm())]).rule.tolist() == [0]
    assert run(f"# x\n{b}\n{a}\n", [(H, vm())]).rule.tolist() == [0]
    result = run(f"{b}\n{a}\n", [(H, vm())])
    assert out(result, N) == [bytes(vm())]


EXACT = ("udp,in_port=host,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:00:00:02,nw_src=10.0.0.1,"
         "nw_dst=10.0.0.2,tp_src=1000,tp_dst=2000")


@pytest.mark.parametrize("lo, hi, frame, winner", [
    # wildcard high vs exact low, and the other way
    (EXACT, "in_port=host", vm(), "hi"),
    ("in_port=host", EXACT, vm(), "hi"),
    ("ip,nw_dst=10.0.0.0/8", "ip,nw_dst=10.0.0.0/16", vm(), "hi"),
    ("ip,nw_dst=10.0.0.0/16", "ip,nw_dst=10.0.0.0/8", vm(), "hi"),
    ("ip,nw_dst=10.0.0.0/8", "ip,nw_dst=10.1.0.0/16", vm(), "lo"),
    ("dl_dst=02:00:00:00:00:00/ff:ff:ff:ff:ff:00", "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
     vm(dst=BCAST), "hi"),
    ("dl_dst=02:00:00:00:00:00/ff:ff:ff:ff:ff:00", "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
     vm(dst=VM3), "lo"),
    ("udp,tp_dst=0x0700/0xff00", "udp,tp_dst=2000", vm(dport=2000), "hi"),
    ("udp,tp_dst=0x0700/0xff00", "udp,tp_dst=2000", vm(dport=0x07FF), "lo"),
    ("tun_id=0x100/0xf00", "tun_id=0x123", vxlan(vm(), vni=0x123), "hi"),
    ("tun_id=0x100/0xf00", "tun_id=0x123", vxlan(vm(), vni=0x1FF), "lo"),
])
def test_overlapping_rules(lo, hi, frame, winner):
    rules = f"priority=5,{lo},actions=output:host\npriority=6,{hi},actions=controller\n"
    port = N if frame[UDP].dport == 4789 else H
    result = run(rules, [(port, frame)])
    assert result.rule.tolist() == [1 if winner == "hi" else 0]


def test_table_miss_and_catch_all():
    rules = "priority=10,in_port=host,actions=output:net\n"
    frames = [(H, vm()), (N, vm()), (N, arp())]
    result = run(rules, frames)
    assert drops(result) == {"table_miss": 2}
    assert result.drop.tolist() == [-1, int(DropReason.TABLE_MISS), int(DropReason.TABLE_MISS)]
    result = run(rules + "priority=0,actions=controller\n", frames)
    assert drops(result) == {}
    assert out(result, C) == [bytes(vm()), bytes(arp())]
    assert drops(run("", frames)) == {"table_miss": 3}


def test_priority_extremes_and_default():
    rules = "priority=0,actions=drop\npriority=65535,actions=controller\nactions=output:host\n"
    assert run(rules, [(H, vm())]).rule.tolist() == [1]
    rules = ("priority=32767,actions=drop\nactions=output:host\n"
             "priority=32769,in_port=net,actions=drop\n")
    assert run(rules, [(H, vm())]).rule.tolist() == [1]


# --- Match fields ----------------------------------------------------------------------------

def test_match_tunnel_fields_after_decap():
    rules = ("priority=9,tun_id=42,tun_src=198.18.0.2,actions=output:host\n"
             "priority=8,tun_id=42,actions=controller\n"
             "priority=7,tun_src=198.18.0.2/31,actions=output:net\n"
             "priority=6,tun_id=0,actions=drop\n")
    frames = [vxlan(vm(), vni=42), vxlan(vm(), vni=42, src=PEER2), vxlan(vm(), vni=7),
              vxlan(vm(), vni=7, src=STRANGER), vxlan(vm(), vni=0, src=STRANGER), vm()]
    result = run(rules, [(N, f) for f in frames])
    assert result.rule.tolist() == [0, 1, 2, -1, 3, 3]


def test_match_inner_fields_not_outer():
    inner = vm(nw_src="10.9.0.1", nw_dst="10.9.0.2", proto="tcp", sport=7, dport=8, vlan=5)
    frame = vxlan(inner, outer_vlan=77, sport=5555)
    exact = (f"tcp,nw_src=10.9.0.1,nw_dst=10.9.0.2,tp_src=7,tp_dst=8,dl_vlan=5,dl_src={VM1},"
             f"dl_dst={VM2}")
    hits = [exact, "dl_type=0x0800", "ip,nw_proto=6", "dl_vlan=5"]
    misses = [f"ip,nw_dst={LOCAL_IP}", f"ip,nw_src={PEER}", "tcp,tp_src=5555",
              "dl_vlan=77", f"dl_dst={LOCAL_MAC}", f"dl_src={GW_MAC}", "udp", "dl_vlan=0xffff"]
    for match in hits:
        assert run(f"{match},actions=output:host", [(N, frame)]).rule.tolist() == [0], match
    for match in misses:
        assert run(f"{match},actions=output:host", [(N, frame)]).rule.tolist() == [-1], match


def test_match_vlan_and_type():
    frames = [vm(), vm(vlan=10, prio=7), vm(vlan=0), arp(vlan=10), arp()]
    cases = {"dl_vlan=0xffff": [0, 4], "dl_vlan=10": [1, 3], "dl_vlan=0": [2],
             "ip": [0, 1, 2], "arp": [3, 4], "dl_type=0x8100": [], "arp,dl_vlan=10": [3]}
    for match, hit in cases.items():
        result = run(f"{match},actions=output:host", [(H, f) for f in frames])
        assert [i for i, r in enumerate(result.rule.tolist()) if r == 0] == hit, match


def test_match_in_port():
    rules = "in_port=host,actions=output:net\nin_port=net,actions=output:host\n"
    result = run(rules, [(H, vm()), (N, vm(n=3))])
    assert out(result, N) == [bytes(vm())] and out(result, H) == [bytes(vm(n=3))]


def _tp_rule_hits(frames, rules="udp,tp_dst=2000,actions=output:host"):
    return [r == 0 for r in run(rules, [(H, f) for f in frames]).rule.tolist()]


def test_absent_fields_do_not_match():
    frame = bytes(vm())
    frames = [
        vm(),                                     # match
        vm(flags="MF"),                           # first fragment: has ports
        vm(frag=1),                               # non-first fragment: no ports
        vm(flags="MF", frag=100),
        frame[:14 + 20 + 3],                      # truncated L4
        frame[:14 + 20 + 4],                      # exactly the ports
        vm(options=[IPOption_NOP()] * 8),         # ports after options
        bytes(vm(options=[IPOption_NOP()] * 8))[:14 + 28 + 3],
        _with(frame, 14, b"\x65"),                # version 6 in an IPv4 EtherType
        _with(frame, 14, b"\x44"),                # IHL 4
        _with(frame, 14, b"\x4f")[:14 + 59],      # IHL 15 but shorter
    ]
    assert _tp_rule_hits(frames) == [True, True, False, False, False, True, True, False, False,
                                     False, False]
    # Absent fields are never 0: rules on value 0 do not match them either.
    zero = [Ether(dst=VM2, src=VM1) / IP(src="0.0.0.0", dst="0.0.0.0", proto=17)
            / UDP(sport=0, dport=0), frame[:14 + 19], _with(frame, 14, b"\x44")]
    assert _tp_rule_hits(zero, "udp,tp_dst=0,actions=output:host") == [True, False, False]
    assert _tp_rule_hits(zero, "ip,nw_src=0.0.0.0,actions=output:host") == [True, False, False]
    assert _tp_rule_hits(zero, "ip,nw_proto=17,actions=output:host") == [True, False, False]
    assert _tp_rule_hits(zero, "ip,actions=output:host") == [True, True, True]


def test_non_tunnel_frames_have_no_tunnel():
    result = run("tun_id=0,tun_src=0.0.0.0,actions=output:host", [(H, vm()), (N, arp())])
    assert result.rule.tolist() == [0, 0]


# --- Counters --------------------------------------------------------------------------------

def test_counters():
    rules = ("priority=10,in_port=host,actions=mod_vlan_vid:5,output:host,controller\n"
             f"priority=10,in_port=net,tun_id=42,actions={TO_PEER},output:net,output:host\n"
             "priority=1,actions=drop\n"
             "priority=2,dl_vlan=4000,actions=output:host\n")
    inner = vm(n=10)
    frames = [(H, vm(n=20)), (N, vxlan(inner)), (N, vxlan(inner, chksum=3)), (N, vm(n=5)),
              (H, b"short"), (H, vm(n=30)), (N, vxlan(inner, vni=1))]
    result = run(rules, frames)
    lens = [len(bytes(f)) for _, f in frames]
    stats = result.stats
    assert [(r["line"], r["n_packets"], r["n_bytes"]) for r in stats["rules"]] == [
        (1, 2, lens[0] + lens[5]), (2, 1, len(inner)), (3, 2, lens[3] + len(inner)), (4, 0, 0)]
    assert stats["rules"][0]["rule"] == \
        "priority=10,in_port=host actions=mod_vlan_vid:5,output:host,controller"
    assert stats["ports"] == {
        "host": {"rx_packets": 3, "rx_bytes": lens[0] + lens[4] + lens[5],
                 "tx_packets": 3, "tx_bytes": lens[0] + lens[5] + 8 + len(inner)},
        "net": {"rx_packets": 4, "rx_bytes": sum(lens[i] for i in (1, 2, 3, 6)),
                "tx_packets": 1, "tx_bytes": len(inner) + 50},
        "controller": {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 2,
                       "tx_bytes": lens[0] + lens[5]},
    }
    assert stats["drops"] == {**{r.label: 0 for r in DropReason}, "bad_ip_checksum": 1,
                              "runt": 1, "action_drop": 2}
    assert list(stats["drops"]) == [r.label for r in DropReason]
    assert list(stats["ports"]) == ["host", "net", "controller"]
    assert all(type(v) is int for p in stats["ports"].values() for v in p.values())


def test_per_port_order_and_timestamps():
    rules = ("in_port=host,actions=output:net,output:host\n"
             "in_port=net,actions=controller,output:host\n")
    frames = [(H if i % 3 else N, vm(n=i, seed=i)) for i in range(40)]
    times = np.arange(40, dtype=np.int64) * 1000 + 7
    batch = FrameBatch.from_frames([(p, bytes(f)) for p, f in frames], time_ns=times)
    result = Reference(CFG, parse_rules(rules)).run(batch)
    from_host = [bytes(f) for p, f in frames if p == H]
    from_net = [bytes(f) for p, f in frames if p == N]
    assert out(result, N) == from_host
    assert out(result, C) == from_net
    assert out(result, H) == [bytes(f) for _, f in frames]
    assert result.outputs[H].time_ns.tolist() == times.tolist()
    assert result.outputs[N].time_ns.tolist() == [t for t, (p, _) in zip(times, frames)
                                                  if p == H]
    assert set(result.outputs[N].port.tolist()) == {int(N)}


def test_empty_input():
    result = run("actions=output:host", [])
    assert all(len(result.outputs[p]) == 0 for p in Port)
    assert result.rule.tolist() == [] and result.drop.tolist() == []
    assert result.stats["rules"][0]["n_packets"] == 0


# --- The bundled example through both models -------------------------------------------------

def test_bundled_example_matches_naive_model():
    from openvtep.config import load_config
    from openvtep.frames import merge_inputs, read_pcap
    from openvtep.rules import load_rules
    config, ruleset = load_config(EXAMPLES / "vtep.toml"), load_rules(EXAMPLES / "rules.txt")
    batch = merge_inputs([read_pcap(EXAMPLES / "host.pcap", H),
                          read_pcap(EXAMPLES / "net.pcap", N)])
    result = Reference(config, ruleset).run(batch)
    frames = list(zip(batch.port.tolist(), batch.frames()))
    assert_same_as_naive(config, ruleset, frames, result, batch.time_ns.tolist())
    assert drops(result) == {"bad_ip_checksum": 1, "vxlan_flags": 1, "table_miss": 1,
                             "action_drop": 1}


# --- Property tests --------------------------------------------------------------------------

MACS = [VM1, VM2, VM3, BCAST, LOCAL_MAC]
INNER_IPS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
VNIS = [0, 1, 42, 43, 0xFFFFFF]
PEERS = [PEER, PEER2, STRANGER]
L4_PORTS = [53, 80, 2000, 4789]
IP_FAULTS = ["ihl6", "ihl4", "ihl15", "version", "mf", "offset", "long", "short", "checksum"]


def _chance(draw, percent):
    return draw(st.integers(0, 99)) < percent


def _ipv4(draw, body, src, dst, proto, fault=None):
    """An IPv4 header + ``body``: valid, or with one ``fault`` of IP_FAULTS."""
    ihl = {"ihl6": 6, "ihl4": 4, "ihl15": 15}.get(fault, 5)
    frag = {"mf": 0x2000, "offset": 0x0001 | draw(st.sampled_from([0, 0x2000]))}.get(fault,
                                                                                    0x4000)
    options = b"\x01" * (4 * max(0, min(ihl, 7) - 5))
    total = 20 + len(options) + len(body) + {"long": 1, "short": -1}.get(fault, 0)
    header = bytearray(struct.pack("!BBHHHBBH4s4s", (6 if fault == "version" else 4) << 4 | ihl,
                                   0, total, draw(st.integers(0, 3)), frag, 64, proto, 0,
                                   socket.inet_aton(src), socket.inet_aton(dst)))
    header[10:12] = ipv4_checksum(bytes(header) + options).to_bytes(2, "big")
    if fault == "checksum":
        header[10] ^= 0x40
    return bytes(header) + options + body


def _pattern(n, seed):
    return bytes((seed + 13 * i) & 0xFF for i in range(n))


@st.composite
def plain_frames(draw, max_len, broken=True):
    """A plain Ethernet frame: random MACs, maybe a tag, IPv4/UDP/TCP (maybe malformed), ARP
    or another EtherType, with a payload up to about ``max_len``."""
    dst, src = draw(st.sampled_from(MACS)), draw(st.sampled_from(MACS))
    head = mac_bytes(dst) + mac_bytes(src)
    if _chance(draw, 40):
        tci = draw(st.sampled_from([10, 20, 0, 4095, 0xA00A, 0xF014]))
        head += b"\x81\x00" + tci.to_bytes(2, "big")
    kind = draw(st.sampled_from(["udp", "udp", "udp", "tcp", "tcp", "icmp", "arp", "other"]))
    size = draw(st.integers(0, 40)) if _chance(draw, 70) else \
        draw(st.integers(0, max(0, max_len - 60)))
    data = _pattern(size, draw(st.integers(0, 255)))
    if kind == "arp":
        return head + b"\x08\x06" + bytes(28) + data
    if kind == "other":
        return head + draw(st.sampled_from([b"\x86\xdd", b"\x88\xb5", b"\x81\x00"])) + data
    proto = {"udp": 17, "tcp": 6, "icmp": 1}[kind]
    l4 = b""
    if kind in ("udp", "tcp"):
        l4 = (draw(st.sampled_from(L4_PORTS)).to_bytes(2, "big")
              + draw(st.sampled_from(L4_PORTS)).to_bytes(2, "big"))
        l4 += (len(data) + 8).to_bytes(2, "big") + b"\0\0" if kind == "udp" else bytes(16)
    fault = draw(st.sampled_from(IP_FAULTS)) if broken and _chance(draw, 25) else None
    return head + b"\x08\x00" + _ipv4(draw, l4 + data, draw(st.sampled_from(INNER_IPS)),
                                       draw(st.sampled_from(INNER_IPS)), proto, fault)


VXLAN_FAULTS = IP_FAULTS + ["dport", "dst", "udp_long", "udp_short", "flags", "inner_cut",
                             "tiny"]


@st.composite
def vxlan_frames(draw, config, max_len, broken=True):
    """A VXLAN frame to (mostly) this VTEP: valid, or with one outer fault."""
    fault = draw(st.sampled_from(VXLAN_FAULTS)) if broken and _chance(draw, 30) else None
    inner = draw(plain_frames(max_len - 54, broken))
    if fault == "inner_cut":
        inner = inner[:draw(st.integers(0, len(inner)))]
    flags = draw(st.sampled_from([0x00, 0x04, 0xF7])) if fault == "flags" else \
        draw(st.sampled_from([0x08, 0x08, 0x0C, 0xFF]))
    header = bytes([flags, 0, 0, 0]) + draw(st.sampled_from(VNIS)).to_bytes(3, "big") + b"\0"
    udp_len = 16 + len(inner) + {"udp_long": 1, "udp_short": -1}.get(fault, 0)
    udp = struct.pack("!HHHH", draw(st.integers(49152, 65535)),
                      4790 if fault == "dport" else config.udp_port, udp_len,
                      draw(st.sampled_from([0, 0x1234])))
    body = udp + header + inner
    if fault == "tiny":  # consistent lengths, but too short for UDP or VXLAN + Ethernet
        n = draw(st.integers(0, 8 + 8 + 13))
        body = (udp[:4] + n.to_bytes(2, "big") + udp[6:] + header + inner)[:n]
    ip = _ipv4(draw, body, draw(st.sampled_from(PEERS)),
               PEER if fault == "dst" else LOCAL_IP, 17,
               fault if fault in IP_FAULTS else None)
    head = mac_bytes(LOCAL_MAC) + mac_bytes(GW_MAC)
    if _chance(draw, 20):
        head += b"\x81\x00" + draw(st.sampled_from([1, 0x2064])).to_bytes(2, "big")
    return head + b"\x08\x00" + ip


@st.composite
def traffic(draw, config, broken=True):
    """A list of (port, frame): plain and VXLAN, valid and malformed, runts and oversize."""
    frames = []
    for _ in range(draw(st.integers(1, 24))):
        port = draw(st.sampled_from([H, N, N]))
        kind = draw(st.sampled_from(["plain"] * 8 + ["vxlan"] * 9 + ["runt", "cut", "cut"]
                                    if broken else ["plain", "vxlan"]))
        if kind == "runt":
            frame = _pattern(draw(st.integers(0, 13)), draw(st.integers(0, 255)))
        elif kind == "plain":
            frame = draw(plain_frames(config.max_frame + 8, broken))
        else:
            frame = draw(vxlan_frames(config, config.max_frame + 8, broken))
        if kind == "cut":
            frame = frame[:draw(st.integers(0, len(frame)))]
        if broken and _chance(draw, 3):
            pos = draw(st.integers(0, max(0, len(frame) - 1)))
            frame = frame[:pos] + bytes([draw(st.integers(0, 255))]) + frame[pos + 1:]
        frames.append((port, frame))
    return frames


ACTION_KINDS = (["output:host"] * 4 + ["output:net"] * 3 + ["output:in_port"] * 2
                + ["controller"] * 2 + ["tunnel"] * 4 + ["strip_vlan", "mod_vlan_vid"] * 2
                + ["mod_dl_dst"] * 2 + ["mod_dl_src"])
TENANT_ACTION_KINDS = ["output:host", "tunnel", "tunnel", "controller", "output:in_port",
                       "mod_vlan_vid"]


@st.composite
def rule_lines(draw, tenant_only=False):
    """One random rule line over the values the traffic uses (it may be refused)."""
    match = []
    if _chance(draw, 50):
        match.append(f"in_port={draw(st.sampled_from(['host', 'net']))}")
    if _chance(draw, 30 if not tenant_only else 70):
        vni = draw(st.sampled_from(VNIS))
        match.append(f"tun_id={vni}" if _chance(draw, 80) else f"tun_id={vni}/0xff")
    if _chance(draw, 15):
        match.append(f"tun_src={draw(st.sampled_from(PEERS))}")
    if not tenant_only:
        if _chance(draw, 25):
            match.append(f"dl_dst={draw(st.sampled_from(MACS))}")
        if _chance(draw, 10):
            match.append(f"dl_src={draw(st.sampled_from(MACS))}")
        if _chance(draw, 15):
            match.append(f"dl_vlan={draw(st.sampled_from([10, 20, 0, 0xffff]))}")
        l3 = draw(st.sampled_from(["ip", "udp", "tcp", "arp"])) if _chance(draw, 40) else ""
        if l3:
            match.append(l3)
        if l3 in ("ip", "udp", "tcp") and _chance(draw, 30):
            match.append(f"nw_dst={draw(st.sampled_from(INNER_IPS + ['10.0.0.0/24']))}")
        if l3 in ("udp", "tcp") and _chance(draw, 30):
            match.append(f"tp_dst={draw(st.sampled_from(L4_PORTS))}")
    actions = []
    if _chance(draw, 5):
        actions = ["drop"] if _chance(draw, 50) else []
    else:
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(TENANT_ACTION_KINDS if tenant_only else ACTION_KINDS))
            if kind == "tunnel":
                actions.append(f"set_field:{draw(st.sampled_from(PEERS))}->tun_dst")
                if _chance(draw, 70):
                    actions.append(f"set_tunnel:{draw(st.sampled_from(VNIS))}")
                kind = "output:net" if _chance(draw, 70) else "output:in_port"
            elif kind == "mod_vlan_vid":
                kind = f"mod_vlan_vid:{draw(st.sampled_from([10, 30, 4095]))}"
            elif kind.startswith("mod_dl"):
                kind = f"{kind}:{draw(st.sampled_from(MACS + [VM4]))}"
            actions.append(kind)
    priority = draw(st.sampled_from([0, 10, 10, 20, 32768]))
    return ",".join([f"priority={priority}"] + match + ["actions=" + ",".join(actions)])


@st.composite
def rule_texts(draw, tenant_only=False):
    """A random rule set: lines that are refused or duplicates are left out."""
    lines = draw(st.lists(rule_lines(tenant_only), min_size=int(tenant_only), max_size=8))
    if _chance(draw, 30):
        lines.append("priority=0,actions=" + draw(st.sampled_from(
            ["drop", "controller", "output:host", "output:in_port"])))
    valid, seen = [], set()
    for line in lines:
        try:
            [rule] = parse_rules(line)
        except RuleError:
            continue
        if (rule.priority, rule.match) not in seen:
            seen.add((rule.priority, rule.match))
            valid.append(line)
    return parse_rules("\n".join(valid), "gen.rules")


CONFIGS = st.sampled_from([CFG, dataclasses.replace(CFG, max_frame=128, ttl=3),
                           dataclasses.replace(CFG, udp_port=8472, max_frame=300)])


def assert_same_as_naive(config, ruleset, frames, result, times=None):
    """The batch engine's result equals the per-frame model's, frame by frame."""
    outputs, stats, rules, drop = Naive(config, ruleset).run(frames)
    times = list(range(len(frames))) if times is None else list(times)
    for port in Port:
        assert out(result, port) == [f for f, _, _ in outputs[port]], port
        assert result.outputs[port].time_ns.tolist() == [times[i] for _, _, i in outputs[port]]
    assert result.rule.tolist() == rules
    assert result.drop.tolist() == drop
    assert result.stats == stats
    return outputs


def dpkt_parses(frame):
    try:
        dpkt.ethernet.Ethernet(frame)
    except dpkt.UnpackError:
        return False
    return True


def assert_outputs_sound(config, ruleset, frames, result, naive_outputs):
    """Every output parses with scapy and dpkt (unless the frame it carries arrived already
    beyond dpkt, e.g. a cut 802.1Q tag: garbage in, garbage out); encapsulations check field
    by field; every input is dropped (and counted) or leaves at least once."""
    naive = Naive(config, ruleset)
    for port in Port:
        for frame, info, i in naive_outputs[port]:
            assert 14 <= len(frame) <= config.max_frame + OUTPUT_GROWTH
            Ether(frame)
            if info is not None:
                check_encap(frame, info[0], info[1], info[2], config, matched=info[3])
            carried = frame if info is None else info[0]
            if dpkt_parses(carried):
                parse_both(carried)
            else:
                in_port, arrived = frames[i]
                assert not dpkt_parses(naive.step2(in_port, arrived)[1]), (port, frame)
    produced = Counter(int(t) for p in Port for t in result.outputs[p].time_ns)
    for i, reason in enumerate(result.drop.tolist()):
        assert (reason >= 0) != (produced[i] > 0), (i, reason, frames[i])
    assert sum(result.stats["drops"].values()) == int((result.drop >= 0).sum())
    for port in Port:
        assert result.stats["ports"][port.label]["tx_packets"] == len(result.outputs[port])
        assert result.stats["ports"][port.label]["tx_bytes"] == \
            int(result.outputs[port].length.sum())
    assert sum(p["rx_packets"] for p in result.stats["ports"].values()) == len(frames)


def check_random_traffic(config, ruleset, frames):
    result = Reference(config, ruleset).run(FrameBatch.from_frames(frames))
    naive = assert_same_as_naive(config, ruleset, frames, result)
    assert_outputs_sound(config, ruleset, frames, result, naive)


@settings(**FAST)
@given(st.data(), CONFIGS)
def test_random_traffic_random_rules(data, config):
    ruleset = data.draw(rule_texts())
    frames = data.draw(traffic(config))
    check_random_traffic(config, ruleset, frames)


@pytest.mark.slow
@settings(**SLOW)
@given(st.data(), CONFIGS)
def test_random_traffic_random_rules_long(data, config):
    ruleset = data.draw(rule_texts())
    frames = data.draw(traffic(config))
    check_random_traffic(config, ruleset, frames)


def small_chunks(mp):
    """Make the engine cut its input into chunks as small as it allows; returns how many frames
    a chunk then holds at most."""
    if hasattr(openvtep.reference, "CHUNK"):          # frames per chunk
        mp.setattr(openvtep.reference, "CHUNK", 3)
        return 3
    mp.setattr(openvtep.reference, "CHUNK_BYTES", 1)  # bytes per chunk, at least 1024 frames
    return 1024


def check_batching_invariance(config, ruleset, frames):
    """The batch engine gives the same result for the batch, for each frame alone, and when it
    cuts the batch into small chunks."""
    ref = Reference(config, ruleset)
    whole = ref.run(FrameBatch.from_frames(frames))
    singles = [ref.run(FrameBatch.from_frames([f])) for f in frames]
    for port in Port:
        assert out(whole, port) == [f for s in singles for f in out(s, port)]
    assert whole.rule.tolist() == [int(s.rule[0]) for s in singles]
    assert whole.drop.tolist() == [int(s.drop[0]) for s in singles]
    total = {"rules": [dict(r, n_packets=sum(s.stats["rules"][i]["n_packets"] for s in singles),
                            n_bytes=sum(s.stats["rules"][i]["n_bytes"] for s in singles))
                       for i, r in enumerate(whole.stats["rules"])],
             "ports": {p: {k: sum(s.stats["ports"][p][k] for s in singles) for k in c}
                       for p, c in whole.stats["ports"].items()},
             "drops": {k: sum(s.stats["drops"][k] for s in singles) for k in whole.stats["drops"]}}
    assert whole.stats == total
    check_chunking_invariance(config, ruleset, frames)


def check_chunking_invariance(config, ruleset, frames):
    with pytest.MonkeyPatch.context() as mp:
        chunk = small_chunks(mp)
        # Enough copies of the traffic to cross two chunk boundaries at an odd offset.
        many = frames * (-(-(2 * chunk + 1) // len(frames))) + frames[:1]
        batch = FrameBatch.from_frames(many)
        chunked = Reference(config, ruleset).run(batch)
    whole = Reference(config, ruleset).run(batch)
    for port in Port:
        assert out(chunked, port) == out(whole, port)
        assert chunked.outputs[port].time_ns.tolist() == whole.outputs[port].time_ns.tolist()
    assert chunked.stats == whole.stats
    assert chunked.rule.tolist() == whole.rule.tolist()
    assert chunked.drop.tolist() == whole.drop.tolist()
    # And the result is the per-frame model's.
    assert_same_as_naive(config, ruleset, many, chunked)


@settings(**dict(FAST, max_examples=10))
@given(st.data(), CONFIGS)
def test_batch_equals_one_at_a_time_and_small_chunks(data, config):
    check_batching_invariance(config, data.draw(rule_texts()), data.draw(traffic(config)))


@pytest.mark.slow
@settings(**dict(SLOW, max_examples=150))
@given(st.data(), CONFIGS)
def test_batch_equals_one_at_a_time_and_small_chunks_long(data, config):
    check_batching_invariance(config, data.draw(rule_texts()), data.draw(traffic(config)))


def test_chunk_boundaries_exact():
    frames = [(N if i % 2 else H, bytes(vm(n=i))) for i in range(10)] + \
        [(N, bytes(vxlan(vm(n=i), vni=i))) for i in range(10)]
    ruleset = parse_rules("in_port=host,actions=output:host,output:net\n"
                          "in_port=net,actions=controller,output:host\n"
                          f"priority=40000,tun_id=3,actions=set_tunnel:4,{TO_PEER},output:net,"
                          "output:host\n")
    check_batching_invariance(CFG, ruleset, frames)
    for n in (1, 2, 3, 7, 19):
        check_chunking_invariance(CFG, ruleset, frames[:n])


# --- Tenant isolation ------------------------------------------------------------------------

def check_tenant_isolation(config, ruleset, frames):
    result = Reference(config, ruleset).run(FrameBatch.from_frames(frames))
    naive = assert_same_as_naive(config, ruleset, frames, result)
    assert_outputs_sound(config, ruleset, frames, result, naive)
    rules = list(ruleset)
    by_input = {p: {} for p in Port}
    for port in Port:
        for frame, t in zip(out(result, port), result.outputs[port].time_ns.tolist()):
            by_input[port].setdefault(t, []).append(frame)
    for i, (port, frame) in enumerate(frames):
        if port != N or result.drop[i] >= 0:
            continue
        s = Ether(frame)
        vni = None
        if UDP in s and s[IP].dst == LOCAL_IP and s[UDP].dport == config.udp_port:
            vni = int.from_bytes(bytes(s[UDP].payload)[4:7], "big")
        if vni is None:
            continue  # not a tunnel frame
        rule = rules[result.rule[i]]
        tun = rule.field("tun_id")
        assert tun is None or vni & tun[1] == tun[0]
        # The VNIs it may leave with: its own, or one this rule sets before an output.
        allowed = [e.vni if e.vni is not None else vni for e in rule.emissions
                   if e.port in (N, None) and e.tun_dst is not None]
        local_ip = config.local_ip.to_bytes(4, "big")
        left = [int.from_bytes(f[46:49], "big") for f in by_input[N].get(i, [])
                if len(f) >= 50 and be16(f, 12) == 0x0800 and f[23] == 17
                and f[26:30] == local_ip and be16(f, 36) == config.udp_port]
        assert left == allowed
        assert len(by_input[H].get(i, [])) == sum(e.port == H for e in rule.emissions)
        for f in by_input[C].get(i, []):
            assert f == frame


@st.composite
def tenant_traffic(draw, config):
    frames = []
    for _ in range(draw(st.integers(1, 20))):
        if draw(st.integers(0, 4)) == 0:
            frames.append((H, draw(plain_frames(200, broken=False))))
        else:
            frames.append((N, draw(vxlan_frames(config, 300, broken=_chance(draw, 20)))))
    return frames


@settings(**FAST)
@given(st.data())
def test_tenant_isolation(data):
    check_tenant_isolation(CFG, data.draw(rule_texts(tenant_only=True)),
                           data.draw(tenant_traffic(CFG)))


@pytest.mark.slow
@settings(**SLOW)
@given(st.data())
def test_tenant_isolation_long(data):
    check_tenant_isolation(CFG, data.draw(rule_texts(tenant_only=True)),
                           data.draw(tenant_traffic(CFG)))


def test_tenant_isolation_example():
    # Two tenants, VNI 42 and 43: nothing crosses unless a rule maps it.
    rules = ("priority=100,in_port=net,tun_id=42,actions=output:host\n"
             f"priority=100,in_port=net,tun_id=43,tun_src={PEER2},actions=mod_vlan_vid:10,"
             "output:host\n"
             f"priority=100,in_port=net,tun_id=44,actions=set_tunnel:45,{TO_PEER},output:net\n"
             "priority=0,actions=drop\n")
    frames = [(N, vxlan(vm(), vni=v, src=src)) for v in (41, 42, 43, 44, 45, 0x10000 + 42)
              for src in (PEER, PEER2)]
    result = run(rules, frames)
    assert result.rule.tolist() == [3, 3, 0, 0, 3, 1, 2, 2, 3, 3, 3, 3]
    assert out(result, H) == [bytes(vm())] * 2 + [bytes(vm(vlan=10))]
    assert [int.from_bytes(f[46:49], "big") for f in out(result, N)] == [45, 45]
    check_tenant_isolation(CFG, parse_rules(rules), [(p, bytes(f)) for p, f in frames])
