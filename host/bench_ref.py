"""``openvtep bench ref``: the reference model against dpkt- and scapy-based VTEPs.

Each engine does the same job on the same frames, measured in the same run:

- ``encap``: frames on ``host`` are classified by 1,000 exact-match rules (``dl_dst``) and
  VXLAN-encapsulated towards the rule's VTEP with the rule's VNI (RFC 7348 §5).
- ``decap``: VXLAN frames on ``net`` are validated, decapsulated and classified by 1,000 rules
  (``tun_id`` + inner ``dl_dst``) and delivered to ``host``.

Before timing, the dpkt and scapy outputs for the first frames are checked equal to the
reference's, so the engines are known to do the same work. JSON: a list of
``{"engine", "op", "frame_bytes", "frames_per_s", "frames", "seconds", "cpu_seconds"}``
(``frames_per_s`` is wall-clock; ``cpu_seconds`` is this process's CPU time, which a busy
machine inflates less).
"""

import argparse
import json
import struct
import time

import numpy as np

from .addr import format_ipv4, format_mac
from .config import VtepConfig
from .frames import FrameBatch
from .headers import (
    ETHERTYPE_IPV4,
    HASH_ROTATIONS,
    IPPROTO_UDP,
    IPV4_DF,
    SRC_PORT_BASE,
    SRC_PORT_MASK,
    VXLAN_FLAG_I,
    Port,
    ipv4_checksum,
)
from .reference import Reference
from .rules import parse_rules

__all__ = ["add_parser", "run_bench", "make_workload"]

OPS = ("encap", "decap")
SIZES = (64, 512, 1500)
ENGINES = ("ref", "dpkt", "scapy")
CONFIG = VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE)
PEER_IP = 0xC6120002
VM_MAC = 0x020000000001
MEMORY_BUDGET = 1 << 28


def _vm_mac(i):
    return 0x020000100000 + i


def make_workload(op, frame_bytes, n, n_rules=1000, seed=1):
    """Rules and ``n`` frames of ``frame_bytes`` bytes for ``op``: (ruleset, FrameBatch)."""
    rng = np.random.default_rng(seed)
    if op == "encap":
        lines = [f"priority=100,in_port=host,dl_dst={format_mac(_vm_mac(i))},actions="
                 f"set_tunnel:{i + 1},set_field:{format_ipv4(PEER_IP + i)}->tun_dst,output:net"
                 for i in range(n_rules)]
    else:
        lines = [f"priority=100,in_port=net,tun_id={i + 1},dl_dst={format_mac(_vm_mac(i))},"
                 "actions=output:host" for i in range(n_rules)]
    ruleset = parse_rules("\n".join(lines), f"<bench {op}>")
    which = rng.integers(0, n_rules, n)
    inner_len = frame_bytes - (50 if op == "decap" else 0)
    if inner_len < (42 if op == "encap" else 14):
        raise ValueError(f"{op} frames of {frame_bytes} bytes are too short for the workload")
    inner = rng.integers(0, 256, (n, inner_len), dtype=np.uint8)
    inner[:, 0:6] = _be_bytes(_vm_mac(which), 6)
    inner[:, 6:12] = _be_bytes(np.full(n, VM_MAC), 6)
    inner[:, 12:14] = (0x08, 0x00) if inner_len >= 42 else (0x88, 0xB5)  # IPv4/UDP or bare
    if inner_len >= 42:
        inner[:, 14:16] = (0x45, 0)
        inner[:, 16:18] = _be_bytes(np.full(n, inner_len - 14), 2)
        inner[:, 20:22] = (0, 0)  # not a fragment
        inner[:, 23] = IPPROTO_UDP
    if op == "encap":
        return ruleset, FrameBatch(inner, np.full(n, inner_len), np.full(n, Port.HOST, np.uint8),
                                   np.arange(n))
    outer = np.zeros((n, 50), np.uint8)
    outer[:, 0:6] = _be_bytes(np.full(n, CONFIG.local_mac), 6)
    outer[:, 6:12] = _be_bytes(np.full(n, CONFIG.gateway_mac), 6)
    outer[:, 12:14] = (0x08, 0x00)
    ip = outer[:, 14:34]
    ip[:, 0] = 0x45
    ip[:, 2:4] = _be_bytes(np.full(n, frame_bytes - 14), 2)
    ip[:, 8], ip[:, 9] = 64, IPPROTO_UDP
    ip[:, 12:16] = _be_bytes(PEER_IP + which, 4)
    ip[:, 16:20] = _be_bytes(np.full(n, CONFIG.local_ip), 4)
    ip[:, 10:12] = _be_bytes(ipv4_checksum(ip), 2)
    outer[:, 34:36] = (0xC0, 0x01)
    outer[:, 36:38] = _be_bytes(np.full(n, CONFIG.udp_port), 2)
    outer[:, 38:40] = _be_bytes(np.full(n, frame_bytes - 34), 2)
    outer[:, 42] = VXLAN_FLAG_I
    outer[:, 46:49] = _be_bytes(which + 1, 3)
    data = np.concatenate([outer, inner], axis=1)
    return ruleset, FrameBatch(data, np.full(n, frame_bytes), np.full(n, Port.NET, np.uint8),
                               np.arange(n))


