"""Formal contract of the frame editor (hdl/editor.py, Editor: 2 frames, max_frame 64).

- Handshake (k-induction, any run length, any inputs; widths 4 and 16): a beat offered on ``o``
  is neither withdrawn nor changed until taken.
- Edits (bounded, ``EDIT_DEPTH`` cycles from reset, any stalls on all four streams): the frame
  picked by ``AnyConst`` (its index ``F`` among the frames, a byte index ``K`` and that byte's
  value ``V``, both ``AnyConst``) leaves, unless dropped, as one output frame (two with a
  controller copy) in which:

  - byte ``K`` of the input, if it lies beyond the edited header region (``K >= skip``, where
    ``skip`` = outer headers stripped + 12 bytes of MACs + 4 if the frame was tagged; 0 for an
    output to the controller, which is the frame as it arrived), is at ``K - skip + header``
    (``header`` = 50 bytes of encap if encapsulating to ``net`` + 12 + 4 if tagged on output):
    so decap, encap, VLAN push and pop move the tail by exactly the edit's length change and
    change no byte of it;
  - the output length is ``length - skip + header`` and its port the command's (``in_port``
    resolved); the controller copy is the frame as it arrived, byte ``K`` at ``K``;
  - ``keep`` is contiguous on every beat and full on all but the last.

- Frame conservation (same bound): records and commands are taken together; a joined frame
  leaves exactly once (twice with a controller copy) or is counted, once, in the drop counter
  of its reason (the parser's, else the command's); output frames never outnumber the joined
  frames' expected outputs, and while some are owed ``o`` is never idle more than
  ``OUTPUT_LATENCY`` cycles in a row.

The environment is the parser's guarantee, nothing more: beats are well-formed (``keep``
contiguous, full except on ``last``); record ``n`` describes frame ``n`` (its length; a record
not dropped has ``strip`` 0, 50 or 54 and at least ``14 + strip (+ 4 tagged)`` and at most
``max_frame`` bytes); the record is offered once its frame has ended (the editor cannot join it
before); ports and drop reasons are in range. Commands are arbitrary.

The bound and the width: the edits are checked at width 16 for ``EDIT_DEPTH`` = 10 cycles from
reset, the shortest run in which the longest cases fit (a 64-byte VXLAN frame in 4 beats, its
record, its decapsulated output; a 14-byte frame encapsulated to 64 bytes): the cover run
reaches decap and encap in the 10th cycle, VLAN push, pop, a controller copy, two drops and a
stall earlier. Width 4 would need 26 cycles for the same cases, and the solver time about
doubles with every cycle (at width 4 the 14th cycle alone took over a minute). Two shortcuts
keep the unrolling small, neither of which the editor can tell apart from the general case:
the bytes of every frame other than byte ``K`` of frame ``F`` are one arbitrary pattern (a
misplaced byte shows the pattern where ``V`` belongs, and the solver picks ``V`` unlike it; the
editor never looks at the bytes it moves), and the record and command fields that only go
into the header bytes written (addresses, VNI, TCI, tunnel destination) are arbitrary but
fixed for the run; the fields that decide a frame's fate are free on every cycle.
"""

import pytest
from amaranth.asserts import AnyConst, AnySeq
from amaranth.hdl import Array, Assert, Assume, Cover, Elaboratable, Module, Mux, Signal
from amaranth.lib import data, wiring

from openvtep import headers as h
from openvtep.config import VtepConfig
from openvtep.hdl.editor import Editor
from openvtep.headers import DropReason, Port
from openvtep.rules import VlanOp
from openvtep.sim import formal

from .contracts import (
    ACCOUNT_BITS,
    Withdrawing,
    contract_module,
    fair_sink,
    stream_sink,
    stream_source,
)

WIDTH = 16
LANE_BITS = WIDTH.bit_length() - 1
FRAMES = 2
CONFIG = VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE,
                    max_frame=64)
EDIT_DEPTH = 10
# Induction needs only 3; the base case must reach a frame's first output beat (about 7 cycles
# from reset) for the broken variant's counterexample.
HANDSHAKE_DEPTH = 10
OUTPUT_LATENCY = 6
MAX_STALL = 2
MAC_BYTES = 12
LEN_BITS = 8     # frame lengths in the contract: 255 bytes is more than EDIT_DEPTH beats


# Record and command fields that decide what happens to a frame (the others only feed the
# header bytes written).
FATE_FIELDS = ("length", "port", "drop", "reason", "strip", "vlan_valid", "vlan_op", "encap",
               "punt")


