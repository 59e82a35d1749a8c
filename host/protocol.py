"""The control protocol between the host and the chip's control bridge, defined once.

The gateware (:mod:`openvtep.hdl.bridge`), the host driver (:mod:`openvtep.driver`), the virtual
board and the tests all take the message layouts, command codes and status codes from here.

Wire format
-----------
A *message* is a run of bytes::

    request:  seq:u16  tag:u8  cmd:u8           body...  crc:u32
    reply:    seq:u16  tag:u8  cmd:u8  status:u8 body...  crc:u32

All multi-byte fields are **little-endian** (unlike network headers, which are big-endian:
this link is ours, and little-endian is what both the gateware's LSB-first values and
``struct '<'`` want). ``crc`` is CRC-32/ISO-HDLC (the Ethernet/zlib CRC,
``zlib.crc32``) of every byte before it. On the line each message is COBS-encoded
(Cheshire & Baker, "Consistent Overhead Byte Stuffing", IEEE/ACM ToN 1999) and followed by a
``0x00`` delimiter, so ``0x00`` only ever appears between messages: a receiver resynchronizes
at the next ``0x00`` after garbage, and empty messages (``0x00 0x00``) are ignored, which lets
the host flush a half-received message by sending ``0x00``.

A reply echoes the request's ``seq``, ``tag`` and ``cmd``. ``tag`` is free for the host (the
driver numbers every transmission with it, so it can tell a retransmission's reply from the
original's); the bridge only echoes it.

Ordering and idempotence
------------------------
Commands that change state and are not idempotent (:data:`ORDERED`: writes, batches, frame
injection) are executed strictly in ``seq`` order. The bridge keeps ``next_seq`` and the
status of the last :data:`WINDOW` ordered messages it executed:

- ``seq == next_seq``: executed; its status is remembered; ``next_seq`` += 1.
- ``seq`` one of the last :data:`WINDOW` executed: *not* executed again; the remembered status
  is re-sent (a retransmitted write batch is never applied twice).
- anything else: :attr:`Status.SEQUENCE`, with the expected ``seq`` in the error body; nothing
  is executed.

So the host can keep up to :data:`WINDOW` ordered messages in flight and, after any loss,
resend everything from the oldest unanswered one (go-back-N). Every other command is
idempotent and ignores ``seq`` (reads, identify, status, and capture, whose pop names the frame
it acknowledges). :attr:`Command.OPEN` starts a session: it sets ``next_seq`` to its own
``seq + 1`` and stores a host-chosen 32-bit session token, which reads back as 0 after a reset
of the chip: that is how the host detects a board reset.

Errors: a request the bridge cannot take gets a reply with a non-zero :class:`Status` and the
:data:`ERROR_BODY` (expected ``seq`` and a status-specific ``info`` word). A message with a
bad CRC is answered :attr:`Status.BAD_CRC` with whatever header bytes arrived.

Addresses are word addresses (:data:`ADDR_BYTES` bytes on the wire, :data:`ADDR_BITS` bits
used), data words are 32 bits. A 64-bit counter occupies two consecutive words, low word first;
reading the low word snapshots the high word (see :class:`openvtep.hdl.bus.CounterBlock`).
"""

import enum
import struct
import zlib

__all__ = [
    "ADDR_BITS",
    "ADDR_BYTES",
    "BATCH_ENTRY_BYTES",
    "BLOCK_REQUEST",
    "BODY_BYTES",
    "CAPTURE_REPLY",
    "CAPTURE_REQUEST",
    "CRC_BYTES",
    "DELIMITER",
    "ERROR_BODY",
    "IDENTIFY_BODY",
    "INJECT_REQUEST",
    "MAGIC",
    "ORDERED",
    "PACKED_BASES",
    "PACKED_HEADER_BYTES",
    "PACKED_WINDOW",
    "REPLY_HEADER",
    "REPLY_HEADER_BYTES",
    "REQUEST_HEADER",
    "REQUEST_HEADER_BYTES",
    "REQUEST_OVERHEAD",
    "STATUS_BODY",
    "VERSION",
    "WINDOW",
    "WORD_BYTES",
    "CaptureFlags",
    "Command",
    "Deframer",
    "ProtocolError",
    "Reply",
    "Request",
    "Status",
    "cobs_decode",
    "cobs_encode",
    "crc32",
    "decode_packed",
    "decode_reply",
    "decode_request",
    "encode_packed",
    "encode_reply",
    "encode_request",
    "pack_fields",
    "packed_item_bytes",
    "packed_window",
    "table_bytes",
    "unpack_fields",
]

