"""Random traffic and catch-all rules for the gateware testbenches and the soak: frames of
every path of docs/semantics.md steps 1-3 (plain frames: ARP, IPv4 with options, TCP/UDP/other,
fragments, other EtherTypes; tagged and untagged; VXLAN frames to the VTEP and each way a
tunnel candidate can fail its checks; runts, over-long frames), single catch-all rules over
every action combination (VLAN ops, MAC rewrites, outputs, tunnels), and :func:`flow_batch`,
many frames in bulk as flows of those frames.

    rng = random.Random(seed)
    port, frame = random_frame(rng, CONFIG.max_frame)
    batch = flow_batch(seed, 100_000, flows=5_000)   # a FrameBatch, numpy in bulk
"""

import random
import struct

import numpy as np

from ..config import VtepConfig
from ..frames import FrameBatch
from ..headers import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_VLAN,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_DF,
    VXLAN_FLAG_I,
    Port,
    ipv4_checksum,
)

__all__ = ["CONFIG", "PAYLOAD_START", "PEER_IP", "eth", "flow_batch", "inner_frame", "ipv4",
           "l4", "mac", "random_frame", "random_rule", "random_workload", "vxlan_frame"]

CONFIG = VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE)
PEER_IP = 0xC6120002


def mac(rng):
    return rng.getrandbits(48) & ~(1 << 40)  # unicast


def eth(dst, src, etype, tci=None):
    head = dst.to_bytes(6, "big") + src.to_bytes(6, "big")
    if tci is not None:
        head += struct.pack(">HH", ETHERTYPE_VLAN, tci)
    return head + struct.pack(">H", etype)


def ipv4(src, dst, proto, payload, *, ihl=5, flags_frag=IPV4_DF, total_length=None,
         version=4, checksum_ok=True, options=None):
    options = options if options is not None else bytes(4 * (ihl - 5))
    total = 4 * ihl + len(payload) if total_length is None else total_length
    head = bytearray(struct.pack(">BBHHHBBHII", version << 4 | ihl, 0, total & 0xFFFF, 0x1234,
                                 flags_frag, 64, proto, 0, src, dst)) + options
    checksum = int(ipv4_checksum(np.frombuffer(bytes(head[:20]) if ihl == 5 else bytes(head),
                                               np.uint8).reshape(1, -1))[0])
    if not checksum_ok:
        checksum ^= 0x0101
    head[10:12] = checksum.to_bytes(2, "big")
    return bytes(head) + payload


def l4(proto, sport, dport, payload):
    if proto == IPPROTO_UDP:
        return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    if proto == IPPROTO_TCP:
        return struct.pack(">HHIIHHHH", sport, dport, 1, 0, 0x5010, 1024, 0, 0) + payload
    return payload


def inner_frame(rng, length):
    """A random L2 frame of about ``length`` bytes (at least 14)."""
    tci = rng.getrandbits(16) if rng.random() < 0.35 else None
    l2 = 18 if tci is not None else 14
    kind = rng.choices(["ip", "arp", "other"], [0.75, 0.1, 0.15])[0]
    if kind == "ip" and length >= l2 + 20:
        proto = rng.choice([IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDP, 1, 47])
        ihl = 5 if rng.random() < 0.8 else rng.randint(6, 15)
        room = length - l2 - 4 * ihl
        if room < 0:
            ihl, room = 5, length - l2 - 20
        flags = rng.choice([IPV4_DF, IPV4_DF, 0, 0x2000, 0x0010])
        payload = rng.randbytes(max(0, room - {6: 20, 17: 8}.get(proto, 0)))
        body = l4(proto, rng.getrandbits(16), rng.getrandbits(16), payload)[:max(room, 0)]
        body = body + rng.randbytes(room - len(body)) if len(body) < room else body
        packet = ipv4(rng.getrandbits(32), rng.getrandbits(32), proto, body, ihl=ihl,
                      flags_frag=flags, version=4 if rng.random() < 0.95 else 6,
                      options=rng.randbytes(4 * (ihl - 5)))
        if rng.random() < 0.05:  # IP header cut short by the frame end
            packet = packet[:rng.randint(0, len(packet))]
        frame = eth(mac(rng), mac(rng), ETHERTYPE_IPV4, tci) + packet
    else:
        etype = ETHERTYPE_ARP if kind == "arp" else rng.choice([0x86DD, 0x88CC, 0x0800, 0x1234])
        frame = eth(mac(rng), mac(rng), etype, tci)
        frame += rng.randbytes(max(0, length - len(frame)))
    return frame


