"""The hardware table compiler: placement equals the reference's OpenFlow classification, and
every rule set the hardware cannot represent is refused with an error naming the rule."""

import random

import pytest

from openvtep.config import VtepConfig
from openvtep.errors import RuleError
from openvtep.frames import FrameBatch
from openvtep.headers import Port
from openvtep.reference import Reference, parse
from openvtep.rules import parse_rules
from openvtep.tables import (
    BANKS,
    KEY_BITS,
    SLOTS,
    Geometry,
    bucket_index,
    compile_tables,
    flow_keys,
    rule_key,
)

CONFIG = VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE)
MACS = [f"02:00:00:00:00:{i:02x}" for i in range(1, 7)]
IPS = [f"10.0.{i}.{j}" for i in range(2) for j in range(1, 4)]


def random_rule(rng, tunnel_ok=True):
    parts = [f"priority={rng.choice([0, 1, 10, 100, 100, 200])}"]
    if rng.random() < 0.6:
        parts.append(f"in_port={rng.choice(['host', 'net'])}")
    if rng.random() < 0.5:
        parts.append(f"dl_dst={rng.choice(MACS)}")
    if rng.random() < 0.3:
        parts.append(f"dl_src={rng.choice(MACS)}")
    if rng.random() < 0.3:
        parts.append(f"dl_vlan={rng.choice([5, 10, 0xffff])}")
    if rng.random() < 0.3:
        parts.append(f"tun_id={rng.choice([0, 42, 43])}")
    if rng.random() < 0.4:
        parts.append(rng.choice(["ip", "udp", "tcp"]))
        if rng.random() < 0.5:
            parts.append(f"nw_dst={rng.choice(IPS)}/{rng.choice([24, 32])}")
        if parts[-1] in ("udp", "tcp") or (len(parts) > 1 and parts[-2] in ("udp", "tcp")):
            if rng.random() < 0.5:
                parts.append(f"tp_dst={rng.choice([53, 80])}")
    action = rng.choice(["output:host", "output:net", "controller", "drop",
                         "mod_vlan_vid:7,output:in_port",
                         "set_tunnel:9,set_field:198.18.0.9->tun_dst,output:net,controller"])
    return ",".join(parts) + ",actions=" + action


def random_frames(rng, n):
    from scapy.all import IP, TCP, UDP, Dot1Q, Ether, Raw
    from scapy.layers.vxlan import VXLAN
    frames = []
    for _ in range(n):
        inner = Ether(dst=rng.choice(MACS), src=rng.choice(MACS))
        if rng.random() < 0.3:
            inner = inner / Dot1Q(vlan=rng.choice([5, 10]))
        if rng.random() < 0.7:
            l4 = rng.choice([UDP(dport=rng.choice([53, 80])), TCP(dport=rng.choice([53, 80]))])
            inner = inner / IP(src=rng.choice(IPS), dst=rng.choice(IPS)) / l4
        inner = inner / Raw(b"x" * rng.randrange(0, 40))
        if rng.random() < 0.4:
            frame = (Ether(dst="02:00:00:00:01:01") / IP(src="198.18.0.2", dst="198.18.0.1")
                     / UDP(dport=4789) / VXLAN(vni=rng.choice([42, 43])) / inner)
            frames.append((Port.NET, bytes(frame)))
        else:
            frames.append((rng.choice([Port.HOST, Port.NET]), bytes(inner)))
    return frames


@pytest.mark.parametrize("seed", range(6))
def test_placement_equals_reference(seed):
    rng = random.Random(seed)
    lines = list(dict.fromkeys(random_rule(rng) for _ in range(rng.randrange(1, 60))))
    try:
        ruleset = parse_rules("\n".join(lines))
    except RuleError:  # a random duplicate priority+match: drop the later ones
        seen, kept = set(), []
        for line in lines:
            r = parse_rules(line).rules[0]
            if (r.priority, r.match) not in seen:
                seen.add((r.priority, r.match))
                kept.append(line)
        ruleset = parse_rules("\n".join(kept))
    image = compile_tables(ruleset, Geometry(exact_entries=256, exact_profiles=3,
                                             wildcard_entries=64))
    batch = FrameBatch.from_frames(random_frames(rng, 300))
    parsed = parse(batch, CONFIG)
    want = Reference(CONFIG, ruleset).run(batch).rule
    index_of_line = {r.line: i for i, r in enumerate(image.rules)}
    line_of = [r.line for r in ruleset]
    for n, key in enumerate(flow_keys(parsed)):
        if parsed.drop[n] >= 0:
            continue
        expected = index_of_line[line_of[want[n]]] if want[n] >= 0 else -1
        assert image.lookup(key) == expected, f"seed {seed} frame {n}"


