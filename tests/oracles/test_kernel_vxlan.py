"""The Linux kernel's VXLAN device as an independent VTEP peer (RFC 7348), in two network
namespaces the test creates and deletes; addresses only in 198.18.0.0/15, traffic only between
those namespaces::

    netns ...-a: the peer VTEP 198.18.0.2                netns ...-b: our VTEP's net port
      vx42  (VNI 42)       \\
      vxbig (VNI 0xabcde1)  +- ovt-k 02:00:00:00:01:fe <-veth-> ovt-o 02:00:00:00:01:01
      (AF_PACKET sockets)                                          (AF_PACKET socket)

Our VTEP is 198.18.0.1 with ``local_mac`` = ovt-o and ``gateway_mac`` = ovt-k. The kernel side
has learning off, a permanent neighbour entry for 198.18.0.1, IPv6 off (so that no stray
ND/MLD frame is tunnelled) and the UDP checksum off (``noudpcsum``, RFC 7348 §5's "SHOULD be
transmitted as zero") or on (``udpcsum``, the kernel default here), both tried.

- Frames the reference encapsulates, written on ovt-o, are decapsulated by the kernel and
  arrive on the vxlan device of their VNI as the inner frames the reference wrote, byte for
  byte (VLAN tags included: AF_PACKET hands them over as auxdata and they are put back).
- Frames the kernel encapsulates (sent into vx42/vxbig, captured on ovt-o) are decapsulated by
  ``Reference`` with ``in_port=net,tun_id=...,tun_src=198.18.0.2,actions=output:host`` into
  exactly the frames sent, each matched by the rule of its VNI; none is dropped, whatever the
  outer UDP checksum holds (semantics: it is not checked). With ``udpcsum`` the checksum seen
  on a veth does not even verify: checksum offload (CHECKSUM_PARTIAL) leaves only the
  pseudo-header sum in it, which a NIC would complete; kernel frames also have DF clear, a
  counting IP ID and a source port in 32768..60999, none of which matters to decap.
- A negative control: frames with a bad outer IPv4 checksum, an unknown VNI or the I flag
  clear are not delivered by the kernel, so "delivered intact" above means something.
"""

import collections
import ctypes
import os
import random
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
from oracle_support import expected_emissions, mac_bytes, random_inner

from openvtep.config import VtepConfig
from openvtep.frames import FrameBatch
from openvtep.headers import Port
from openvtep.reference import Reference
from openvtep.rules import parse_rules

pytestmark = pytest.mark.netns

LOCAL_IP, PEER_IP = "198.18.0.1", "198.18.0.2"
OUR_MAC, PEER_MAC = "02:00:00:00:01:01", "02:00:00:00:01:fe"
DEVICES = {"vx42": (42, "02:00:00:00:0a:42"), "vxbig": (0xABCDE1, "02:00:00:00:0a:43")}
CONFIG = VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE)
N_FRAMES = 64
CAPTURE_SECONDS = 5.0   # upper bound on waiting for frames; normally they arrive in ms
LINGER_SECONDS = 0.2    # after the last expected frame, to catch extra ones

ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_AUXDATA = 263, 8
PACKET_OUTGOING = 4
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
SO_RCVBUFFORCE = 33
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/var/run/netns"


