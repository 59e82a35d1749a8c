"""The host driver against the control bridge on a virtual board (BridgeTestTop over a
socket): registers, RAM, batches, counters, inject/capture loopback, bad requests."""

import random
import struct

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from openvtep import protocol as p
from openvtep.driver import (
    Device,
    DeviceBusError,
    DeviceCommandError,
    DeviceError,
    DeviceResetError,
    batch_messages,
)
from openvtep.hdl.bridge import ControlBridge
from openvtep.headers import Port
from openvtep.sim.bridge_top import COUNTERS, ID_WORD, MAP, UNMAPPED
from openvtep.sim.stream import assert_frames_equal

REGS, RAM, CNT = MAP["regs"][0], MAP["ram"][0], MAP["counters"][0]


def test_identify(device):
    info = device.identify()
    assert info["magic"] == p.MAGIC and info["version"] == p.VERSION
    assert (info["width"], info["window"], info["addr_bits"]) == (8, p.WINDOW, p.ADDR_BITS)
    assert (info["max_frame"], info["max_request"], info["max_block"]) == (1518, 2048, 256)
    assert (info["exact_entries"], info["counters"]) == (MAP["ram"][1], len(COUNTERS))
    assert info["session"] == device.session != 0
    assert device.check()["session"] == device.session


def test_registers(device):
    assert device.read(REGS + 0) == ID_WORD
    device.write(REGS + 2, 0x12345678)
    device.write(REGS + 15, 0xFFFFFFFF)
    assert device.read(REGS + 2) == 0x12345678
    assert device.read_block(REGS + 2, 14)[::13] == [0x12345678, 0xFFFFFFFF]
    with pytest.raises(DeviceBusError, match=r"write 0x0: bus error \(no target there, or a read-only word\) at address "):
        device.write(REGS + 0, 1)  # read-only
    with pytest.raises(DeviceBusError, match=f"{UNMAPPED:#08x}") as info:
        device.read(UNMAPPED)
    assert info.value.address == UNMAPPED and device.url in str(info.value)
    with pytest.raises(DeviceBusError):
        device.read_block(REGS + 14, 4)  # runs off the end of the registers
    assert device.read(REGS + 0) == ID_WORD  # still alive


def test_write_batch_readback(device):
    """Thousands of words in a pipelined batch, with repeated addresses (last write wins,
    so the order must be kept), then read back in blocks."""
    rng = random.Random(6)
    size = 512  # RAM words 0..511, untouched by the other tests: still 0
    pairs = [(RAM + rng.randrange(size), rng.getrandbits(32)) for _ in range(2000)]
    expected = {}
    for addr, value in pairs:
        expected[addr] = value
    assert device.write_batch(pairs) == len(pairs)
    got = device.read_block(RAM, size)
    want = [expected.get(RAM + k, 0) for k in range(size)]
    assert got == want


def test_inject_capture_loopback_and_counters(device):
    rng = random.Random(7)
    before = device.read_counters(CNT, len(COUNTERS))
    frames = [(rng.choice([Port.HOST, Port.NET]), rng.randbytes(n))
              for n in (1, 7, 8, 9, 14, 60, 64, 65, 300, 1518)]
    for port, frame in frames:
        device.inject(port, frame)
    got = device.poll(timeout=5)
    assert [port for port, _ in got] == [port for port, _ in frames]
    assert_frames_equal([f for _, f in frames], [f for _, f in got], what="captured frames")
    assert device.capture() is None
    after = device.read_counters(CNT, len(COUNTERS))
    delta = dict(zip(COUNTERS, (a - b for a, b in zip(after, before))))
    total = sum(len(f) for _, f in frames)
    assert delta["inject_frames"] == delta["capture_frames"] == len(frames)
    assert delta["inject_bytes"] == delta["capture_bytes"] == total
    assert delta["cycles"] > 0 and after[COUNTERS.index("cycles")] >= 1 << 0
    with pytest.raises(DeviceError, match="1..1518"):
        device.inject(Port.HOST, bytes(1519))
    with pytest.raises(DeviceError, match="controller"):
        device.inject(Port.CONTROLLER, bytes(20))


