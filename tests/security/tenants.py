"""Random tenant configurations, the traffic that attacks them, and the security properties
every engine's outputs must keep (:func:`check_security`).

A *tenant* is a VNI delivered on the host port under its own 802.1Q VLAN, with its VXLAN peers
(the underlay addresses its frames may come from and go to). Its rules, in random shapes and
priorities (exact and wildcard table), only ever deliver VNI ``v`` as VLAN ``vlan(v)``,
re-encapsulate it to its own peers in VNI ``v``, and encapsulate host frames of VLAN
``vlan(v)`` in VNI ``v``; a tenant whose rules all name ``tun_src`` takes frames only from its
peers. Other rules (drop, controller, plain output) never deliver to a tenant. VNI 0 is no
tenant: a frame that is not decapsulated has ``tun_id`` 0 (docs/semantics.md, as in OVS).

Traffic: VXLAN frames of each tenant from its peers; the same from unknown sources (random,
another tenant's peer, a peer's address with one bit flipped); VXLAN to another IPv4 address
than ``local_ip`` or to another UDP port than ``udp_port`` (near misses included); VNIs of no
tenant (one bit away from a tenant's); host frames tagged with a tenant's VLAN or another;
plain frames on net. Inner frames carry random tags, another tenant's VLAN among them.

Everything is drawn from a ``random.Random``: hypothesis drives it through ``st.randoms()``
(many examples on the reference model), a seeded one builds a batch for one gateware run.
"""

import dataclasses
import random
import struct

from openvtep.addr import format_ipv4
from openvtep.headers import Port
from openvtep.rules import parse_rules

ETH_VLAN = 0x8100
BCAST = 0xFFFF_FFFF_FFFF


@dataclasses.dataclass
class Tenant:
    vni: int
    vlan: int
    peers: list          # IPv4 addresses (ints)
    macs: list           # its VMs' MACs
    peers_only: bool     # every rule that takes its frames from net names tun_src


@dataclasses.dataclass
class Frame:
    port: Port
    data: bytes
    kind: str            # tenant, foreign_src, wrong_dst, wrong_port, stray_vni, host, plain
    vni: int = None      # the VXLAN header's VNI, if it has one
    src: int = None      # the outer IPv4 source of a VXLAN frame


@dataclasses.dataclass
class Case:
    config: object
    tenants: list
    ruleset: object
    frames: list

    def pairs(self):
        return [(f.port, f.data) for f in self.frames]


def _mac(value):
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


def _near(rng, value, bits, avoid):
    """``value`` with one bit flipped (a near miss), or a random value; never in ``avoid``."""
    while True:
        other = value ^ (1 << rng.randrange(bits)) if rng.random() < 0.6 else \
            rng.getrandbits(bits)
        if other not in avoid:
            return other


def tenants(rng, count, config):
    vnis, vlans, out = set(), set(), []
    used_ips = {config.local_ip}
    for k in range(count):
        vni = _near(rng, next(iter(vnis)), 24, vnis | {0}) if vnis and rng.random() < 0.5 \
            else _near(rng, rng.randrange(1, 1 << 24), 24, vnis | {0})
        vlan = _near(rng, next(iter(vlans)), 12, vlans | {0, 4095}) if vlans else \
            rng.randrange(1, 4095)
        peers = []
        for _ in range(rng.randint(1, 2)):
            peer = _near(rng, config.local_ip, 32, used_ips) if rng.random() < 0.3 else \
                0xC612_0000 | rng.randrange(2, 1 << 16)
            if peer not in used_ips:
                used_ips.add(peer)
                peers.append(peer)
        macs = [0x0200_0000_0000 | k << 16 | rng.getrandbits(16) for _ in range(2)]
        vnis.add(vni)
        vlans.add(vlan)
        out.append(Tenant(vni, vlan, peers or [0xC612_FF00 | k], macs, rng.random() < 0.6))
    return out


def _rules_of(rng, t, udp_port):
    """Rule lines (without priority) that serve tenant ``t``."""
    lines = []
    sources = [f",tun_src={format_ipv4(p)}" for p in t.peers] if t.peers_only else [""]
    for src in sources:
        match = f"in_port=net,tun_id={t.vni}{src}"
        extra = rng.choice(["", "", f",dl_dst={_mac(rng.choice(t.macs))}",
                            ",ip,nw_dst=10.0.0.0/8", ",udp", f",dl_vlan={rng.randrange(4095)}"])
        head = rng.choice(["", "", "controller,", f"mod_dl_src:{_mac(t.macs[0])},"])
        lines.append(f"{match}{extra},actions={head}mod_vlan_vid:{t.vlan},output:host")
        if rng.random() < 0.5:  # re-encapsulation to another of its peers, same VNI
            peer = format_ipv4(rng.choice(t.peers))
            tunnel = rng.choice(["", f"set_tunnel:{t.vni},"])
            lines.append(f"{match},dl_dst={_mac(BCAST)},actions={tunnel}"
                         f"set_field:{peer}->tun_dst,output:net")
    if rng.random() < 0.7:  # its host side, encapsulated towards a peer
        peer = format_ipv4(rng.choice(t.peers))
        extra = rng.choice(["", f",dl_dst={_mac(rng.choice(t.macs))}"])
        lines.append(f"in_port=host,dl_vlan={t.vlan}{extra},actions=strip_vlan,"
                     f"set_tunnel:{t.vni},set_field:{peer}->tun_dst,output:net")
    return lines