VERSION = 2                 # 2: WRITE_PACKED
MAGIC = int.from_bytes(b"OVTP", "little")  # first IDENTIFY word
DELIMITER = 0x00
CRC_BYTES = 4
ADDR_BYTES = 3
ADDR_BITS = 8 * ADDR_BYTES  # the bus address width (word addresses)
WORD_BYTES = 4
WINDOW = 16                 # ordered messages whose status the bridge remembers


class Command(enum.IntEnum):
    """Request codes. Bodies are in :data:`BODY_BYTES` and the tables below."""
    IDENTIFY = 0x01     # -> IDENTIFY_BODY
    STATUS = 0x02       # -> STATUS_BODY
    OPEN = 0x03         # token:u32 -> (empty); next_seq := seq + 1, session := token
    READ = 0x10         # addr:u24 -> data:u32
    WRITE = 0x11        # addr:u24 data:u32 -> (empty)                               ordered
    WRITE_BATCH = 0x12  # {addr:u24 data:u32}* -> (empty)                            ordered
    WRITE_BLOCK = 0x13  # addr:u24 {data:u32}+ : words to addr, addr+1, ... -> (empty) ordered
    READ_BLOCK = 0x14   # addr:u24 count:u16 -> {data:u32}*count
    COUNTERS = 0x15     # addr:u24 count:u16 -> {value:u64}*count (2*count words from addr)
    WRITE_PACKED = 0x16  # base0:u24 base1:u24 {item}+ (see encode_packed) -> (empty)  ordered
    INJECT = 0x20       # port:u8 frame... -> (empty)                                ordered
    CAPTURE = 0x21      # CAPTURE_REQUEST -> CAPTURE_REPLY frame...


ORDERED = frozenset({Command.WRITE, Command.WRITE_BATCH, Command.WRITE_BLOCK, Command.WRITE_PACKED,
                     Command.INJECT})


class Status(enum.IntEnum):
    """Reply status codes. Non-zero replies carry :data:`ERROR_BODY`; ``info`` is given per
    code."""
    OK = 0
    UNKNOWN_COMMAND = 1  # info: the command byte
    BAD_CRC = 2          # info: the message length
    BAD_LENGTH = 3       # info: the body length (wrong for the command, or message truncated)
    OVERSIZE = 4         # info: max_request (the message did not fit the request buffer)
    BAD_FRAME = 5        # info: 0. COBS framing error: delimiter inside a code group
    SEQUENCE = 6         # info: the seq received; expected_seq: the one the bridge wants
    BAD_ARGUMENT = 7     # info: the offending value (inject port, block count)
    BUS_ERROR = 8        # info: the word address that failed (no target, or read-only)
    BUS_TIMEOUT = 9      # info: the word address whose target did not answer


class CaptureFlags(enum.IntFlag):
    POP = 0x01        # request: drop the held frame if its id is pop_id
    FRAME = 0x01      # reply: a frame follows
    TRUNCATED = 0x02  # reply: the frame was longer than max_frame; only max_frame bytes follow