def test_counter_is_64_bit(device):
    # The cycle counter's low word wraps in simulation only after hours; check the split.
    lo, hi = device.read_block(CNT + 2 * COUNTERS.index("cycles"), 2)
    (value,) = device.read_counters(CNT + 2 * COUNTERS.index("cycles"), 1)
    assert value >> 32 == hi and value & 0xFFFFFFFF > lo


def _raw(device, data):
    """Send raw bytes on the device's line; the first reply that decodes."""
    device._send(data)
    reply = device._receive(device.timeout)
    assert reply is not None, "no reply: the bridge hung"
    return reply


def test_bad_requests(device):
    S, C = p.Status, p.Command
    cases = [
        (p.encode_request(0, 1, 0x7E), S.UNKNOWN_COMMAND, 0x7E),
        (p.encode_request(0, 2, C.READ, b"\x00\x00"), S.BAD_LENGTH, 2),
        (p.encode_request(0, 3, C.READ_BLOCK, b"\x00\x00\x00" + struct.pack("<H", 257)),
         S.BAD_ARGUMENT, 257),
        (p.cobs_encode(b"\x01\x00\x04\x10\x00\x00\x00\x00\x00\x00\x00") + b"\x00",
         S.BAD_CRC, 11),
        (p.cobs_encode(b"\x01\x02\x03") + b"\x00", S.BAD_LENGTH, 3),  # truncated message
        (b"\x09\x01\x02\x00", S.BAD_FRAME, 0),                         # delimiter mid-group
        (p.cobs_encode(bytes(range(1, 256)) * 9) + b"\x00", S.OVERSIZE, 2048),
    ]
    for raw, status, info in cases:
        reply = _raw(device, raw)
        assert (reply.status, reply.info) == (status, info), (raw[:16], reply)
    # Ordered commands with a bad body consume their number and say why.
    seq = device._seq
    reply = _raw(device, p.encode_request(seq, 9, C.INJECT, bytes([Port.CONTROLLER]) + b"x"))
    assert (reply.status, reply.info) == (S.BAD_ARGUMENT, Port.CONTROLLER)
    reply = _raw(device, p.encode_request(seq + 1, 9, C.WRITE_BATCH, bytes(8)))
    assert (reply.status, reply.info) == (S.BAD_LENGTH, 8)
    reply = _raw(device, p.encode_request(seq + 2, 9, C.INJECT, bytes(1520)))
    assert (reply.status, reply.info) == (S.OVERSIZE, 1518)
    device._seq = (seq + 3) & 0xFFFF
    # Garbage without a delimiter, then a delimiter: the bridge resynchronizes.
    device._send(b"\x13\x37" * 20)
    assert device.identify()["magic"] == p.MAGIC
    status = device.check()
    assert status["bad_crc"] >= 1 and status["bad_frame"] >= 4


def test_retransmission_is_not_executed_twice(device):
    """The same ordered message sent again (a retry after a lost reply) is answered with the
    first reply, and not applied again; an old number out of the window is refused."""
    C = p.Command
    seq = device._seq
    addr = RAM + 2000
    device.write(addr, 1)
    seq = device._seq
    first = p.encode_request(seq, 1, C.WRITE_BATCH, (addr).to_bytes(3, "little") +
                             struct.pack("<I", 2))
    replay = p.encode_request(seq, 2, C.WRITE_BATCH, (addr).to_bytes(3, "little") +
                              struct.pack("<I", 3))  # same number, other content
    assert _raw(device, first).status == p.Status.OK
    assert _raw(device, replay).status == p.Status.OK
    device._seq = (seq + 1) & 0xFFFF
    assert device.read(addr) == 2
    # A failed ordered message replays its failure.
    bad = p.encode_request(device._seq, 3, C.WRITE, UNMAPPED.to_bytes(3, "little") + bytes(4))
    assert _raw(device, bad).status == p.Status.BUS_ERROR
    assert _raw(device, bad).status == p.Status.BUS_ERROR
    device._seq = (device._seq + 1) & 0xFFFF
    reply = _raw(device, p.encode_request(device._seq + 5, 4, C.WRITE, bytes(7)))
    assert reply.status == p.Status.SEQUENCE and reply.expected_seq == device._seq
    with pytest.raises(DeviceCommandError, match="BUS_ERROR|no target"):
        device.write_batch([(addr, 4), (UNMAPPED, 5), (addr, 6)])
    assert device.read(addr) == 4  # stopped at the failing write


