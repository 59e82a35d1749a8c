"""tshark (Wireshark's dissectors, no code of ours) judges every output pcap of the reference.

For the bundled example (through the ``openvtep replay`` CLI) and for seeded random runs (valid
random frames and rules, ``Reference(...).run``, ``write_pcap``), tshark decodes each port's
pcap with application dissectors off (random payloads would trip them), VXLAN on the VTEP's
UDP port, and IPv4/UDP/TCP checksum validation on. Every frame must be well formed (no
``_ws.malformed``, no expert error, every IPv4 header checksum good, no bad L4 checksum), and
tshark's reading of it must agree with what the reference says it emitted: outer MACs,
addresses, TTL, ID, DF, lengths, UDP ports and zero checksum, VXLAN flags and VNI, the UDP
source-port hash recomputed from the inner headers *as tshark reads them*, the inner MACs and
VLAN tag, and the frame length. The ``corrupt`` tests show each check fires on a broken frame.
"""

import random
import subprocess
import sys
from pathlib import Path

import pytest
from oracle_support import (
    GATEWAY_MAC,
    LOCAL_IP,
    LOCAL_MAC,
    expected_emissions,
    random_rules,
    random_traffic,
    run_tshark,
    tshark_problems,
)

from openvtep.addr import format_ipv4, format_mac
from openvtep.config import VtepConfig, load_config
from openvtep.frames import FrameBatch, merge_inputs, read_pcap, write_pcap
from openvtep.headers import ETHERTYPE_IPV4, Port, tunnel_src_port
from openvtep.reference import Reference, parse
from openvtep.rules import VlanOp, load_rules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SEEDS = range(6)


def check_port(records, port, outputs, emissions, inputs, parsed, config):
    """Compare tshark's ``records`` of the frames emitted on ``port`` with what the reference
    emitted there; returns a list of disagreements, each naming the frame and its hex."""
    errors = []
    frames = outputs.frames()
    if not len(records) == len(frames) == len(emissions):
        return [(f"{port.label}: tshark read {len(records)} frames, the pcap has "
                 f"{len(frames)}, the reference emitted {len(emissions)}")]
    for n, (rec, frame, (i, e)) in enumerate(zip(records, frames, emissions, strict=True)):
        found = tshark_problems(rec) + _disagreements(rec, frame, port, i, e, inputs, parsed,
                                                      config)
        errors += [f"{port.label} frame {n} (input {i}): {msg}\n  {frame.hex()}" for msg in found]
    return errors


def _disagreements(rec, frame, port, i, e, inputs, parsed, config):
    errors = []

    def want(field, occurrence, expected):
        values = rec[field]
        got = values[occurrence] if occurrence < len(values) else None
        if got != str(expected):
            errors.append(f"{field}[{occurrence}]: tshark reads {got!r}, reference wrote "
                          f"{str(expected)!r}")

    want("frame.len", 0, len(frame))
    if port is Port.CONTROLLER:  # the frame exactly as it arrived
        if frame != inputs.data[i, :inputs.length[i]].tobytes():
            errors.append("controller frame differs from the input frame")
        return errors
    encap = e.tun_dst is not None and port is Port.NET
    k = 1 if encap else 0  # which Ethernet/IPv4 occurrence is the (inner) frame
    tagged_in, tci_in = bool(parsed.tagged[i]), int(parsed.tci[i])
    tagged, tci = {
        VlanOp.KEEP: (tagged_in, tci_in),
        VlanOp.STRIP: (False, 0),
        VlanOp.SET_VID: (True, (tci_in & 0xF000 if tagged_in else 0) | e.vid),
        VlanOp.REPLACE: (True, e.vid),
    }[e.vlan_op]
    inner_len = int(parsed.inner_len[i]) + 4 * (tagged - tagged_in)
    want("frame.len", 0, inner_len + (50 if encap else 0))
    dl_dst = e.dl_dst if e.dl_dst is not None else int(parsed.dl_dst[i])
    dl_src = e.dl_src if e.dl_src is not None else int(parsed.dl_src[i])
    want("eth.dst", k, format_mac(dl_dst))
    want("eth.src", k, format_mac(dl_src))
    if tagged:
        want("vlan.id", 0, tci & 0xFFF)
        want("vlan.priority", 0, tci >> 13)
    elif rec["vlan.id"]:
        errors.append(f"vlan.id: tshark reads {rec['vlan.id']}, reference wrote no tag")
    if not encap:
        if rec["vxlan.vni"]:
            errors.append(f"plain frame, but tshark reads a VXLAN header {rec['vxlan.vni']}")
        return errors
    want("eth.dst", 0, format_mac(config.gateway_mac))
    want("eth.src", 0, format_mac(config.local_mac))
    want("eth.type", 0, "0x0800")
    want("ip.hdr_len", 0, 20)
    want("ip.src", 0, format_ipv4(config.local_ip))
    want("ip.dst", 0, format_ipv4(e.tun_dst))
    want("ip.ttl", 0, config.ttl)
    want("ip.id", 0, "0x0000")
    want("ip.flags.df", 0, 1)
    want("ip.flags.mf", 0, 0)
    want("ip.frag_offset", 0, 0)
    want("ip.len", 0, inner_len + 36)
    want("ip.proto", 0, 17)
    want("udp.dstport", 0, config.udp_port)
    want("udp.length", 0, inner_len + 16)
    want("udp.checksum", 0, "0x0000")
    want("vxlan.flags", 0, "0x0800")
    want("vxlan.vni", 0, e.vni if e.vni is not None else int(parsed.tun_id[i]))
    # The source port, recomputed from the inner headers as tshark decoded them.
    try:
        sport = _hash_from_tshark(rec, tagged)
    except (IndexError, ValueError) as exc:
        errors.append(f"cannot read the inner headers from tshark's decode: {exc!r}")
    else:
        want("udp.srcport", 0, sport)
    return errors


