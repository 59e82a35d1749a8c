"""Formal contract of the flow classifier (hdl/classifier.py, Classifier), tiny geometry.

Geometry: 4 exact slots (2 banks of one 2-slot bucket), 1 or 2 exact profiles, 2 wildcard
entries, one hash seed, 16-bit rule indices.

- Handshake (k-induction, any run length, any records and any bus traffic): the verdict
  offered on ``o`` is neither withdrawn nor changed until taken.
- Priority (bounded, ``LOOKUP_DEPTH`` cycles from reset, any stalls): with *any* table
  contents (both bank rows written with ``AnyConst`` rows as the run starts, through an extra
  memory write port; the wildcard CAM's chunk memories likewise, every word, with what
  ``AnyConst`` values and masks make of them; the wildcard positions' valid bits and indices,
  profile masks and ``profile_count`` starting from any value) and the register port idle,
  every verdict for a record the parser did not drop says ``hit`` exactly when some entry
  matches the record's flow key, and then names the smallest rule index among all matching
  entries, exact and wildcard alike
  (openvtep.tables: a rule's index is its OpenFlow rank). The matching is computed here,
  independently of the classifier's pipeline: an exact entry matches when it is valid, its
  profile is active (below ``profile_count``, at most the geometry's) and it equals the key
  masked by its profile's mask; a wildcard entry when it is valid and ``key & mask ==
  value``. A miss is a ``table_miss`` drop; a dropped record gets no lookup and keeps its
  reason. The record checked is the one picked by ``AnyConst`` (its place in the sequence and
  its contents), which stands for every record; it leaves, passed through unchanged, as the
  same-numbered verdict, so verdicts keep record order.

The bound: ``LOOKUP_DEPTH`` = 8 cycles from reset (the first cycle loads the banks). With one
profile that is two records back to back (different keys, both checked, the cover shows the
second one hitting); with two profiles, the first record's verdict, accumulated over both
lookups (slow: 4 minutes; each further cycle multiplies the solver time by 3 to 5). To keep
the unrolling small, records are the picked one or one other arbitrary record, fixed for the
run, in any order; and the priority runs leave the handshake to its own proof (``o.ready`` is
free there, nothing asserted about it).

The wildcard CAM is cut into 1-bit chunks here (292 memories of 2 words; the boards use 9
bits): its lookup is what is proven; that a wildcard write fills the chunk memories so is
shown by the simulation tests (``tests/hdl/test_classifier.py``, two chunk sizes).

The one assumption on the tables is the host compiler's (openvtep.regmap ``TABLE_WILDCARD``):
valid wildcard entries are loaded in ascending rule index, as the hardware takes the first
matching position. The flow key is the classifier's own :func:`flow_key` (the layout of
openvtep.tables.FLOW_KEY, checked against the host by the simulation tests).
"""

from unittest import mock

import pytest
from amaranth.asserts import AnyConst, AnySeq, Initial
from amaranth.hdl import Assert, Assume, Cat, Cover, Elaboratable, Mux, Signal
from amaranth.lib import data

from openvtep import regmap as rm
from openvtep.hdl import classifier as classifier_module
from openvtep.hdl.classifier import IN_FLIGHT, Classifier, flow_key
from openvtep.hdl.headers import ParsedHeaders
from openvtep.headers import DropReason
from openvtep.sim import formal
from openvtep.tables import BANKS, KEY_BITS, SLOTS, Geometry

from .contracts import (
    ACCOUNT_BITS,
    Withdrawing,
    contract_module,
    internals,
    stream_sink,
    stream_source,
)


def geometry(profiles):
    return Geometry(exact_entries=BANKS * SLOTS, exact_profiles=profiles, wildcard_entries=2,
                    hash_seeds=1)


GEOMETRY = geometry(2)
CHUNK_BITS = 1      # the priority proof's wildcard CAM chunks
PROFILES = [1, 2]
LOOKUP_DEPTH = 8
MAX_STALL = 2
HANDSHAKE_DEPTH = 8


def _first_min(candidates):
    """(hit, index) of the smallest index among (hit, index) pairs: the contract's own."""
    best_hit, best_index = candidates[0]
    for hit, index in candidates[1:]:
        better = hit & (~best_hit | (index < best_index))
        best_hit, best_index = best_hit | hit, Mux(better, index, best_index)
    return best_hit, best_index