def _other_rules(rng, udp_port):
    """Rules that deliver to no tenant."""
    pool = [f"in_port=net,udp,tp_dst={udp_port},actions=controller",
            "in_port=net,ip,nw_src=198.18.0.0/16,actions=drop",
            f"dl_dst={_mac(BCAST)},actions=drop",
            "in_port=host,actions=output:net",
            "in_port=net,arp,actions=controller",
            f"in_port=net,udp,tp_dst={udp_port},actions=drop"]
    return rng.sample(pool, rng.randint(0, 3))


def ruleset(rng, tenant_list, config):
    lines = []
    for t in tenant_list:
        lines += _rules_of(rng, t, config.udp_port)
    lines += _other_rules(rng, config.udp_port)
    seen, out = set(), []
    for line in lines:
        priority = rng.choice([10, 100, 100, 1000, rng.randrange(1, 65535)])
        match = line.split("actions=")[0]
        if (priority, match) not in seen:
            seen.add((priority, match))
            out.append(f"priority={priority},{line}")
    out.append("priority=0,actions=" + rng.choice(["controller", "drop"]))
    rng.shuffle(out)
    return parse_rules("\n".join(out), "tenants.rules")


# --- Frames --------------------------------------------------------------------------------


def _checksum(header):
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src, dst, proto, payload):
    head = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(payload), 0, 0x4000, 64,
                                 proto, 0, src, dst))
    head[10:12] = _checksum(bytes(head)).to_bytes(2, "big")
    return bytes(head) + payload


def ether(dst, src, etype, vid=None):
    head = dst.to_bytes(6, "big") + src.to_bytes(6, "big")
    if vid is not None:
        head += struct.pack("!HH", ETH_VLAN, _tci(vid))
    return head + etype.to_bytes(2, "big")


def _tci(vid):
    return vid | (vid * 7 % 8) << 13  # some priority bits too, which mod_vlan_vid keeps


def inner_frame(rng, macs, vid):
    """A VM's frame: to one of ``macs``, broadcast or anyone; tagged with ``vid`` (or not:
    None); IPv4 UDP/TCP, ARP or another EtherType."""
    dst = rng.choice(macs + [BCAST, 0x0200_0000_0000 | rng.getrandbits(32)])
    src = 0x0200_0000_0000 | rng.getrandbits(32)
    # Payload bytes from a seed: hypothesis draws one number, not every byte.
    payload = random.Random(rng.getrandbits(32)).randbytes(rng.randrange(0, 90))
    kind = rng.choice(["udp", "udp", "tcp", "arp", "other"])
    if kind == "arp":
        return ether(dst, src, 0x0806, vid) + bytes(28) + payload
    if kind == "other":
        return ether(dst, src, 0x88B5, vid) + payload
    ports = struct.pack("!HH", rng.randrange(65536), rng.randrange(65536))
    l4 = ports + (struct.pack("!HH", 8 + len(payload), 0) if kind == "udp" else bytes(16))
    return ether(dst, src, 0x0800, vid) + ipv4(0x0A00_0000 | rng.getrandbits(24),
                                               0x0A00_0000 | rng.getrandbits(24),
                                               17 if kind == "udp" else 6, l4 + payload)


def vxlan(config, inner, vni, src, *, dst=None, dport=None, rng=None):
    flags = 0x08 | (rng.choice([0, 0, 0x04, 0xF7]) if rng else 0)
    header = bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
    udp = struct.pack("!HHHH", 49152 + (rng.randrange(16384) if rng else 0),
                      config.udp_port if dport is None else dport, 16 + len(inner), 0)
    ip = ipv4(src, config.local_ip if dst is None else dst, 17, udp + header + inner)
    vid = rng.randrange(4096) if rng and rng.random() < 0.2 else None
    return ether(config.local_mac, config.gateway_mac, 0x0800, vid) + ip


KINDS = ["tenant"] * 5 + ["foreign_src"] * 2 + ["wrong_dst"] * 2 + ["wrong_port"] * 2 + \
    ["stray_vni", "host", "host", "plain"]
DECOY_KINDS = ["tenant"] * 2 + ["foreign_src"] * 3 + ["wrong_dst"] * 3 + ["wrong_port"] * 3