def run_constant(m, port_payload, name, free):
    """A payload for a source on ``port_payload``'s stream: the fields named in ``free``
    arbitrary on every cycle (``AnySeq``), the others arbitrary but fixed for the run."""
    payload = Signal.like(port_payload, name=f"{name}_payload")
    m.d.comb += payload.eq(AnyConst(len(payload.as_value())))
    for field_name, field in data.Layout.cast(payload.shape()):
        if field_name in free:
            m.d.comb += getattr(payload, field_name).eq(AnySeq(field.width))
    return payload


def popcount(value):
    return sum(value[k] for k in range(len(value)))


class EditorContract(Elaboratable):
    def __init__(self, dut, *, edits=True):
        self.dut = dut
        self.edits = edits

    def elaborate(self, platform):
        m = contract_module()
        m.submodules.dut = dut = self.dut
        ready = fair_sink(m, MAX_STALL, "o") if self.edits else None
        took_out, out_stalled = stream_sink(m, dut.o, "o", ready=ready)
        if not self.edits:
            stream_source(m, dut.i, "i")
            stream_source(m, dut.i_hdr, "i_hdr")
            stream_source(m, dut.i_cmd, "i_cmd")
            m.d.comb += Cover(out_stalled & took_out & dut.o.p.last)
            return m

        # --- Input frames: well-formed beats, lengths kept until their record. ----------------
        # Byte K of frame F is V; every other byte of every frame is one arbitrary pattern
        # (a byte the editor put in the wrong place would show the pattern, not V, where V
        # belongs: the solver picks V unlike it). The editor never looks at the bytes it moves.
        frame = AnyConst(ACCOUNT_BITS)
        byte_index = AnyConst(LEN_BITS)
        value = AnyConst(8)
        pattern = AnyConst(8 * WIDTH)
        n_in = Signal(ACCOUNT_BITS)     # frames ended
        in_bytes = Signal(LEN_BITS)     # bytes of the current input frame so far
        tracked = Signal()
        m.d.comb += tracked.eq((n_in == frame) & (in_bytes == (byte_index & ~(WIDTH - 1))))
        source = Signal.like(dut.i.p, name="i_payload")
        m.d.comb += [source.keep.eq(AnySeq(WIDTH)), source.last.eq(AnySeq(1))]
        for lane in range(WIDTH):
            m.d.comb += source.data.word_select(lane, 8).eq(
                Mux(tracked & (byte_index[:LANE_BITS] == lane), value,
                    pattern.word_select(lane, 8)))
        took_in = stream_source(m, dut.i, "i", payload=source)
        beat = dut.i.p
        keep_ok = Signal()
        m.d.comb += keep_ok.eq(Mux(beat.last, (beat.keep & (beat.keep + 1)) == 0,
                                   beat.keep == (1 << WIDTH) - 1) & (beat.keep != 0))
        with m.If(dut.i.valid):
            m.d.comb += Assume(keep_ok)
        lengths = Array(Signal(LEN_BITS, name=f"length{k}") for k in range(4))
        with m.If(took_in):
            m.d.sync += in_bytes.eq(in_bytes + popcount(beat.keep))
            with m.If(beat.last):
                m.d.sync += [in_bytes.eq(0), n_in.eq(n_in + 1),
                             lengths[n_in[:2]].eq(in_bytes + popcount(beat.keep))]


        # --- Records and commands: the parser's promises. ------------------------------------
        # The fields that decide a frame's fate are free on every cycle; the ones that only go
        # into the header bytes (addresses, VNI, ...) are free but the same for the whole run,
        # which keeps the solver's unrolling small.
        took_hdr = stream_source(m, dut.i_hdr, "i_hdr",
                                 payload=run_constant(m, dut.i_hdr.p, "hdr", FATE_FIELDS))
        took_cmd = stream_source(m, dut.i_cmd, "i_cmd",
                                 payload=run_constant(m, dut.i_cmd.p, "cmd", FATE_FIELDS))
        rec, cmd = dut.i_hdr.p, dut.i_cmd.p
        n_join = Signal(ACCOUNT_BITS)   # records (and commands) taken
        m.d.comb += [
            Assume(~dut.i_hdr.valid | (n_in != n_join)),
            Assert(took_hdr == took_cmd),
        ]
        length = rec.length
        with m.If(dut.i_hdr.valid):
            m.d.comb += [
                Assume(length == lengths[n_join[:2]]),
                Assume(rec.port != 3),
                Assume((rec.strip == 0) | (rec.strip == h.ENCAP_BYTES)
                       | (rec.strip == h.ENCAP_BYTES + h.VLAN_BYTES)),
                Assume(rec.reason < len(DropReason)),
                Assume(rec.drop | ((length >= h.ETH_BYTES + rec.strip + 4 * rec.vlan_valid)
                                   & (length <= CONFIG.max_frame))),
            ]
        with m.If(dut.i_cmd.valid):
            m.d.comb += Assume(cmd.reason < len(DropReason))

        # --- The joined frame's expected fate, computed here from docs/semantics.md. ---------
        drop = rec.drop | cmd.drop
        reason = Mux(rec.drop, rec.reason, cmd.reason)
        port = Signal(2)
        m.d.comb += port.eq(Mux(cmd.port == 3, rec.port, cmd.port))
        raw = port == Port.CONTROLLER
        tagged_out = Mux(cmd.vlan_op == VlanOp.KEEP, rec.vlan_valid,
                         cmd.vlan_op != VlanOp.STRIP)
        skip = Signal(LEN_BITS)
        header = Signal(LEN_BITS)
        m.d.comb += [
            skip.eq(Mux(raw, 0, rec.strip + MAC_BYTES + 4 * rec.vlan_valid)),
            header.eq(Mux(raw, 0, Mux(cmd.encap & (port == Port.NET), h.ENCAP_BYTES, 0)
                          + MAC_BYTES + 4 * tagged_out)),
        ]
        copy = cmd.punt & ~raw
        outs = Mux(drop, 0, 1 + copy)

        expected = Signal(ACCOUNT_BITS)   # output frames owed by the frames joined so far
        drop_reason = AnyConst(4)
        dropped = Signal(ACCOUNT_BITS)    # joined frames dropped under drop_reason
        with m.If(took_hdr):
            m.d.sync += [n_join.eq(n_join + 1), expected.eq(expected + outs)]
            with m.If(drop & (reason == drop_reason)):
                m.d.sync += dropped.eq(dropped + 1)
        m.d.comb += Assume(drop_reason < len(DropReason))
        counted = Signal(ACCOUNT_BITS)    # the editor counts a drop the cycle after its join
        m.d.sync += counted.eq(dropped)
        m.d.comb += Assert(dut.drops[drop_reason][:ACCOUNT_BITS] == counted)

        f_joined = Signal()
        f_drop = Signal()
        f_first = Signal(ACCOUNT_BITS)   # index of its first output frame
        f_copy = Signal()
        f_port = Signal(2)
        f_skip = Signal(LEN_BITS)
        f_header = Signal(LEN_BITS)
        f_length = Signal(LEN_BITS)
        with m.If(took_hdr & (n_join == frame)):
            m.d.sync += [f_joined.eq(1), f_drop.eq(drop), f_first.eq(expected), f_copy.eq(copy),
                         f_port.eq(port), f_skip.eq(skip), f_header.eq(header),
                         f_length.eq(length)]

        # --- Output frames. -------------------------------------------------------------------
        out = dut.o.p
        n_out = Signal(ACCOUNT_BITS)     # output frames ended
        out_bytes = Signal(LEN_BITS)
        out_port = Signal(2)             # the port of the current frame's first beat
        with m.If(took_out):
            m.d.sync += [out_bytes.eq(out_bytes + popcount(out.keep)), out_port.eq(out.port)]
            with m.If(out.last):
                m.d.sync += [out_bytes.eq(0), n_out.eq(n_out + 1)]
        with m.If(dut.o.valid):
            m.d.comb += [
                Assert(Mux(out.last, (out.keep & (out.keep + 1)) == 0,
                           out.keep == (1 << WIDTH) - 1) & (out.keep != 0)),
                Assert((out_bytes == 0) | (out.port == out_port)),
                Assert(expected != n_out),
            ]
        m.d.comb += Assert((expected - n_out)[:ACCOUNT_BITS] <= 2 * FRAMES + 2)

        primary = f_joined & ~f_drop & (n_out == f_first)
        copy_out = f_joined & ~f_drop & f_copy & (n_out == f_first + 1)
        target = Signal(LEN_BITS)   # where byte K of frame F is in the current output frame
        m.d.comb += target.eq(Mux(copy_out, byte_index, byte_index - f_skip + f_header))
        tail_byte = (byte_index >= Mux(copy_out, 0, f_skip)) & (byte_index < f_length)
        with m.If(took_out & (primary | copy_out)):
            m.d.comb += Assert(out.port == Mux(copy_out, Port.CONTROLLER, f_port))
            with m.If(tail_byte & (out_bytes == (target & ~(WIDTH - 1)))):
                m.d.comb += Assert(out.data.word_select(target[:LANE_BITS], 8) == value)
            with m.If(out.last):
                m.d.comb += Assert(out_bytes + popcount(out.keep) ==
                                   Mux(copy_out, f_length, f_length - f_skip + f_header))

        late = Signal(range(OUTPUT_LATENCY + 1))  # cycles with frames owed and o idle
        with m.If((expected != n_out) & ~dut.o.valid):
            m.d.sync += late.eq(late + 1)
        with m.Else():
            m.d.sync += late.eq(0)
        m.d.comb += Assert(late < OUTPUT_LATENCY)

        # --- Reachability. --------------------------------------------------------------------
        checked = Signal()
        m.d.comb += checked.eq(took_out & primary & tail_byte &
                               (out_bytes == (target & ~(WIDTH - 1))))
        m.d.comb += [
            Cover(checked & (f_skip >= 62) & (f_header == MAC_BYTES)),           # decap
            Cover(checked & (f_header >= 62) & (f_skip == MAC_BYTES)),           # encap
            Cover(checked & (f_header == f_skip + 4)),                           # VLAN push
            Cover(checked & (f_skip == f_header + 4)),                           # VLAN pop
            Cover(took_out & copy_out & out.last & (f_length > 14)),             # controller
            Cover((dropped == 2) & (n_out == 1)),                                # drops
            Cover(out_stalled & took_out & primary),
        ]
        return m