def _hash_from_tshark(rec, tagged):
    dl_type = int(rec["vlan.etype"][0] if tagged else rec["eth.type"][1], 16)
    nw_src = nw_dst = nw_proto = tp_src = tp_dst = 0
    if dl_type == ETHERTYPE_IPV4 and len(rec["ip.src"]) > 1:
        nw_src, nw_dst = (_ip(rec["ip.src"][1]), _ip(rec["ip.dst"][1]))
        nw_proto = int(rec["ip.proto"][1])
        if nw_proto == 6 and rec["tcp.srcport"]:
            tp_src, tp_dst = int(rec["tcp.srcport"][0]), int(rec["tcp.dstport"][0])
        elif nw_proto == 17 and len(rec["udp.srcport"]) > 1:
            tp_src, tp_dst = int(rec["udp.srcport"][1]), int(rec["udp.dstport"][1])
    fields = (_mac(rec["eth.dst"][1]), _mac(rec["eth.src"][1]), dl_type, nw_src, nw_dst,
              nw_proto, tp_src, tp_dst)
    return int(tunnel_src_port(*([f] for f in fields))[0])


def _mac(text):
    return int(text.replace(":", ""), 16)


def _ip(text):
    return int.from_bytes(bytes(int(p) for p in text.split(".")), "big")


def check_run(tmp_path, home, config, ruleset, inputs, result):
    """Write each output port's pcap, run tshark on it and collect every problem."""
    parsed = parse(inputs, config)
    emissions = expected_emissions(ruleset, inputs.port, result)
    errors, counts = [], {}
    for port in Port:
        pcap = tmp_path / f"{port.label}.pcap"
        write_pcap(pcap, result.outputs[port])
        records = run_tshark(home, pcap, config.udp_port)
        counts[port] = len(records)
        errors += check_port(records, port, result.outputs[port], emissions[port], inputs,
                             parsed, config)
    return errors, counts


