"""Flow tables as the gateware holds them, and the compiler that places a RuleSet in them.

The classifier (``openvtep.hdl.classifier``) looks up each frame's *flow key* in two tables:

- an **exact-match table**: a 2-choice cuckoo hash table in block RAM, ``BANKS`` banks of
  buckets of ``SLOTS`` slots. It serves up to ``exact_profiles`` *profiles* (one mask over the
  flow key each); a frame is looked up once per profile, with its key masked by the profile's
  mask. Entry: (valid, profile, masked key, rule index).
- a **wildcard table**: (value, mask, rule index) entries by position, all looked up at
  once (a ternary CAM in block RAM), the first matching position winning.

Every rule gets a hardware *rule index* equal to its rank in OpenFlow order (priority
descending, then file order), so the winning rule among all hits is simply the smallest index:
OpenFlow priority semantics hold across both tables by construction. The action table and the
per-rule counters are indexed by rule index.

Both banks are indexed by an H3 hash (Carter & Wegman universal hashing: each index bit is
the parity of the key AND a fixed random mask). The masks are generated here, from a seeded
generator, and imported by the gateware, so host placement and hardware lookup agree.
``hash_seeds`` sets of masks exist; the compiler tries the next set when a placement fails
(a rehash), and the chosen set is a register in the gateware.

A rule set the hardware cannot represent is refused with a RuleError naming the rule.
"""

import dataclasses
import random

from .errors import RuleError
from .headers import Port
from .rules import FIELDS

__all__ = ["FLOW_KEY", "KEY_BITS", "KEY_OFFSETS", "PROFILE_BITS", "BANKS", "SLOTS",
           "Geometry", "TableImage", "compile_tables", "rule_key", "flow_key", "hash_masks",
           "bucket_index"]

# The flow key, LSB first (Amaranth packing order): (field, bits). ``nw_valid``/``tp_valid``
# say the frame has the nw_*/tp_* fields (docs/semantics.md step 3); a rule on those fields
# matches them to 1, so an absent field never matches.
FLOW_KEY = (
    ("in_port", 2), ("tun_id", 24), ("tun_src", 32), ("dl_dst", 48), ("dl_src", 48),
    ("dl_vlan", 16), ("dl_type", 16), ("nw_valid", 1), ("nw_src", 32), ("nw_dst", 32),
    ("nw_proto", 8), ("tp_valid", 1), ("tp_src", 16), ("tp_dst", 16),
)
KEY_OFFSETS = {}
_offset = 0
for _name, _bits in FLOW_KEY:
    KEY_OFFSETS[_name] = _offset
    _offset += _bits
KEY_BITS = _offset
del _name, _bits, _offset
assert all(FIELDS[f] == bits for f, bits in FLOW_KEY if f in FIELDS)

PROFILE_BITS = 3      # up to 8 exact-match profiles
BANKS = 2             # cuckoo hashing: each key has one candidate bucket per bank
SLOTS = 2             # slots per bucket
MAX_INDEX_BITS = 16
MAX_KICKS = 500       # cuckoo evictions per insertion before giving up on a hash seed
_HASH_SEED = 0x0E7E9


def hash_masks(seed, bank):
    """The H3 masks of hash set ``seed`` for ``bank``: index bit j = parity(input & mask[j]),
    where input = masked key | profile << KEY_BITS."""
    rng = random.Random(_HASH_SEED * 65537 + seed * BANKS + bank)
    return tuple(rng.getrandbits(KEY_BITS + PROFILE_BITS) for _ in range(MAX_INDEX_BITS))


_MASKS_CACHE = {}