# --- Deliberately broken editors: the same contract must catch them. ------------------------


class _Wrapped(wiring.Component):
    """An editor seen through a broken wire: ``fix_hdr``/``fix_cmd`` rewrite the record or
    command the inner :class:`Editor` gets (the bug), everything else is connected through."""

    def __init__(self, width, config, *, frames):
        self.editor = Editor(width, config, frames=frames)
        super().__init__(self.editor.signature)

    def fix_hdr(self, m, rec):
        return rec

    def fix_cmd(self, m, cmd):
        return cmd

    def elaborate(self, platform):
        m = Module()
        m.submodules.editor = inner = self.editor
        wiring.connect(m, wiring.flipped(self.i), inner.i)
        wiring.connect(m, inner.o, wiring.flipped(self.o))
        m.d.comb += self.drops.eq(inner.drops)
        for name, fix in (("i_hdr", self.fix_hdr), ("i_cmd", self.fix_cmd)):
            port, inner_port = getattr(self, name), getattr(inner, name)
            m.d.comb += [inner_port.valid.eq(port.valid), port.ready.eq(inner_port.ready),
                         inner_port.p.eq(port.p)]
            fix(m, inner_port.p)
        return m


class PopIgnoringEditor(_Wrapped):
    """Broken: a VLAN pop (``vlan_op`` STRIP) leaves the tag in place."""

    def fix_cmd(self, m, cmd):
        with m.If(self.i_cmd.p.vlan_op == VlanOp.STRIP):
            m.d.comb += cmd.vlan_op.eq(VlanOp.KEEP)


