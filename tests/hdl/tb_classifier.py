"""cocotb testbench for ``openvtep.hdl.classifier.Classifier``: parser records in, verdicts out,
compared with the reference model (``Reference(...).run(frames).rule`` mapped to hardware rule
index) and with ``TableImage.lookup``; rule counters read back over the register port.

Run from ``tests/hdl/test_classifier.py``. Parameters (``test_params()``): ``geometry`` (dict
of Geometry fields), ``frames``, ``rules``, ``idle``, ``backpressure``, ``reload`` (load a
second rule set over the first and run again).
"""

import collections
import random
import time

import cocotb
import vtep_frames as vf

from openvtep import regmap as rm
from openvtep.frames import FrameBatch
from openvtep.hdl.classifier import Verdict
from openvtep.hdl.headers import EditCommand, ParsedHeaders, pack, unpack
from openvtep.headers import DropReason
from openvtep.reference import Reference, parse
from openvtep.sim import flow_rules
from openvtep.sim.cocotb_runner import test_params, test_seed
from openvtep.sim.regbus import RegisterDriver, read_rule_counters
from openvtep.sim.stream import SimClock
from openvtep.tables import SLOTS, Geometry, compile_tables, flow_keys

CONFIG = vf.CONFIG


def _reader(handle):
    raw = getattr(getattr(handle, "_handle", None), "get_signal_val_binstr", None)
    return (lambda: int(raw(), 2)) if raw is not None else (lambda: int(handle.value))


class RecordSource:
    """Drives whole-payload records (ints) into stream ``name``, with random idle cycles."""

    def __init__(self, dut, name, *, clock, idle, rng):
        self.clock, self.idle, self.rng = clock, idle, rng
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = _reader(getattr(dut, f"{name}__ready"))
        self.payload = getattr(dut, f"{name}__payload")
        self.valid.value = 0
        self.queue = collections.deque()
        cocotb.start_soon(self._run())

    async def _run(self):
        current, driven = None, False
        while True:
            await self.clock.edge
            if current is not None and self.ready():
                current = None
            if current is None:
                if self.queue and not (self.idle and self.rng.random() < self.idle):
                    current = self.queue.popleft()
                    self.payload.value = current
                    if not driven:
                        self.valid.value = driven = 1
                elif driven:
                    self.valid.value = driven = 0


class RecordSink:
    """Collects payloads from stream ``name``, with random backpressure; checks that valid
    and payload hold while stalled."""

    def __init__(self, dut, name, *, clock, backpressure, rng):
        self.clock, self.backpressure, self.rng = clock, backpressure, rng
        self.valid = _reader(getattr(dut, f"{name}__valid"))
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = _reader(getattr(dut, f"{name}__payload"))
        self.ready.value = 1
        self.items = []
        cocotb.start_soon(self._run())

    async def _run(self):
        ready, stalled = True, None
        while True:
            await self.clock.edge
            if self.valid():
                value = self.payload()
                assert stalled is None or stalled == value, \
                    f"o payload changed while stalled at cycle {self.clock.cycle}"
                if ready:
                    self.items.append(value)
                    stalled = None
                else:
                    stalled = value
            else:
                assert stalled is None, f"o valid dropped while stalled at {self.clock.cycle}"
            if self.backpressure:
                new = self.rng.random() >= self.backpressure
                if new != ready:
                    ready = new
                    self.ready.value = int(ready)


def records(batch):
    """The ParsedHeaders record (packed int) of each frame, as the parser makes them."""
    parsed = parse(batch, CONFIG)
    out = []
    for n in range(len(batch)):
        drop = int(parsed.drop[n])
        decap = bool(parsed.decap[n]) and drop < 0
        fields = {
            "length": min(int(batch.length[n]), 0xFFFF), "port": int(batch.port[n]),
            "drop": int(drop >= 0), "reason": max(drop, 0), "decap": int(decap),
            "strip": int(parsed.inner_off[n]) if decap else 0,
            "vlan_valid": int(parsed.tagged[n]), "nw_valid": int(parsed.has_ip[n]),
            "tp_valid": int(parsed.has_l4[n]),
        }
        for name in ("tun_id", "tun_src", "dl_dst", "dl_src", "tci", "dl_type", "nw_src",
                     "nw_dst", "nw_proto", "tp_src", "tp_dst"):
            fields[name] = int(getattr(parsed, name)[n])
        out.append(pack(ParsedHeaders, fields))
    return out, parsed


