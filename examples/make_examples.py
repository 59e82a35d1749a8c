"""Regenerate the example traffic (host.pcap, net.pcap) with scapy. Deterministic."""

import os

from scapy.all import ARP, DNS, DNSQR, IP, TCP, UDP, Dot1Q, Ether, Raw, wrpcap
from scapy.layers.vxlan import VXLAN

HERE = os.path.dirname(os.path.abspath(__file__))
VM1, VM2, VM3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
LOCAL_MAC, GATEWAY = "02:00:00:00:01:01", "02:00:00:00:01:fe"


def payload(n, seed):
    return Raw(bytes((seed * 31 + i * 7) & 0xFF for i in range(n)))


def stamp(frames, start):
    for i, f in enumerate(frames):
        f.time = start + i * 0.001
    return frames


def vxlan(src_ip, vni, inner, **ip):
    return (Ether(dst=LOCAL_MAC, src=GATEWAY) / IP(src=src_ip, dst="198.18.0.1", **ip)
            / UDP(sport=51000 + vni, dport=4789) / VXLAN(vni=vni) / inner)


host = stamp([
    Ether(dst=VM2, src=VM1) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80)
    / payload(100, 1),
    Ether(dst=VM2, src=VM1) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40001, dport=53)
    / DNS(id=7, qd=DNSQR(qname="peer.example.org")),
    Ether(dst="ff:ff:ff:ff:ff:ff", src=VM1) / ARP(psrc="10.0.0.1", pdst="10.0.0.2"),
    Ether(dst=VM3, src=VM1) / Dot1Q(vlan=10, prio=3) / IP(src="10.1.0.1", dst="10.1.0.3")
    / UDP(sport=5000, dport=6000) / payload(200, 3),
    Ether(dst=VM2, src=VM1) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80)
    / payload(1400, 4),
    Ether(dst=VM3, src=VM1) / IP(src="10.0.0.1", dst="10.0.0.3") / UDP(sport=1, dport=2)
    / payload(10, 5),  # no rule: table miss
], 1.0)

net = stamp([
    vxlan("198.18.0.2", 42, Ether(dst=VM1, src=VM2) / IP(src="10.0.0.2", dst="10.0.0.1")
          / TCP(sport=80, dport=40000) / payload(64, 6)),
    vxlan("198.18.0.3", 43, Ether(dst=VM1, src=VM3) / IP(src="10.1.0.3", dst="10.1.0.1")
          / UDP(sport=6000, dport=5000) / payload(80, 7)),
    # Tenant isolation: VNI 43 claimed by the wrong VTEP is not delivered.
    vxlan("198.18.0.2", 43, Ether(dst=VM1, src=VM3) / IP(src="10.1.0.3", dst="10.1.0.1")
          / UDP(sport=6000, dport=5000) / payload(20, 8)),
    # Outer IPv4 header with a wrong checksum: dropped as bad_ip_checksum.
    vxlan("198.18.0.2", 42, Ether(dst=VM1, src=VM2) / IP(src="10.0.0.2", dst="10.0.0.1")
          / UDP(sport=80, dport=40000) / payload(40, 9), chksum=0x1234),
    # I flag clear: dropped as vxlan_flags.
    Ether(dst=LOCAL_MAC, src=GATEWAY) / IP(src="198.18.0.2", dst="198.18.0.1")
    / UDP(sport=51042, dport=4789) / VXLAN(flags=0, vni=42) / Ether(dst=VM1, src=VM2)
    / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=80, dport=40000) / payload(8, 10),
    Ether(dst="ff:ff:ff:ff:ff:ff", src=GATEWAY) / ARP(psrc="198.18.0.254", pdst="198.18.0.1"),
], 1.0005)

wrpcap(os.path.join(HERE, "host.pcap"), host)
wrpcap(os.path.join(HERE, "net.pcap"), net)
