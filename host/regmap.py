"""The register map of the openvtep pipeline, and the writes that load a TableImage into it.

Defined once here and imported by the gateware (``openvtep.hdl.classifier``,
``openvtep.hdl.pipeline``), the simulation loaders and the host driver. Every address is a
32-bit word address on the pipeline's control bus port (:class:`openvtep.hdl.bus.Signature`,
:data:`ADDR_BITS` bits; a board top maps it at some base on the bridge's bus). Ranges:
:data:`CLASSIFIER` (the classifier's own port), :data:`PORTS_RANGE`, :data:`DROPS_RANGE`.

    0x0000  ID         RO   :data:`ID_VALUE`
    0x0001  GEOMETRY   RO   index_bits [4:0], exact_profiles [11:8], hash_seeds [15:12],
                            wildcard_entries [31:16]
    0x0002  CONFIG     RW   profile_count [3:0] (active exact profiles), seed [11:8]
    0x0003  COMMAND    W    op [31:28], table [27:24], index [23:0] (see below)
    0x0040+k STAGING   RW   word k of the staging buffer (k < STAGING_WORDS)
    0x0100+8p+2c+w PORTS RO per port p (:class:`Port`), counter c (rx_packets, rx_bytes,
                            tx_packets, tx_bytes), word w (0 low, 1 high): 64-bit counters
    0x0140+r DROPS     RO   frames dropped for :class:`DropReason` r (32 bits)

Reading the low word of a 64-bit counter snapshots its high word, which the next read of the
high word returns (:class:`openvtep.hdl.bus.CounterBlock`); writing the low word clears it.

Tables are reached through the *staging buffer*: an entry's bits, LSB first, are
``STAGING`` word 0 bits [31:0], word 1, and so on. ``COMMAND`` with op :data:`OP_WRITE`
copies the staging buffer into entry ``index`` of ``table``; op :data:`OP_READ` copies the
entry into the staging buffer (then read the words). A command waits until no frame is in
the classifier's lookup pipeline and holds new frames back while it runs, so a frame sees a
table entry either wholly before or wholly after a write. The staging buffer keeps its value
across commands (and reset clears it), so consecutive writes only need the words that change.

Tables (entry layouts as ``(field, bits)`` LSB first):

- :data:`TABLE_EXACT`: index = ``bank << 16 | bucket``; entry = a bucket row of ``SLOTS``
  :data:`EXACT_ENTRY` (slot 0 lowest).
- :data:`TABLE_PROFILE`: index = profile; entry = the key mask (``KEY_BITS``).
- :data:`TABLE_WILDCARD`: index = position; :data:`WILDCARD_ENTRY`. Positions are priorities:
  the first valid entry that matches wins, so entries are loaded in ascending rule index.
- :data:`TABLE_ACTION`: index = rule index; :func:`action_layout` (an EditCommand, then the
  ``punt`` bit: also send the frame as it arrived to the controller).
- :data:`TABLE_COUNTER`: index = rule index; :data:`COUNTER_ENTRY` (64-bit packets, bytes).
  Write zeros to clear.
"""

from .headers import DropReason, Port
from .rules import Emission
from .tables import BANKS, KEY_BITS, MAX_INDEX_BITS, PROFILE_BITS, SLOTS

__all__ = [
    "ADDR_BITS",
    "BANK_SHIFT",
    "CLASSIFIER",
    "COMMAND",
    "CONFIG",
    "COUNTER_ENTRY",
    "DROPS",
    "DROPS_RANGE",
    "EXACT_ENTRY",
    "GEOMETRY",
    "ID",
    "ID_VALUE",
    "INDEX_BITS",
    "OP_READ",
    "OP_WRITE",
    "PORTS",
    "PORTS_RANGE",
    "PORT_COUNTERS",
    "STAGING",
    "STAGING_WORDS",
    "TABLE_ACTION",
    "TABLE_COUNTER",
    "TABLE_EXACT",
    "TABLE_PROFILE",
    "TABLE_WILDCARD",
    "WILDCARD_ENTRY",
    "action_fields",
    "action_layout",
    "command",
    "config_word",
    "drop_address",
    "entry_writes",
    "geometry_word",
    "layout_bits",
    "pack_fields",
    "port_counter_address",
    "table_writes",
    "unpack_fields",
]

ADDR_BITS = 16
ID = 0x0000
ID_VALUE = 0x0E7E0001
GEOMETRY = 0x0001
CONFIG = 0x0002
COMMAND = 0x0003
STAGING = 0x0040
STAGING_WORDS = 64
PORTS = 0x0100
PORT_COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes")
DROPS = 0x0140
# (base, size) of the address ranges: powers of two, as bus.BusDecoder maps them.
CLASSIFIER = (0x0000, 0x0080)
PORTS_RANGE = (PORTS, 0x0020)
DROPS_RANGE = (DROPS, 0x0010)

OP_WRITE = 1
OP_READ = 2

TABLE_EXACT = 0
TABLE_PROFILE = 1
TABLE_WILDCARD = 2
TABLE_ACTION = 3
TABLE_COUNTER = 4

INDEX_BITS = MAX_INDEX_BITS  # rule index field of the table entries
BANK_SHIFT = 16              # TABLE_EXACT index: bank << BANK_SHIFT | bucket

EXACT_ENTRY = (("valid", 1), ("profile", PROFILE_BITS), ("key", KEY_BITS),
               ("index", INDEX_BITS))
WILDCARD_ENTRY = (("valid", 1), ("index", INDEX_BITS), ("value", KEY_BITS), ("mask", KEY_BITS))
COUNTER_ENTRY = (("packets", 64), ("bytes", 64))