def bucket_index(key, profile, seed, bank, index_bits):
    """The bucket of a (masked) key of ``profile`` in ``bank`` under hash set ``seed``."""
    masks = _MASKS_CACHE.get((seed, bank))
    if masks is None:
        masks = _MASKS_CACHE[(seed, bank)] = hash_masks(seed, bank)
    word = key | profile << KEY_BITS
    index = 0
    for j in range(index_bits):
        index |= ((word & masks[j]).bit_count() & 1) << j
    return index


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Table sizes: the classifier's parameters, shared by the compiler and the gateware."""
    exact_entries: int = 4096     # slots in the exact-match table (BANKS * buckets * SLOTS)
    exact_profiles: int = 4       # distinct masks the exact-match table serves
    wildcard_entries: int = 32
    hash_seeds: int = 2           # hash sets to rehash with

    def __post_init__(self):
        per_bank = self.exact_entries // (BANKS * SLOTS)
        if (self.exact_entries < BANKS * SLOTS or per_bank & (per_bank - 1)
                or per_bank > 1 << MAX_INDEX_BITS):
            raise ValueError(f"exact_entries must be {BANKS * SLOTS} times a power of two up to "
                             f"2**{MAX_INDEX_BITS}, got {self.exact_entries}")
        if not 1 <= self.exact_profiles <= 1 << PROFILE_BITS:
            raise ValueError(f"exact_profiles must be 1..{1 << PROFILE_BITS}, "
                             f"got {self.exact_profiles}")
        if self.wildcard_entries < 1:
            raise ValueError(f"wildcard_entries must be at least 1, got {self.wildcard_entries}")
        if self.hash_seeds < 1:
            raise ValueError(f"hash_seeds must be at least 1, got {self.hash_seeds}")

    @property
    def buckets(self):
        """Buckets per bank."""
        return self.exact_entries // (BANKS * SLOTS)

    @property
    def index_bits(self):
        return max(self.buckets - 1, 0).bit_length()

    @property
    def rules(self):
        """Rule indices (action table and counter entries)."""
        return self.exact_entries + self.wildcard_entries


def rule_key(rule):
    """A rule's (value, mask) over the flow key."""
    value = mask = 0
    for field, v, m in rule.match:
        value |= v << KEY_OFFSETS[field]
        mask |= m << KEY_OFFSETS[field]
        if field.startswith(("nw_", "tp_")):
            valid = KEY_OFFSETS[field[:2] + "_valid"]
            value |= 1 << valid
            mask |= 1 << valid
    return value, mask


def flow_key(fields):
    """A frame's flow key from its match fields (a mapping with every FLOW_KEY name; dl_vlan
    is NO_VLAN when untagged, absent nw_*/tp_* fields 0 with their *_valid 0)."""
    key = 0
    for name, bits in FLOW_KEY:
        value = int(fields[name])
        if not 0 <= value < 1 << bits:
            raise ValueError(f"flow key field {name}={value} does not fit in {bits} bits")
        key |= value << KEY_OFFSETS[name]
    return key


def flow_keys(parsed):
    """Flow keys of every frame of a :class:`openvtep.reference.Parsed` (Python ints)."""
    columns = {
        "in_port": parsed.in_port, "tun_id": parsed.tun_id, "tun_src": parsed.tun_src,
        "dl_dst": parsed.dl_dst, "dl_src": parsed.dl_src, "dl_vlan": parsed.dl_vlan,
        "dl_type": parsed.dl_type, "nw_valid": parsed.has_ip, "nw_src": parsed.nw_src,
        "nw_dst": parsed.nw_dst, "nw_proto": parsed.nw_proto, "tp_valid": parsed.has_l4,
        "tp_src": parsed.tp_src, "tp_dst": parsed.tp_dst,
    }
    columns = {k: [int(x) for x in v] for k, v in columns.items()}
    return [flow_key({k: v[i] for k, v in columns.items()}) for i in range(len(parsed.drop))]


@dataclasses.dataclass(frozen=True)
class Action:
    """A rule's action table entry: the one edited output (an Emission, or None) and whether
    the frame is also copied, as it arrived, to the controller."""
    output: object
    punt: bool


@dataclasses.dataclass
class TableImage:
    """The contents of the classifier's tables for one RuleSet.

    ``rules[i]`` is the Rule with hardware index i. ``profiles`` are the exact-match masks
    (profile number = position). ``exact`` maps (bank, bucket, slot) -> (profile, masked key,
    rule index). ``wildcard`` lists (value, mask, rule index). ``actions[i]`` is rule i's
    Action. ``seed`` is the hash set in use.
    """
    geometry: Geometry
    rules: list
    profiles: list
    seed: int
    exact: dict
    wildcard: list
    actions: list

    def lookup(self, key):
        """The hardware's answer for a flow key: the winning rule index, or -1 (a model of the
        classifier, for testing placement)."""
        best = -1
        geo = self.geometry
        for profile, mask in enumerate(self.profiles):
            masked = key & mask
            for bank in range(BANKS):
                bucket = bucket_index(masked, profile, self.seed, bank, geo.index_bits)
                for slot in range(SLOTS):
                    entry = self.exact.get((bank, bucket, slot))
                    if entry and entry[0] == profile and entry[1] == masked:
                        best = entry[2] if best < 0 else min(best, entry[2])
        for value, mask, index in self.wildcard:
            if key & mask == value:
                best = index if best < 0 else min(best, index)
        return best