def expected_verdicts(ruleset, image, batch, recs, parsed, seed):
    """Per frame the expected Verdict fields, checking TableImage.lookup on the way."""
    result = Reference(CONFIG, ruleset).run(batch)
    index_of_line = {r.line: i for i, r in enumerate(image.rules)}
    keys = flow_keys(parsed)
    out = []
    for n, rec in enumerate(recs):
        if parsed.drop[n] >= 0:
            cmd = {"drop": 1, "reason": int(parsed.drop[n])}
            out.append({"hdr": rec, "cmd": pack(EditCommand, cmd), "hit": 0, "punt": 0})
            continue
        rule = int(result.rule[n])
        rank = index_of_line[ruleset.rules[rule].line] if rule >= 0 else -1
        model = image.lookup(keys[n])
        assert model == rank, f"seed {seed}: frame {n}: TableImage.lookup {model}, ref {rank}"
        if rank < 0:
            out.append({"hdr": rec, "cmd": pack(EditCommand, {
                "drop": 1, "reason": int(DropReason.TABLE_MISS)}), "hit": 0, "punt": 0})
        else:
            action = rm.action_fields(image.actions[rank])
            out.append({"hdr": rec, "cmd": action["cmd"], "hit": 1, "rule": rank,
                        "punt": action["punt"]})
    return out, result


def check_verdicts(got, want, seed, first=0):
    assert len(got) == len(want), f"seed {seed}: {len(want)} verdicts expected, {len(got)} got"
    for n, (g, w) in enumerate(zip(got, want)):
        fields = unpack(Verdict, g)
        if not w["hit"]:
            fields["rule"] = 0
        w = {"rule": 0, **w}
        if fields != w:
            diff = {k: (fields[k], w[k]) for k in w if fields[k] != w[k]}
            if "cmd" in diff:
                g_cmd, w_cmd = unpack(EditCommand, fields["cmd"]), unpack(EditCommand, w["cmd"])
                diff["cmd"] = {k: (g_cmd[k], w_cmd[k]) for k in w_cmd if g_cmd[k] != w_cmd[k]}
            raise AssertionError(f"seed {seed}: frame {first + n}: verdict (got, expected) "
                                 f"differs in {diff}")


async def run_frames(dut, clock, source, sink, ruleset, image, batch, seed):
    recs, parsed = records(batch)
    want, result = expected_verdicts(ruleset, image, batch, recs, parsed, seed)
    first = len(sink.items)
    source.queue.extend(recs)
    started, start_cycle = time.perf_counter(), clock.cycle
    limit = clock.cycle + 40 * len(recs) + 2000
    while len(sink.items) < first + len(recs):
        await clock.edge
        assert clock.cycle < limit, f"seed {seed}: {len(sink.items) - first} of {len(recs)} " \
                                    f"verdicts by cycle {clock.cycle}"
    cycles = clock.cycle - start_cycle
    dut._log.info("%d records in %d cycles (%.0f cycles/s)", len(recs), cycles,
                  cycles / (time.perf_counter() - started))
    check_verdicts(sink.items[first:], want, seed, first)
    wild = {index for _, _, index in image.wildcard}
    hits = [w["rule"] for w in want if w["hit"]]
    dut._log.info("verdicts: %d exact hits, %d wildcard hits, %d misses, %d parser drops",
                  sum(r not in wild for r in hits), sum(r in wild for r in hits),
                  sum(w["cmd"] == want_miss for w in want),
                  sum(unpack(ParsedHeaders, w["hdr"])["drop"] for w in want))
    return result


want_miss = pack(EditCommand, {"drop": 1, "reason": int(DropReason.TABLE_MISS)})