def action_layout():
    """The action table entry: ``cmd`` (:class:`openvtep.hdl.headers.EditCommand`), ``punt``."""
    from amaranth.lib import data

    from .hdl.headers import EditCommand
    return (("cmd", data.Layout.cast(EditCommand).size), ("punt", 1))


def layout_bits(layout):
    return sum(bits for _, bits in layout)


def pack_fields(layout, fields):
    """An entry's integer from a dict of field values (missing fields 0)."""
    value, offset = 0, 0
    for name, bits in layout:
        v = int(fields.get(name, 0))
        if not 0 <= v < 1 << bits:
            raise ValueError(f"{name}={v:#x} does not fit in {bits} bits")
        value |= v << offset
        offset += bits
    return value


def unpack_fields(layout, value):
    out, offset = {}, 0
    for name, bits in layout:
        out[name] = (value >> offset) & ((1 << bits) - 1)
        offset += bits
    return out


def command(op, table, index):
    """The ``COMMAND`` word."""
    if not 0 <= index < 1 << 24:
        raise ValueError(f"table index {index} out of range")
    return op << 28 | table << 24 | index


def geometry_word(geometry):
    return (geometry.index_bits | geometry.exact_profiles << 8 | geometry.hash_seeds << 12
            | geometry.wildcard_entries << 16)


def config_word(profile_count, seed):
    return profile_count | seed << 8


def port_counter_address(port, counter):
    """Address of the low word of ``counter`` (a name in PORT_COUNTERS) of ``port``."""
    return PORTS + 8 * int(port) + 2 * PORT_COUNTERS.index(counter)


def drop_address(reason):
    return DROPS + int(DropReason(reason))


def action_fields(action):
    """The action table entry (a dict) of a :class:`openvtep.tables.Action`.

    An action whose only output is the controller copy becomes an edited output to the
    controller port (which the editor emits raw); ``punt`` is then only set alongside an
    edited output elsewhere. The command's own ``punt`` bit stays clear: the classifier gives
    the entry's ``punt`` beside the command (``Verdict.punt``) and the pipeline sets it in the
    command the editor takes."""
    from .hdl.headers import EditCommand, command_from_emission, pack
    if action.output is not None:
        fields, punt = command_from_emission(action.output), action.punt
    elif action.punt:
        fields, punt = command_from_emission(Emission(Port.CONTROLLER)), False
    else:
        fields, punt = command_from_emission(None), False
    return {"cmd": pack(EditCommand, fields), "punt": int(punt)}


def _words(value, bits):
    return [(value >> (32 * k)) & 0xFFFFFFFF for k in range(-(-bits // 32))]


class _Writer:
    """Writes entries through the staging buffer, skipping staging words that already hold
    the value (the buffer starts zeroed after reset, or unknown with ``known=False``)."""

    def __init__(self, known=True):
        self.staging = [0] * STAGING_WORDS if known else [None] * STAGING_WORDS
        self.writes = []

    def entry(self, table, index, value, bits):
        for k, word in enumerate(_words(value, bits)):
            if self.staging[k] != word:
                self.writes.append((STAGING + k, word))
                self.staging[k] = word
        self.writes.append((COMMAND, command(OP_WRITE, table, index)))


def entry_writes(table, index, layout, fields):
    """The writes that set one table entry (staging buffer contents unknown)."""
    writer = _Writer(known=False)
    writer.entry(table, index, pack_fields(layout, fields), layout_bits(layout))
    return writer.writes


def table_writes(image, *, fresh=True, clear_counters=False):
    """The ``(address, word)`` writes that load ``image`` (a :class:`TableImage`) into the
    classifier: exactly what a simulation loader, the virtual board and a real board receive.

    With ``fresh`` (the tables hold their reset contents: all entries invalid), only the
    entries in use are written; otherwise every exact row, profile, wildcard entry is
    written. ``clear_counters`` also zeroes the rule counters of the image's rules.
    """
    geo = image.geometry
    writer = _Writer(known=fresh)
    writes = writer.writes
    writes.append((CONFIG, config_word(0, image.seed)))  # no lookups while loading
    for p, mask in enumerate(image.profiles):
        writer.entry(TABLE_PROFILE, p, mask, KEY_BITS)
    wildcard = sorted(image.wildcard, key=lambda entry: entry[2])
    count = len(wildcard) if fresh else geo.wildcard_entries
    for position in range(count):
        fields = {}
        if position < len(wildcard):
            value, mask, index = wildcard[position]
            fields = {"valid": 1, "index": index, "value": value, "mask": mask}
        writer.entry(TABLE_WILDCARD, position, pack_fields(WILDCARD_ENTRY, fields),
                     layout_bits(WILDCARD_ENTRY))
    entry_bits = layout_bits(EXACT_ENTRY)
    rows = {}
    for (bank, bucket, slot), (profile, key, index) in image.exact.items():
        entry = pack_fields(EXACT_ENTRY, {"valid": 1, "profile": profile, "key": key,
                                          "index": index})
        rows[bank, bucket] = rows.get((bank, bucket), 0) | entry << (slot * entry_bits)
    keys = sorted(rows) if fresh else [(b, k) for b in range(BANKS) for k in range(geo.buckets)]
    for bank, bucket in keys:
        writer.entry(TABLE_EXACT, bank << BANK_SHIFT | bucket, rows.get((bank, bucket), 0),
                     SLOTS * entry_bits)
    layout = action_layout()
    for index, action in enumerate(image.actions):
        writer.entry(TABLE_ACTION, index, pack_fields(layout, action_fields(action)),
                     layout_bits(layout))
    if clear_counters:
        for index in range(len(image.rules)):
            writer.entry(TABLE_COUNTER, index, 0, layout_bits(COUNTER_ENTRY))
    writes.append((CONFIG, config_word(len(image.profiles), image.seed)))
    return writes