# Field tables: (name, byte offset, byte width), little-endian, counted from the start of the
# header or of the body. The gateware builds its reply byte multiplexers from these.
REQUEST_HEADER = (("seq", 0, 2), ("tag", 2, 1), ("cmd", 3, 1))
REPLY_HEADER = (("seq", 0, 2), ("tag", 2, 1), ("cmd", 3, 1), ("status", 4, 1))
ERROR_BODY = (("expected_seq", 0, 2), ("info", 2, 4))
IDENTIFY_BODY = (
    ("magic", 0, 4), ("version", 4, 2), ("width", 6, 1), ("window", 7, 1),
    ("addr_bits", 8, 1), ("ports", 9, 1), ("max_request", 10, 2), ("max_frame", 12, 2),
    ("max_block", 14, 2), ("exact_entries", 16, 4), ("wildcard_entries", 20, 2),
    ("counters", 22, 2), ("build_id", 24, 4), ("session", 28, 4), ("next_seq", 32, 2),
)
STATUS_BODY = (
    ("session", 0, 4), ("next_seq", 4, 2), ("executed", 6, 4), ("bad_crc", 10, 2),
    ("bad_frame", 12, 2), ("seq_errors", 14, 2), ("bus_errors", 16, 2),
    ("capture_held", 18, 1), ("capture_next_id", 19, 2), ("capture_truncated", 21, 2),
)
CAPTURE_REQUEST = (("flags", 0, 1), ("pop_id", 1, 2))
CAPTURE_REPLY = (("flags", 0, 1), ("id", 1, 2), ("port", 3, 1))  # then the frame, if any
INJECT_REQUEST = (("port", 0, 1),)                                 # then the frame
BLOCK_REQUEST = (("addr", 0, ADDR_BYTES), ("count", ADDR_BYTES, 2))

REQUEST_HEADER_BYTES = 4
REPLY_HEADER_BYTES = 5
REQUEST_OVERHEAD = REQUEST_HEADER_BYTES + CRC_BYTES  # bytes of a message around its body
BATCH_ENTRY_BYTES = ADDR_BYTES + WORD_BYTES

# WRITE_PACKED: a body of PACKED_BASES base addresses (u24 each), then items of one byte
#     [4:0] offset, [5] base (which of the two), [7:6] data bytes - 1
# and then that many data bytes (little-endian, the word's high bytes zero). Each item writes
# base[b] + offset, in order. A word costs 2..5 bytes instead of WRITE_BATCH's 7: what a rule
# load (COMMAND near 0, the staging words at 0x40) needs.
PACKED_BASES = 2
PACKED_WINDOW = 32  # words an item reaches from its base (offset bits: 5)
PACKED_HEADER_BYTES = PACKED_BASES * ADDR_BYTES

# Body length of each request: an int (exact), or ``(minimum, step, offset)`` for variable
# bodies: at least ``minimum`` bytes, and ``length - offset`` a multiple of ``step``.
BODY_BYTES = {
    Command.IDENTIFY: 0,
    Command.STATUS: 0,
    Command.OPEN: 4,
    Command.READ: ADDR_BYTES,
    Command.WRITE: ADDR_BYTES + WORD_BYTES,
    Command.WRITE_BATCH: (BATCH_ENTRY_BYTES, BATCH_ENTRY_BYTES, 0),
    Command.WRITE_BLOCK: (ADDR_BYTES + WORD_BYTES, WORD_BYTES, ADDR_BYTES),
    Command.READ_BLOCK: ADDR_BYTES + 2,
    Command.WRITE_PACKED: (PACKED_HEADER_BYTES + 2, 1, 0),  # items checked by the bridge
    Command.COUNTERS: ADDR_BYTES + 2,
    Command.INJECT: (2, 1, 0),
    Command.CAPTURE: 3,
}


class ProtocolError(ValueError):
    """A message that does not decode (bad COBS, short, bad CRC)."""


def packed_window(addr):
    """The base (a multiple of :data:`PACKED_WINDOW`) :func:`encode_packed` gives ``addr``."""
    return addr - addr % PACKED_WINDOW