def test_rule_index_is_openflow_rank():
    rs = parse_rules("priority=5,actions=drop\npriority=9,ip,actions=drop\n"
                     "priority=9,arp,actions=drop\npriority=1,udp,actions=drop")
    image = compile_tables(rs)
    assert [r.line for r in image.rules] == [2, 3, 1, 4]


def test_wildcard_overlapping_exact_keeps_priority():
    rs = parse_rules("\n".join(
        [f"priority=10,dl_dst={m},actions=output:host" for m in MACS]
        + ["priority=20,dl_dst=02:00:00:00:00:00/ff:ff:ff:ff:ff:f0,actions=output:net"]))
    image = compile_tables(rs, Geometry(exact_entries=64, exact_profiles=1))
    assert len(image.profiles) == 1 and len(image.wildcard) == 1
    key = flow_keys(parse(FrameBatch.from_frames(
        [(Port.HOST, bytes.fromhex("020000000003" "020000000001" "88b5"))]), CONFIG))[0]
    assert image.rules[image.lookup(key)].line == 7  # the wildcard rule outranks the exact one


def test_hash_is_deterministic_and_in_range():
    geo = Geometry(exact_entries=1024)
    seen = set()
    for k in range(200):
        key = (k * 0x9E3779B97F4A7C15) % (1 << KEY_BITS)
        b = bucket_index(key, 1, 0, 0, geo.index_bits)
        assert 0 <= b < geo.buckets
        assert b == bucket_index(key, 1, 0, 0, geo.index_bits)
        seen.add(b)
    assert len(seen) > 100  # spreads keys


def test_rule_key_requires_presence_bits():
    value, mask = rule_key(parse_rules("udp,tp_dst=0,actions=drop").rules[0])
    assert value != 0 and mask != 0  # tp_valid (and nw_valid) must be 1


def refusal(text, geometry=Geometry()):
    with pytest.raises(RuleError) as info:
        compile_tables(parse_rules(text, "r.txt"), geometry)
    return info.value.errors[0]


def test_refuses_two_outputs():
    line, _, message = refusal("priority=1,actions=drop\nin_port=host,actions=output:net,"
                               "output:host")
    assert line == 2 and "one edited output" in message


def test_refuses_two_controller_copies():
    line, _, message = refusal("actions=controller,controller")
    assert line == 1 and "at most one controller copy" in message


def test_refuses_too_many_rules():
    geo = Geometry(exact_entries=4, wildcard_entries=1)
    text = "\n".join(f"priority={100 - i},dl_dst={m},actions=drop" for i, m in enumerate(MACS))
    line, _, message = refusal(text, geo)
    assert line == 6 and "too many rules" in message and "holds 5 rules" in message


def test_refuses_full_wildcard_table():
    geo = Geometry(exact_entries=64, exact_profiles=1, wildcard_entries=2)
    text = "\n".join(["priority=1,dl_dst=02:00:00:00:00:01,actions=drop",
                      "priority=1,dl_dst=02:00:00:00:00:02,actions=drop",
                      "priority=5,tun_id=1,actions=drop", "priority=4,tun_src=1.2.3.4,actions=drop",
                      "priority=3,dl_vlan=5,actions=drop"])
    line, _, message = refusal(text, geo)
    assert line == 5 and "wildcard table (2 entries) is full" in message


def test_refuses_full_exact_table():
    geo = Geometry(exact_entries=BANKS * SLOTS, exact_profiles=1, wildcard_entries=8)
    text = "\n".join(f"priority=1,dl_dst={m},actions=drop" for m in MACS)
    line, _, message = refusal(text, geo)
    assert line == 5 and "exact-match table is full" in message


def test_refuses_placement_failure_after_rehash():
    # Five keys whose candidate buckets are the same under both hash seeds compete for the
    # four slots of those two buckets: no rehash can place them.
    from openvtep.tables import KEY_OFFSETS
    geo = Geometry(exact_entries=16, exact_profiles=1, wildcard_entries=1, hash_seeds=2)
    groups = {}
    for vni in range(2000):
        key = vni << KEY_OFFSETS["tun_id"]
        where = tuple(bucket_index(key, 0, seed, bank, geo.index_bits)
                      for seed in range(2) for bank in range(BANKS))
        groups.setdefault(where, []).append(vni)
    crowd = next(vnis for vnis in groups.values() if len(vnis) > BANKS * SLOTS)
    text = "\n".join(f"priority=1,tun_id={vni},actions=drop" for vni in crowd[:5])
    line, _, message = refusal(text, geo)
    assert line == 5
    assert "placement failed" in message and "2 hash seeds" in message


def test_geometry_rejects_bad_sizes():
    with pytest.raises(ValueError, match="power of two"):
        Geometry(exact_entries=100)
    with pytest.raises(ValueError, match="exact_profiles"):
        Geometry(exact_profiles=9)
