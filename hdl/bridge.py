"""The control bridge: the chip end of the host control protocol (:mod:`openvtep.protocol`).

:class:`ControlBridge` takes request bytes, executes them against the control bus
(:mod:`openvtep.hdl.bus`) and the frame inject/capture streams, and returns reply bytes. Its
byte ports are plain 8-bit streams, so a board puts :class:`openvtep.hdl.uart.UART` in front of
it and the virtual board (:mod:`openvtep.sim.virtual_board`) feeds it from a socket.

Also here: :class:`CobsDecoder` and :class:`CobsEncoder`, the framing layer on their own.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.crc import catalog
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import protocol as p
from ..headers import Port
from . import bus
from .stream import RegisterSlice, packet_layout

__all__ = ["CobsDecoder", "CobsEncoder", "ControlBridge", "frame_layout"]

CRC = catalog.CRC32_ISO_HDLC(data_width=8)  # = protocol.crc32 (zlib)
# WRITE_PACKED item header: offset [4:0], base [5], data bytes - 1 [7:6].
assert (p.PACKED_BASES, p.PACKED_WINDOW) == (2, 32)
assert CRC.compute(b"openvtep") == p.crc32(b"openvtep")

TOKEN = data.StructLayout({"data": 8, "end": 1, "error": 1})
BYTE_LAST = data.StructLayout({"data": 8, "last": 1})


def frame_layout(width):
    """Packet layout with the frame's :class:`~openvtep.headers.Port` in lockstep (constant
    over the frame): the inject and capture streams. Same fields as
    ``openvtep.hdl.headers.port_packet_layout(width)``, so the two connect."""
    fields = {name: field.shape for name, field in packet_layout(width)}
    fields["port"] = unsigned(2)
    return data.StructLayout(fields)


class CobsDecoder(wiring.Component):
    """COBS decoder: line bytes in (``0x00`` delimits messages), tokens out.

    A token is a decoded message byte (``end`` = 0) or the end of a message (``end`` = 1,
    ``error`` = 1 if the delimiter came inside a code group, i.e. the message was truncated).
    Empty messages (consecutive delimiters) give no token.

    Latency 1 cycle; one byte per cycle; ``i.ready = ~o.valid | o.ready`` (register slice). A
    code byte emits the zero implied by the previous group, so it costs no extra cycle.
    """

    i: In(stream.Signature(8))
    o: Out(stream.Signature(TOKEN))

    def __init__(self):
        super().__init__()
        self.started = Signal()  # inside a message: for the bridge's idle indication

    def elaborate(self, platform):
        m = Module()
        remaining = Signal(8)   # bytes left in the current code group
        pending_zero = Signal()  # the group just ended implies a zero (code was not 0xFF)

        m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
        with m.If(self.i.ready):
            m.d.sync += self.o.valid.eq(0)
            with m.If(self.i.valid):
                byte = self.i.payload
                with m.If(byte == 0):
                    with m.If(self.started):
                        m.d.sync += [self.o.valid.eq(1), self.o.payload.end.eq(1),
                                     self.o.payload.error.eq(remaining != 0),
                                     self.o.payload.data.eq(0)]
                    m.d.sync += [self.started.eq(0), remaining.eq(0), pending_zero.eq(0)]
                with m.Elif(remaining == 0):
                    m.d.sync += [self.started.eq(1), remaining.eq(byte - 1),
                                 pending_zero.eq(byte != 0xFF)]
                    with m.If(pending_zero):
                        m.d.sync += [self.o.valid.eq(1), self.o.payload.end.eq(0),
                                     self.o.payload.error.eq(0), self.o.payload.data.eq(0)]
                with m.Else():
                    m.d.sync += [remaining.eq(remaining - 1), self.o.valid.eq(1),
                                 self.o.payload.end.eq(0), self.o.payload.error.eq(0),
                                 self.o.payload.data.eq(byte)]
        return m


class CobsEncoder(wiring.Component):
    """COBS encoder: message bytes in (``last`` on a message's final byte), line bytes out,
    each message followed by a ``0x00`` delimiter; the same encoding as
    :func:`openvtep.protocol.cobs_encode`.

    A code group (up to 254 bytes) is collected in a small RAM, then sent code byte first, so
    a message byte takes about two cycles (one in, one out). ``i.ready`` is high only while
    collecting; ``o`` holds its byte while stalled. ``idle`` is high between messages.
    """

    i: In(stream.Signature(BYTE_LAST))
    o: Out(stream.Signature(8))

    def __init__(self):
        super().__init__()
        self.idle = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.group = group = Memory(shape=8, depth=256, init=[])
        wr = group.write_port()
        rd = group.read_port()

        count = Signal(8)  # bytes collected in the group
        code = Signal(8)
        flush = Signal(8)  # bytes to send after the code byte
        index = Signal(8)
        extra = Signal()   # a final empty group (code 0x01) follows
        end = Signal()     # the delimiter follows

        m.d.comb += rd.addr.eq(index)
        with m.FSM():
            with m.State("Collect"):
                m.d.comb += [self.i.ready.eq(1), self.idle.eq(count == 0)]
                byte, last = self.i.payload.data, self.i.payload.last
                nonzero = byte != 0
                full = nonzero & (count == 253)
                m.d.comb += [wr.addr.eq(count), wr.data.eq(byte),
                             wr.en.eq(self.i.valid & nonzero)]
                with m.If(self.i.valid):
                    with m.If(~nonzero | full | last):
                        m.d.sync += [
                            code.eq(Mux(full, 0xFF, count + 1 + nonzero)),
                            flush.eq(count + nonzero),
                            extra.eq(last & (~nonzero | full)),
                            end.eq(last),
                            index.eq(0),
                        ]
                        m.next = "Code"
                    with m.Else():
                        m.d.sync += count.eq(count + 1)
            with m.State("Code"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(code)]
                with m.If(self.o.ready):
                    with m.If(flush == 0):
                        m.next = "After"
                    with m.Else():
                        m.next = "Data"
            with m.State("Data"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(rd.data)]
                with m.If(self.o.ready):
                    m.d.comb += rd.addr.eq(index + 1)
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == flush - 1):
                        m.next = "After"
            with m.State("After"):
                m.d.sync += count.eq(0)
                with m.If(extra):
                    m.next = "Extra"
                with m.Elif(end):
                    m.next = "Delimiter"
                with m.Else():
                    m.next = "Collect"
            with m.State("Extra"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(0x01)]
                with m.If(self.o.ready):
                    m.next = "Delimiter"
            with m.State("Delimiter"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(0x00)]
                with m.If(self.o.ready):
                    m.next = "Collect"
        return m


def _field_bytes(table, values):
    """The bytes of a protocol field table as a list of 8-bit Amaranth values (little-endian),
    from ``values`` (name: int or Value)."""
    out = [None] * p.table_bytes(table)
    for name, offset, width in table:
        value = values[name]
        value = Const(value, 8 * width) if isinstance(value, int) else \
            Cat(value, Const(0, 8 * width))
        for k in range(width):
            out[offset + k] = value[8 * k:8 * k + 8]
    assert all(x is not None for x in out), "field table has gaps"
    return out


class ControlBridge(wiring.Component):
    """Executes the host control protocol (:mod:`openvtep.protocol`) on the chip.

    Request bytes arrive on ``i`` (from a UART, or a socket on the virtual board); they are
    COBS-decoded into a request buffer (``max_request`` bytes of block RAM) while their CRC is
    computed. A complete message is checked (framing, length, CRC, sequence number), then
    executed: bus reads and writes on ``bus``, a frame out of ``o_inject``, a captured frame
    from ``i_capture``. The reply is CRC'd, COBS-encoded and sent on ``o``. One message is
    handled at a time; the next one waits in ``i`` (backpressure) until the reply is out.

    Nothing is executed before the whole message has arrived with a good CRC, so a corrupted
    write batch changes nothing. Ordered commands (writes, inject) obey the sequence rules of
    :mod:`openvtep.protocol`: a retransmission is answered, not executed again.

    Latency: a request is executed a few cycles after its delimiter arrives; a write costs
    about 9 cycles a word (7 body bytes read from the buffer, the bus request, its response),
    a block read about 10 (bus request and response, then 4 reply bytes through the encoder)
    plus the target's latency. Reply bytes leave at about half a byte per cycle (the COBS
    encoder collects each group before sending it). Any real UART is
    far slower than both, but the board must put a FIFO of a few dozen bytes between the UART
    receiver (which cannot wait) and ``i``, to cover the execution of one message.

    Backpressure: honoured on every port; ``o`` may stall for ever without harm (the bridge
    waits), ``o_inject`` likewise. A bus target that does not accept or answer a request
    within ``bus_timeout`` cycles fails the command with :attr:`Status.BUS_TIMEOUT`.

    Errors: every well-delimited message gets a reply. Framing errors, overlong messages, bad
    lengths, bad CRCs, unknown commands, out-of-sequence numbers, bad arguments and bus errors
    are answered with the matching :class:`~openvtep.protocol.Status` and an error body
    (expected ``seq``, ``info``); the bridge never hangs on a bad request. A write batch
    stops at the first bus error (the writes before it are done; ``info`` is the failing
    address). A ``WRITE_PACKED`` is scanned first (two cycles an item: its header byte,
    registered, then the checks): an item running past the body (``BAD_LENGTH``) or past the
    address space (``BAD_ARGUMENT``, ``info`` the address) fails it before anything is
    written. A ``READ_BLOCK``/``COUNTERS`` reply is cut short before a failing word: fewer
    words than asked means the next one failed.

    Capture: one frame at a time is taken from ``i_capture`` into a ``max_frame``-byte buffer
    and numbered; ``CAPTURE`` returns it and, on the next ``CAPTURE`` naming its number, drops
    it. Frames waiting behind it stay in ``i_capture`` (the top puts a FIFO there). Longer
    frames keep their first ``max_frame`` bytes and are flagged truncated.

    Parameters
    ----------
    width : int
        Bytes per beat of the inject/capture streams.
    max_frame : int
        Largest injected or captured frame, bytes.
    max_request : int
        Request buffer size, bytes (a message, header and CRC included). At least
        ``max_frame + 9``.
    max_block : int
        Most words one ``READ_BLOCK`` (or half as many counters one ``COUNTERS``) returns.
    bus_timeout : int
        Cycles a bus request may take, acceptance and response together.
    exact_entries, wildcard_entries, counters, build_id : int
        Reported by ``IDENTIFY`` for the host (table sizes of the pipeline behind the bus, and
        a build identifier).

    Attributes
    ----------
    idle : Signal, out
        No message partly received and no reply pending.
    """

    def __init__(self, width, *, max_frame=1518, max_request=2048, max_block=256,
                 bus_timeout=4096, exact_entries=0, wildcard_entries=0, counters=0,
                 build_id=0):
        def check(name, value, low, high):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"ControlBridge {name} must be an integer in {low}..{high}, "
                                 f"not {value!r}")
        check("width", width, 1, 64)
        check("max_frame", max_frame, 14, 0xFFFF)
        check("max_request", max_request, max_frame + 1 + p.REQUEST_OVERHEAD, 0xFFFF)
        check("max_block", max_block, 2, 0xFFFF)
        check("bus_timeout", bus_timeout, 2, 1 << 24)
        check("exact_entries", exact_entries, 0, 0xFFFFFFFF)
        check("wildcard_entries", wildcard_entries, 0, 0xFFFF)
        check("counters", counters, 0, 0xFFFF)
        check("build_id", build_id, 0, 0xFFFFFFFF)
        self.width = width
        self.max_frame = max_frame
        self.max_request = max_request
        self.max_block = max_block
        self.bus_timeout = bus_timeout
        self.identity = {
            "magic": p.MAGIC, "version": p.VERSION, "width": width, "window": p.WINDOW,
            "addr_bits": p.ADDR_BITS, "ports": len(Port), "max_request": max_request,
            "max_frame": max_frame, "max_block": max_block, "exact_entries": exact_entries,
            "wildcard_entries": wildcard_entries, "counters": counters, "build_id": build_id,
        }
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "bus": Out(bus.Signature()),
            "o_inject": Out(stream.Signature(frame_layout(width))),
            "i_capture": In(stream.Signature(frame_layout(width))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.width
        C = p.Command
        S = p.Status

        m.submodules.decoder = dec = CobsDecoder()
        m.submodules.encoder = enc = CobsEncoder()
        wiring.connect(m, wiring.flipped(self.i), dec.i)
        wiring.connect(m, enc.o, wiring.flipped(self.o))
        # One CRC engine: requests are received and replies sent at different times.
        m.submodules.crc = crc = CRC.create()

        # --- Request buffer -------------------------------------------------------------------
        m.submodules.request = request = Memory(shape=8, depth=self.max_request, init=[])
        req_wr = request.write_port()
        req_rd = request.read_port(transparent_for=())
        length = Signal(range(self.max_request + 1))
        overflow = Signal()
        frame_error = Signal()
        mod7 = Signal(range(7))  # bytes after the header (body + CRC), modulo 7
        seq = Signal(16)
        tag = Signal(8)
        cmd = Signal(8)
        # Body reader: ``byte`` is request[rpos]; a state that consumes it drives
        # ``rd_addr = rpos + 1`` and increments ``rpos`` (one byte per cycle).
        rpos = Signal(range(self.max_request + 1))
        body_end = Signal(range(self.max_request + 1))
        byte = req_rd.data
        m.d.comb += req_rd.addr.eq(rpos)

        def consume():
            m.d.comb += req_rd.addr.eq(rpos + 1)
            m.d.sync += rpos.eq(rpos + 1)

        body_len = Signal(range(self.max_request + 1))
        m.d.comb += body_len.eq(length - p.REQUEST_OVERHEAD)

        # --- Session and sequence state --------------------------------------------------------
        session = Signal(32)
        next_seq = Signal(16)
        window_fill = Signal(range(p.WINDOW + 1))
        executed = Signal(32)
        m.submodules.ring = ring = Memory(shape=8, depth=p.WINDOW, init=[])
        ring_wr = ring.write_port()
        ring_rd = ring.read_port(domain="comb")
        m.d.comb += ring_rd.addr.eq(seq)
        commit = Signal()  # the message being executed is an ordered one, new
        bad_crc = Signal(16)
        bad_frame = Signal(16)
        seq_errors = Signal(16)
        bus_errors = Signal(16)

        # --- Capture buffer (its own process, below) -------------------------------------------
        m.submodules.capture = capture = Memory(shape=8, depth=self.max_frame, init=[])
        cap_wr = capture.write_port()
        cap_rd = capture.read_port(transparent_for=())
        cap_held = Signal()
        cap_len = Signal(range(self.max_frame + 1))
        cap_port = Signal(2)
        cap_id = Signal(16)
        cap_trunc = Signal()
        cap_next_id = Signal(16)
        cap_truncated = Signal(16)  # frames truncated so far (STATUS)
        cap_filling = Signal()
        cap_pop = Signal()
        cap_rpos = Signal(range(self.max_frame + 1))
        m.d.comb += cap_rd.addr.eq(cap_rpos)

        # --- Reply --------------------------------------------------------------------------
        r_status = Signal(8)
        r_info = Signal(32)
        word = Signal(32)      # fetched bytes, read data
        addr = Signal(p.ADDR_BITS)
        wdata = Signal(32)
        bases = [Signal(p.ADDR_BITS, name=f"packed_base{k}") for k in range(p.PACKED_BASES)]
        item_last = Signal(2)  # WRITE_PACKED: index of the item's last data byte
        count = Signal(17)     # words left in a block read
        port = Signal(8)
        r_flags = Signal(8)
        r_id = Signal(16)
        r_port = Signal(8)
        fetch_k = Signal(range(4))
        index = Signal(range(64))
        timer = Signal(range(max(self.bus_timeout, 4 * self.max_frame + 64) + 1))

        kinds = {}

        def kind(name, body):
            header = _field_bytes(p.REPLY_HEADER, {"seq": seq, "tag": tag, "cmd": cmd,
                                                   "status": r_status})
            kinds[name] = (len(kinds), header + body)

        kind("empty", [])
        kind("error", _field_bytes(p.ERROR_BODY, {"expected_seq": next_seq, "info": r_info}))
        kind("word", _field_bytes((("data", 0, 4),), {"data": word}))
        kind("identify", _field_bytes(p.IDENTIFY_BODY, {
            **self.identity, "session": session, "next_seq": next_seq}))
        kind("status", _field_bytes(p.STATUS_BODY, {
            "session": session, "next_seq": next_seq, "executed": executed,
            "bad_crc": bad_crc, "bad_frame": bad_frame, "seq_errors": seq_errors,
            "bus_errors": bus_errors, "capture_held": word[0],
            "capture_next_id": word[8:24], "capture_truncated": cap_truncated}))
        kind("capture", _field_bytes(p.CAPTURE_REPLY, {
            "flags": r_flags, "id": r_id, "port": r_port}))
        kind("block", [])
        r_kind = Signal(range(len(kinds)))

        # Reply bytes reach the encoder through a register stage: the capture buffer's block
        # RAM output had fed the encoder's next-state logic (the ULX3S 64/32 build's critical
        # path, 11 logic levels, 19.2 ns).
        m.submodules.tx_slice = tx_slice = RegisterSlice(payload=BYTE_LAST)
        wiring.connect(m, tx_slice.o, enc.i)
        tx = tx_slice.i
        tx_crc_phase = Signal()
        m.d.comb += [
            crc.data.eq(tx.payload.data),
            crc.valid.eq(tx.valid & tx.ready & ~tx_crc_phase),
        ]

        def finish(kind_name, status, info=0, *, do_commit=None):
            """Reply with ``kind_name`` and ``status``; commit an ordered message."""
            m.d.sync += [r_kind.eq(kinds[kind_name][0]), r_status.eq(status), r_info.eq(info),
                         index.eq(0)]
            do_commit = commit if do_commit is None else do_commit
            m.d.comb += [ring_wr.addr.eq(seq), ring_wr.data.eq(status),
                         ring_wr.en.eq(do_commit)]
            with m.If(do_commit):
                m.d.sync += [next_seq.eq(next_seq + 1), executed.eq(executed + 1),
                             window_fill.eq(Mux(window_fill == p.WINDOW, p.WINDOW,
                                                window_fill + 1)),
                             commit.eq(0)]
            m.next = "Reply"

        def error(status, info=0, **kwargs):
            finish("error", status, info, **kwargs)

        def bus_request(write):
            m.d.sync += [timer.eq(0), self.bus.w_en.eq(write)]
            m.next = "Bus"

        def fetch(name, target, nbytes, then):
            """State ``name``: read ``nbytes`` body bytes into ``target`` (little-endian), then
            ``then(value)`` with the complete value (``target`` is updated a cycle later)."""
            with m.State(name):
                consume()
                m.d.sync += [target.word_select(fetch_k, 8).eq(byte), fetch_k.eq(fetch_k + 1)]
                with m.If(fetch_k == nbytes - 1):
                    m.d.sync += fetch_k.eq(0)
                    then(Cat(target[:8 * (nbytes - 1)], byte))

        def body_ok(command):
            spec = p.BODY_BYTES[command]
            if isinstance(spec, int):
                return body_len == spec
            minimum, step, offset = spec
            ok = body_len >= minimum
            if step == 4:
                ok = ok & (body_len[:2] == offset % 4)
            elif step == 7:  # mod7 counts the CRC bytes too
                ok = ok & (mod7 == (offset + p.CRC_BYTES) % 7)
            elif step != 1:
                raise NotImplementedError(f"body length step {step}")
            return ok

        block_op = Signal()  # the bus request belongs to a block read
        bus_timed_out = timer == self.bus_timeout
        timed_out = Signal()

        with m.FSM() as fsm:
            with m.State("Receive"):
                m.d.comb += dec.o.ready.eq(1)
                token = dec.o.payload
                with m.If(dec.o.valid):
                    with m.If(token.end):
                        m.d.sync += frame_error.eq(token.error)
                        m.next = "Check"
                    with m.Else():
                        m.d.comb += [crc.valid.eq(1), crc.data.eq(token.data),
                                     crc.start.eq(length == 0)]
                        with m.If(length == self.max_request):
                            m.d.sync += overflow.eq(1)
                        with m.Else():
                            m.d.comb += [req_wr.en.eq(1), req_wr.addr.eq(length),
                                         req_wr.data.eq(token.data)]
                            m.d.sync += length.eq(length + 1)
                        with m.Switch(length):
                            with m.Case(0):
                                m.d.sync += seq[:8].eq(token.data)
                            with m.Case(1):
                                m.d.sync += seq[8:].eq(token.data)
                            with m.Case(2):
                                m.d.sync += tag.eq(token.data)
                            with m.Case(3):
                                m.d.sync += cmd.eq(token.data)
                            with m.Default():
                                m.d.sync += mod7.eq(Mux(mod7 == 6, 0, mod7 + 1))

            with m.State("Check"):
                m.d.comb += req_rd.addr.eq(p.REQUEST_HEADER_BYTES)
                m.d.sync += [rpos.eq(p.REQUEST_HEADER_BYTES),
                             body_end.eq(length - p.CRC_BYTES), fetch_k.eq(0)]
                behind = (next_seq - seq)[:16]
                with m.If(frame_error):
                    m.d.sync += bad_frame.eq(bad_frame + 1)
                    error(S.BAD_FRAME, 0)
                with m.Elif(overflow):
                    m.d.sync += bad_frame.eq(bad_frame + 1)
                    error(S.OVERSIZE, self.max_request)
                with m.Elif(length < p.REQUEST_OVERHEAD):
                    m.d.sync += bad_frame.eq(bad_frame + 1)
                    error(S.BAD_LENGTH, length)
                with m.Elif(~crc.match_detected):
                    m.d.sync += bad_crc.eq(bad_crc + 1)
                    error(S.BAD_CRC, length)
                with m.Else(), m.Switch(cmd):
                    for command in C:
                        with m.Case(command):
                            if command in p.ORDERED:
                                with m.If(seq == next_seq):
                                    with m.If(~body_ok(command)):
                                        error(S.BAD_LENGTH, body_len, do_commit=1)
                                    with m.Elif((command == C.INJECT) &
                                                (body_len > self.max_frame + 1)):
                                        error(S.OVERSIZE, self.max_frame, do_commit=1)
                                    with m.Else():
                                        m.d.sync += commit.eq(1)
                                        m.next = self._first_state(command)
                                with m.Elif((behind != 0) & (behind <= window_fill)):
                                    # A retransmission: answer as the first time.
                                    status = ring_rd.data
                                    m.d.sync += [r_kind.eq(Mux(status == 0,
                                                               kinds["empty"][0],
                                                               kinds["error"][0])),
                                                 r_status.eq(status), r_info.eq(0),
                                                 index.eq(0)]
                                    m.next = "Reply"
                                with m.Else():
                                    m.d.sync += seq_errors.eq(seq_errors + 1)
                                    error(S.SEQUENCE, seq)
                            else:
                                with m.If(~body_ok(command)):
                                    error(S.BAD_LENGTH, body_len)
                                with m.Else():
                                    if command == C.IDENTIFY:
                                        finish("identify", S.OK)
                                    elif command == C.STATUS:
                                        m.d.sync += word.eq(Cat(cap_held, Const(0, 7),
                                                                cap_next_id))
                                        finish("status", S.OK)
                                    else:
                                        m.next = self._first_state(command)
                    with m.Default():
                        error(S.UNKNOWN_COMMAND, cmd)

            # --- Bus commands ---------------------------------------------------------------
            def after_addr(_):
                with m.Switch(cmd):
                    with m.Case(C.READ):
                        m.d.sync += block_op.eq(0)
                        bus_request(write=0)
                    with m.Case(C.READ_BLOCK, C.COUNTERS):
                        m.next = "GetCount"
                    with m.Default():
                        m.next = "GetData"
            fetch("GetAddr", addr, p.ADDR_BYTES, after_addr)

            def after_data(value):
                with m.If(cmd == C.OPEN):
                    m.d.sync += [session.eq(value), next_seq.eq(seq + 1), window_fill.eq(0)]
                    finish("empty", S.OK)
                with m.Else():
                    m.d.sync += block_op.eq(0)
                    bus_request(write=1)
            fetch("GetData", wdata, p.WORD_BYTES, after_data)

            def after_count(value):
                words = Mux(cmd == C.COUNTERS, value << 1, value)
                with m.If(words > self.max_block):
                    error(S.BAD_ARGUMENT, value)
                with m.Else():
                    m.d.sync += [count.eq(words), block_op.eq(1)]
                    finish("block", S.OK)
            fetch("GetCount", word, 2, after_count)

            with m.State("Bus"):
                m.d.comb += [self.bus.valid.eq(1), self.bus.addr.eq(addr),
                             self.bus.w_data.eq(wdata)]
                m.d.sync += timer.eq(timer + 1)
                with m.If(self.bus.ready):
                    m.next = "BusResponse"
                with m.Elif(bus_timed_out):
                    m.d.sync += timed_out.eq(1)
                    m.next = "BusFailed"
            with m.State("BusResponse"):
                m.d.sync += timer.eq(timer + 1)
                with m.If(self.bus.r_valid & ~self.bus.r_err):
                    m.d.sync += word.eq(self.bus.r_data)
                    with m.If(block_op):
                        m.next = "BlockWord"
                    with m.Elif(~self.bus.w_en):
                        finish("word", S.OK)
                    with m.Elif(rpos == body_end):
                        finish("empty", S.OK)
                    with m.Elif(cmd == C.WRITE_BLOCK):
                        m.d.sync += addr.eq(addr + 1)
                        m.next = "GetData"
                    with m.Elif(cmd == C.WRITE_PACKED):
                        m.next = "PackedItem"
                    with m.Else():
                        m.next = "GetAddr"
                with m.Elif(self.bus.r_valid | bus_timed_out):
                    m.d.sync += timed_out.eq(~self.bus.r_valid)
                    m.next = "BusFailed"
            with m.State("BusFailed"):
                m.d.sync += bus_errors.eq(bus_errors + 1)
                with m.If(block_op):
                    m.next = "ReplyCrc"  # cut the block reply short
                with m.Else():
                    error(Mux(timed_out, S.BUS_TIMEOUT, S.BUS_ERROR), addr)

            # --- WRITE_PACKED: bases, a scan of the items (lengths, addresses), then each
            # item's write. Nothing is written unless every item is well-formed.
            items_at = p.REQUEST_HEADER_BYTES + p.PACKED_HEADER_BYTES
            def goto(state):
                def then(_):
                    m.next = state
                return then
            fetch("PackedBase0", bases[0], p.ADDR_BYTES, goto("PackedBase1"))
            fetch("PackedBase1", bases[1], p.ADDR_BYTES, goto("PackedScan"))

            def item_addr(header):
                return Mux(header[5], bases[1], bases[0]) + header[:5]

            # The scan registers each item's header byte's length and address before checking
            # them: the block RAM's output is slow, and the checks decide the next state.
            scan_last = Signal(2)
            target = Signal(p.ADDR_BITS + 1)
            with m.State("PackedScan"):
                m.d.sync += [scan_last.eq(byte[6:8]), target.eq(item_addr(byte))]
                m.next = "PackedCheck"
            with m.State("PackedCheck"):
                item_end = Signal(len(rpos) + 1)
                m.d.comb += item_end.eq(rpos + 2 + scan_last)
                m.next = "PackedScan"
                with m.If(target[p.ADDR_BITS]):
                    error(S.BAD_ARGUMENT, target)
                with m.Elif(item_end > body_end):
                    error(S.BAD_LENGTH, body_len)
                with m.Elif(item_end == body_end):
                    m.d.comb += req_rd.addr.eq(items_at)
                    m.d.sync += rpos.eq(items_at)
                    m.next = "PackedItem"
                with m.Else():
                    m.d.comb += req_rd.addr.eq(item_end)
                    m.d.sync += rpos.eq(item_end)
            with m.State("PackedItem"):
                consume()
                m.d.sync += [addr.eq(item_addr(byte)), item_last.eq(byte[6:8]), wdata.eq(0),
                             fetch_k.eq(0)]
                m.next = "PackedData"
            with m.State("PackedData"):
                consume()
                m.d.sync += [wdata.word_select(fetch_k, 8).eq(byte), fetch_k.eq(fetch_k + 1)]
                with m.If(fetch_k == item_last):
                    m.d.sync += [fetch_k.eq(0), block_op.eq(0)]
                    bus_request(write=1)

            with m.State("BlockWord"):
                m.d.comb += [tx.valid.eq(1), tx.payload.data.eq(word.word_select(fetch_k, 8))]
                with m.If(tx.ready):
                    m.d.sync += fetch_k.eq(fetch_k + 1)
                    with m.If(fetch_k == 3):
                        m.d.sync += [fetch_k.eq(0), count.eq(count - 1), addr.eq(addr + 1)]
                        with m.If(count == 1):
                            m.next = "ReplyCrc"
                        with m.Else():
                            bus_request(write=0)

            # --- Frame inject ---------------------------------------------------------------
            beat_data = Signal(8 * W)
            beat_keep = Signal(W)
            beat_last = Signal()
            lane = Signal(range(W))

            def after_port(value):
                with m.If((value != Port.HOST) & (value != Port.NET)):
                    error(S.BAD_ARGUMENT, value)
                with m.Else():
                    m.d.sync += [lane.eq(0), beat_keep.eq(0)]
                    m.next = "InjectFill"
            fetch("GetPort", port, 1, after_port)

            with m.State("InjectFill"):
                consume()
                at_end = rpos + 1 == body_end
                m.d.sync += [beat_data.word_select(lane, 8).eq(byte),
                             beat_keep.bit_select(lane, 1).eq(1), lane.eq(lane + 1)]
                with m.If((lane == W - 1) | at_end):
                    m.d.sync += beat_last.eq(at_end)
                    m.next = "InjectBeat"
            with m.State("InjectBeat"):
                inj = self.o_inject
                m.d.comb += [inj.valid.eq(1), inj.payload.data.eq(beat_data),
                             inj.payload.keep.eq(beat_keep), inj.payload.last.eq(beat_last),
                             inj.payload.port.eq(port)]
                with m.If(inj.ready):
                    m.d.sync += [lane.eq(0), beat_keep.eq(0), beat_data.eq(0)]
                    with m.If(beat_last):
                        finish("empty", S.OK)
                    with m.Else():
                        m.next = "InjectFill"

            # --- Frame capture ----------------------------------------------------------------
            def after_capture(value):
                flags, pop_id = value[:8], value[8:24]
                with m.If((flags & p.CaptureFlags.POP).any() & cap_held & (cap_id == pop_id)):
                    m.d.comb += cap_pop.eq(1)
                m.d.sync += timer.eq(0)
                m.next = "CaptureWait"
            fetch("GetCapture", word, 3, after_capture)

            with m.State("CaptureWait"):
                # Give a frame already on its way the time to land, so one poll returns it.
                m.d.sync += timer.eq(timer + 1)
                with m.If(cap_held):
                    m.d.sync += [r_flags.eq(p.CaptureFlags.FRAME |
                                            Mux(cap_trunc, p.CaptureFlags.TRUNCATED, 0)),
                                 r_id.eq(cap_id), r_port.eq(cap_port), cap_rpos.eq(0)]
                    finish("capture", S.OK)
                with m.Elif((~cap_filling & ~self.i_capture.valid) |
                            (timer == 4 * self.max_frame + 64)):
                    m.d.sync += [r_flags.eq(0), r_id.eq(cap_next_id), r_port.eq(0)]
                    finish("capture", S.OK)

            with m.State("CaptureFrame"):
                m.d.comb += [tx.valid.eq(1), tx.payload.data.eq(cap_rd.data)]
                with m.If(tx.ready):
                    m.d.comb += cap_rd.addr.eq(cap_rpos + 1)
                    m.d.sync += cap_rpos.eq(cap_rpos + 1)
                    with m.If(cap_rpos + 1 == cap_len):
                        m.next = "ReplyCrc"

            # --- Reply --------------------------------------------------------------------------
            with m.State("Reply"):
                m.d.comb += [tx.valid.eq(1), crc.start.eq(index == 0)]
                last_index = Signal.like(index)
                with m.Switch(r_kind):
                    for number, values in kinds.values():
                        with m.Case(number):
                            m.d.comb += [tx.payload.data.eq(Array(values)[index]),
                                         last_index.eq(len(values) - 1)]
                with m.If(tx.ready):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == last_index):
                        with m.If((r_kind == kinds["block"][0]) & (count != 0)):
                            bus_request(write=0)
                        with m.Elif((r_kind == kinds["capture"][0]) & r_flags[0]):
                            m.next = "CaptureFrame"
                        with m.Else():
                            m.next = "ReplyCrc"

            with m.State("ReplyCrc"):
                m.d.comb += [tx.valid.eq(1), tx_crc_phase.eq(1),
                             tx.payload.data.eq(crc.crc.word_select(fetch_k, 8)),
                             tx.payload.last.eq(fetch_k == 3)]
                with m.If(tx.ready):
                    m.d.sync += fetch_k.eq(fetch_k + 1)
                    with m.If(fetch_k == 3):
                        m.d.sync += [fetch_k.eq(0), length.eq(0), overflow.eq(0),
                                     frame_error.eq(0), mod7.eq(0), seq.eq(0), tag.eq(0),
                                     cmd.eq(0), commit.eq(0)]
                        m.next = "Receive"

        m.d.comb += self.idle.eq(fsm.ongoing("Receive") & (length == 0) & ~dec.started &
                                 ~dec.o.valid & ~enc.i.valid & enc.idle)

        # --- Capture process: fill the buffer from i_capture while it is free -----------------
        cap = self.i_capture
        wlen = Signal(range(self.max_frame + 1))
        wlane = Signal(range(W))
        trunc = Signal()
        m.d.comb += cap_filling.eq((wlen != 0) | (wlane != 0) | trunc)
        with m.If(cap_pop):
            m.d.sync += cap_held.eq(0)
        with m.If(~cap_held & cap.valid):
            kept = cap.payload.keep.bit_select(wlane, 1)
            fits = wlen != self.max_frame
            next_kept = Cat(cap.payload.keep, Const(0, 1)).bit_select(wlane + 1, 1)
            new_len = Mux(kept & fits, wlen + 1, wlen)
            new_trunc = trunc | (kept & ~fits)
            m.d.comb += [cap_wr.addr.eq(wlen), cap_wr.data.eq(cap.payload.data.word_select(
                wlane, 8)), cap_wr.en.eq(kept & fits)]
            m.d.sync += [wlen.eq(new_len), trunc.eq(new_trunc), wlane.eq(wlane + 1)]
            with m.If((wlane == W - 1) | ~next_kept):
                m.d.comb += cap.ready.eq(1)
                m.d.sync += wlane.eq(0)
                with m.If(cap.payload.last):
                    m.d.sync += [cap_held.eq(1), cap_len.eq(new_len), cap_port.eq(
                        cap.payload.port), cap_id.eq(cap_next_id), cap_trunc.eq(new_trunc),
                        cap_next_id.eq(cap_next_id + 1), wlen.eq(0), trunc.eq(0)]
                    with m.If(new_trunc):
                        m.d.sync += cap_truncated.eq(cap_truncated + 1)
        return m

    @staticmethod
    def _first_state(command):
        C = p.Command
        return {
            C.OPEN: "GetData",
            C.READ: "GetAddr",
            C.WRITE: "GetAddr",
            C.WRITE_BATCH: "GetAddr",
            C.WRITE_BLOCK: "GetAddr",
            C.WRITE_PACKED: "PackedBase0",
            C.READ_BLOCK: "GetAddr",
            C.COUNTERS: "GetAddr",
            C.INJECT: "GetPort",
            C.CAPTURE: "GetCapture",
        }[command]
