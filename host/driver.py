"""The host driver for an openvtep chip: :class:`Device`, over any byte transport.

The same code talks to a board on a USB serial port (``/dev/ttyUSB1``), to a virtual board
(``socket://127.0.0.1:PORT`` or a pty path, see :mod:`openvtep.sim.virtual_board`), or to any
object with ``send``/``recv``/``flush``/``close`` (:class:`SerialTransport` is the pyserial
one). The protocol is :mod:`openvtep.protocol`.

Reliability: every command either completes, or raises a :class:`DeviceError` naming the URL
and the command. Lost, corrupted or duplicated bytes on the line cost a retransmission, never a
double execution: ordered commands (writes, inject) carry sequence numbers the chip checks, and
reads are idempotent. Up to ``window`` ordered messages are in flight at once (go-back-N), so a
big :meth:`Device.write_batch` runs at line rate instead of one round trip per message. A board
reset is detected through the session token :meth:`Device.open` stores on the chip.
"""

import os
import struct
import time

from . import protocol as p
from .errors import UserError
from .headers import Port

__all__ = [
    "Device",
    "DeviceBusError",
    "DeviceCommandError",
    "DeviceError",
    "DeviceProtocolError",
    "DeviceResetError",
    "DeviceTimeout",
    "SerialTransport",
    "batch_messages",
]

DEFAULT_BAUD = 3_000_000


class DeviceError(UserError):
    """A command failed. ``url`` and ``command`` say where and what."""

    def __init__(self, url, command, message):
        self.url = url
        self.command = command
        super().__init__(f"{url}: {command}: {message}")


class DeviceTimeout(DeviceError):
    """No valid reply after all retries (board unplugged, wrong port or baud rate, ...)."""


class DeviceProtocolError(DeviceError):
    """The device answered something the driver did not expect (another program, an
    incompatible bitstream)."""


class DeviceCommandError(DeviceError):
    """The device refused or failed the command: ``status`` (:class:`protocol.Status`),
    ``info``."""

    def __init__(self, url, command, status, info, message=None):
        self.status = status
        self.info = info
        name = status.name if isinstance(status, p.Status) else f"status {status}"
        super().__init__(url, command, message or f"device reports {name} (info {info:#x})")


class DeviceBusError(DeviceCommandError):
    """A bus access failed: no target at ``address``, or it refused the access (a write to a
    read-only word), or it did not answer."""

    def __init__(self, url, command, status, address):
        self.address = address
        what = ("bus error (no target there, or a read-only word)"
                if status == p.Status.BUS_ERROR else "target timed out")
        super().__init__(url, command, status, address, f"{what} at address {address:#08x}")


class DeviceResetError(DeviceError):
    """The device lost its session (it was reset or reprogrammed, or another host opened it):
    what was written before may be gone. :meth:`Device.open` starts a new session."""


class SerialTransport:
    """Bytes over pyserial's ``serial_for_url`` (a serial port, a pty, ``socket://``,
    ``rfc2217://``, ``loop://``...)."""

    def __init__(self, url, *, baudrate=DEFAULT_BAUD):
        import serial
        self.url = url
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=0)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise DeviceError(url, "open", f"cannot open: {exc}") from None
        self._timeout = 0

    def send(self, data):
        self._port.write(data)

    def recv(self, timeout):
        """Bytes available within ``timeout`` seconds (at least one, or ``b""``)."""
        port = self._port
        if timeout != self._timeout:
            port.timeout = self._timeout = max(0.0, timeout)
        first = port.read(1)
        if not first:
            return b""
        port.timeout = self._timeout = 0
        return first + port.read(65536)

    def flush(self):
        """Drop whatever has been received and not read."""
        self._port.reset_input_buffer()

    def close(self):
        self._port.close()