def ip(*args, check=True):
    proc = subprocess.run(["ip", *args], check=False, capture_output=True, text=True,
                          timeout=30)
    if check and proc.returncode:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def in_netns(name, fn):
    """Run ``fn()`` in a thread that has joined network namespace ``name``; return its result.
    Only that short-lived thread changes namespace; sockets it opens stay in ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}

    def run():
        try:
            with open(f"{NETNS_DIR}/{name}") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            out["value"] = fn()
        except Exception as exc:  # noqa: BLE001 -- re-raised in the calling thread
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def packet_socket(netns, ifname):
    """A raw AF_PACKET socket on ``ifname`` in ``netns`` that reports VLAN tags as auxdata."""
    def make():
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        sock.bind((ifname, ETH_P_ALL))
        return sock
    return in_netns(netns, make)


def _with_tag(data, ancillary):
    """Put back the 802.1Q tag the kernel moved from the frame into PACKET_AUXDATA."""
    for level, kind, blob in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA:
            status, _, _, _, _, tci, tpid = struct.unpack_from("=IIIHHHH", blob)
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                return data[:12] + struct.pack(">HH", tpid, tci) + data[12:]
    return data


def capture(sock, count):
    """Frames received on ``sock`` (not the ones sent from its interface) until ``count`` have
    arrived, then for LINGER_SECONDS more; at most CAPTURE_SECONDS in all."""
    frames = []
    deadline = time.monotonic() + CAPTURE_SECONDS
    while True:
        now = time.monotonic()
        if len(frames) >= count:
            deadline = min(deadline, now + LINGER_SECONDS)
        if now >= deadline:
            return frames
        sock.settimeout(deadline - now)
        try:
            data, ancillary, _, address = sock.recvmsg(65536, socket.CMSG_SPACE(32))
        except TimeoutError:
            return frames
        if address[2] != PACKET_OUTGOING:
            frames.append(_with_tag(data, ancillary))


class KernelPeer:
    """The two namespaces and their devices; ``udpcsum``: the kernel's UDP checksum option."""

    def __init__(self, udpcsum):
        tag = secrets.token_hex(3)
        self.a, self.b = f"ovt-{tag}-a", f"ovt-{tag}-b"
        self.udpcsum = udpcsum
        self.sockets = []

    def create(self):
        for ns in (self.a, self.b):
            ip("netns", "add", ns)
            # No IPv6: nothing but our frames may cross the tunnel or the veth.
            script = ("[ -d /proc/sys/net/ipv6 ] || exit 0; "
                      "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && "
                      "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")
            subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], check=True,
                           capture_output=True, timeout=30)
        a = ("-n", self.a)
        ip(*a, "link", "add", "ovt-k", "address", PEER_MAC, "type", "veth",
           "peer", "name", "ovt-o", "netns", self.b, "address", OUR_MAC)
        ip(*a, "addr", "add", f"{PEER_IP}/24", "dev", "ovt-k")
        ip(*a, "link", "set", "ovt-k", "up")
        ip("-n", self.b, "link", "set", "ovt-o", "up")
        ip(*a, "neigh", "add", LOCAL_IP, "lladdr", OUR_MAC, "dev", "ovt-k", "nud", "permanent")
        for name, (vni, mac) in DEVICES.items():
            ip(*a, "link", "add", name, "address", mac, "type", "vxlan", "id", str(vni),
               "local", PEER_IP, "remote", LOCAL_IP, "dstport", "4789", "dev", "ovt-k",
               "nolearning", "udpcsum" if self.udpcsum else "noudpcsum")
            ip(*a, "link", "set", name, "up")

    def socket(self, netns, ifname):
        sock = packet_socket(netns, ifname)
        self.sockets.append(sock)
        return sock

    def diagnostics(self):
        return "\n".join(ip("-n", ns, "-s", "-d", "link", "show", check=False).stdout
                         for ns in (self.a, self.b))

    def destroy(self):
        for sock in self.sockets:
            sock.close()
        for ns in (self.a, self.b):
            ip("netns", "del", ns, check=False)


@pytest.fixture(params=[False, True], ids=["noudpcsum", "udpcsum"])
def peer(request):
    if shutil.which("ip") is None:
        pytest.fail("iproute2 `ip` is not installed (`make deps` installs it)")
    peer = KernelPeer(request.param)
    request.addfinalizer(peer.destroy)
    probe = ip("netns", "add", peer.a, check=False)
    if probe.returncode:
        pytest.fail(f"cannot create a network namespace (needs root): {probe.stderr.strip()}")
    ip("netns", "del", peer.a)
    try:
        peer.create()
    except RuntimeError as exc:
        if "Unknown device type" in str(exc) or "not supported" in str(exc):
            pytest.skip(f"the kernel has no vxlan/veth device support: {exc}")
        raise
    return peer


def inner_frames(seed, n=N_FRAMES):
    """``n`` distinct valid frames that fit the vxlan devices' 1450-byte MTU."""
    rng = random.Random(seed)
    frames = set()
    while len(frames) < n:
        frames.add(random_inner(rng, max_payload=1300))
    return sorted(frames)


def _diff(name, got, want):
    got, want = collections.Counter(got), collections.Counter(want)
    lines = [f"{name}: {sum(want.values())} expected, {sum(got.values())} captured"]
    lines += [f"  missing: {f.hex()}" for f in (want - got)]
    lines += [f"  unexpected: {f.hex()}" for f in (got - want)]
    return lines