def test_wire_cost_of_batched_writes():
    """Bytes on the wire per (addr, data) write in a full WRITE_BATCH (scattered addresses),
    and per write of a rule load, which goes as WRITE_PACKED: `openvtep bench rules` at 3
    Mbaud (10 bits a byte) needs at most 30 bytes a rule for 10,000 rules/s."""
    per = (2048 - p.REQUEST_OVERHEAD) // p.BATCH_ENTRY_BYTES
    rng = random.Random(1)
    body = b"".join(rng.randrange(1 << 24).to_bytes(3, "little") +
                    rng.getrandbits(32).to_bytes(4, "little") for _ in range(per))
    wire = len(p.encode_request(1, 1, p.Command.WRITE_BATCH, body))
    per_write = wire / per
    rate = 3_000_000 / 10 / per_write
    print(f"batch of {per} writes: {wire} bytes on the wire, {per_write:.3f} bytes/write, "
          f"{rate:,.0f} writes/s at 3 Mbaud")
    assert per_write < 7.1 and rate > 42_000
    scattered = [(rng.randrange(1 << 24), rng.getrandbits(32)) for _ in range(3 * per)]
    assert {cmd for cmd, _ in batch_messages(scattered, 2048)} == {p.Command.WRITE_BATCH}
    # A rule load: what bench_rules sends (the staging buffer zeroed, then table_writes).
    from openvtep import regmap as rm
    from openvtep.bench_rules import generate_rules
    from openvtep.tables import Geometry, compile_tables
    from openvtep.vtep import PIPELINE_BASE, STAGING_USED
    for n in (100, 200, 1000):
        image = compile_tables(generate_rules(n), Geometry())
        writes = [(PIPELINE_BASE + rm.STAGING + k, 0) for k in range(STAGING_USED)] + \
            [(PIPELINE_BASE + a, w) for a, w in rm.table_writes(image, fresh=True)]
        messages = batch_messages(writes, 2048)
        assert all(cmd == p.Command.WRITE_PACKED for cmd, _ in messages)
        assert [pair for _, body in messages for pair in p.decode_packed(body)] == writes
        wire = sum(len(p.encode_request(0xFFFF, 0xFF, cmd, body)) for cmd, body in messages)
        print(f"{n} rules: {len(writes) / n:.2f} words, {wire / n:.2f} bytes/rule, "
              f"{3_000_000 / 10 / (wire / n):,.0f} rules/s at 3 Mbaud")
        assert wire / n <= 29.0


def test_write_packed_readback(device):
    """Writes in two windows go as WRITE_PACKED (1..4 data bytes), in order (last write
    wins), mixed with scattered ones that go as WRITE_BATCH; all read back."""
    rng = random.Random(8)
    lo, hi = RAM + 3200, RAM + 3300  # two windows, untouched by the other tests
    pairs = []
    for k in range(600):
        addr = rng.choice([lo, hi]) + rng.randrange(p.PACKED_WINDOW)
        pairs.append((addr, rng.getrandbits(rng.choice([0, 1, 8, 16, 24, 32]))))
        if k % 150 == 149:  # then a scattered stretch, which a batch message carries
            pairs += [(RAM + 3400 + rng.randrange(400), rng.getrandbits(32))
                      for _ in range(20)]
    commands = [cmd for cmd, _ in batch_messages(pairs, device.info["max_request"])]
    assert p.Command.WRITE_PACKED in commands and p.Command.WRITE_BATCH in commands
    expected = {}
    for addr, value in pairs:
        expected[addr] = value
    assert device.write_batch(pairs) == len(pairs)
    got = device.read_block(RAM + 3200, 600)
    assert got == [expected.get(RAM + 3200 + k, 0) for k in range(600)]