def _be_bytes(values, n):
    return np.asarray(values).astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - n:]


# --- The same VTEP job written per frame with dpkt and with scapy --------------------------------

def _src_port(dl_dst, dl_src, dl_type, nw_src=0, nw_dst=0, nw_proto=0, tp_src=0, tp_dst=0):
    """The tunnel source-port hash of host/headers.py, one frame at a time in plain Python."""
    words = (dl_dst >> 32, dl_dst >> 16, dl_dst, dl_src >> 32, dl_src >> 16, dl_src, dl_type,
             nw_src >> 16, nw_src, nw_dst >> 16, nw_dst, nw_proto, tp_src, tp_dst)
    h = 0
    for word, rot in zip(words, HASH_ROTATIONS):
        word &= 0xFFFF
        h ^= ((word << rot) | (word >> (16 - rot))) & 0xFFFF
    return SRC_PORT_BASE | (h & SRC_PORT_MASK)


def _tables(ruleset, op):
    """Exact-match dictionaries equivalent to the workload's rules."""
    table = {}
    for rule in ruleset:
        match = {f: v for f, v, _ in rule.match}
        e = rule.emissions[0]
        if op == "encap":
            table[match["dl_dst"].to_bytes(6, "big")] = (e.vni, e.tun_dst.to_bytes(4, "big"))
        else:
            table[(match["tun_id"], match["dl_dst"].to_bytes(6, "big"))] = True
    return table