def test_kernel_decapsulates_our_frames(peer):
    rules = parse_rules(
        "priority=30,in_port=host,dl_vlan=20,actions=mod_vlan_vid:30,set_tunnel:42,"
        f"set_field:{PEER_IP}->tun_dst,output:net\n"
        "priority=20,in_port=host,dl_dst=02:00:00:00:00:02,actions=set_tunnel:0xabcde1,"
        f"set_field:{PEER_IP}->tun_dst,output:net\n"
        f"priority=10,in_port=host,actions=set_tunnel:42,set_field:{PEER_IP}->tun_dst,"
        "output:net\n")
    inputs = FrameBatch.from_frames(inner_frames(1), port=Port.HOST)
    result = Reference(CONFIG, rules).run(inputs)
    out = result.outputs[Port.NET].frames()
    emissions = expected_emissions(rules, inputs.port, result)[Port.NET]
    assert len(out) == len(inputs) and all(e.tun_dst is not None for _, e in emissions)
    by_vni = {vni: name for name, (vni, _) in DEVICES.items()}
    want = {name: [] for name in DEVICES}
    for frame, (_, e) in zip(out, emissions, strict=True):
        want[by_vni[e.vni]].append(frame[50:])
    assert all(len(w) >= 5 for w in want.values()), {k: len(w) for k, w in want.items()}
    assert any(f[12:14] == b"\x81\x00" for f in want["vx42"]), "no tagged inner frame"

    wire = peer.socket(peer.b, "ovt-o")
    taps = {name: peer.socket(peer.a, name) for name in DEVICES}
    for frame in out:
        wire.send(frame)
    errors = []
    for name, tap in taps.items():
        got = capture(tap, len(want[name]))
        if collections.Counter(got) != collections.Counter(want[name]):
            errors += _diff(name, got, want[name])
    assert not errors, "\n".join(errors + [peer.diagnostics()])


def test_reference_decapsulates_kernel_frames(peer):
    rng = random.Random(2)
    sent = {frame: rng.choice(list(DEVICES)) for frame in inner_frames(2)}
    assert len(set(sent.values())) == len(DEVICES)
    wire = peer.socket(peer.b, "ovt-o")
    taps = {name: peer.socket(peer.a, name) for name in DEVICES}
    for frame, name in sent.items():
        taps[name].send(frame)
    captured = capture(wire, len(sent))
    assert len(captured) == len(sent), "\n".join(
        [f"{len(sent)} frames sent into the vxlan devices, {len(captured)} captured on the veth"]
        + [f.hex() for f in captured] + [peer.diagnostics()])

    # The kernel's own choice of UDP checksum (RFC 7348 §5 allows either for IPv4).
    checksums = [int.from_bytes(f[40:42], "big") for f in captured]
    if peer.udpcsum:
        assert any(checksums), "udpcsum set, but every outer UDP checksum is zero"
    else:
        assert not any(checksums), f"noudpcsum set, but UDP checksums {checksums}"

    rules = parse_rules("".join(
        f"priority=10,in_port=net,tun_id={vni},tun_src={PEER_IP},actions=output:host\n"
        for vni, _ in DEVICES.values()))
    result = Reference(CONFIG, rules).run(FrameBatch.from_frames(captured, port=Port.NET))
    dropped = [(int(d), f.hex()) for d, f in zip(result.drop, captured, strict=True) if d >= 0]
    assert not dropped, f"the reference dropped kernel frames (reason, frame): {dropped}"
    host = result.outputs[Port.HOST].frames()
    errors = _diff("decapsulated", host, list(sent))
    if collections.Counter(host) == collections.Counter(list(sent)):
        for k, (frame, rule) in enumerate(zip(host, result.rule.tolist(), strict=True)):
            if list(DEVICES)[rule] != sent[frame]:
                errors.append(f"frame {k} went in through {sent[frame]} but matched rule "
                              f"{rule} ({rules.rules[rule]}):\n  {captured[k].hex()}")
        assert not errors[1:], "\n".join(errors)
    else:
        pytest.fail("\n".join(errors))
    # The inner frames did not just pass through: the outer headers were the kernel's.
    for frame in captured:
        assert frame[:6] == mac_bytes(CONFIG.local_mac) and frame[26:30] == bytes(
            [198, 18, 0, 2]), frame.hex()


@pytest.mark.parametrize("peer", [False], ids=["noudpcsum"], indirect=True)
def test_kernel_drops_broken_frames(peer):
    """The other tests can fail: the kernel does not deliver an encapsulated frame whose outer
    IPv4 checksum is wrong, whose VNI no device has, or whose I flag is clear; only the intact
    frame sent last arrives."""
    rules = parse_rules(f"in_port=host,actions=set_tunnel:42,set_field:{PEER_IP}->tun_dst,"
                        "output:net\n")
    frames = inner_frames(3, 4)
    good = Reference(CONFIG, rules).run(FrameBatch.from_frames(frames, port=Port.HOST))
    out = [bytearray(f) for f in good.outputs[Port.NET].frames()]
    out[0][24] ^= 0x40          # IPv4 header checksum
    out[1][48] ^= 0x01          # VNI 42 -> 43: no such device
    out[2][42] = 0x00           # VXLAN flags: I clear
    wire = peer.socket(peer.b, "ovt-o")
    taps = {name: peer.socket(peer.a, name) for name in DEVICES}
    for frame in out:
        wire.send(bytes(frame))
    got = {name: capture(tap, 1 if name == "vx42" else 0) for name, tap in taps.items()}
    assert got == {"vx42": [frames[3]], "vxbig": []}, \
        {name: [f.hex() for f in fs] for name, fs in got.items()}
