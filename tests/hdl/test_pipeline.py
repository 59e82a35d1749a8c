"""Tests of ``openvtep.hdl.pipeline`` through the ``rtl`` engine (``openvtep.rtl_engine``):
byte-for-byte equality with the reference model on every output port and in every counter,
for the bundled example and random rule sets over random traffic (host and net, VXLAN and
plain, tagged and untagged, valid and malformed) with random gaps and backpressure; zero
bubbles at line rate with the classifier in the path; tenant isolation.

The cocotb test is ``openvtep.sim.replay_tb`` (the rtl engine's own).
"""

import random
from pathlib import Path

import numpy as np
import pytest
import vtep_frames as vf

from openvtep.config import load_config
from openvtep.frames import FrameBatch, merge_inputs, read_pcap
from openvtep.headers import ENCAP_BYTES, DropReason, Port
from openvtep.reference import Reference, parse
from openvtep.rtl_engine import rtl_engine
from openvtep.rules import load_rules, parse_rules
from openvtep.sim import flow_rules
from openvtep.sim.stream import hexdiff
from openvtep.tables import Geometry

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GEOMETRY = Geometry(exact_entries=256, exact_profiles=4, wildcard_entries=16)


def assert_same(ref, rtl, seed):
    """Every port's frames and every counter equal; a failure names the seed, shows a hex
    diff."""
    for port in Port:
        want, got = ref.outputs[port].frames(), rtl.outputs[port].frames()
        for k, (w, g) in enumerate(zip(want, got)):
            if w != g:
                raise AssertionError(f"seed {seed}: {port.label} frame {k} differs\n"
                                     f"{hexdiff(w, g)}")
        assert len(want) == len(got), \
            f"seed {seed}: {port.label}: {len(want)} frames expected, {len(got)} received"
        assert (ref.outputs[port].time_ns == rtl.outputs[port].time_ns).all(), \
            f"seed {seed}: {port.label}: output timestamps differ"
    for key in ("ports", "drops"):
        assert rtl.stats[key] == ref.stats[key], \
            f"seed {seed}: {key}: {rtl.stats[key]} expected {ref.stats[key]}"
    for want, got in zip(ref.stats["rules"], rtl.stats["rules"]):
        assert got == want, f"seed {seed}: rule counters {got} expected {want}"
    assert (rtl.rule == ref.rule).all(), f"seed {seed}: matched rules differ"
    differ = np.flatnonzero(rtl.drop != ref.drop)
    assert not len(differ), (
        f"seed {seed}: drop reasons differ from frame {differ[0]}: "
        f"{[DropReason(d).label if d >= 0 else '-' for d in rtl.drop[differ[:5]]]} expected "
        f"{[DropReason(d).label if d >= 0 else '-' for d in ref.drop[differ[:5]]]}")


def random_case(seed, frames, rules, geometry=GEOMETRY, punt=False):
    rng = random.Random(seed)
    batch = FrameBatch.from_frames([vf.random_frame(rng, vf.CONFIG.max_frame)
                                    for _ in range(frames)])
    fields = flow_rules.frame_fields(batch, vf.CONFIG)
    ruleset = flow_rules.ruleset_for(seed, fields, rules, geometry=geometry, punt=punt)
    return ruleset, batch


def check_isolation(ruleset, batch, rtl, seed):
    """A frame that arrived in VNI A leaves in VNI B, or on host, only if its rule says so."""
    parsed = parse(batch, vf.CONFIG)
    rules = list(ruleset)
    checked = 0
    for port in (Port.HOST, Port.NET):
        out = rtl.outputs[port]
        frame_of = {t: k for k, t in enumerate(batch.time_ns.tolist())}
        for data, length, time_ns in zip(out.data, out.length.tolist(), out.time_ns.tolist()):
            k = frame_of[time_ns]
            if not parsed.decap[k] or parsed.drop[k] >= 0:
                continue
            vni = int(parsed.tun_id[k])
            assert rtl.rule[k] >= 0, f"seed {seed}: frame {k} left without a rule"
            emissions = [e for e in rules[rtl.rule[k]].emissions if e.port is not Port.CONTROLLER]
            if port == Port.HOST:
                assert any(e.port == Port.HOST for e in emissions), \
                    f"seed {seed}: frame {k} of VNI {vni} left on host without a rule saying so"
            elif length >= ENCAP_BYTES and data[12:14].tobytes() == b"\x08\x00" \
                    and data[36:38].tobytes() == vf.CONFIG.udp_port.to_bytes(2, "big"):
                out_vni = int.from_bytes(data[46:49].tobytes(), "big")
                allowed = {e.vni if e.vni is not None else vni for e in emissions}
                assert out_vni in allowed, \
                    f"seed {seed}: frame {k} of VNI {vni} left in VNI {out_vni}, rule allows " \
                    f"{allowed}"
            checked += 1
    return checked


@pytest.fixture
def seed():
    return random.SystemRandom().randrange(1 << 31)


def test_random_rules_and_traffic(seed):
    ruleset, batch = random_case(seed, 300, 60)
    rtl = rtl_engine(vf.CONFIG, ruleset, batch, 8, geometry=GEOMETRY, idle=0.2,
                     backpressure=0.3, seed=seed)
    ref = Reference(vf.CONFIG, ruleset).run(batch)
    assert_same(ref, rtl, seed)
    assert check_isolation(ruleset, batch, rtl, seed) > 0 or not ref.outputs[Port.HOST]


