"""Tests of ``openvtep.hdl.classifier``: lookups equal the reference model's OpenFlow winner
(and ``TableImage.lookup``) for random rule sets with overlapping priorities, exact and
wildcard overlaps and table misses, under random gaps and backpressure; rule counters; the
register map and table loader.

cocotb testbench: ``tb_classifier.py``; rule sets: ``openvtep.sim.flow_rules``.
"""

import random
from pathlib import Path

import pytest
from amaranth.hdl import Module, Shape
from amaranth.lib import data
from amaranth.sim import Simulator

from openvtep import regmap as rm
from openvtep.hdl.classifier import Classifier, _Columns
from openvtep.rules import parse_rules
from openvtep.sim.cocotb_runner import run_cocotb
from openvtep.tables import Geometry, compile_tables

TB = Path(__file__).with_name("tb_classifier.py")
SMALL = {"exact_entries": 256, "exact_profiles": 4, "wildcard_entries": 16, "hash_seeds": 2}


def _run(geometry, chunk_bits=9, **params):
    run_cocotb(Classifier(Geometry(**geometry), chunk_bits=chunk_bits), TB, name="classifier",
               testcase="lookups", params={"geometry": geometry, **params})


def test_lookups():
    _run(SMALL, frames=300, rules=60, idle=0.2, backpressure=0.3, reload=True)


@pytest.mark.parametrize("chunk_bits", [4, 5])
def test_lookups_other_chunking(chunk_bits):
    """The wildcard CAM cut into 4-bit chunks (the ECP5 boards' LUT RAM CAM) or 5-bit ones
    (the last one part padding) finds the same winners, and its entries, rewritten by the
    reload, read back as written. With 1,029 rule indices the action and counter tables are
    stored as columns of 18 bits (1,024 words each) and a 5-word rest; actions, counters and
    hits are the same."""
    _run(dict(SMALL, exact_entries=1024, wildcard_entries=5), chunk_bits=chunk_bits,
         frames=150, rules=40, idle=0.2, backpressure=0.3, reload=True)


@pytest.mark.parametrize("depth,columns", [(2080, (2048, 9)), (1029, (1024, 18)),
                                           (4096, (4096, 4)), (300, (300, 179))])
def test_columns_keep_every_word(depth, columns):
    """The action/counter table storage (``_Columns``): a depth past a power of two is that
    power of two in block-RAM-wide columns and the rest in a memory of its own (2,080 rules:
    9-bit columns of 2,048 words, not 4-bit ones of 4,096). Random words written all over the
    depth, the rest's included, read back as written, and a read with ``r_en`` low holds."""
    layout = data.StructLayout({"a": 100, "b": 79})   # an action row's 179 bits
    m = Module()
    table = _Columns(m, "t", layout, depth)
    words, width = columns
    assert {mem.depth for mem in table.columns} == {words}
    assert max(Shape.cast(mem.shape).width for mem in table.columns) == width
    assert sum(Shape.cast(mem.shape).width for mem in table.columns) == layout.size
    if depth > words:
        assert [mem.depth for mem in table.rest.columns] == [depth - words]
    else:
        assert table.rest is None

    rng = random.Random(depth)
    addrs = sorted({0, depth - 1, words - 1, min(words, depth - 1),
                    *rng.sample(range(depth), 40)})
    model = {a: rng.getrandbits(layout.size) for a in addrs}
    order = rng.sample(addrs, len(addrs))   # writes to the rest and below it interleaved
    read = []

    async def bench(ctx):
        ctx.set(table.w_en, 1)
        for a in order:
            ctx.set(table.w_addr, a)
            ctx.set(table.w_data.as_value(), model[a])
            await ctx.tick()
        ctx.set(table.w_en, 0)
        ctx.set(table.r_en, 1)
        for a in reversed(addrs):
            ctx.set(table.r_addr, a)
            await ctx.tick()
            read.append((a, ctx.get(table.r_data.as_value())))
        ctx.set(table.r_en, 0)
        ctx.set(table.r_addr, depth - 1)    # in the rest, if there is one
        await ctx.tick()
        read.append((addrs[0], ctx.get(table.r_data.as_value())))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert read == [(a, model[a]) for a in reversed(addrs)] + [(addrs[0], model[addrs[0]])]


@pytest.mark.slow
def test_lookups_4096_rules():
    geometry = {"exact_entries": 8192, "exact_profiles": 4, "wildcard_entries": 32,
                "hash_seeds": 2}
    _run(geometry, frames=1000, rules=4096, idle=0.1, backpressure=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("profiles", [1, 8])
def test_lookups_profiles(profiles):
    geometry = dict(SMALL, exact_profiles=profiles)
    _run(geometry, frames=400, rules=120, idle=0.3, backpressure=0.4, reload=True)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_geometry():
    with pytest.raises(TypeError):
        Classifier({"exact_entries": 64})
    with pytest.raises(ValueError):
        Classifier(Geometry(exact_entries=4 * 65536))
    for chunk_bits in (0, 11, 4.5):
        with pytest.raises(ValueError, match="chunk_bits"):
            Classifier(Geometry(), chunk_bits=chunk_bits)


def test_table_writes_only_touch_what_changes():
    rs = parse_rules("priority=10,in_port=host,actions=output:net\n"
                     "priority=5,in_port=net,actions=output:host\n"
                     "priority=1,dl_type=0x0806,actions=controller\n")
    image = compile_tables(rs, Geometry(exact_entries=64, exact_profiles=1))
    writes = rm.table_writes(image)
    assert writes[0] == (rm.CONFIG, rm.config_word(0, image.seed))
    assert writes[-1] == (rm.CONFIG, rm.config_word(1, image.seed))
    commands = [w for a, w in writes if a == rm.COMMAND]
    tables = [w >> 24 & 15 for w in commands]
    # One profile, one wildcard entry, two exact rows at most, three actions.
    assert tables.count(rm.TABLE_PROFILE) == 1
    assert tables.count(rm.TABLE_WILDCARD) == 1
    assert 1 <= tables.count(rm.TABLE_EXACT) <= 2
    assert tables.count(rm.TABLE_ACTION) == 3
    assert all(rm.STAGING <= a < rm.STAGING + rm.STAGING_WORDS
               for a, _ in writes if a not in (rm.CONFIG, rm.COMMAND))
    full = rm.table_writes(image, fresh=False)
    rows = [w for a, w in full if a == rm.COMMAND and w >> 24 & 15 == rm.TABLE_EXACT]
    assert len(rows) == image.geometry.buckets * 2


def test_action_entries():
    rs = parse_rules("priority=3,actions=controller\npriority=2,actions=drop\n"
                     "priority=1,actions=output:host,controller\n")
    image = compile_tables(rs)
    fields = [rm.action_fields(a) for a in image.actions]
    from openvtep.hdl.headers import EditCommand, unpack
    cmds = [unpack(EditCommand, f["cmd"]) for f in fields]
    assert (cmds[0]["drop"], cmds[0]["port"], fields[0]["punt"]) == (0, 2, 0)
    assert (cmds[1]["drop"], fields[1]["punt"]) == (1, 0)
    assert (cmds[2]["drop"], cmds[2]["port"], fields[2]["punt"]) == (0, 0, 1)
