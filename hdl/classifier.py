"""The flow classifier: exact-match cuckoo table, wildcard table, actions and rule counters.

Looks each frame's flow key up in the tables that :func:`openvtep.tables.compile_tables`
places a RuleSet in (the host's :meth:`openvtep.tables.TableImage.lookup` is the software model
of this block) and turns the winner into the frame's :class:`EditCommand`
(docs/semantics.md step 4; OpenFlow 1.3 priorities, the winner being the smallest rule index).
"""

import functools
import operator

from amaranth.hdl import Array, Cat, Const, Module, Mux, Shape, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import regmap as rm
from ..headers import NO_VLAN, DropReason
from ..tables import BANKS, FLOW_KEY, KEY_BITS, PROFILE_BITS, SLOTS, Geometry, hash_masks
from .bus import Signature as BusSignature
from .headers import EditCommand, ParsedHeaders

__all__ = ["Classifier", "Verdict", "flow_key"]


class Verdict(data.Struct):
    """The classifier's per-frame output: the parser's record ``hdr`` passed through, the
    editor's command ``cmd``, the winning ``rule`` index (when ``hit``), and ``punt`` (the rule
    also sends the frame, as it arrived, to the controller)."""
    hdr: ParsedHeaders
    cmd: EditCommand
    rule: unsigned(rm.INDEX_BITS)
    hit: unsigned(1)
    punt: unsigned(1)


# An ECP5 block RAM (DP16KD) holds 18 Kbit as 512 x 36, 1024 x 18, 2048 x 9, 4096 x 4 ... bits.
BLOCK_RAM_BITS = 18 * 1024
BLOCK_RAM_WIDTHS = (36, 18, 9, 4, 2, 1)
# Row bits compared per registered match bit: a block RAM's widest output, so each one compares
# what one block RAM of a bank reads.
ROW_GROUP = BLOCK_RAM_WIDTHS[0]
# Hash input bits per registered partial parity: a bucket index bit selects 123 to 171 of the
# 295 key and profile bits, so stage A XORs at most 4 parts (one LUT4) before the bank's row.
HASH_PART = 48
# Key bits per wildcard CAM chunk memory by default: 512 words, an ECP5 or iCE40 block RAM's
# depth at 36 or 8 bits (``Classifier(chunk_bits=)``).
CAM_CHUNK_BITS = 9
# Wildcard CAM chunk words ANDed per registered partial match: one LUT4 per position.
WILD_GROUP = 4
# Frames from their record's acceptance to their verdict taken, at most: the depth of the
# records FIFO and of the verdicts FIFO (5 in the lookup stages at most, and some waiting).
IN_FLIGHT = 8


