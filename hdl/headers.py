"""Gateware views of the protocol headers, built from the tables in :mod:`openvtep.headers`.

Two byte orders meet here. On the wire (and in a packet stream's ``data``, frame byte 0 in the
lowest byte lane) a header is a run of bytes whose multi-byte fields are big-endian (network
order). Amaranth values are LSB first. :func:`byteswap` is the one place where the two meet:

- the *wire form* of an ``n``-byte header is an ``8*n``-bit value whose bits ``[8k+7:8k]`` are
  wire byte ``k``, exactly as the bytes lie in a packet stream beat;
- the *host form* is a :class:`amaranth.lib.data.Struct` (one per header, fields in wire
  order) whose every field holds its numeric value.

:func:`from_wire` and :func:`to_wire` convert between the two, field by field (a field's bytes
swapped, fields kept in place). Nothing else in ``openvtep.hdl`` swaps bytes.

The per-frame records the pipeline stages pass along (the parser's :data:`ParsedHeaders` and
the editor's :data:`EditCommand`) are also defined here so every stage shares them.
"""

from amaranth.hdl import Cat, Const, Value, unsigned
from amaranth.lib import data

from .. import headers as h
from ..headers import DropReason, Port
from ..rules import VlanOp
from .stream import packet_layout

__all__ = [
    "UDP",
    "VXLAN",
    "EditCommand",
    "Ethernet",
    "IPv4",
    "OutPort",
    "ParsedHeaders",
    "VlanTag",
    "byteswap",
    "command_from_emission",
    "from_wire",
    "header_struct",
    "port_packet_layout",
    "to_wire",
]


def byteswap(value, nbytes):
    """Reverse the byte order of an ``8*nbytes``-bit value: a big-endian wire field to its
    number, or a number to its big-endian wire bytes (the same operation both ways)."""
    if nbytes < 1:
        raise ValueError(f"byteswap needs at least one byte, not {nbytes!r}")
    return Cat(*(value[8 * (nbytes - 1 - k):8 * (nbytes - k)] for k in range(nbytes)))


def _sorted_fields(table):
    fields = sorted(table, key=lambda field: field[1])
    position = 0
    for name, offset, width in fields:
        if offset != position:
            raise ValueError(f"header table has a gap or overlap at field {name!r}")
        position += width
    return fields


def header_struct(name, table, doc=None):
    """A :class:`~amaranth.lib.data.Struct` subclass holding the header described by ``table``
    (``(field, byte offset, byte width)`` rows, as in :mod:`openvtep.headers`), host order."""
    fields = _sorted_fields(table)
    annotations = {field: unsigned(8 * width) for field, _, width in fields}
    return type(name, (data.Struct,), {
        "__annotations__": annotations,
        "__doc__": doc or f"{name} header (host form, numeric fields).",
        "__module__": __name__,
        "WIRE_BYTES": sum(width for _, _, width in fields),
        "TABLE": tuple(fields),
    })


def from_wire(struct, raw):
    """View the wire bytes ``raw`` (``8 * struct.WIRE_BYTES`` bits, byte 0 lowest) as the host
    form ``struct``: each field's big-endian bytes become its number."""
    parts = [byteswap(raw[8 * offset:8 * (offset + width)], width)
             for _, offset, width in struct.TABLE]
    return data.View(struct, Cat(*parts))


def to_wire(struct, fields):
    """The wire bytes (byte 0 lowest) of a ``struct`` header whose fields are ``fields``: a
    dict of field values (missing fields 0), or a view/value of ``struct``."""
    if isinstance(fields, dict):
        unknown = set(fields) - {name for name, _, _ in struct.TABLE}
        if unknown:
            raise ValueError(f"{struct.__name__} has no field(s) {', '.join(sorted(unknown))}")
        values = [fields.get(name, 0) for name, _, _ in struct.TABLE]
    else:
        view = data.View(struct, fields) if not isinstance(fields, data.View) else fields
        values = [getattr(view, name) for name, _, _ in struct.TABLE]
    parts = []
    for (_, _, width), value in zip(struct.TABLE, values):
        value = Const(value, 8 * width) if isinstance(value, int) else Value.cast(value)
        if len(value) < 8 * width:  # zero-extend a narrower value
            value = Cat(value, Const(0, 8 * width - len(value)))
        parts.append(byteswap(value[:8 * width], width))
    return Cat(*parts)


Ethernet = header_struct("Ethernet", h.ETH, "Ethernet II header (IEEE 802.3), 14 bytes.")
VlanTag = header_struct("VlanTag", h.VLAN, "802.1Q tag after the TPID (IEEE 802.1Q): TCI, type.")
IPv4 = header_struct("IPv4", h.IPV4, "IPv4 header without options (RFC 791), 20 bytes.")
UDP = header_struct("UDP", h.UDP, "UDP header (RFC 768), 8 bytes.")
VXLAN = header_struct("VXLAN", h.VXLAN, "VXLAN header (RFC 7348 §5), 8 bytes.")