class CopyLosingEditor(_Wrapped):
    """Broken: the controller copy of a punted frame is never sent."""

    def fix_cmd(self, m, cmd):
        m.d.comb += cmd.punt.eq(0)


def editor(cls=Editor):
    return cls(WIDTH, CONFIG, frames=FRAMES)


@pytest.mark.parametrize("width", [4, 16])
def test_editor_handshake_proof(width):
    formal.check(EditorContract(Editor(width, CONFIG, frames=FRAMES), edits=False),
                 f"editor_handshake_w{width}", mode="prove", depth=HANDSHAKE_DEPTH)


def test_editor_handshake_broken():
    broken = Withdrawing(editor(), lambda wrapper: wrapper.i_hdr.valid)
    formal.check_fails(EditorContract(broken, edits=False),
                       "editor_handshake_withdrawing", mode="prove", depth=HANDSHAKE_DEPTH)


@pytest.mark.slow  # 1 to 2 minutes alone, more beside other jobs
def test_editor_edits_bmc():
    formal.check(EditorContract(editor()), "editor_edits", mode="bmc", depth=EDIT_DEPTH)


def test_editor_edits_cover():
    formal.check(EditorContract(editor()), "editor_edits", mode="cover", depth=EDIT_DEPTH)


@pytest.mark.parametrize("cls", [PopIgnoringEditor, CopyLosingEditor],
                         ids=lambda c: c.__name__)
def test_editor_edits_broken(cls):
    formal.check_fails(EditorContract(editor(cls)), f"editor_edits_{cls.__name__}", mode="bmc",
                       depth=EDIT_DEPTH)