def test_example_outputs(tmp_path, tshark_home):
    """The bundled example through `openvtep replay`: every output pcap passes tshark."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "openvtep.cli", "replay", "--quiet",
         "--config", EXAMPLES / "vtep.toml", "--rules", EXAMPLES / "rules.txt",
         "--in", f"host={EXAMPLES / 'host.pcap'}", "--in", f"net={EXAMPLES / 'net.pcap'}",
         "--out", out], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config = load_config(EXAMPLES / "vtep.toml")
    ruleset = load_rules(EXAMPLES / "rules.txt")
    inputs = merge_inputs([read_pcap(EXAMPLES / "host.pcap", Port.HOST),
                           read_pcap(EXAMPLES / "net.pcap", Port.NET)])
    result = Reference(config, ruleset).run(inputs)
    parsed = parse(inputs, config)
    emissions = expected_emissions(ruleset, inputs.port, result)
    errors = []
    for port in Port:
        written = read_pcap(out / f"{port.label}.pcap", port)
        assert written.frames() == result.outputs[port].frames(), \
            f"the CLI's {port.label}.pcap differs from Reference.run"
        records = run_tshark(tshark_home, out / f"{port.label}.pcap", config.udp_port)
        errors += check_port(records, port, written, emissions[port], inputs, parsed, config)
    assert not errors, "\n".join(errors)
    # Not vacuous: the example emits on every port, encapsulated frames among them.
    assert all(len(result.outputs[p]) for p in Port)
    assert any(e.tun_dst is not None for _, e in emissions[Port.NET])


def random_config(seed):
    rng = random.Random(seed)
    # The last seed moves VXLAN to Linux's historical port 8472 (tshark told with -d).
    return VtepConfig(LOCAL_IP, LOCAL_MAC, GATEWAY_MAC, udp_port=8472 if seed == 5 else 4789,
                      ttl=rng.randint(1, 255))


def random_run(seed, n_frames=300, n_rules=12):
    rng = random.Random(seed)
    config = random_config(seed)
    ruleset = random_rules(rng, n_rules)
    frames, _ = random_traffic(rng, config, n_frames)
    inputs = FrameBatch.from_frames(frames)
    return config, ruleset, inputs, Reference(config, ruleset).run(inputs)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_outputs(tmp_path, tshark_home, seed):
    """Seeded random valid frames and rules: every output pcap passes tshark."""
    config, ruleset, inputs, result = random_run(seed)
    errors, counts = check_run(tmp_path, tshark_home, config, ruleset, inputs, result)
    assert not errors, f"seed {seed}:\n" + "\n".join(errors[:40])
    # Not vacuous: every port got traffic, much of it encapsulated.
    assert all(counts[p] > 0 for p in Port), (seed, counts)
    encapsulated = sum(e.tun_dst is not None for _, e in
                       expected_emissions(ruleset, inputs.port, result)[Port.NET])
    assert encapsulated >= 20, (seed, encapsulated)


def _flip(offset):
    def edit(frame):
        frame[offset] ^= 0x01
    return edit


def _flip_keep_ip_checksum(offset):
    """Flip a bit, then fix the outer IPv4 header checksum: the frame stays well formed."""
    def edit(frame):
        frame[offset] ^= 0x01
        frame[24:26] = b"\0\0"
        total = sum(int.from_bytes(frame[j:j + 2], "big") for j in range(14, 34, 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        frame[24:26] = (~total & 0xFFFF).to_bytes(2, "big")
    return edit


def _truncate(frame):
    del frame[14 + 20 + 5:]


# Broken copies of one encapsulated frame (outer Ethernet 0, IPv4 14, UDP 34, VXLAN 42, inner
# Ethernet 50, inner IPv4 64): the name says which check must catch it.
CORRUPTIONS = {
    "intact": lambda frame: None,
    "outer_ip_checksum": _flip(14 + 10),
    "inner_tcp_payload": _flip(-1),
    "truncated": _truncate,
    "ip.dst": _flip_keep_ip_checksum(14 + 19),
    "vxlan.vni": _flip_keep_ip_checksum(42 + 6),
    "udp.srcport": _flip_keep_ip_checksum(34 + 1),
    "udp.dstport": _flip_keep_ip_checksum(34 + 3),
    "ip.ttl": _flip_keep_ip_checksum(14 + 8),
    "eth.src": _flip_keep_ip_checksum(50 + 11),
}


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory, tshark_home):
    """What the checks find in each of CORRUPTIONS applied to the first encapsulated inner-TCP
    frame of seed 0 (one tshark run for all)."""
    config, ruleset, inputs, result = random_run(0)
    emissions = expected_emissions(ruleset, inputs.port, result)[Port.NET]
    frames = result.outputs[Port.NET].frames()
    for n, (_, e) in enumerate(emissions):
        if e.tun_dst is not None and frames[n][62:64] == b"\x08\x00" \
                and frames[n][64 + 9] == 6 and len(frames[n]) > 64 + 20 + 20:
            break
    else:
        pytest.fail("seed 0 has no encapsulated TCP frame to corrupt")
    broken = []
    for edit in CORRUPTIONS.values():
        frame = bytearray(frames[n])
        edit(frame)
        broken.append(bytes(frame))
    pcap = tmp_path_factory.mktemp("corrupt") / "corrupt.pcap"
    write_pcap(pcap, FrameBatch.from_frames(broken, port=Port.NET))
    records = run_tshark(tshark_home, pcap)
    assert len(records) == len(broken)
    parsed = parse(inputs, config)
    i, e = emissions[n]
    return {name: tshark_problems(rec) + _disagreements(rec, frame, Port.NET, i, e, inputs,
                                                         parsed, config)
            for name, rec, frame in zip(CORRUPTIONS, records, broken, strict=True)}


def test_intact_frame_passes(corrupted):
    assert corrupted["intact"] == []


def test_corrupt_outer_ip_checksum_is_reported(corrupted):
    errors = corrupted["outer_ip_checksum"]
    assert any(e.startswith("ip.checksum.status") for e in errors), errors
    assert any(e.startswith("expert error: Bad checksum") for e in errors), errors


def test_corrupt_inner_tcp_payload_is_reported(corrupted):
    errors = corrupted["inner_tcp_payload"]
    assert any(e.startswith("tcp.checksum.status") for e in errors), errors


def test_truncated_frame_is_malformed(corrupted):
    assert "malformed packet" in corrupted["truncated"], corrupted["truncated"]


@pytest.mark.parametrize("field", [name for name in CORRUPTIONS if "." in name])
def test_corrupt_header_disagrees(corrupted, field):
    """A wrong bit in a header that stays well formed: only the comparison of tshark's decode
    with the reference's intent can see it."""
    errors = corrupted[field]
    assert any(e.startswith(field) for e in errors), errors