def _action(rule, filename):
    outputs = [e for e in rule.emissions if e.port is not Port.CONTROLLER]
    punts = len(rule.emissions) - len(outputs)
    if len(outputs) > 1:
        raise RuleError(filename, [(rule.line, 1, "the hardware emits one edited output per "
                                    f"frame (plus a controller copy); this rule has "
                                    f"{len(outputs)} outputs")])
    if punts > 1:
        raise RuleError(filename, [(rule.line, 1, "the hardware sends at most one controller "
                                    f"copy per frame; this rule asks for {punts}")])
    return Action(outputs[0] if outputs else None, punts == 1)


def _place(entries, geometry, seed):
    """Cuckoo-place (profile, key, index) entries; returns the slot map, or the entry that
    could not be placed."""
    table = {}
    rng = random.Random(seed)
    for entry in entries:
        item = entry
        for _ in range(MAX_KICKS):
            profile, key, _ = item
            candidates = [(bank, bucket_index(key, profile, seed, bank, geometry.index_bits))
                          for bank in range(BANKS)]
            free = [(b, k, s) for b, k in candidates for s in range(SLOTS)
                    if (b, k, s) not in table]
            if free:
                table[free[0]] = item
                item = None
                break
            bank, bucket = candidates[rng.randrange(BANKS)]
            victim = (bank, bucket, rng.randrange(SLOTS))
            table[victim], item = item, table[victim]
        if item is not None:
            return None, entry
    return table, None


def compile_tables(ruleset, geometry=Geometry(), *, first_seed=0):
    """Place ``ruleset`` in tables of ``geometry``; raises RuleError naming the rule when the
    hardware cannot represent the rule set. The hash seeds are tried in order from
    ``first_seed`` (tests start past 0 to exercise the hardware's other hash sets)."""
    filename = ruleset.filename
    rules = sorted(ruleset, key=lambda r: (-r.priority, r.line))
    if len(rules) > geometry.rules:
        rule = rules[geometry.rules]
        raise RuleError(filename, [(rule.line, 1, f"too many rules: the hardware holds "
                                    f"{geometry.rules} rules, this set has {len(rules)}")])
    actions = [_action(rule, filename) for rule in rules]
    keys = [rule_key(rule) for rule in rules]
    # Exact profiles: the masks shared by the most rules. A rule whose (value, mask) equals
    # a better rule's can never win, so it needs no entry at all.
    by_mask, seen = {}, set()
    for index, (value, mask) in enumerate(keys):
        if (value, mask) in seen:
            continue
        seen.add((value, mask))
        by_mask.setdefault(mask, []).append(index)
    ranked = sorted(by_mask, key=lambda m: (-len(by_mask[m]), by_mask[m][0]))
    profiles = ranked[:geometry.exact_profiles]
    wildcard = sorted(i for m in ranked[geometry.exact_profiles:] for i in by_mask[m])
    if len(wildcard) > geometry.wildcard_entries:
        rule = rules[wildcard[geometry.wildcard_entries]]
        raise RuleError(filename, [(rule.line, 1, (
            f"needs a wildcard entry but the wildcard table ({geometry.wildcard_entries} "
            f"entries) is full: {len(wildcard)} rules use {len(ranked) - len(profiles)} match "
            f"shapes beyond the exact table's {geometry.exact_profiles} profiles"))])
    entries = [(p, keys[i][0], i) for p, m in enumerate(profiles) for i in by_mask[m]]
    if len(entries) > geometry.exact_entries:
        rule = rules[entries[geometry.exact_entries][2]]
        raise RuleError(filename, [(rule.line, 1, f"the exact-match table is full "
                                    f"({geometry.exact_entries} entries, {len(entries)} needed)")])
    failed = None
    for seed in range(first_seed, geometry.hash_seeds):
        exact, failed = _place(entries, geometry, seed)
        if exact is not None:
            return TableImage(geometry, rules, profiles, seed, exact,
                              [(keys[i][0], keys[i][1], i) for i in wildcard], actions)
    rule = rules[failed[2]]
    raise RuleError(filename, [(rule.line, 1, (
        f"exact-match table placement failed: no free slot after {MAX_KICKS} evictions with "
        f"each of {geometry.hash_seeds - first_seed} hash seeds ({len(entries)} of "
        f"{geometry.exact_entries} entries); build with more exact entries"))])