class Device:
    """An openvtep chip behind ``url`` (or ``transport``).

    Parameters
    ----------
    url : str
        A pyserial URL: ``/dev/ttyUSB1``, a pty path, ``socket://127.0.0.1:PORT``.
    timeout : float
        Seconds without any reply before the driver retransmits.
    retries : int
        Retransmissions of one message before giving up with :class:`DeviceTimeout`.
    window : int, optional
        Ordered messages in flight at once (default: the device's, at most
        :data:`protocol.WINDOW`).
    transport : optional
        Anything with ``send(bytes)``, ``recv(timeout) -> bytes``, ``flush()``, ``close()``,
        instead of opening ``url``.
    open : bool
        Identify the device and start a session now (default).

    After opening, :attr:`info` holds the IDENTIFY fields (``width``, ``max_frame``, table
    sizes, ...).
    """

    def __init__(self, url, *, timeout=1.0, retries=8, window=None, baudrate=DEFAULT_BAUD,
                 transport=None, open=True):
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self._window = window
        self._transport = transport if transport is not None else \
            SerialTransport(url, baudrate=baudrate)
        self._deframer = p.Deframer()
        self._replies = []
        self._tag = 0
        self._seq = 0
        self.session = None
        self.info = None
        self.stats = {"sent": 0, "retransmitted": 0, "timeouts": 0, "bad_replies": 0}
        if open:
            try:
                self.open()
            except BaseException:
                self.close()
                raise

    # --- Session ---------------------------------------------------------------------------

    def open(self):
        """Identify the device and start a new session (a fresh random token); returns the
        IDENTIFY fields."""
        self._send(b"\x00")  # end any half-message another program left behind
        info = self.identify()
        if info["magic"] != p.MAGIC:
            raise DeviceProtocolError(self.url, "identify", f"not an openvtep device (magic "
                                      f"{info['magic']:#010x})")
        if info["version"] != p.VERSION:
            raise DeviceProtocolError(self.url, "identify", f"protocol version "
                                      f"{info['version']}, this driver speaks {p.VERSION}")
        self.info = info
        token = int.from_bytes(os.urandom(4), "little") or 1
        seq = (info["next_seq"] + 0x8000) & 0xFFFF  # far from any earlier session's numbers
        self._exchange("open", p.Command.OPEN, struct.pack("<I", token), seq=seq)
        self._seq = (seq + 1) & 0xFFFF
        self.session = token
        return info

    def check(self):
        """Raise :class:`DeviceResetError` if the device lost this session."""
        status = self.status()
        if status["session"] != self.session:
            raise DeviceResetError(self.url, "check", "device was reset or re-opened (session "
                                   f"{status['session']:#010x}, expected "
                                   f"{self.session:#010x}): its state is lost")
        return status

    def close(self):
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def window(self):
        device = self.info["window"] if self.info else p.WINDOW
        return max(1, min(self._window or device, device))

    # --- Commands ----------------------------------------------------------------------------

    def identify(self):
        """IDENTIFY fields as a dict (see :data:`protocol.IDENTIFY_BODY`)."""
        reply = self._exchange("identify", p.Command.IDENTIFY)
        return p.unpack_fields(p.IDENTIFY_BODY, reply.body)

    def status(self):
        """STATUS fields as a dict (see :data:`protocol.STATUS_BODY`)."""
        reply = self._exchange("status", p.Command.STATUS)
        return p.unpack_fields(p.STATUS_BODY, reply.body)

    def read(self, addr):
        """The 32-bit word at word address ``addr``."""
        reply = self._exchange(f"read {addr:#x}", p.Command.READ, _addr(addr))
        return int.from_bytes(reply.body[:4], "little")

    def write(self, addr, value):
        """Write one word (waits for the acknowledgement)."""
        self._ordered(f"write {addr:#x}",
                      [(p.Command.WRITE, _addr(addr) + _word(value))])

    def write_batch(self, pairs):
        """Write many ``(addr, value)`` words, in order: as few messages as fit
        ``max_request``, pipelined. Runs of writes within two :data:`protocol.PACKED_WINDOW`
        windows go as ``WRITE_PACKED`` (2..5 bytes a word), the rest as ``WRITE_BATCH`` (7
        bytes). Returns the number of words written."""
        pairs = list(pairs)
        self._ordered(f"write_batch of {len(pairs)} words",
                      batch_messages(pairs, self.info["max_request"]))
        return len(pairs)

    def write_block(self, addr, values):
        """Write ``values`` to consecutive words from ``addr``."""
        values = list(values)
        per = (self.info["max_request"] - p.REQUEST_OVERHEAD - p.ADDR_BYTES) // p.WORD_BYTES
        messages = [(p.Command.WRITE_BLOCK,
                     _addr(addr + start) + b"".join(_word(v) for v in values[start:start + per]))
                    for start in range(0, len(values), per)]
        self._ordered(f"write_block {addr:#x}+{len(values)}", messages)

    def read_block(self, addr, count):
        """``count`` consecutive words from ``addr``, as a list of ints."""
        return self._read_many(p.Command.READ_BLOCK, addr, count, self.info["max_block"], 1)

    def read_counters(self, addr, count):
        """``count`` 64-bit counters from word address ``addr`` (two words each)."""
        return self._read_many(p.Command.COUNTERS, addr, count, self.info["max_block"] // 2, 2)

    def inject(self, port, frame):
        """Send ``frame`` (bytes) into the chip as if it arrived on ``port`` (host or net)."""
        port = Port(port) if not isinstance(port, str) else Port[port.upper()]
        frame = bytes(frame)
        if port not in (Port.HOST, Port.NET):
            raise DeviceError(self.url, "inject", f"cannot inject on port {port.label}")
        if not 1 <= len(frame) <= self.info["max_frame"]:
            raise DeviceError(self.url, "inject", f"frame of {len(frame)} bytes: the device "
                              f"takes 1..{self.info['max_frame']}")
        self._ordered(f"inject {port.label} {len(frame)}B",
                      [(p.Command.INJECT, bytes([port]) + frame)])

    def capture(self, timeout=0.0):
        """The next captured frame as ``(Port, bytes)``, or ``None`` if none arrives within
        ``timeout`` seconds (polled). Each frame is returned once, even across retries."""
        deadline = time.monotonic() + timeout
        while True:
            body = bytes([p.CaptureFlags.POP if self._pop_id is not None else 0]) + \
                struct.pack("<H", self._pop_id or 0)
            reply = self._exchange("capture", p.Command.CAPTURE, body)
            fields = p.unpack_fields(p.CAPTURE_REPLY, reply.body)
            if fields["flags"] & p.CaptureFlags.FRAME:
                frame_id = fields["id"]
                if frame_id == self._pop_id:  # the pop was lost: the same frame again
                    continue
                self._pop_id = frame_id
                frame = reply.body[p.table_bytes(p.CAPTURE_REPLY):]
                if fields["flags"] & p.CaptureFlags.TRUNCATED:
                    self.stats["truncated_captures"] = self.stats.get("truncated_captures",
                                                                      0) + 1
                return Port(fields["port"]), frame
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.001)

    _pop_id = None

    def poll(self, max_frames=None, timeout=0.0):
        """Captured frames as a list of ``(Port, bytes)``: all that are waiting (up to
        ``max_frames``), waiting up to ``timeout`` seconds for the first."""
        frames = []
        while max_frames is None or len(frames) < max_frames:
            got = self.capture(timeout if not frames else 0.0)
            if got is None:
                break
            frames.append(got)
        return frames

    # --- Message engine ------------------------------------------------------------------------

    def _send(self, data):
        if self._transport is None:
            raise DeviceError(self.url, "send", "device is closed")
        self._transport.send(data)

    def _next_tag(self):
        self._tag = (self._tag + 1) & 0xFF
        return self._tag

    def _receive(self, timeout):
        """The next decodable reply, or ``None`` after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        while not self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            data = self._transport.recv(min(left, 0.5))
            for frame in self._deframer.feed(data):
                try:
                    self._replies.append(p.decode_reply(frame))
                except p.ProtocolError:
                    self.stats["bad_replies"] += 1
        return self._replies.pop(0)

    def _exchange(self, what, cmd, body=b"", *, seq=0):
        """One idempotent command: send, wait for its reply, retransmit on loss."""
        for attempt in range(self.retries + 1):
            tag = self._next_tag()
            self._send((b"\x00" if attempt else b"") + p.encode_request(seq, tag, cmd, body))
            self.stats["sent"] += 1
            self.stats["retransmitted"] += bool(attempt)
            while True:
                reply = self._receive(self.timeout)
                if reply is None:
                    self.stats["timeouts"] += 1
                    break
                if reply.status in (p.Status.BAD_CRC, p.Status.BAD_FRAME) and \
                        (reply.tag, reply.cmd) != (tag, cmd):
                    break  # a transmission was damaged: maybe ours
                if (reply.tag, reply.cmd, reply.seq) != (tag, cmd, seq):
                    continue  # an old reply
                if reply.status in (p.Status.BAD_CRC, p.Status.BAD_FRAME):
                    break
                if reply.status != p.Status.OK:
                    raise _command_error(self.url, what, reply)
                return reply
        raise DeviceTimeout(self.url, what, f"no valid reply after {self.retries + 1} "
                            f"attempts of {self.timeout:g} s")

    def _read_many(self, cmd, addr, count, per, words_each):
        values = []
        for start in range(0, count, per):
            n = min(per, count - start)
            a = addr + start * words_each
            what = f"{cmd.name.lower()} {a:#x}+{n}"
            reply = self._exchange(what, cmd, _addr(a) + struct.pack("<H", n))
            step = p.WORD_BYTES * words_each
            got = len(reply.body) // step
            values += [int.from_bytes(reply.body[k * step:(k + 1) * step], "little")
                       for k in range(got)]
            if got < n:  # the reply stops before the word that failed
                bad = a + len(reply.body) // p.WORD_BYTES
                raise DeviceBusError(self.url, what, p.Status.BUS_ERROR, bad)
        return values

    def _ordered(self, what, messages):
        """Run ordered messages with go-back-N; raise the first error any of them got."""
        n = len(messages)
        if not n:
            return
        seq0 = self._seq
        seqs = [(seq0 + k) & 0xFFFF for k in range(n)]
        replies = [None] * n
        sent = [0] * n
        inflight = {}  # tag -> (message index, generation)
        generation = 0
        base = nxt = 0
        window = self.window
        resync = False  # start the next transmission with a delimiter
        while base < n:
            while nxt < n and nxt - base < window:
                if replies[nxt] is None:
                    if sent[nxt] > self.retries:
                        self._seq = seqs[base]
                        raise DeviceTimeout(self.url, what, f"message {nxt + 1} of {n}: no "
                                            f"valid reply after {sent[nxt]} attempts")
                    tag = self._next_tag()
                    inflight[tag] = (nxt, generation)
                    cmd, body = messages[nxt]
                    self._send((b"\x00" if resync else b"") +
                               p.encode_request(seqs[nxt], tag, cmd, body))
                    resync = False
                    self.stats["sent"] += 1
                    self.stats["retransmitted"] += bool(sent[nxt])
                    sent[nxt] += 1
                nxt += 1
            reply = self._receive(self.timeout)
            if reply is None:
                self.stats["timeouts"] += 1
                generation += 1
                nxt, resync = base, True
                continue
            index, gen = inflight.get(reply.tag, (None, None))
            matched = index is not None and reply.seq == seqs[index] and \
                reply.cmd == messages[index][0]
            lost = reply.status in (p.Status.BAD_CRC, p.Status.BAD_FRAME) or \
                (not matched and reply.status in (p.Status.BAD_LENGTH, p.Status.OVERSIZE))
            if lost:
                if gen is None or gen == generation:
                    generation += 1
                    nxt, resync = base, True
                continue
            if not matched:
                continue  # a reply to an earlier call, or to a retransmission made obsolete
            if reply.status == p.Status.SEQUENCE:
                ahead = (reply.expected_seq - seq0) & 0xFFFF
                if ahead > n:  # the device expects a number this call never used
                    self._seq = seqs[base]
                    self._lost_session(what, reply)
                if gen == generation:
                    generation += 1
                    nxt, resync = base, True
                continue
            replies[index] = reply
            if index > base and gen == generation and replies[base] is None:
                # A later message was answered, so ``base`` was executed: its reply got lost.
                generation += 1
                nxt, resync = base, True
            while base < n and replies[base] is not None:
                base += 1
        self._seq = (seq0 + n) & 0xFFFF
        for k, reply in enumerate(replies):
            if reply.status != p.Status.OK:
                where = f"{what} (message {k + 1} of {n})" if n > 1 else what
                raise _command_error(self.url, where, reply)

    def _lost_session(self, what, reply):
        try:
            status = self.status()
        except DeviceError:
            status = None
        if status is None or status["session"] != self.session:
            raise DeviceResetError(self.url, what, "device was reset or re-opened (it expects "
                                   f"sequence number {reply.expected_seq}): its state is lost")
        raise DeviceProtocolError(self.url, what, f"device expects sequence number "
                                  f"{reply.expected_seq}, not {reply.seq}")


def batch_messages(pairs, max_request):
    """The ``(command, body)`` messages that write ``pairs`` in order (see
    :meth:`Device.write_batch`), each at most ``max_request`` bytes before framing."""
    max_body = max_request - p.REQUEST_OVERHEAD
    per = max_body // p.BATCH_ENTRY_BYTES
    messages, batch = [], []

    def flush_batch():
        for start in range(0, len(batch), per):
            body = b"".join(_addr(a) + _word(v) for a, v in batch[start:start + per])
            messages.append((p.Command.WRITE_BATCH, body))
        batch.clear()

    start, n = 0, len(pairs)
    while start < n:
        # The longest run from ``start`` one WRITE_PACKED message holds.
        bases, size, end = set(), p.PACKED_HEADER_BYTES, start
        while end < n:
            addr, value = pairs[end]
            base = p.packed_window(addr)
            item = p.packed_item_bytes(value)
            if (base not in bases and len(bases) == p.PACKED_BASES) or size + item > max_body \
                    or end - start == per:  # no more words than a batch message: its time
                break
            bases.add(base)
            size += item
            end += 1
        run = pairs[start:end]
        # Worth a message of its own only if it beats the same words in a batch message.
        if size + p.REQUEST_OVERHEAD + 2 < p.BATCH_ENTRY_BYTES * len(run):
            flush_batch()
            messages.append((p.Command.WRITE_PACKED, p.encode_packed(run)))
        else:
            batch += run
        start = end
    flush_batch()
    return messages


def _addr(addr):
    if not 0 <= addr < 1 << p.ADDR_BITS:
        raise ValueError(f"address {addr:#x} does not fit {p.ADDR_BITS} bits")
    return addr.to_bytes(p.ADDR_BYTES, "little")


def _word(value):
    return (value & 0xFFFFFFFF).to_bytes(p.WORD_BYTES, "little")


def _command_error(url, what, reply):
    if reply.status in (p.Status.BUS_ERROR, p.Status.BUS_TIMEOUT):
        return DeviceBusError(url, what, reply.status, reply.info or 0)
    return DeviceCommandError(url, what, reply.status, reply.info or 0)