class _Columns:
    """A ``depth`` x ``shape`` memory with one read and one write port; deeper than 512 words,
    stored as columns of as many bits as one block RAM holds at that depth (9 at 2048 words),
    each its own :class:`Memory`. Yosys builds a deep, wide memory from 512 x 36 blocks and a
    mux over their outputs (4 ways for 2048 actions of 179 bits: 716 wires converging on one
    spot); columns read each block RAM's output straight out. A depth just past a power of two
    (2,080 rules: 2,048 exact and 32 wildcard) is not rounded up (to 4,096 words of 4-bit
    columns, twice the blocks): the power of two is stored in columns, the rest in a memory
    of its own, and a 2-way mux picks the read. The rest is asked to be block RAM
    (``ram_style``; the memories get ``attrs``): Yosys would build its few words from LUT RAM,
    every cell fed the write data. Ports: ``r_addr``, ``r_en``, ``r_data`` (a view of
    ``shape``, the cycle after), ``w_addr``, ``w_data``, ``w_en``; ``columns`` are the
    memories, ``rest`` the :class:`_Columns` past the power of two (or None)."""

    def __init__(self, m, name, shape, depth, *, attrs=None):
        layout = data.Layout.cast(shape)
        self.r_addr = Signal(range(depth), name=f"{name}_r_addr")
        self.w_addr = Signal(range(depth), name=f"{name}_w_addr")
        self.r_en, self.w_en = Signal(name=f"{name}_r_en"), Signal(name=f"{name}_w_en")
        self.w_data = Signal(shape, name=f"{name}_w_data")
        self.columns, self.rest = [], None
        main = 1 << (depth.bit_length() - 1)    # the largest power of two up to depth
        if depth == main or main * BLOCK_RAM_WIDTHS[0] <= BLOCK_RAM_BITS:
            self.r_data = data.View(layout, self._columns(m, name, layout.size, depth, attrs))
            return
        bits = main.bit_length() - 1
        self.rest = rest = _Columns(m, f"{name}_rest", shape, depth - main,
                                    attrs={"ram_style": "block"})
        in_rest = Signal(name=f"{name}_r_rest")   # the read's word is in ``rest``
        below = self._columns(m, name, layout.size, main, attrs, addr_bits=bits,
                              w_en=self.w_en & (self.w_addr < main))
        m.d.comb += [rest.r_addr.eq(self.r_addr - main), rest.r_en.eq(self.r_en),
                     rest.w_addr.eq(self.w_addr - main), rest.w_data.eq(self.w_data),
                     rest.w_en.eq(self.w_en & (self.w_addr >= main))]
        with m.If(self.r_en):
            m.d.sync += in_rest.eq(self.r_addr >= main)
        self.r_data = data.View(layout, Mux(in_rest, rest.r_data.as_value(), below))

    def _columns(self, m, name, size, depth, attrs=None, *, addr_bits=None, w_en=None):
        """The read data of ``depth`` words stored in columns (memories with ``attrs``),
        addressed by the ports' low ``addr_bits`` bits (all by default), written when ``w_en``
        (the port's by default)."""
        words = 1 << (depth - 1).bit_length()
        if words * BLOCK_RAM_WIDTHS[0] <= BLOCK_RAM_BITS:
            column = size      # 512 words or fewer: the widest blocks, no mux to avoid
        else:
            column = next((w for w in BLOCK_RAM_WIDTHS if w * words <= BLOCK_RAM_BITS), 1)
        r_addr, w_addr = self.r_addr, self.w_addr
        if addr_bits is not None:
            r_addr, w_addr = r_addr[:addr_bits], w_addr[:addr_bits]
        starts = range(0, size, column)
        read = []
        for k, start in enumerate(starts):
            width = min(column, size - start)
            mem = Memory(shape=width, depth=depth, init=[], attrs=attrs)
            m.submodules[name if len(starts) == 1 else f"{name}{k}"] = mem
            self.columns.append(mem)
            rp, wp = mem.read_port(), mem.write_port()
            m.d.comb += [rp.addr.eq(r_addr), rp.en.eq(self.r_en),
                         wp.addr.eq(w_addr), wp.en.eq(self.w_en if w_en is None else w_en),
                         wp.data.eq(Value.cast(self.w_data)[start:start + width])]
            read.append(rp.data)
        return Cat(*read)


def _fit(value, bits):
    value = Value.cast(value)
    if len(value) >= bits:
        return value[:bits]
    return Cat(value, Const(0, bits - len(value)))


def flow_key(rec):
    """The flow key (:data:`openvtep.tables.FLOW_KEY` layout) of a ParsedHeaders view."""
    fields = {
        "in_port": rec.port, "tun_id": rec.tun_id, "tun_src": rec.tun_src,
        "dl_dst": rec.dl_dst, "dl_src": rec.dl_src,
        "dl_vlan": Mux(rec.vlan_valid, rec.tci[:12], NO_VLAN), "dl_type": rec.dl_type,
        "nw_valid": rec.nw_valid, "nw_src": rec.nw_src, "nw_dst": rec.nw_dst,
        "nw_proto": rec.nw_proto, "tp_valid": rec.tp_valid, "tp_src": rec.tp_src,
        "tp_dst": rec.tp_dst,
    }
    return Cat(*(_fit(fields[name], bits) for name, bits in FLOW_KEY))


def _struct(layout):
    return data.StructLayout(dict(layout))


def _parity_parts(word, mask, size):
    """The parities of ``word & mask``, for a constant ``mask``, over consecutive groups of
    ``size`` of the bits it selects (at least one group; the XOR of the parts is the parity).
    Each is a tree of 8-input XORs: logically the same as a flat ``.xor()``, but Icarus
    re-evaluates a flat reduction over the ~150 scattered bits Yosys leaves of it once per bit,
    which made simulation 100 times slower."""
    bits = [word[i] for i in range(len(word)) if mask >> i & 1]
    parts = []
    for start in range(0, len(bits), size):
        tree = bits[start:start + size]
        while len(tree) > 1:
            tree = [Cat(*tree[k:k + 8]).xor() for k in range(0, len(tree), 8)]
        parts.append(tree[0])
    return parts or [Const(0, 1)]


def _first_position(candidates):
    """(hit, index) of the first hit among ``(hit, index)`` pairs, by position: a tree of
    ``log2(n)`` levels (a chain of ``n`` muxes would be the longest path of the lookup)."""
    while len(candidates) > 1:
        pairs = zip(candidates[0::2], candidates[1::2])
        merged = [(h0 | h1, Mux(h0, i0, i1)) for (h0, i0), (h1, i1) in pairs]
        candidates = merged + candidates[len(merged) * 2:]
    return candidates[0]