def test_write_packed_errors(device):
    """A malformed WRITE_PACKED writes nothing and says why (bad length: the body's length;
    an item past the address space: the address); a bus error stops it at the failing word,
    the words before it written."""
    S, C = p.Status, p.Command
    addr = RAM + 3100
    device.write(addr, 1)
    bases = (addr - addr % 32).to_bytes(3, "little") + (0xFFFFF0).to_bytes(3, "little")
    first = bytes([1 << 6 | addr % 32]) + b"\x22\x11"  # addr := 0x1122, valid
    cases = [
        (bases + first + bytes([3 << 6 | 1]) + b"\x01\x02", S.BAD_LENGTH, 12),  # truncated
        (bases + b"\x00", S.BAD_LENGTH, 7),                                     # no item
        (bases + first + bytes([1 << 5 | 0x1F, 9]), S.BAD_ARGUMENT, 0x100000F),  # offset
    ]
    for body, status, info in cases:
        seq = device._seq
        reply = _raw(device, p.encode_request(seq, 9, C.WRITE_PACKED, body))
        assert (reply.status, reply.info) == (status, info), (body, reply)
        device._seq = (seq + 1) & 0xFFFF  # a bad body consumes its number
    assert device.read(addr) == 1  # nothing executed
    with pytest.raises(ValueError, match="windows"):
        p.encode_packed([(0, 1), (32, 2), (64, 3)])
    with pytest.raises(p.ProtocolError):
        p.decode_packed(bases + bytes([3 << 6]) + b"\x01")
    # A bus error: the words before it are written, not those after it.
    unmapped = UNMAPPED - UNMAPPED % 32
    body = p.encode_packed([(addr, 2), (UNMAPPED, 5), (addr, 3)])
    assert body[:6] == (addr - addr % 32).to_bytes(3, "little") + unmapped.to_bytes(3, "little")
    seq = device._seq
    reply = _raw(device, p.encode_request(seq, 9, C.WRITE_PACKED, body))
    assert (reply.status, reply.info) == (S.BUS_ERROR, UNMAPPED)
    device._seq = (seq + 1) & 0xFFFF
    assert device.read(addr) == 2


def test_pty_and_amaranth_simulator():
    """The other transport and the other simulator: a pty path, Amaranth's simulator. The
    board's cycle count covers every reply the host has received (read while it runs)."""
    from openvtep.sim.virtual_board import serve

    with serve(listen="pty", simulator="amaranth") as board:
        assert board.url.startswith("/dev/")
        with Device(board.url, timeout=20) as dev:
            assert dev.info["magic"] == p.MAGIC
            opened = board.cycles
            assert opened > 0
            dev.write_batch([(RAM + k, k) for k in range(20)])
            assert dev.read_block(RAM, 20) == list(range(20))
            assert board.cycles > opened


def test_reset_is_detected(device):
    """Another session started on the device (as after a reset: session token and sequence
    numbers lost) makes the next ordered command fail with DeviceResetError, not silently
    succeed; open() starts over."""
    dev = device  # the board serves one connection at a time: use the module's
    dev.write(RAM + 3000, 1)
    # What a reset (or another host) does: a new session, sequence numbers elsewhere.
    reply = _raw(dev, p.encode_request(dev._seq + 0x4000, 1, p.Command.OPEN,
                                       struct.pack("<I", 0xBAD)))
    assert reply.status == p.Status.OK
    with pytest.raises(DeviceResetError, match="reset or re-opened"):
        dev.write(RAM + 3000, 2)
    with pytest.raises(DeviceResetError):
        dev.check()
    dev.open()
    dev.write(RAM + 3000, 3)
    assert dev.read(RAM + 3000) == 3


class _StuckBusTop(wiring.Component):
    """A bridge whose bus never accepts requests below 0x10, and accepts but never answers
    the others: every bus access must time out into an error reply."""

    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))
    idle: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge = bridge = ControlBridge(4, bus_timeout=50)
        wiring.connect(m, wiring.flipped(self.i), bridge.i)
        wiring.connect(m, bridge.o, wiring.flipped(self.o))
        m.d.comb += [self.idle.eq(bridge.idle), bridge.bus.ready.eq(bridge.bus.addr >= 0x10)]
        return m


def test_bus_timeout():
    from openvtep.sim.virtual_board import serve

    with serve(_StuckBusTop, simulator="amaranth") as board, \
            Device(board.url, timeout=20) as dev:
        for addr in (0x3, 0x20):
            with pytest.raises(DeviceBusError, match="timed out") as info:
                dev.write(addr, 1)
            assert info.value.status == p.Status.BUS_TIMEOUT and info.value.address == addr
            with pytest.raises(DeviceBusError, match="timed out"):
                dev.read(addr)
        with pytest.raises(DeviceBusError):
            dev.read_block(0x20, 3)
        assert dev.check()["bus_errors"] == 5