def test_example(seed):
    """The bundled example, with its edited output plus controller copy
    (``output:net,controller``), in the default geometry."""
    config = load_config(EXAMPLES / "vtep.toml")
    ruleset = load_rules(EXAMPLES / "rules.txt")
    assert any("output:net,controller" in rule.text for rule in ruleset)
    frames = merge_inputs([read_pcap(EXAMPLES / "host.pcap", Port.HOST),
                           read_pcap(EXAMPLES / "net.pcap", Port.NET)])
    rtl = rtl_engine(config, ruleset, frames, 8, seed=seed)
    ref = Reference(config, ruleset).run(frames)
    assert_same(ref, rtl, seed)
    assert len(ref.outputs[Port.CONTROLLER]) > 0


def test_controller_copy_beside_output(seed):
    """Random rules with controller copies beside edited outputs (before and after them in
    the action list), random gaps and backpressure."""
    ruleset, batch = random_case(seed, 100, 20, punt=True)
    # The random rules stay below the first rule, so that host frames are copied: a random
    # catch-all above it left no copy in 24 of 300 seeds.
    ruleset = parse_rules("priority=40000,in_port=host,actions=output:host,controller\n"
                          "priority=1,actions=output:host,controller\n"
                          + "\n".join(r.text for r in ruleset if r.priority < 40000))
    rtl = rtl_engine(vf.CONFIG, ruleset, batch, 8, geometry=GEOMETRY, idle=0.2,
                     backpressure=0.3, seed=seed)
    ref = Reference(vf.CONFIG, ruleset).run(batch)
    assert_same(ref, rtl, seed)
    copied = set(ref.outputs[Port.CONTROLLER].time_ns.tolist())
    edited = set(ref.outputs[Port.HOST].time_ns.tolist()) | set(
        ref.outputs[Port.NET].time_ns.tolist())
    assert int(rtl.raw["punt"].sum()) == len(copied & edited) > 0, f"seed {seed}"


def test_line_rate_with_classifier(seed):
    """64-byte (and longer) frames back to back, 4 profiles active, no gaps, no backpressure:
    output frames start exactly ceil(n / W) cycles apart in steady state at W = 8."""
    rng = random.Random(seed)
    lines = [f"priority={10 + k},in_port=host,dl_dst=02:00:00:00:00:{k:02x},actions=output:net"
             for k in range(8)]
    lines += ["priority=5,in_port=host,dl_vlan=7,actions=output:net",
              "priority=4,ip,nw_dst=10.0.0.0/8,actions=output:net",
              "priority=3,udp,tp_dst=53,actions=output:net",
              "priority=2,dl_src=02:00:00:00:aa:aa,actions=output:net"]
    ruleset = parse_rules("\n".join(lines))
    sizes, count = (64, 65, 128), 30
    frames = []
    for size in sizes:
        for _ in range(count):
            frame = vf.eth(0x020000000000 + rng.randrange(8), vf.mac(rng), 0x88B5)
            frames.append((Port.HOST, frame + rng.randbytes(size - len(frame))))
    rtl = rtl_engine(vf.CONFIG, ruleset, frames, 8, geometry=GEOMETRY, seed=seed)
    assert rtl.raw["hit"].all() and len(rtl.raw["out_start"]) == len(frames)
    report = []
    for k, size in enumerate(sizes):
        starts = rtl.raw["out_start"][k * count:(k + 1) * count]
        gaps = np.diff(starts)[count // 3:]  # past the change of size
        ideal = -(-size // 8)
        report.append((size, float(gaps.mean()), ideal))
        assert (gaps == ideal).all(), f"seed {seed}: {size}-byte frames: output starts " \
                                      f"{np.diff(starts).tolist()} apart, ideal {ideal}"
    latency = int(rtl.raw["out_start"][0] - rtl.raw["in_start"][0])
    print(f"line rate W=8 (size, cycles/frame, ideal): {report}; first frame latency "
          f"{latency} cycles (first input beat to first output beat)")


@pytest.mark.slow
def test_4096_rules(seed):
    geometry = Geometry(exact_entries=8192, exact_profiles=4, wildcard_entries=32)
    ruleset, batch = random_case(seed, 2000, 4096, geometry=geometry)
    rtl = rtl_engine(vf.CONFIG, ruleset, batch, 8, geometry=geometry, idle=0.1,
                     backpressure=0.2, seed=seed)
    assert_same(Reference(vf.CONFIG, ruleset).run(batch), rtl, seed)


@pytest.mark.slow
@pytest.mark.parametrize("width", [4, 8, 16])
def test_widths(width, seed):
    ruleset, batch = random_case(seed, 1000, 200)
    rtl = rtl_engine(vf.CONFIG, ruleset, batch, width, geometry=GEOMETRY, idle=0.3,
                     backpressure=0.4, seed=seed)
    ref = Reference(vf.CONFIG, ruleset).run(batch)
    assert_same(ref, rtl, seed)
    check_isolation(ruleset, batch, rtl, seed)