async def check_counters(regs, ruleset, image, result, seed):
    index_of_line = {r.line: i for i, r in enumerate(image.rules)}
    got = await read_rule_counters(regs, len(image.rules))
    for stat in result.stats["rules"]:
        have = got[index_of_line[stat["line"]]]
        assert have == (stat["n_packets"], stat["n_bytes"]), \
            f"seed {seed}: rule line {stat['line']} {stat['rule']!r}: counters (packets, " \
            f"bytes) {have}, expected {(stat['n_packets'], stat['n_bytes'])}"


@cocotb.test()
async def lookups(dut):
    """Random rule sets over random frames: every verdict equals the reference's winner, the
    rule counters equal the reference's; table entries read back as written."""
    p = test_params()
    seed = test_seed()
    rng = random.Random(seed)
    geo = Geometry(**p["geometry"])
    clock = SimClock(dut)
    source = RecordSource(dut, "i", clock=clock, idle=p["idle"],
                          rng=random.Random(rng.getrandbits(32)))
    sink = RecordSink(dut, "o", clock=clock, backpressure=p["backpressure"],
                      rng=random.Random(rng.getrandbits(32)))
    regs = RegisterDriver(dut, "bus", clock=clock)
    await clock.start()
    assert await regs.read(rm.ID) == rm.ID_VALUE
    assert await regs.read(rm.GEOMETRY) == rm.geometry_word(geo)

    rounds = 2 if p.get("reload") else 1
    for round_ in range(rounds):
        frames = [vf.random_frame(rng, CONFIG.max_frame) for _ in range(p["frames"])]
        batch = FrameBatch.from_frames(frames)
        fields = flow_rules.frame_fields(batch, CONFIG)
        ruleset = flow_rules.ruleset_for(rng.getrandbits(32), fields, p["rules"], geometry=geo,
                                         punt=True)
        # The reload places the rules with the second hash set (a register the lookups read).
        image = compile_tables(ruleset, geo, first_seed=min(round_, geo.hash_seeds - 1))
        writes = rm.table_writes(image, fresh=round_ == 0, clear_counters=round_ > 0)
        started = clock.cycle
        await regs.write_all(writes)
        dut._log.info("round %d: %d rules, %d profiles, %d wildcard, seed %d: %d writes in %d "
                      "cycles", round_, len(ruleset), len(image.profiles), len(image.wildcard),
                      image.seed, len(writes), clock.cycle - started)
        # Read back a few entries.
        for k, mask in enumerate(image.profiles):
            entry = await regs.read_entry(rm.TABLE_PROFILE, k, (("mask", 292),))
            assert entry["mask"] == mask, f"seed {seed}: profile {k} reads back {entry}"
        for index in rng.sample(range(len(image.actions)), min(3, len(image.actions))):
            entry = await regs.read_entry(rm.TABLE_ACTION, index, rm.action_layout())
            assert entry == rm.action_fields(image.actions[index]), \
                f"seed {seed}: action {index} reads back {entry}"
        wildcard = sorted(image.wildcard, key=lambda entry: entry[2])
        for position in range(geo.wildcard_entries):
            entry = await regs.read_entry(rm.TABLE_WILDCARD, position, rm.WILDCARD_ENTRY)
            if position < len(wildcard):
                value, mask, index = wildcard[position]
                expected = {"valid": 1, "index": index, "value": value, "mask": mask}
                assert entry == expected, \
                    f"seed {seed}: wildcard position {position} reads back {entry}"
            else:  # never written since reset, or cleared by the reload
                assert not entry["valid"], \
                    f"seed {seed}: unused wildcard position {position} reads back {entry}"
        for (bank, bucket, slot), (profile, key, index) in list(image.exact.items())[:3]:
            bits = rm.layout_bits(rm.EXACT_ENTRY)
            row = await regs.read_raw(rm.TABLE_EXACT, bank << rm.BANK_SHIFT | bucket,
                                      SLOTS * bits)
            entry = rm.unpack_fields(rm.EXACT_ENTRY, row >> (slot * bits))
            assert entry == {"valid": 1, "profile": profile, "key": key, "index": index}, \
                f"seed {seed}: exact entry {(bank, bucket, slot)} reads back {entry}"
        result = await run_frames(dut, clock, source, sink, ruleset, image, batch, seed)
        await check_counters(regs, ruleset, image, result, seed)