def packed_item_bytes(value):
    """Bytes of a WRITE_PACKED item writing ``value``: header and 1..4 data bytes."""
    return 1 + max(1, ((value & 0xFFFFFFFF).bit_length() + 7) // 8)


def encode_packed(pairs):
    """The WRITE_PACKED body writing ``pairs`` (``(addr, value)``, in order), whose addresses
    must lie in at most :data:`PACKED_BASES` windows (:func:`packed_window`)."""
    bases = []
    items = bytearray()
    for addr, value in pairs:
        base = packed_window(addr)
        if base not in bases:
            if len(bases) == PACKED_BASES:
                raise ValueError(f"address {addr:#x}: more than {PACKED_BASES} windows")
            bases.append(base)
        value &= 0xFFFFFFFF
        size = packed_item_bytes(value) - 1
        items.append((size - 1) << 6 | bases.index(base) << 5 | addr - base)
        items += value.to_bytes(size, "little")
    if not items:
        raise ValueError("WRITE_PACKED needs at least one write")
    bases += bases[:1] * (PACKED_BASES - len(bases))
    for base in bases:
        if not 0 <= base < 1 << ADDR_BITS:
            raise ValueError(f"address {base:#x} does not fit {ADDR_BITS} bits")
    return b"".join(base.to_bytes(ADDR_BYTES, "little") for base in bases) + bytes(items)


def decode_packed(body):
    """The ``[(addr, value)]`` of a WRITE_PACKED body (what the bridge executes); raises
    :class:`ProtocolError` as the bridge answers BAD_LENGTH or BAD_ARGUMENT."""
    body = bytes(body)
    if len(body) < PACKED_HEADER_BYTES + 2:
        raise ProtocolError(f"WRITE_PACKED body of {len(body)} bytes")
    bases = [int.from_bytes(body[ADDR_BYTES * k:ADDR_BYTES * (k + 1)], "little")
             for k in range(PACKED_BASES)]
    pos, pairs = PACKED_HEADER_BYTES, []
    while pos < len(body):
        header = body[pos]
        size = (header >> 6) + 1
        addr = bases[header >> 5 & 1] + (header & 0x1F)
        if addr >> ADDR_BITS:
            raise ProtocolError(f"WRITE_PACKED address {addr:#x} past {ADDR_BITS} bits")
        if pos + 1 + size > len(body):
            raise ProtocolError("WRITE_PACKED item runs past the end of the body")
        pairs.append((addr, int.from_bytes(body[pos + 1:pos + 1 + size], "little")))
        pos += 1 + size
    return pairs


def table_bytes(table):
    """Total byte length of a field table."""
    return max(offset + width for _, offset, width in table)


def pack_fields(table, **values):
    """The bytes of ``table`` with ``values`` (missing fields 0)."""
    out = bytearray(table_bytes(table))
    names = {name for name, _, _ in table}
    unknown = set(values) - names
    if unknown:
        raise KeyError(f"no field(s) {sorted(unknown)} in this table")
    for name, offset, width in table:
        out[offset:offset + width] = int(values.get(name, 0)).to_bytes(width, "little")
    return bytes(out)


def unpack_fields(table, data):
    """``{name: int}`` of the fields of ``table`` in ``data`` (at least its length)."""
    if len(data) < table_bytes(table):
        raise ProtocolError(f"{len(data)} bytes, need {table_bytes(table)}")
    return {name: int.from_bytes(data[offset:offset + width], "little")
            for name, offset, width in table}


def crc32(data):
    """CRC-32/ISO-HDLC of ``data`` (what :mod:`amaranth.lib.crc.catalog` calls
    ``CRC32_ISO_HDLC``)."""
    return zlib.crc32(data)


def cobs_encode(data):
    """COBS encoding of ``data`` (no delimiter added). The result holds no ``0x00``."""
    out = bytearray()
    for chunk in bytes(data).split(b"\x00"):
        # Each zero-separated chunk: full 254-byte groups (code 0xFF, no implied zero), then
        # the rest with code len+1 (which implies the zero that followed it).
        while len(chunk) >= 254:
            out.append(0xFF)
            out += chunk[:254]
            chunk = chunk[254:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def cobs_decode(data):
    """Inverse of :func:`cobs_encode`; raises :class:`ProtocolError` on a bad encoding."""
    out = bytearray()
    pos, end = 0, len(data)
    while pos < end:
        code = data[pos]
        if code == 0:
            raise ProtocolError("0x00 inside a COBS frame")
        group = data[pos + 1:pos + code]
        if len(group) != code - 1 or 0 in group:
            raise ProtocolError("COBS group runs past the end of the frame")
        out += group
        pos += code
        if code != 0xFF and pos < end:
            out.append(0)
    return bytes(out)


def _frame(message):
    return cobs_encode(message + struct.pack("<I", crc32(message))) + b"\x00"


def encode_request(seq, tag, cmd, body=b""):
    """A request as it goes on the line: COBS-encoded message with CRC, then ``0x00``."""
    return _frame(struct.pack("<HBB", seq & 0xFFFF, tag & 0xFF, int(cmd)) + bytes(body))


def encode_reply(seq, tag, cmd, status, body=b""):
    """A reply as it goes on the line (what the bridge sends; for tests and models)."""
    return _frame(struct.pack("<HBBB", seq & 0xFFFF, tag & 0xFF, int(cmd) & 0xFF, int(status))
                  + bytes(body))


class Request:
    __slots__ = ("body", "cmd", "seq", "tag")

    def __init__(self, seq, tag, cmd, body):
        self.seq, self.tag, self.cmd, self.body = seq, tag, cmd, body

    def __repr__(self):
        return f"Request(seq={self.seq}, tag={self.tag}, cmd={self.cmd:#x}, {len(self.body)}B)"


class Reply:
    """A decoded reply: ``seq``, ``tag``, ``cmd``, ``status`` (a :class:`Status` if known, else
    int), ``body``; for errors also ``expected_seq`` and ``info``."""
    __slots__ = ("body", "cmd", "expected_seq", "info", "seq", "status", "tag")

    def __init__(self, seq, tag, cmd, status, body):
        self.seq, self.tag, self.cmd, self.body = seq, tag, cmd, body
        try:
            self.status = Status(status)
        except ValueError:
            self.status = status
        self.expected_seq = self.info = None
        if status != Status.OK and len(body) >= table_bytes(ERROR_BODY):
            fields = unpack_fields(ERROR_BODY, body)
            self.expected_seq, self.info = fields["expected_seq"], fields["info"]

    def __repr__(self):
        status = self.status.name if isinstance(self.status, Status) else self.status
        try:
            cmd = Command(self.cmd).name
        except ValueError:
            cmd = f"{self.cmd:#04x}"
        extra = f", expected_seq={self.expected_seq}, info={self.info:#x}" \
            if self.info is not None else ""
        return f"Reply(seq={self.seq}, tag={self.tag}, {cmd}, {status}, {len(self.body)}B{extra})"


def _check(frame, header_bytes):
    message = cobs_decode(frame)
    if len(message) < header_bytes + CRC_BYTES:
        raise ProtocolError(f"message of {len(message)} bytes is too short")
    if crc32(message[:-CRC_BYTES]) != int.from_bytes(message[-CRC_BYTES:], "little"):
        raise ProtocolError("bad CRC")
    return message[:-CRC_BYTES]


def decode_request(frame):
    """A :class:`Request` from one COBS frame (without its delimiter)."""
    message = _check(frame, REQUEST_HEADER_BYTES)
    seq, tag, cmd = struct.unpack_from("<HBB", message)
    return Request(seq, tag, cmd, message[REQUEST_HEADER_BYTES:])


def decode_reply(frame):
    """A :class:`Reply` from one COBS frame (without its delimiter)."""
    message = _check(frame, REPLY_HEADER_BYTES)
    seq, tag, cmd, status = struct.unpack_from("<HBBB", message)
    return Reply(seq, tag, cmd, status, message[REPLY_HEADER_BYTES:])


class Deframer:
    """Splits a byte stream into COBS frames at ``0x00``; :meth:`feed` returns the complete
    frames (without delimiters; empty frames skipped). Bytes before the first delimiter are
    kept as a frame too: callers discard frames that do not decode."""

    def __init__(self, limit=1 << 20):
        self._buf = bytearray()
        self._limit = limit
        self.discarded = 0  # bytes dropped because a frame grew past ``limit``

    def feed(self, data):
        self._buf += data
        if b"\x00" not in data:
            if len(self._buf) > self._limit:
                self.discarded += len(self._buf)
                self._buf.clear()
            return []
        *frames, rest = bytes(self._buf).split(b"\x00")
        self._buf = bytearray(rest)
        return [frame for frame in frames if frame]

    def clear(self):
        self._buf.clear()