def vxlan_frame(rng, inner, *, outer_tci=None, vni=None, corrupt=None, dst_ip=None,
                dst_port=None):
    """A VXLAN frame (RFC 7348 §5) to the VTEP carrying ``inner``, optionally corrupted in one
    of the ways the parser checks (``corrupt`` names the check)."""
    vni = rng.getrandbits(24) if vni is None else vni
    flags = VXLAN_FLAG_I if corrupt != "flags" else rng.choice([0, 0x80, 0x04])
    vx = bytes([flags]) + rng.randbytes(3) + vni.to_bytes(3, "big") + rng.randbytes(1)
    udp_payload = vx + inner
    udp_len = 8 + len(udp_payload) + (rng.choice([-1, 1, 8]) if corrupt == "udp_length" else 0)
    dport = CONFIG.udp_port if dst_port is None else dst_port
    udp = struct.pack(">HHHH", rng.randint(49152, 65535), dport, udp_len & 0xFFFF,
                      0) + udp_payload
    kwargs = {}
    if corrupt == "ip_header":
        kwargs = rng.choice([{"version": 6}, {"ihl": 6}, {"ihl": 4, "options": b""}])
    elif corrupt == "checksum":
        kwargs = {"checksum_ok": False}
    elif corrupt == "ip_length":
        kwargs = {"total_length": 20 + len(udp) + rng.choice([-2, 1, 40])}
    elif corrupt == "fragment":
        kwargs = {"flags_frag": rng.choice([0x2000, 0x0001, 0x4100])}
    packet = ipv4(PEER_IP, CONFIG.local_ip if dst_ip is None else dst_ip, IPPROTO_UDP, udp,
                  **kwargs)
    frame = eth(CONFIG.local_mac, mac(rng), ETHERTYPE_IPV4, outer_tci) + packet
    if corrupt in ("truncated_udp", "truncated_vxlan"):
        l2 = 18 if outer_tci is not None else 14
        cut = rng.randint(l2 + 20, l2 + 27) if corrupt == "truncated_udp" \
            else rng.randint(l2 + 28, l2 + 49)
        frame = bytearray(frame[:cut])
        total = cut - l2  # consistent lengths, so only the truncation check fails
        frame[l2 + 2:l2 + 4] = total.to_bytes(2, "big")
        frame[l2 + 10:l2 + 12] = b"\0\0"
        csum = int(ipv4_checksum(np.frombuffer(bytes(frame[l2:l2 + 20]), np.uint8)
                                 .reshape(1, -1))[0])
        frame[l2 + 10:l2 + 12] = csum.to_bytes(2, "big")
        if corrupt == "truncated_vxlan":
            frame[l2 + 24:l2 + 26] = (total - 20).to_bytes(2, "big")
        frame = bytes(frame)
    return frame


def random_frame(rng, max_frame):
    """``(port, frame)``: a random input frame of any kind."""
    def size(low):  # mostly short frames, some up to max_frame
        if rng.random() < 0.7:
            return rng.randint(low, min(max_frame, low + 200))
        return rng.randint(low, max_frame)

    kind = rng.choices(
        ["plain", "vxlan", "bad_vxlan", "runt", "oversize", "short_tag", "not_ours"],
        [0.40, 0.30, 0.18, 0.03, 0.03, 0.02, 0.04])[0]
    port = rng.choice([Port.HOST, Port.NET])
    if kind == "plain":
        return port, inner_frame(rng, size(14))
    if kind == "runt":
        return port, rng.randbytes(rng.randint(1, 13))
    if kind == "oversize":
        return port, inner_frame(rng, max_frame + rng.randint(1, 80))
    if kind == "short_tag":
        return port, eth(mac(rng), mac(rng), ETHERTYPE_VLAN)[:14] + rng.randbytes(rng.randint(0, 3))
    outer_tci = rng.getrandbits(16) if rng.random() < 0.3 else None
    overhead = 54 if outer_tci is not None else 50
    if kind == "not_ours":
        choice = rng.choice(["ip", "port", "host"])
        frame = vxlan_frame(rng, inner_frame(rng, size(14) - 0), outer_tci=outer_tci,
                            dst_ip=PEER_IP if choice == "ip" else None,
                            dst_port=rng.choice([53, 4790]) if choice == "port" else None)
        return (Port.HOST if choice == "host" else Port.NET), frame[:max_frame]
    inner_len = size(14 + overhead) - overhead
    inner = inner_frame(rng, inner_len)[:inner_len]
    if kind == "vxlan":
        if rng.random() < 0.03:  # inner 802.1Q frame too short for its tag
            inner = eth(mac(rng), mac(rng), ETHERTYPE_VLAN) + rng.randbytes(rng.randint(0, 3))
        return Port.NET, vxlan_frame(rng, inner, outer_tci=outer_tci)
    corrupt = rng.choice(["ip_header", "checksum", "ip_length", "fragment", "truncated_udp",
                          "udp_length", "truncated_vxlan", "flags"])
    return Port.NET, vxlan_frame(rng, inner, outer_tci=outer_tci, corrupt=corrupt)