def _first_hit(candidates):
    """(hit, index) of the smallest index among ``(hit, index)`` pairs."""
    best_hit, best_index = candidates[0]
    for hit, index in candidates[1:]:
        take = hit & (~best_hit | (index < best_index))
        best_hit, best_index = best_hit | hit, Mux(take, index, best_index)
    return best_hit, best_index


class Classifier(wiring.Component):
    """Flow table lookup for every frame record.

    For each :class:`ParsedHeaders` record on ``i`` (in frame order), one :class:`Verdict`
    leaves on ``o``, in the same order. A frame the parser dropped is passed on without a
    lookup (the editor drops it under the parser's reason) and is not counted.

    Lookup: the flow key is looked up once per active exact profile (``CONFIG.profile_count``,
    at most ``geometry.exact_profiles``): masked by the profile's mask, hashed with the H3 masks
    of :func:`openvtep.tables.hash_masks` of the selected seed for both banks, both buckets read
    from block RAM and all ``BANKS * SLOTS`` slots compared (in pieces of ``ROW_GROUP`` row
    bits, one block RAM's output each, registered: only match bits travel from the block RAMs
    to the slot priority logic). The wildcard table is looked up in parallel with the first
    lookup, the first matching position winning. It is a ternary CAM in block RAM: the key is
    cut into chunks of ``chunk_bits`` bits, and chunk ``j``'s memory holds, at each of its
    ``2**chunk_bits`` addresses ``a``, one bit per position: whether ``a`` matches that
    position's value and mask over the chunk. A position matches a key when
    it is valid and every chunk's word at the key's chunk has its bit set (an AND of
    ``ceil(KEY_BITS / chunk_bits)`` words; 33 block RAMs of 512 x 36 hold up to 36 positions
    at the default 9 bits, where registers took some 1,200 LUTs per position). The
    frame's winner is the smallest rule index among all hits; none is a table miss
    (``DropReason.TABLE_MISS``). Its action (block RAM, indexed by rule index) is the command;
    its 64-bit packet and byte counters (block RAM) are incremented by read-modify-write, with
    back-to-back updates of one rule forwarded. Bytes count the matched frame:
    ``length - strip`` (the inner frame of a decapsulated frame). No read of any of these
    memories that meets a write to the same word in the same cycle is used (the counters read
    beside the previous frame's write are replaced by the forwarded sum), so the board build
    lets such reads return anything (``openvtep.boards.build.RELAXED_COLLISIONS``).

    Throughput: a frame takes ``max(1, active profiles)`` cycles (a dropped frame 1): with 4
    profiles, one frame every 4 cycles, so a 64-byte frame at W = 8 (8 cycles) keeps line rate.

    Latency: from a record accepted on ``i`` to its verdict offered on ``o``: ``lookups + 4``
    cycles.

    Backpressure: the lookup stages never wait (no enable fans out to their registers and
    block RAMs). A frame is accepted only while fewer than ``IN_FLIGHT`` frames are between
    acceptance and their verdict taken; its record waits in a FIFO of that depth beside the
    stages (LUT RAM, not 5 x 321 flip-flops), and its verdict, when ``o`` does not take it as
    it is looked up, in a second one, so neither can overflow. The verdict's ``hdr`` is the
    records FIFO's head.

    Tables and counters are read and written through ``bus`` (:class:`openvtep.hdl.bus.Signature`)
    with the address map of :mod:`openvtep.regmap` (``CLASSIFIER`` range). Every request is
    answered the next cycle, except a ``COMMAND`` write: it holds new frames back, waits until
    no lookup is in flight, runs, and is answered when done (3 or more cycles), so frames see
    each entry wholly before or after a write. A wildcard write stores the entry as written in
    a memory of its own, for reading back, a staging word per cycle (19 cycles more; a read
    loads it back as slowly), then rewrites its position's bit at every address of every chunk
    memory, read-modify-write (``2**chunk_bits + 1`` cycles more). Unknown addresses, and
    writes to read-only words, answer ``r_err``. After reset every table is empty (the
    wildcard positions' valid bits are registers) and ``profile_count`` is 0: every frame
    misses until tables are loaded.

    Parameters
    ----------
    geometry : openvtep.tables.Geometry
        Table sizes (the same the host compiler places rules for); default ``Geometry()``.
    chunk_bits : int
        Key bits per wildcard CAM memory (1 to 10): its depth is ``2**chunk_bits``. The default
        9 fills an ECP5 block RAM (512 x 36) or an iCE40's (512 x 8). At 4 each chunk is a
        16-word LUT RAM on ECP5 (73 memories of one ``TRELLIS_DPR16X4``, 16 x 4, per 4
        positions) and a wildcard write sweeps 17 addresses, not 513: the better fit for few
        positions (the boards choose, ``openvtep.boards.designs.cam_chunk_bits``).
    """

    def __init__(self, geometry=None, *, chunk_bits=CAM_CHUNK_BITS):
        geometry = Geometry() if geometry is None else geometry
        if not isinstance(geometry, Geometry):
            raise TypeError(f"geometry must be an openvtep.tables.Geometry, not {geometry!r}")
        if geometry.rules > 1 << rm.INDEX_BITS:
            raise ValueError(f"at most {1 << rm.INDEX_BITS} rules, geometry has "
                             f"{geometry.rules}")
        if geometry.wildcard_entries > 1 << 16 or geometry.hash_seeds > 16:
            raise ValueError("the register map holds up to 65536 wildcard entries and 16 seeds")
        if not isinstance(chunk_bits, int) or not 1 <= chunk_bits <= 10:
            raise ValueError(f"chunk_bits must be an integer 1..10, not {chunk_bits!r}")
        self.geometry = geometry
        self.chunk_bits = chunk_bits
        super().__init__({
            "i": In(stream.Signature(ParsedHeaders)),
            "o": Out(stream.Signature(Verdict)),
            "bus": In(BusSignature(rm.ADDR_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        geo = self.geometry
        n_profiles, ibits = geo.exact_profiles, geo.index_bits
        entry_layout = _struct(rm.EXACT_ENTRY)
        row_layout = data.ArrayLayout(entry_layout, SLOTS)
        wild_layout = _struct(rm.WILDCARD_ENTRY)
        action_layout = data.StructLayout({"cmd": EditCommand, "punt": 1})
        assert action_layout.size == rm.layout_bits(rm.action_layout())
        counter_layout = _struct(rm.COUNTER_ENTRY)
        index_shape = unsigned(rm.INDEX_BITS)

        # --- Registers and memories. --------------------------------------------------------
        profile_count = Signal(4)
        seed = Signal(4)
        masks = [Signal(KEY_BITS, name=f"profile_mask{p}") for p in range(n_profiles)]
        entry_bits = max(row_layout.size, wild_layout.size, KEY_BITS, action_layout.size,
                         counter_layout.size)
        staging = [Signal(32, name=f"staging{k}") for k in range(-(-entry_bits // 32))]
        assert len(staging) <= rm.STAGING_WORDS

        bank_ports = []
        for bank in range(BANKS):
            mem = Memory(shape=row_layout, depth=geo.buckets, init=[])
            m.submodules[f"bank{bank}"] = mem
            bank_ports.append((mem.read_port(), mem.write_port()))
        actions = _Columns(m, "actions", action_layout, geo.rules)
        counters = _Columns(m, "counters", counter_layout, geo.rules)

        # The wildcard CAM: one memory per key chunk (see the class docstring), each position's
        # validity and rule index in registers (all are needed at once), and the entries as
        # written, for reading back.
        n_wild, cbits = geo.wildcard_entries, self.chunk_bits
        chunk_ports = []
        for j in range(-(-KEY_BITS // cbits)):
            mem = Memory(shape=n_wild, depth=1 << cbits, init=[])
            m.submodules[f"wild_chunk{j}"] = mem
            chunk_ports.append((mem.read_port(), mem.write_port()))
        wild_valid = Signal(n_wild)
        wild_index = [Signal(index_shape, name=f"wild_index{k}") for k in range(n_wild)]
        # Read only by the register port, one staging word at a time: position ``k``'s word
        # ``w`` at ``k << lane_bits | w``, in block RAM (two for 32 entries). As 601-bit words it
        # took 17 block RAMs, and its data pins were wired to every staging bit.
        wild_words = -(-wild_layout.size // 32)
        lane_bits = (wild_words - 1).bit_length()
        m.submodules.wild_entries = wild_entries = Memory(
            shape=32, depth=n_wild << lane_bits, init=[], attrs={"ram_style": "block"})
        wild_rp, wild_wp = wild_entries.read_port(), wild_entries.write_port()
        lane = Signal(range(wild_words + 1))   # the staging word the register port moves
        sweep = Signal(cbits + 1)   # a wildcard write's read address; it writes the one before
        sweeping = Signal()

        cmd_index = Signal(24)  # the register port's table command: entry index
        bus_bank = cmd_index[rm.BANK_SHIFT:rm.BANK_SHIFT + max(1, (BANKS - 1).bit_length())]
        pause = Signal()      # the register port holds new frames back
        bus_exec = Signal()   # the register port owns the memory ports this cycle
        idle = Signal()       # no lookup in flight

        # --- Stage 0: issue one lookup per active profile, while the records FIFO has room. --
        # The records wait in a FIFO (LUT RAM) beside the lookup stages, not in their registers,
        # from acceptance until their verdict is taken.
        m.submodules.records = records = SyncFIFO(width=Shape.cast(ParsedHeaders).width,
                                                  depth=IN_FLIGHT)

        rec_in = self.i.p
        key_in = flow_key(rec_in)
        active = Signal(range(n_profiles + 1))
        m.d.comb += active.eq(Mux(profile_count > n_profiles, n_profiles, profile_count))
        p = Signal(range(max(n_profiles, 2)))
        lookups = Signal(range(n_profiles + 1))
        m.d.comb += lookups.eq(Mux(rec_in.drop | (active == 0), 1, active))
        last = Signal()
        m.d.comb += last.eq(p + 1 >= lookups)
        issue = Signal()
        m.d.comb += [
            issue.eq(self.i.valid & ~(pause & (p == 0)) & records.w_rdy),
            self.i.ready.eq(issue & last),
            records.w_data.eq(rec_in),
            records.w_en.eq(self.i.ready),
        ]
        with m.If(issue):
            m.d.sync += p.eq(Mux(last, 0, p + 1))

        def stage(name, **fields):
            return {k: Signal(v, name=f"{name}_{k}") for k, v in fields.items()}

        # The stage registers load every cycle (``valid`` says whether they hold a lookup);
        # ``amount`` is what the frame adds to its rule's byte counter.
        amount = len(rec_in.length)
        common = {"valid": 1, "first": 1, "last": 1, "amount": amount}
        masked = Signal(KEY_BITS)
        m.d.comb += masked.eq(key_in & Array(masks)[p])
        sa = stage("sa", key=KEY_BITS, ukey=KEY_BITS, p=PROFILE_BITS, on=1, w_on=1, **common)
        m.d.sync += [
            sa["valid"].eq(issue),
            sa["key"].eq(masked),
            sa["p"].eq(p),
            sa["on"].eq(~rec_in.drop & (p < active)),
            sa["first"].eq(p == 0),
            sa["last"].eq(last),
            sa["amount"].eq(rec_in.length - rec_in.strip),
            sa["ukey"].eq(key_in),
            sa["w_on"].eq(~rec_in.drop),
        ]
        # The hash's first levels, both banks, the selected seed's: each bucket index bit's
        # parity in parts of HASH_PART bits, registered with the stage; stage A XORs the parts
        # (the whole hash, from stage A's key to the bank's row, was the critical path of every
        # routed build: 19.4 ns).
        profile = Signal(PROFILE_BITS)
        m.d.comb += profile.eq(p)
        hash_parts = []
        for bank in range(BANKS):
            bank_parts = []
            for j in range(ibits):
                per_seed = [Cat(*_parity_parts(Cat(masked, profile), hash_masks(s, bank)[j],
                                               HASH_PART))
                            for s in range(geo.hash_seeds)]
                parts = Signal(max(map(len, per_seed)), name=f"sa_hash{bank}_{j}")
                m.d.sync += parts.eq(Array(per_seed)[seed] if len(per_seed) > 1
                                     else per_seed[0])
                bank_parts.append(parts)
            hash_parts.append(bank_parts)

        # --- Stage A: the hash's last level; address both banks and the wildcard CAM (by the
        # unmasked key's chunks, from registers: its memories are spread over the chip). -----
        key_a = sa["ukey"]
        for j, (rp, _) in enumerate(chunk_ports):
            chunk = _fit(key_a[j * cbits:(j + 1) * cbits], cbits)
            m.d.comb += rp.addr.eq(Mux(sweeping, sweep[:cbits], chunk))
        for bank, (rp, _) in enumerate(bank_ports):
            address = Cat(parts.xor() for parts in hash_parts[bank]) if ibits else Const(0, 1)
            m.d.comb += rp.addr.eq(Mux(bus_exec, cmd_index, address))

        sb = stage("sb", key=KEY_BITS, p=PROFILE_BITS, on=1, w_on=1, **common)
        m.d.sync += [sb[k].eq(sa[k]) for k in sb]   # all but the unmasked key

        # --- Stage B: compare each slot's entry where its row is read, one registered match
        # bit per ROW_GROUP bits of the row (a block RAM's width), so only match bits travel
        # from the block RAMs; AND the wildcard CAM's words in groups. -------------------------
        expected = Cat(Const(1, 1), sb["p"], sb["key"])   # an entry's valid, profile, key
        slot_eqs, slot_indices = [], []
        for bank, (rp, _) in enumerate(bank_ports):
            row = Value.cast(rp.data)
            for slot in range(SLOTS):
                start = slot * entry_layout.size
                end = start + len(expected)
                cuts = [start, *range(start - start % ROW_GROUP + ROW_GROUP, end, ROW_GROUP), end]
                eqs = Signal(len(cuts) - 1, name=f"sm_eq{bank}_{slot}")
                index = Signal(index_shape, name=f"sm_index{bank}_{slot}")
                m.d.sync += [eqs.eq(Cat(row[a:b] == expected[a - start:b - start]
                                        for a, b in zip(cuts, cuts[1:]))),
                             index.eq(rp.data[slot].index)]
                slot_eqs.append(eqs)
                slot_indices.append(index)
        # The CAM's words are ANDed in groups of WILD_GROUP chunks, registered: one LUT per
        # position beside each group's block RAMs, as the rows are compared where they are
        # read (33 words of 32 bits converging on one AND did not route).
        w_parts = []
        for g in range(0, len(chunk_ports), WILD_GROUP):
            part = Signal(n_wild, name=f"sm_w_part{g // WILD_GROUP}")
            m.d.sync += part.eq(functools.reduce(
                operator.and_, (rp.data for rp, _ in chunk_ports[g:g + WILD_GROUP])))
            w_parts.append(part)

        sm = stage("sm", on=1, w_on=1, **common)
        m.d.sync += [sm[k].eq(sb[k]) for k in sm]

        # --- Stage M: the exact table's winner among all slots; the wildcard CAM's: the first
        # valid position whose word is set in every chunk. ----------------------------------
        c_hit, c_index = _first_hit([(sm["on"] & eqs.all(), index)
                                     for eqs, index in zip(slot_eqs, slot_indices)])
        w_matches = functools.reduce(operator.and_, w_parts, wild_valid)
        w_hit, w_index = _first_position([(w_matches[k], wild_index[k]) for k in range(n_wild)])

        sc = stage("sc", c_hit=1, c_index=index_shape, w_hit=1, w_index=index_shape, **common)
        m.d.sync += [sc[k].eq(sm[k]) for k in common]
        m.d.sync += [sc["c_hit"].eq(c_hit), sc["c_index"].eq(c_index),
                     sc["w_hit"].eq(sm["w_on"] & w_hit), sc["w_index"].eq(w_index)]

        # --- Stage C: the frame's best hit so far; the last lookup reads action, counters. --
        acc_hit = Signal()
        acc_index = Signal(index_shape)
        prev_hit = Mux(sc["first"], sc["w_hit"], acc_hit)
        prev_index = Mux(sc["first"], sc["w_index"], acc_index)
        best_hit, best_index = _first_hit([(prev_hit, prev_index), (sc["c_hit"], sc["c_index"])])
        with m.If(sc["valid"]):
            m.d.sync += [acc_hit.eq(best_hit), acc_index.eq(best_index)]
        m.d.comb += [
            actions.r_addr.eq(Mux(bus_exec, cmd_index, best_index)),
            actions.r_en.eq(1),
            counters.r_addr.eq(Mux(bus_exec, cmd_index, best_index)),
            counters.r_en.eq(1),
        ]

        sd_valid = Signal()
        sd_hit = Signal()
        sd_index = Signal(index_shape)
        sd_amount = Signal(amount)
        m.d.sync += [
            sd_valid.eq(sc["valid"] & sc["last"]),
            sd_hit.eq(best_hit),
            sd_index.eq(best_index),
            sd_amount.eq(sc["amount"]),
        ]

        # --- Stage D: the verdict, to ``o`` or, when ``o`` is busy or older verdicts wait,
        # into the verdicts FIFO; the rule's counters updated. -----------------------------
        held_layout = data.StructLayout({"action": action_layout, "rule": index_shape, "hit": 1})
        m.submodules.verdicts = verdicts = SyncFIFO(width=held_layout.size, depth=IN_FLIGHT)
        looked_up = Signal(held_layout)
        m.d.comb += [looked_up.action.eq(actions.r_data), looked_up.rule.eq(sd_index),
                     looked_up.hit.eq(sd_hit)]
        head = data.View(held_layout, Mux(verdicts.r_rdy, verdicts.r_data, looked_up))
        rec = data.View(ParsedHeaders, records.r_data)   # the head's record
        took = Signal()
        m.d.comb += [
            # A verdict's record is always in the records FIFO; requiring it here also shows
            # the handshake proof that the head's record cannot change while offered.
            self.o.valid.eq(records.r_rdy & (verdicts.r_rdy | sd_valid)),
            took.eq(self.o.valid & self.o.ready),
            verdicts.w_data.eq(looked_up),
            verdicts.w_en.eq(sd_valid & (verdicts.r_rdy | ~took)),
            verdicts.r_en.eq(took),
            records.r_en.eq(took),
        ]
        out = self.o.p
        miss = Signal(EditCommand)
        m.d.comb += [
            out.hdr.eq(rec),
            out.rule.eq(head.rule),
            out.hit.eq(head.hit),
            miss.drop.eq(1),
            miss.reason.eq(Mux(rec.drop, rec.reason, DropReason.TABLE_MISS)),
            out.cmd.eq(Mux(head.hit, head.action.cmd, miss)),
            out.punt.eq(head.hit & head.action.punt),
        ]

        fwd_valid = Signal()
        fwd_index = Signal(index_shape)
        fwd_value = Signal(counter_layout)
        base = Signal(counter_layout)
        updated = Signal(counter_layout)
        count = Signal()
        m.d.comb += [
            count.eq(sd_valid & sd_hit),
            base.eq(Mux(fwd_valid & (fwd_index == sd_index), fwd_value, counters.r_data)),
            updated.packets.eq(base.packets + 1),
            updated.bytes.eq(base.bytes + sd_amount),
        ]
        with m.If(count):
            m.d.sync += [fwd_valid.eq(1), fwd_index.eq(sd_index), fwd_value.eq(updated)]

        m.d.comb += idle.eq(~sa["valid"] & ~sb["valid"] & ~sm["valid"] & ~sc["valid"] & ~sd_valid
                            & (p == 0))

        # --- Register port. ------------------------------------------------------------------
        bus = self.bus
        op = Signal(4)
        table = Signal(4)
        staged = Cat(*staging)

        is_write = op == rm.OP_WRITE
        m.d.comb += [
            counters.w_addr.eq(Mux(bus_exec, cmd_index, sd_index)),
            counters.w_data.eq(Mux(bus_exec, staged[:counter_layout.size], updated)),
            counters.w_en.eq(Mux(bus_exec, is_write & (table == rm.TABLE_COUNTER), count)),
            actions.w_addr.eq(cmd_index),
            actions.w_data.eq(staged[:action_layout.size]),
            actions.w_en.eq(bus_exec & is_write & (table == rm.TABLE_ACTION)),
        ]
        for bank, (_, wp) in enumerate(bank_ports):
            m.d.comb += [
                wp.addr.eq(cmd_index[:rm.BANK_SHIFT]),
                wp.data.eq(staged[:row_layout.size]),
                wp.en.eq(bus_exec & is_write & (table == rm.TABLE_EXACT) & (bus_bank == bank)),
            ]

        # A wildcard write: the entry as written, its validity and index; then the sweep sets
        # the position's bit of every chunk memory word to whether the word's address matches
        # the entry's value and mask over that chunk (bits past the key match anything).
        new = data.View(wild_layout, staged[:wild_layout.size])
        position = cmd_index[:max(1, (n_wild - 1).bit_length())]
        wild_write = Signal()
        storing, loading = Signal(), Signal()
        m.d.comb += [
            wild_write.eq(is_write & (table == rm.TABLE_WILDCARD) & (cmd_index < n_wild)),
            wild_rp.addr.eq(Cat(lane[:lane_bits], position)),
            wild_rp.en.eq(loading),
            wild_wp.addr.eq(Cat(lane[:lane_bits], position)),
            wild_wp.data.eq(Array(staging[:wild_words])[lane]),
            wild_wp.en.eq(storing),
        ]
        # The word written is the one read the cycle before (``sweep - 1``); its address, its
        # match over each chunk and the write enable come from registers, loaded as it is read:
        # they reach 33 block RAMs spread over the chip (from the counter through a subtractor
        # and a compare, they were the routed 64/4 build's critical path, 21.4 ns).
        swept = Signal(cbits)
        sweep_write = Signal()
        m.d.sync += [swept.eq(sweep[:cbits]),
                     sweep_write.eq(sweeping & (sweep != 1 << cbits))]
        for j, (rp, wp) in enumerate(chunk_ports):
            value = _fit(new.value[j * cbits:(j + 1) * cbits], cbits)
            mask = _fit(new.mask[j * cbits:(j + 1) * cbits], cbits)
            match = Signal(name=f"wild_match{j}")
            m.d.sync += match.eq((sweep[:cbits] & mask) == value)
            m.d.comb += [
                wp.addr.eq(swept),
                wp.data.eq(Cat(Mux(position == k, match, rp.data[k]) for k in range(n_wild))),
                wp.en.eq(sweep_write),
            ]

        # Read back, word ``lane - 1`` (read the cycle before) to its staging word; valid (bit
        # 0) is the register's: reset clears it.
        loaded = Signal(32)
        m.d.comb += loaded.eq(Mux(lane == 1, Cat(wild_valid.bit_select(position, 1),
                                                 wild_rp.data[1:]), wild_rp.data))

        m.d.sync += [bus.r_valid.eq(0), bus.r_err.eq(0)]

        def capture(value):
            value = Value.cast(value)
            m.d.sync += [reg.eq(value[32 * k:32 * (k + 1)]) if 32 * k < len(value)
                         else reg.eq(0) for k, reg in enumerate(staging)]

        read_only = {rm.ID: Const(rm.ID_VALUE, 32), rm.GEOMETRY: Const(rm.geometry_word(geo), 32)}
        # FSM outputs as plain expressions: Icarus leaves an always @* block's outputs X until
        # one of its inputs moves, and these must be valid from reset on.
        with m.FSM(name="regs") as fsm:
            with m.State("Idle"), m.If(bus.valid):
                m.d.sync += [bus.r_valid.eq(1), bus.r_data.eq(0)]
                with m.Switch(bus.addr):
                    for address, value in read_only.items():
                        with m.Case(address):
                            m.d.sync += [bus.r_data.eq(value), bus.r_err.eq(bus.w_en)]
                    with m.Case(rm.CONFIG):
                        m.d.sync += bus.r_data.eq(Cat(profile_count, Const(0, 4), seed))
                        with m.If(bus.w_en):
                            m.d.sync += [profile_count.eq(bus.w_data[0:4]),
                                         seed.eq(bus.w_data[8:12])]
                    with m.Case(rm.COMMAND):
                        m.d.sync += bus.r_data.eq(Cat(cmd_index, table, op))
                        with m.If(bus.w_en):
                            m.d.sync += [op.eq(bus.w_data[28:32]),
                                         table.eq(bus.w_data[24:28]),
                                         cmd_index.eq(bus.w_data[0:24]),
                                         bus.r_valid.eq(0)]  # answered when done
                            m.next = "Drain"
                    for k, word_k in enumerate(staging):
                        with m.Case(rm.STAGING + k):
                            m.d.sync += bus.r_data.eq(word_k)
                            with m.If(bus.w_en):
                                m.d.sync += word_k.eq(bus.w_data)
                    with m.Default():
                        m.d.sync += bus.r_err.eq(1)
            with m.State("Drain"), m.If(idle):
                m.next = "Execute"
            with m.State("Execute"):
                with m.If(is_write):
                    with m.If(table == rm.TABLE_COUNTER):
                        m.d.sync += fwd_valid.eq(0)
                    with m.If(table == rm.TABLE_PROFILE):
                        for k, mask in enumerate(masks):
                            with m.If(cmd_index == k):
                                m.d.sync += mask.eq(staged[:KEY_BITS])
                    with m.If(wild_write):
                        for k, index in enumerate(wild_index):
                            with m.If(position == k):
                                m.d.sync += [wild_valid[k].eq(new.valid), index.eq(new.index)]
                        m.d.sync += [lane.eq(0), sweep.eq(0)]
                        m.next = "Store"
                    with m.Else():
                        m.d.sync += bus.r_valid.eq(1)
                        m.next = "Idle"
                with m.Else():
                    m.next = "Capture"
            with m.State("Store"):   # the entry as written, a staging word per cycle
                m.d.sync += lane.eq(lane + 1)
                with m.If(lane == wild_words - 1):
                    m.next = "Sweep"
            with m.State("Sweep"):
                m.d.sync += sweep.eq(sweep + 1)
                with m.If(sweep == 1 << cbits):
                    m.d.sync += bus.r_valid.eq(1)
                    m.next = "Idle"
            with m.State("Capture"):
                with m.Switch(table):
                    with m.Case(rm.TABLE_EXACT):
                        capture(Array(rp.data for rp, _ in bank_ports)[bus_bank])
                    with m.Case(rm.TABLE_PROFILE):
                        capture(Array(masks)[cmd_index[:max(1, (n_profiles - 1).bit_length())]])
                    with m.Case(rm.TABLE_WILDCARD):
                        capture(0)   # zeros; "Load" fills the entry's words
                        m.d.sync += lane.eq(0)
                    with m.Case(rm.TABLE_ACTION):
                        capture(actions.r_data)
                    with m.Case(rm.TABLE_COUNTER):
                        capture(counters.r_data)
                with m.If(table == rm.TABLE_WILDCARD):
                    m.next = "Load"
                with m.Else():
                    m.d.sync += bus.r_valid.eq(1)
                    m.next = "Idle"
            with m.State("Load"):    # the entry as written, a staging word per cycle
                m.d.sync += lane.eq(lane + 1)
                for k, word_k in enumerate(staging[:wild_words]):
                    with m.If(lane == k + 1):
                        m.d.sync += word_k.eq(loaded)
                with m.If(lane == wild_words):
                    m.d.sync += bus.r_valid.eq(1)
                    m.next = "Idle"
        m.d.comb += [
            bus.ready.eq(fsm.ongoing("Idle")),
            pause.eq(~fsm.ongoing("Idle")),
            bus_exec.eq(fsm.ongoing("Execute")),
            sweeping.eq(fsm.ongoing("Sweep")),
            storing.eq(fsm.ongoing("Store")),
            loading.eq(fsm.ongoing("Load")),
        ]

        return m