def frame(rng, config, tenant_list, kinds=KINDS):
    kind = rng.choice(kinds)
    t = rng.choice(tenant_list)
    vlans = [x.vlan for x in tenant_list]
    # Tagged with a tenant's VLAN (maybe another's), any VLAN, or not.
    vid = rng.choice(vlans + [rng.randrange(4096)]) if rng.random() < 0.4 else None
    if kind == "host":
        vid = rng.choice(vlans + [rng.randrange(4096)]) if rng.random() < 0.8 else None
    inner = inner_frame(rng, t.macs, vid)
    if kind == "host":
        return Frame(Port.HOST, inner, kind)
    if kind == "plain":
        return Frame(Port.NET, inner, kind)
    all_peers = {p for x in tenant_list for p in x.peers}
    src, dst, dport, vni = rng.choice(t.peers), None, None, t.vni
    if kind == "foreign_src":
        src = rng.choice([_near(rng, rng.choice(t.peers), 32, set(t.peers)),
                          *[p for p in all_peers if p not in t.peers]])
    elif kind == "wrong_dst":
        dst = rng.choice([_near(rng, config.local_ip, 32, {config.local_ip}),
                          rng.choice(sorted(all_peers)), 0xFFFF_FFFF])
    elif kind == "wrong_port":
        dport = rng.choice([_near(rng, config.udp_port, 16, {config.udp_port}),
                            config.udp_port + 1, 4790, 8472, 0])
    elif kind == "stray_vni":
        vni = _near(rng, t.vni, 24, {x.vni for x in tenant_list})
    return Frame(Port.NET, vxlan(config, inner, vni, src, dst=dst, dport=dport, rng=rng),
                 kind, vni=vni, src=src)


def case(rng, config, *, tenant_count=None, frames=None, kinds=KINDS):
    """A random :class:`Case`: ``tenant_count`` tenants (default 1..5), ``frames`` frames
    (default 1..40) of ``kinds``."""
    tenant_list = tenants(rng, tenant_count or rng.randint(1, 5), config)
    frames = rng.randint(1, 40) if frames is None else frames
    return Case(config, tenant_list, ruleset(rng, tenant_list, config),
                [frame(rng, config, tenant_list, kinds) for _ in range(frames)])


# --- The properties --------------------------------------------------------------------------


def _is_our_vxlan(config, out):
    return (len(out) >= 50 and out[12:14] == b"\x08\x00" and out[23] == 17
            and out[26:30] == config.local_ip.to_bytes(4, "big")
            and out[36:38] == config.udp_port.to_bytes(2, "big"))


def check_security(case_, outputs, engine):
    """Assert the security properties on ``outputs`` (per input frame, ``[(Port, bytes)]``)
    of ``engine`` (a name for messages); returns ``(delivered to host, re-encapsulated or
    encapsulated)`` counts, for the caller to check the run was not vacuous.

    - Host: a frame leaves on host only tagged with a tenant's VLAN, and only if it arrived
      as a VXLAN frame to ``local_ip:udp_port`` in that tenant's VNI, from one of its peers if
      the tenant takes frames only from its peers. So VXLAN to another address or port, from
      an unknown source, or in another VNI never reaches a tenant.
    - Net: a VXLAN frame we send in VNI ``b`` goes to one of tenant ``b``'s peers, and came
      either in VNI ``b`` (from an allowed source) or from the host tagged with ``b``'s VLAN.
    - Controller: the frame exactly as it arrived.
    """
    config = case_.config
    by_vlan = {t.vlan: t for t in case_.tenants}
    by_vni = {t.vni: t for t in case_.tenants}

    def allowed(f, t):
        return (f.port == Port.NET and f.kind in ("tenant", "foreign_src", "stray_vni")
                and f.vni == t.vni and (not t.peers_only or f.src in t.peers))

    host = net = 0
    for i, (f, outs) in enumerate(zip(case_.frames, outputs)):
        where = f"{engine}: frame {i} ({f.kind}, on {f.port.label}, VNI {f.vni}, from " \
                f"{format_ipv4(f.src) if f.src is not None else '-'}): {f.data.hex()}"
        for port, out in outs:
            if port == Port.CONTROLLER:
                assert out == f.data, f"{where}: controller copy differs from the input"
            elif port == Port.HOST:
                assert len(out) >= 18 and out[12:14] == b"\x81\x00", \
                    f"{where}: left on host untagged: no tenant rule did that"
                vlan = int.from_bytes(out[14:16], "big") & 0xFFF
                t = by_vlan.get(vlan)
                assert t is not None and allowed(f, t), \
                    f"{where}: delivered to VLAN {vlan} (tenant VNI " \
                    f"{t.vni if t else None}) without a VXLAN frame of that tenant to us"
                host += 1
            elif _is_our_vxlan(config, out):
                vni = int.from_bytes(out[46:49], "big")
                t = by_vni.get(vni)
                assert t is not None, f"{where}: sent in VNI {vni}, no tenant's"
                assert int.from_bytes(out[30:34], "big") in t.peers, \
                    f"{where}: VNI {vni} sent to {format_ipv4(int.from_bytes(out[30:34], 'big'))}"\
                    f", not a peer of its tenant"
                from_host = f.port == Port.HOST and len(f.data) >= 18 and \
                    f.data[12:14] == b"\x81\x00" and \
                    int.from_bytes(f.data[14:16], "big") & 0xFFF == t.vlan
                assert from_host or allowed(f, t), \
                    f"{where}: sent in VNI {vni} without coming from that tenant"
                net += 1
    return host, net