class ClassifierContract(Elaboratable):
    def __init__(self, dut, *, priority=True):
        self.dut = dut
        self.priority = priority

    def elaborate(self, platform):
        m = contract_module()
        dut = self.dut
        if not self.priority:
            stream_source(m, dut.i, "i")
            m.submodules.dut = dut
            for name in ("addr", "w_en", "w_data", "valid"):
                m.d.comb += getattr(dut.bus, name).eq(AnySeq(len(getattr(dut.bus, name))))
            took_out, out_stalled = stream_sink(m, dut.o, "o")
            m.d.comb += Cover(out_stalled & took_out)
            return m

        # Records: each one either the picked record or another arbitrary one, fixed for the
        # run (two keys that may differ in any bit keep the solver's unrolling small, and
        # still put different lookups back to back).
        size = data.Layout.cast(ParsedHeaders).size
        picked = data.View(ParsedHeaders, AnyConst(size))
        took_in = stream_source(m, dut.i, "i",
                                payload=Mux(AnySeq(1), picked.as_value(), AnyConst(size)))
        geo = dut.geometry
        tables = ([f"wild_index{k}" for k in range(geo.wildcard_entries)] + ["wild_valid"]
                  + [f"profile_mask{p}" for p in range(geo.exact_profiles)] + ["profile_count"])
        module, regs = internals(m, dut, platform, tables)
        formal.free_init(*regs.values())
        # The handshake is proven on its own (above); here o just takes verdicts when it likes.
        took_out, out_stalled = Signal(), Signal()
        m.d.comb += [dut.o.ready.eq(AnySeq(1)), took_out.eq(dut.o.valid & dut.o.ready)]
        m.d.sync += out_stalled.eq(dut.o.valid & ~dut.o.ready)
        m.d.comb += dut.bus.valid.eq(0)
        m.d.comb += Assume(~Initial() | ~dut.i.valid)   # the first cycle loads the banks

        entry_layout = data.StructLayout(dict(rm.EXACT_ENTRY))
        row_layout = data.ArrayLayout(entry_layout, SLOTS)
        wild_layout = data.StructLayout(dict(rm.WILDCARD_ENTRY))
        exact = []
        for bank in range(BANKS):
            row = data.View(row_layout, AnyConst(row_layout.size))
            port = module.submodules[f"bank{bank}"].write_port()
            m.d.comb += [port.addr.eq(0), port.data.eq(row), port.en.eq(Initial())]
            exact.extend(row[slot] for slot in range(SLOTS))
        wildcard = [data.View(wild_layout, Cat(regs["wild_valid"][k], regs[f"wild_index{k}"],
                                               AnyConst(2 * KEY_BITS)))
                    for k in range(geo.wildcard_entries)]
        cbits = dut.chunk_bits
        for j in range(-(-KEY_BITS // cbits)):
            memory = module.submodules[f"wild_chunk{j}"]
            words = [(entry.value[j * cbits:(j + 1) * cbits],
                      entry.mask[j * cbits:(j + 1) * cbits]) for entry in wildcard]
            for address in range(1 << cbits):
                port = memory.write_port()
                m.d.comb += [port.addr.eq(address), port.en.eq(Initial()),
                             port.data.eq(Cat(((address & mask) == value)
                                              for value, mask in words))]
        masks = [regs[f"profile_mask{p}"] for p in range(geo.exact_profiles)]
        count = regs["profile_count"]
        for k, first in enumerate(wildcard):
            for second in wildcard[k + 1:]:
                m.d.comb += Assume(~(first.valid & second.valid) | (first.index < second.index))

        # --- The record picked by AnyConst: its verdict leaves in its turn, and is right. -----
        # The picked record and the tables are constant, so its expected verdict is too.
        n_in = Signal(ACCOUNT_BITS)
        n_out = Signal(ACCOUNT_BITS)
        m.d.sync += [n_in.eq(n_in + took_in), n_out.eq(n_out + took_out)]
        m.d.comb += Assert((n_in - n_out)[:ACCOUNT_BITS] <= IN_FLIGHT)
        pick = AnyConst(ACCOUNT_BITS)
        with m.If(took_in & (n_in == pick)):
            m.d.comb += Assume(dut.i.p.as_value() == picked.as_value())

        key = Signal(len(flow_key(picked)))
        m.d.comb += key.eq(flow_key(picked))
        active = Mux(count > geo.exact_profiles, geo.exact_profiles, count)
        hits = []
        for entry in exact:
            mask = masks[0]
            for p in range(1, len(masks)):
                mask = Mux(entry.profile == p, masks[p], mask)
            hits.append((entry.valid & (entry.profile < active) & ((key & mask) == entry.key),
                         entry.index))
        for entry in wildcard:
            hits.append((entry.valid & ((key & entry.mask) == entry.value), entry.index))
        hit, index = Signal(), Signal(rm.INDEX_BITS)
        m.d.comb += [hit.eq(_first_min(hits)[0]), index.eq(_first_min(hits)[1])]

        verdict = dut.o.p
        rec = verdict.hdr
        mine = Signal()
        m.d.comb += mine.eq(dut.o.valid & (n_out == pick))
        with m.If(mine):
            m.d.comb += Assert(rec.as_value() == picked.as_value())
            with m.If(rec.drop):
                m.d.comb += [Assert(~verdict.hit), Assert(verdict.cmd.drop),
                             Assert(verdict.cmd.reason == rec.reason)]
            with m.Else():
                m.d.comb += Assert(verdict.hit == hit)
                with m.If(hit):
                    m.d.comb += Assert(verdict.rule == index)
                with m.Else():
                    m.d.comb += [Assert(verdict.cmd.drop),
                                 Assert(verdict.cmd.reason == DropReason.TABLE_MISS)]

        # --- Reachability: each kind of winner. -----------------------------------------------
        exact_hits = [h for h, _ in hits[:len(exact)]]
        wild_hits = [h for h, _ in hits[len(exact):]]
        any_exact = Signal()
        any_wild = Signal()
        m.d.comb += [any_exact.eq(sum(exact_hits) != 0), any_wild.eq(sum(wild_hits) != 0)]
        winner_exact = Signal()
        winner_wild = Signal()
        m.d.comb += [
            winner_exact.eq(sum((h & (i == index)) for h, i in hits[:len(exact)]) != 0),
            winner_wild.eq(sum((h & (i == index)) for h, i in hits[len(exact):]) != 0),
        ]
        out = took_out & mine & ~rec.drop
        first = Signal(len(rec.as_value()))   # the first verdict's record
        with m.If(took_out & (n_out == 0)):
            m.d.sync += first.eq(rec.as_value())
        if geo.exact_profiles == 1:  # two different records back to back, the second a hit
            m.d.comb += Cover(out & (n_out == 1) & (rec.as_value() != first) & verdict.hit)
        m.d.comb += [
            Cover(out & any_wild & winner_exact & ~winner_wild),          # exact beats wildcard
            Cover(out & any_exact & winner_wild & ~winner_exact),         # wildcard beats exact
            Cover(out & (sum(exact_hits) >= 2) & (active == geo.exact_profiles)),
            Cover(out & ~hit),                                            # a miss
            Cover(out_stalled & took_out & verdict.hit),
        ]
        return m


# --- Deliberately broken classifiers: the same contract must catch them. ---------------------


def _first_in_slot_order(candidates):
    """Broken: the first hit in slot order, whatever its rule index."""
    best_hit, best_index = candidates[0]
    for hit, index in candidates[1:]:
        best_hit, best_index = best_hit | hit, Mux(best_hit, best_index, index)
    return best_hit, best_index


class SlotOrderClassifier(Classifier):
    """Broken: among hits the first slot (bank 0 slot 0 first, then the wildcard result)
    wins instead of the smallest rule index."""

    def elaborate(self, platform):
        with mock.patch.object(classifier_module, "_first_hit", _first_in_slot_order):
            return super().elaborate(platform)


def test_classifier_handshake_proof():
    formal.check(ClassifierContract(Classifier(GEOMETRY), priority=False),
                 "classifier_handshake", mode="prove", depth=HANDSHAKE_DEPTH)


def test_classifier_handshake_broken():
    broken = Withdrawing(Classifier(GEOMETRY), lambda wrapper: wrapper.i.valid)
    formal.check_fails(ClassifierContract(broken, priority=False),
                       "classifier_handshake_withdrawing", mode="prove", depth=HANDSHAKE_DEPTH)


# Two profiles: the verdict of the first record, accumulated over both lookups (4 minutes).
@pytest.mark.parametrize("profiles", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_classifier_priority_bmc(profiles):
    formal.check(ClassifierContract(Classifier(geometry(profiles), chunk_bits=CHUNK_BITS)),
                 f"classifier_priority_p{profiles}", mode="bmc", depth=LOOKUP_DEPTH,
                 map_memories=True)


@pytest.mark.parametrize("profiles", PROFILES)
def test_classifier_priority_cover(profiles):
    formal.check(ClassifierContract(Classifier(geometry(profiles), chunk_bits=CHUNK_BITS)),
                 f"classifier_priority_p{profiles}", mode="cover", depth=LOOKUP_DEPTH,
                 map_memories=True)


@pytest.mark.parametrize("profiles", PROFILES)
def test_classifier_priority_broken(profiles):
    formal.check_fails(ClassifierContract(SlotOrderClassifier(geometry(profiles),
                                                         chunk_bits=CHUNK_BITS)),
                       f"classifier_priority_slot_order_p{profiles}", mode="bmc",
                       depth=LOOKUP_DEPTH, map_memories=True)