class OutPort:
    """Output port codes of an :data:`EditCommand`: a :class:`Port`, or :attr:`IN_PORT`."""
    IN_PORT = h.IN_PORT_CODE  # Emission.port None: back out of the port the frame came in on


class ParsedHeaders(data.Struct):
    """The parser's per-frame record (docs/semantics.md steps 1-3).

    ``length`` is the frame's length in bytes (saturating); ``drop``/``reason`` the verdict of
    steps 1-2. ``decap`` says the frame is a VXLAN frame to strip; ``strip`` is then the outer
    header length (50, or 54 with an outer VLAN tag). The match fields describe the inner
    frame when ``decap``, else the frame itself; fields whose ``*_valid`` is clear are 0.
    """
    length: unsigned(16)
    port: Port
    drop: unsigned(1)
    reason: DropReason
    decap: unsigned(1)
    strip: unsigned(6)
    tun_id: unsigned(24)
    tun_src: unsigned(32)
    dl_dst: unsigned(48)
    dl_src: unsigned(48)
    vlan_valid: unsigned(1)
    tci: unsigned(16)
    dl_type: unsigned(16)
    nw_valid: unsigned(1)
    nw_src: unsigned(32)
    nw_dst: unsigned(32)
    nw_proto: unsigned(8)
    tp_valid: unsigned(1)
    tp_src: unsigned(16)
    tp_dst: unsigned(16)


class EditCommand(data.Struct):
    """What the editor does with one frame: the gateware form of
    :class:`openvtep.rules.Emission` (see :func:`command_from_emission`), or a drop.

    ``port`` is a :class:`Port` or :attr:`OutPort.IN_PORT`. ``drop`` discards the frame and
    counts it under ``reason`` (``table_miss`` or ``action_drop``), unless the parser already
    dropped it. ``set_*`` clear: the field is left as the frame has it. ``punt``: after the
    edited output, the frame is also emitted exactly as it arrived on :attr:`Port.CONTROLLER`
    (a rule's ``controller`` beside an edited output; ignored when the frame is dropped).
    """
    drop: unsigned(1)
    reason: DropReason
    port: unsigned(2)
    vlan_op: VlanOp
    vid: unsigned(12)
    set_dl_src: unsigned(1)
    dl_src: unsigned(48)
    set_dl_dst: unsigned(1)
    dl_dst: unsigned(48)
    encap: unsigned(1)
    tun_dst: unsigned(32)
    set_vni: unsigned(1)
    vni: unsigned(24)
    punt: unsigned(1)


def command_from_emission(emission, *, drop_reason=None, punt=False):
    """The :data:`EditCommand` fields (a dict of ints) for an ``Emission``, or for a drop
    (``emission`` None) counted under ``drop_reason``. ``punt``: also send the frame as it
    arrived to the controller (only beside an emission)."""
    if emission is None:
        if punt:
            raise ValueError("a controller copy (punt) needs an emission beside it")
        reason = DropReason.ACTION_DROP if drop_reason is None else DropReason(drop_reason)
        return {"drop": 1, "reason": int(reason)}
    port = OutPort.IN_PORT if emission.port is None else int(emission.port)
    return {
        "drop": 0, "reason": 0, "port": port,
        "vlan_op": int(emission.vlan_op), "vid": emission.vid,
        "set_dl_src": int(emission.dl_src is not None), "dl_src": emission.dl_src or 0,
        "set_dl_dst": int(emission.dl_dst is not None), "dl_dst": emission.dl_dst or 0,
        "encap": int(emission.tun_dst is not None), "tun_dst": emission.tun_dst or 0,
        "set_vni": int(emission.vni is not None), "vni": emission.vni or 0,
        "punt": int(bool(punt)),
    }


def pack(layout, fields):
    """Pack a dict of field ints into the integer form of a struct ``layout`` (for tests and
    simulation drivers)."""
    layout = data.Layout.cast(layout)
    value = 0
    for name, field_value in fields.items():
        field = layout[name]
        width = field.width
        if not 0 <= int(field_value) < (1 << width):
            raise ValueError(f"{name}={field_value:#x} does not fit in {width} bits")
        value |= int(field_value) << field.offset
    return value


def unpack(layout, value):
    """The inverse of :func:`pack`: a dict of field ints."""
    layout = data.Layout.cast(layout)
    return {name: (value >> field.offset) & ((1 << field.width) - 1) for name, field in layout}


def port_packet_layout(width, **extra):
    """A packet layout (:func:`openvtep.hdl.stream.packet_layout`) with a ``port`` field in
    lockstep (constant over a frame) and any ``extra`` per-frame fields (name: shape)."""
    fields = {name: field.shape for name, field in packet_layout(width)}
    fields["port"] = unsigned(2)
    fields.update(extra)
    return data.StructLayout(fields)