def _outer(cfg, inner, vni, dst, sport):
    """The VXLAN/UDP/IPv4/Ethernet header bytes, built with struct (both per-frame engines)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36 + len(inner), 0, IPV4_DF, cfg.ttl,
                     IPPROTO_UDP, 0, cfg.local_ip.to_bytes(4, "big"), dst)
    return ip, struct.pack("!HHHH", sport, cfg.udp_port, 16 + len(inner), 0) + \
        struct.pack("!II", VXLAN_FLAG_I << 24, vni << 8)


def dpkt_engine(cfg, ruleset, op, frames):
    import dpkt
    table = _tables(ruleset, op)
    eth_hdr = (cfg.gateway_mac.to_bytes(6, "big") + cfg.local_mac.to_bytes(6, "big")
               + ETHERTYPE_IPV4.to_bytes(2, "big"))
    local_ip = cfg.local_ip.to_bytes(4, "big")
    out = []
    for buf in frames:
        if op == "encap":
            eth = dpkt.ethernet.Ethernet(buf)
            hit = table.get(eth.dst)
            if hit is None:
                continue
            vni, dst = hit
            ip = eth.data
            l4 = ip.data
            sport = _src_port(int.from_bytes(eth.dst, "big"), int.from_bytes(eth.src, "big"),
                              eth.type, int.from_bytes(ip.src, "big"),
                              int.from_bytes(ip.dst, "big"), ip.p, l4.sport, l4.dport)
            ip_hdr, rest = _outer(cfg, buf, vni, dst, sport)
            csum = dpkt.in_cksum(ip_hdr)
            out.append(eth_hdr + ip_hdr[:10] + csum.to_bytes(2, "big") + ip_hdr[12:] + rest + buf)
        else:
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if (not isinstance(ip, dpkt.ip.IP) or ip.dst != local_ip or ip.hl != 5
                    or dpkt.in_cksum(bytes(ip)[:20]) != 0 or ip.len != len(buf) - 14
                    or ip.mf or ip.offset):
                continue
            udp = ip.data
            if udp.dport != cfg.udp_port or udp.ulen != ip.len - 20:
                continue
            vx = udp.data
            if not vx[0] & VXLAN_FLAG_I:
                continue
            vni = int.from_bytes(vx[4:7], "big")
            inner = vx[8:]
            if table.get((vni, inner[0:6])):
                out.append(bytes(inner))
    return out


def scapy_engine(cfg, ruleset, op, frames):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import Raw
    from scapy.utils import checksum
    table = _tables(ruleset, op)
    gw, local = format_mac(cfg.gateway_mac), format_mac(cfg.local_mac)
    local_ip = format_ipv4(cfg.local_ip)
    out = []
    for buf in frames:
        if op == "encap":
            pkt = Ether(buf)
            hit = table.get(bytes.fromhex(pkt.dst.replace(":", "")))
            if hit is None:
                continue
            vni, dst = hit
            ip = pkt[IP]
            l4 = ip.payload
            sport = _src_port(int(pkt.dst.replace(":", ""), 16), int(pkt.src.replace(":", ""), 16),
                              pkt.type, int.from_bytes(bytes(map(int, ip.src.split("."))), "big"),
                              int.from_bytes(bytes(map(int, ip.dst.split("."))), "big"), ip.proto,
                              l4.sport, l4.dport)
            outer = (Ether(dst=gw, src=local) / IP(id=0, flags="DF", ttl=cfg.ttl, src=local_ip,
                                                   dst=format_ipv4(int.from_bytes(dst, "big")))
                     / UDP(sport=sport, dport=cfg.udp_port, chksum=0) / VXLAN(vni=vni)
                     / Raw(buf))
            out.append(bytes(outer))
        else:
            pkt = Ether(buf)
            if IP not in pkt or UDP not in pkt:
                continue
            ip = pkt[IP]
            if (ip.dst != local_ip or ip.ihl != 5 or checksum(buf[14:34]) != 0
                    or ip.len != len(buf) - 14 or ip.frag or ip.flags.MF):
                continue
            udp = pkt[UDP]
            if udp.dport != cfg.udp_port or udp.len != ip.len - 20 or VXLAN not in pkt:
                continue
            vx = pkt[VXLAN]
            if not vx.flags & VXLAN_FLAG_I:
                continue
            inner = bytes(vx.payload)
            if table.get((vx.vni, inner[0:6])):
                out.append(inner)
    return out


def _reference_engine(cfg, ruleset, op, batch):
    return Reference(cfg, ruleset).run(batch).outputs[Port.NET if op == "encap" else Port.HOST]


def run_bench(frames_ref=200_000, frames_dpkt=20_000, frames_scapy=1_000, sizes=SIZES,
              ops=OPS, n_rules=1000, repeat=3, progress=print):
    """Measure every engine on every op and size; returns the list of records."""
    records = []
    for op in ops:
        for size in sizes:
            # At most ~256 MB of frames for the reference, however large they are.
            counts = {"ref": min(frames_ref, MEMORY_BUDGET // size), "dpkt": frames_dpkt,
                      "scapy": frames_scapy}
            ruleset, batch = make_workload(op, size, max(counts.values()), n_rules)
            frames = batch.take(slice(0, max(frames_dpkt, frames_scapy, 50))).frames()
            expected = _reference_engine(CONFIG, ruleset, op, batch.take(slice(0, 50))).frames()
            for name, engine in (("dpkt", dpkt_engine), ("scapy", scapy_engine)):
                got = engine(CONFIG, ruleset, op, frames[:50])
                if got != expected:
                    raise AssertionError(f"bench: {name} {op} {size}B output differs from the "
                                         "reference: the engines do not do the same job")
            for name in ENGINES:
                n = counts[name]
                if name == "ref":
                    job = (_reference_engine, batch.take(slice(0, n)))
                else:
                    job = (dpkt_engine if name == "dpkt" else scapy_engine, frames[:n])
                seconds = cpu_seconds = float("inf")
                for _ in range(repeat):  # the best of `repeat` runs, as timeit does
                    start, cpu_start = time.perf_counter(), time.process_time()
                    job[0](CONFIG, ruleset, op, job[1])
                    seconds = min(seconds, time.perf_counter() - start)
                    cpu_seconds = min(cpu_seconds, time.process_time() - cpu_start)
                record = {"engine": name, "op": op, "frame_bytes": size,
                          "frames_per_s": n / seconds, "frames": n, "seconds": seconds,
                          "cpu_seconds": cpu_seconds}
                records.append(record)
                progress(f"  {op:<6} {size:>5} B  {name:<6} {n:>8} frames  "
                         f"{record['frames_per_s']:>12,.0f} frames/s")
    return records


def format_table(records):
    by = {(r["op"], r["frame_bytes"], r["engine"]): r["frames_per_s"] for r in records}
    lines = [f"{'op':<6}{'bytes':>6}{'ref fr/s':>14}{'dpkt fr/s':>12}{'scapy fr/s':>12}"
             f"{'ref/dpkt':>10}{'ref/scapy':>11}"]
    for op, size in sorted({(r["op"], r["frame_bytes"]) for r in records}):
        ref, dp, sc = (by[(op, size, e)] for e in ENGINES)
        lines.append(f"{op:<6}{size:>6}{ref:>14,.0f}{dp:>12,.0f}{sc:>12,.0f}"
                     f"{ref / dp:>9.0f}x{ref / sc:>10.0f}x")
    return "\n".join(lines)


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = sorted({(r["op"], r["frame_bytes"]) for r in records})
    by = {(r["op"], r["frame_bytes"], r["engine"]): r["frames_per_s"] for r in records}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for k, engine in enumerate(ENGINES):
        xs = [i + (k - 1) * width for i in range(len(groups))]
        ax.bar(xs, [by[(op, size, engine)] for op, size in groups], width, label=engine)
    ax.set_xticks(range(len(groups)), [f"{op}\n{size} B" for op, size in groups])
    ax.set_yscale("log")
    ax.set_ylabel("frames/s (log)")
    ax.set_title("openvtep reference model vs dpkt and scapy VTEPs (1,000 exact-match rules)")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cmd(args):
    print(f"bench ref: {args.frames:,} frames (reference), {args.frames_dpkt:,} (dpkt), "
          f"{args.frames_scapy:,} (scapy) per op and size; {args.rules} rules")
    records = run_bench(args.frames, args.frames_dpkt, args.frames_scapy, n_rules=args.rules,
                        repeat=args.repeat)
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0


def add_parser(subparsers):
    """Add ``ref`` to a ``bench`` subcommand's subparsers."""
    p = subparsers.add_parser(
        "ref", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="reference model vs dpkt/scapy VTEPs: frames/s for encap and decap",
        description=__doc__.split("\n\n")[0] + " Encap and decap at 64/512/1500-byte frames.",
        epilog="example: openvtep bench ref --json out/bench-ref.json --plot out/bench-ref.png")
    p.add_argument("--frames", type=int, default=1_000_000, help="frames per run, reference")
    p.add_argument("--frames-dpkt", type=int, default=20_000, help="frames per run, dpkt")
    p.add_argument("--frames-scapy", type=int, default=1_000, help="frames per run, scapy")
    p.add_argument("--rules", type=int, default=1000, help="exact-match rules")
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts")
    p.add_argument("--json", metavar="FILE", help="write the records as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart")
    p.set_defaults(func=_cmd)