def random_rule(rng):
    """A single catch-all rule with a random action combination (or a drop / table miss)."""
    if rng.random() < 0.04:
        return "priority=0,actions=drop"
    actions = []
    vlan = rng.choice(["", "", "push", "strip", "replace", "strip_after"])
    vid = rng.randint(0, 4095)
    if vlan == "push":
        actions.append(f"mod_vlan_vid:{vid}")
    elif vlan == "strip":
        actions.append("strip_vlan")
    elif vlan == "replace":
        actions += ["strip_vlan", f"mod_vlan_vid:{vid}"]
    elif vlan == "strip_after":
        actions += [f"mod_vlan_vid:{vid}", "strip_vlan"]
    if rng.random() < 0.4:
        actions.append(f"mod_dl_src:{_mac_text(mac(rng))}")
    if rng.random() < 0.4:
        actions.append(f"mod_dl_dst:{_mac_text(mac(rng))}")
    if rng.random() < 0.2:
        rng.shuffle(actions)
    output = rng.choice(["host", "net", "in_port", "controller", "tunnel", "tunnel",
                         "tunnel_in_port"])
    if output.startswith("tunnel"):
        if rng.random() < 0.7:
            actions.append(f"set_tunnel:{rng.getrandbits(24)}")
        actions.append(f"set_field:198.18.{rng.randint(0, 255)}.{rng.randint(1, 254)}->tun_dst")
        actions.append("output:in_port" if output == "tunnel_in_port" else "output:net")
    else:
        actions.append(f"output:{output}")
    if output != "controller" and rng.random() < 0.15:  # a controller copy beside the output
        actions.insert(rng.randint(0, len(actions)), "controller")
    match = ""
    if rng.random() < 0.05:
        match = f"in_port={rng.choice(['host', 'net'])},"  # the other port: table miss
    return f"priority=0,{match}actions={','.join(actions)}"


def _mac_text(value):
    return ":".join(f"{(value >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6))


def random_workload(seed, count, max_frame=CONFIG.max_frame, rules=24):
    """``count`` random frames with rules drawn from a pool of ``rules`` random rules."""
    rng = random.Random(seed)
    pool = [random_rule(rng) for _ in range(rules - 1)]
    pool.append("priority=0,in_port=host,actions=output:net")  # net frames: table miss
    frames = [random_frame(rng, max_frame) for _ in range(count)]
    texts = [rng.choice(pool) for _ in range(count)]
    return frames, texts


# Frame bytes from here on are payload for every kind of frame random_frame makes: past the
# longest outer headers (802.1Q tag, IPv4 with options, UDP, VXLAN: 18 + 60 + 16) and the inner
# window the pipeline reads (inner L2 with tag, IPv4 with options, L4 ports: 18 + 60 + 4) no
# byte is parsed, checked or hashed.
PAYLOAD_START = 176


def flow_batch(seed, count, *, flows=None, max_frame=CONFIG.max_frame):
    """``count`` random frames as a :class:`openvtep.frames.FrameBatch` (``time_ns`` the frame
    index), built in bulk: ``flows`` frames of :func:`random_frame` (default ``count // 8``,
    at least 1: every kind, valid and malformed) are the flows' headers; each frame is one of
    them, drawn with a long-tailed popularity (a few heavy flows, many light ones), with every
    byte from :data:`PAYLOAD_START` on drawn afresh. Its port, length and headers are its
    flow's, so rules made from the flows' fields (``openvtep.sim.flow_rules``) hit it."""
    flows = max(1, count // 8 if flows is None else flows)
    rng = random.Random(seed)
    heads = FrameBatch.from_frames([random_frame(rng, max_frame) for _ in range(flows)])
    gen = np.random.default_rng(rng.getrandbits(64))
    weight = 1.0 / np.arange(1, flows + 1) ** 0.8
    flow = gen.choice(flows, size=count, p=weight / weight.sum())
    data = heads.data[flow]
    tail = data[:, PAYLOAD_START:]
    if tail.size:
        tail[...] = np.frombuffer(gen.bytes(tail.size), np.uint8).reshape(tail.shape)
        length = heads.length[flow]
        tail[np.arange(PAYLOAD_START, data.shape[1]) >= length[:, None]] = 0
    return FrameBatch(data, heads.length[flow].copy(), heads.port[flow].copy(),
                      np.arange(count, dtype=np.int64))
