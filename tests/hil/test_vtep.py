"""The whole VTEP (openvtep.hdl.top.VtepTop) through the host driver, compared with the reference
model: rules loaded and read back, frames injected and captured, counters, rule dumps, bad
requests, and a rule load through a faulty link.

Parametrized by device: a virtual board serving VtepTop (one per module: it takes a minute or
two to start), and a real board when ``OPENVTEP_PORT`` names its serial port (built with the
example configuration, ``examples/vtep.toml``).
"""

import os
import random
from pathlib import Path

import pytest

from openvtep.config import load_config
from openvtep.driver import Device, DeviceError
from openvtep.errors import RuleError
from openvtep.frames import FrameBatch, merge_inputs, read_pcap
from openvtep.headers import Port
from openvtep.reference import Reference
from openvtep.rules import load_rules, parse_rules
from openvtep.sim import flow_rules
from openvtep.sim import traffic as vf
from openvtep.sim.faulty_link import FaultyLink
from openvtep.vtep import SIM_TIMEOUT, Session, Vtep, compare, format_dump, split_ports

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
CONFIG = load_config(EXAMPLES / "vtep.toml")
RULES = load_rules(EXAMPLES / "rules.txt")
NO_BOARD = "no board attached: set OPENVTEP_PORT"


@pytest.fixture(scope="module", params=["virtual", "board"])
def vtep(request):
    if request.param == "board":
        url = os.environ.get("OPENVTEP_PORT")
        if not url:
            pytest.skip(NO_BOARD)
        session = Session(url)
    else:
        session = Session(config=CONFIG)
    with session as vtep:
        vtep.board_url = session.board.url if session.board else session.url
        yield vtep
        vtep.device.close()  # test_rule_load_through_faulty_link reconnects


def example_frames():
    return merge_inputs([read_pcap(EXAMPLES / "host.pcap", Port.HOST),
                         read_pcap(EXAMPLES / "net.pcap", Port.NET)])


def run_and_compare(vtep, ruleset, batch):
    """Load ``ruleset``, send ``batch``, compare frames and counters with the reference."""
    reference = Reference(CONFIG, ruleset).run(batch)
    expected = {port: reference.outputs[port].frames() for port in Port}
    vtep.load_rules(ruleset)
    vtep.clear_counters()
    pairs = [(Port(int(p)), f) for p, f in zip(batch.port, batch.frames())]
    captured = vtep.exchange(pairs, expected=sum(map(len, expected.values())), settle=0.5)
    stats = vtep.counters()
    ok, lines = compare(expected, split_ports(captured), reference.stats, stats)
    assert ok, "\n".join(lines)
    return reference, stats


def test_identify(vtep):
    info = vtep.device.info
    assert info["width"] == 8
    assert (info["exact_entries"], info["wildcard_entries"]) == \
        (vtep.geometry.exact_entries, vtep.geometry.wildcard_entries)
    assert info["max_frame"] >= CONFIG.max_frame + 50  # an encapsulated max frame fits


def test_example(vtep):
    reference, stats = run_and_compare(vtep, RULES, example_frames())
    # The dump: the normalized rules, file order, with the reference's counters.
    assert vtep.dump_rules(stats) == format_dump(reference.stats)
    assert [line.split(", ", 2)[2] for line in vtep.dump_rules(stats)] == \
        [rule.text for rule in RULES]


def test_random_rules(vtep):
    seed = random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    assert CONFIG == vf.CONFIG
    batch = FrameBatch.from_frames([vf.random_frame(rng, 400) for _ in range(16)])
    fields = flow_rules.frame_fields(batch, CONFIG)
    ruleset = flow_rules.ruleset_for(seed, fields, 10, geometry=vtep.geometry)
    reference = Reference(CONFIG, ruleset).run(batch)
    print(f"seed {seed}: {len(ruleset)} rules, {len(batch)} frames, "
          f"{sum(len(reference.outputs[p]) for p in Port)} outputs")
    try:
        run_and_compare(vtep, ruleset, batch)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}") from None


def test_rules_that_do_not_fit(vtep):
    # More match shapes than the profiles and the wildcard table hold together.
    n = vtep.geometry.exact_profiles + vtep.geometry.wildcard_entries + 1
    text = "\n".join(f"priority={n - k},ip,nw_dst=10.0.0.0/{k % 32 + 1},"
                     f"nw_src=10.1.0.0/{k // 32 + 1},actions=drop" for k in range(n))
    ruleset = parse_rules(text, "big.rules")
    if vtep.image is None:
        vtep.load_rules(RULES)
    before = vtep.image
    with pytest.raises(RuleError) as info:
        vtep.load_rules(ruleset)
    (line, _, message), = info.value.errors
    assert 1 <= line <= n and "wildcard" in message
    assert f"big.rules:{line}:" in "\n".join(info.value.lines())
    assert vtep.image is before  # nothing loaded, nothing changed
    vtep.verify()


def test_drop_counters_are_read_only(vtep):
    """The DROPS range: a word per drop reason, the rest read 0; writing any answers a bus
    error and changes nothing."""
    import openvtep.regmap as rm
    from openvtep.headers import DropReason
    from openvtep.vtep import PIPELINE_BASE
    base, size = PIPELINE_BASE + rm.DROPS_RANGE[0], rm.DROPS_RANGE[1]
    before = vtep.device.read_block(base, size)
    for k in (0, len(DropReason), size - 1):
        with pytest.raises(DeviceError, match="bus error"):
            vtep.device.write(base + k, 0x5A5A5A5A)
    assert vtep.device.read_block(base, size) == before
    assert before[len(DropReason):] == [0] * (size - len(DropReason))


def test_oversize_inject(vtep):
    with pytest.raises(DeviceError, match=r"frame of \d+ bytes: the device takes 1\.\.\d+"):
        vtep.inject(Port.HOST, bytes(vtep.device.info["max_frame"] + 1))
    with pytest.raises(DeviceError, match="cannot inject on port controller"):
        vtep.inject(Port.CONTROLLER, bytes(64))
    assert vtep.capture() == []


def test_rule_load_through_faulty_link(vtep):
    """Drops, flips, duplicates and delays during a load: afterwards every entry reads back as
    compiled (each rule present once: no entry lost, none written twice into another slot)."""
    if not vtep.board_url.startswith("socket://"):
        pytest.skip("the faulty link proxies socket:// URLs only")
    seed = random.SystemRandom().randrange(1 << 31)
    batch = FrameBatch.from_frames([vf.random_frame(random.Random(seed), 200)
                                    for _ in range(32)])
    ruleset = flow_rules.ruleset_for(seed, flow_rules.frame_fields(batch, CONFIG), 24,
                                     geometry=vtep.geometry)
    known = (vtep.image, vtep.ruleset)
    vtep.device.close()  # the board serves one connection at a time
    try:
        with FaultyLink(vtep.board_url, seed=seed, rate=0.005, max_faults=12,
                        max_delay=0.2) as link, \
                Device(link.url, timeout=SIM_TIMEOUT / 2, retries=8) as dev:
            faulty = Vtep(dev)
            faulty.image, faulty.ruleset = known  # what the tables hold now
            image = faulty.load_rules(ruleset, verify=False)
            faults = list(link.faults)
    finally:
        vtep.device = Device(vtep.board_url, timeout=SIM_TIMEOUT, retries=3)
    assert faults, f"seed {seed}: no fault was injected"
    vtep.image, vtep.ruleset = image, ruleset
    assert vtep.verify() == len(vtep.expected_entries(image)), f"seed {seed}"
