"""Tests of ``openvtep.frames``: FrameBatch, classic pcap read/write (checked against pcaps that
scapy and dpkt write and read), errors that name the file, and the merge order of inputs."""

import struct

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import Ether, PcapNgWriter, PcapWriter, Raw, rdpcap, wrpcap
from scapy.utils import RawPcapWriter

from openvtep.errors import PcapError, UserError
from openvtep.frames import FrameBatch, merge_inputs, read_pcap, write_pcap
from openvtep.headers import Port

FRAMES = [bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01", type=0x88B5)
                / Raw(bytes(range(n % 256)) * (1 + n // 256))) for n in (0, 1, 46, 300, 1500)]
TIMES_NS = [0, 999, 1_000_000_001, 1_700_000_000_123_456_789, 4_294_967_295_999_999_999]


def batch(frames, times=None, port=Port.HOST):
    return FrameBatch.from_frames(frames, port=port, time_ns=times)


# --- FrameBatch ------------------------------------------------------------------------------

def test_framebatch_basics():
    b = FrameBatch.from_frames([(Port.NET, b"abc"), (Port.HOST, b""), (Port.NET, b"defgh")])
    assert len(b) == 3
    assert b.frames() == [b"abc", b"", b"defgh"]
    assert b.port.tolist() == [1, 0, 1]
    assert b.time_ns.tolist() == [0, 1, 2]
    assert b.data.shape == (3, 5) and b.data[0, 3:].tolist() == [0, 0]
    assert b.packed().tobytes() == b"abcdefgh"
    assert b.take(np.array([2, 0])).frames() == [b"defgh", b"abc"]
    assert b.take(b.port == 1).frames() == [b"abc", b"defgh"]
    both = FrameBatch.concat([b, FrameBatch.empty(), batch([b"x" * 9], [7], Port.NET)])
    assert both.frames() == [b"abc", b"", b"defgh", b"x" * 9]
    assert both.time_ns.tolist() == [0, 1, 2, 7]
    assert len(FrameBatch.concat([])) == 0
    assert FrameBatch.from_frames([], min_width=4).data.shape == (0, 4)


# --- Round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("nanos", [False, True])
def test_round_trip(tmp_path, nanos):
    path = tmp_path / "x.pcap"
    write_pcap(path, batch(FRAMES, TIMES_NS, Port.NET), nanos=nanos)
    got = read_pcap(path, Port.HOST)
    assert got.frames() == FRAMES
    assert got.port.tolist() == [int(Port.HOST)] * len(FRAMES)
    expect = TIMES_NS if nanos else [t // 1000 * 1000 for t in TIMES_NS]
    assert got.time_ns.tolist() == expect


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.binary(max_size=200), st.integers(0, 2**32 * 10**9 - 1)),
                max_size=20), st.booleans())
def test_round_trip_random(tmp_path_factory, records, nanos):
    path = tmp_path_factory.mktemp("pcap") / "r.pcap"
    frames, times = [f for f, _ in records], [t for _, t in records]
    write_pcap(path, batch(frames, times), nanos=nanos)
    got = read_pcap(path, Port.NET)
    assert got.frames() == frames
    assert got.time_ns.tolist() == [t if nanos else t - t % 1000 for t in times]
    # dpkt reads what we write, records and timestamps alike.
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        got = list(reader)
    assert [bytes(b) for _, b in got] == frames
    if nanos:  # dpkt gives a Decimal of seconds for nanosecond pcaps
        assert [int(ts * 1_000_000_000) for ts, _ in got] == times


def test_empty_pcap_round_trip(tmp_path):
    path = tmp_path / "empty.pcap"
    write_pcap(path, FrameBatch.empty())
    assert path.stat().st_size == 24
    got = read_pcap(path, Port.NET)
    assert len(got) == 0 and got.frames() == []
    assert len(rdpcap(str(path))) == 0


def test_scapy_reads_ours(tmp_path):
    path = tmp_path / "ours.pcap"
    write_pcap(path, batch(FRAMES, [1_500_000_000, 1_500_000_001, 2_000_000_000, 3, 4]))
    packets = rdpcap(str(path))
    assert [bytes(p) for p in packets] == FRAMES
    assert [int(p.time * 1_000_000) for p in packets] == [1_500_000, 1_500_000, 2_000_000, 0, 0]


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_reads_scapy_pcaps(tmp_path, endianness, nano):
    path = str(tmp_path / "scapy.pcap")
    writer = RawPcapWriter(path, linktype=1, endianness=endianness, nano=nano)
    writer.write_header(None)
    for i, frame in enumerate(FRAMES):
        writer.write_packet(frame, sec=1_700_000_000 + i, usec=123_456_789 if nano else 123_456)
    writer.close()
    got = read_pcap(path, Port.NET)
    assert got.frames() == FRAMES
    frac = 123_456_789 if nano else 123_456_000
    assert got.time_ns.tolist() == [(1_700_000_000 + i) * 10**9 + frac for i in range(5)]
    magic = b"\xa1\xb2\x3c\x4d" if nano else b"\xa1\xb2\xc3\xd4"
    with open(path, "rb") as f:
        assert f.read(4) == (magic[::-1] if endianness == "<" else magic)


def test_reads_scapy_wrpcap(tmp_path):
    path = str(tmp_path / "w.pcap")
    packets = [Ether(f) for f in FRAMES]
    for i, p in enumerate(packets):
        p.time = 10 + i / 4
    wrpcap(path, packets)
    got = read_pcap(path, Port.HOST)
    assert got.frames() == FRAMES
    assert got.time_ns.tolist() == [10_000_000_000 + i * 250_000_000 for i in range(5)]
    with PcapWriter(str(tmp_path / "n.pcap"), nano=True) as w:
        for p in packets:
            w.write(p)
    assert read_pcap(tmp_path / "n.pcap", Port.NET).frames() == FRAMES


@pytest.mark.parametrize("nano", [False, True])
def test_reads_dpkt_pcaps(tmp_path, nano):
    path = tmp_path / "dpkt.pcap"
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, nano=nano)
        for i, frame in enumerate(FRAMES):
            writer.writepkt(frame, ts=100 + i * 0.5)
    got = read_pcap(path, Port.NET)
    assert got.frames() == FRAMES
    assert got.time_ns.tolist() == [100_000_000_000 + i * 500_000_000 for i in range(5)]


def test_reads_big_endian_by_hand(tmp_path):
    path = tmp_path / "be.pcap"
    frame = FRAMES[2]
    blob = struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    blob += struct.pack(">IIII", 5, 7, len(frame), len(frame)) + frame
    blob += struct.pack(">IIII", 6, 999_999_999, 0, 0)
    path.write_bytes(blob)
    got = read_pcap(path, Port.NET)
    assert got.frames() == [frame, b""]
    assert got.time_ns.tolist() == [5_000_000_007, 6_999_999_999]


def test_linktype_upper_bits_ignored(tmp_path):
    # The upper 4 bits of the link-type field carry FCS information (pcap spec), not the type.
    path = tmp_path / "fcsbits.pcap"
    frame = FRAMES[1]
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 0x10000001)
                     + struct.pack("<IIII", 0, 0, len(frame), len(frame)) + frame)
    assert read_pcap(path, Port.HOST).frames() == [frame]


# --- Errors name the file --------------------------------------------------------------------

def _header(magic=0xA1B2C3D4, linktype=1, order="<"):
    return struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)


def _record(frame, orig=None, order="<"):
    return struct.pack(order + "IIII", 1, 2, len(frame), len(frame) if orig is None else orig) \
        + frame


def pcap_error(path, *fragments):
    with pytest.raises(PcapError) as info:
        read_pcap(path, Port.HOST)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name, blob, fragments", [
    ("empty", b"", ["not a pcap file", "0 bytes"]),
    ("short", b"\xd4\xc3\xb2\xa1" + bytes(10), ["not a pcap file", "14 bytes"]),
    ("text", b"this is not a capture file at all, just text\n", ["not a pcap file", "magic"]),
    ("zeros", bytes(100), ["not a pcap file", "magic 0x00000000"]),
    ("raw_ip", _header(linktype=101) + _record(b"\x45" + bytes(19)), ["link type 101",
                                                                      "not Ethernet"]),
    ("linux_sll", _header(linktype=113), ["link type 113"]),
    ("be_raw_ip", _header(order=">", linktype=12), ["link type 12"]),
    ("cut_record_header", _header() + _record(FRAMES[2]) + b"\x01\x00\x00\x00\x00",
     ["record 2", "truncated record header"]),
    ("cut_record_data", _header() + _record(FRAMES[2])[:-5], ["record 1", "truncated"]),
    ("cut_second_record", _header() + _record(FRAMES[0]) + _record(FRAMES[3])[:40],
     ["record 2", "truncated"]),
    ("huge_record", _header() + struct.pack("<IIII", 0, 0, 0x7FFFFFFF, 0x7FFFFFFF) + bytes(64),
     ["record 1", "corrupt"]),
    ("snapped", _header() + _record(FRAMES[3], orig=1000), ["record 1", "captured truncated"]),
])
def test_corrupt_pcap(tmp_path, name, blob, fragments):
    path = tmp_path / f"{name}.pcap"
    path.write_bytes(blob)
    pcap_error(path, *fragments)


def test_pcapng_refused(tmp_path):
    path = str(tmp_path / "capture.pcapng")
    with PcapNgWriter(path) as writer:
        writer.write(Ether(FRAMES[2]))
    message = pcap_error(path, "pcapng is not supported")
    assert "editcap -F pcap" in message


def test_dpkt_non_ethernet(tmp_path):
    path = tmp_path / "rawip.pcap"
    with open(path, "wb") as f:
        dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_RAW).writepkt(b"\x45" + bytes(39), ts=1)
    pcap_error(path, "is not Ethernet")


def test_missing_and_unreadable(tmp_path):
    pcap_error(tmp_path / "nope.pcap", "cannot read pcap", "No such file or directory")
    pcap_error(tmp_path, "cannot read pcap")
    (tmp_path / "f").write_bytes(b"")
    pcap_error(tmp_path / "f" / "x.pcap", "cannot read pcap", "Not a directory")


# --- Merge order -----------------------------------------------------------------------------

def test_merge_by_time_host_before_net_on_ties():
    host = FrameBatch.from_frames([b"h0", b"h1", b"h2", b"h3"], port=Port.HOST,
                                  time_ns=[5, 10, 10, 30])
    net = FrameBatch.from_frames([b"n0", b"n1", b"n2", b"n3"], port=Port.NET,
                                 time_ns=[1, 10, 10, 20])
    for inputs in ([host, net], [net, host]):
        merged = merge_inputs(inputs)
        assert merged.frames() == [b"n0", b"h0", b"h1", b"h2", b"n1", b"n2", b"n3", b"h3"]
        assert merged.port.tolist() == [1, 0, 0, 0, 1, 1, 1, 0]
        assert merged.time_ns.tolist() == [1, 5, 10, 10, 10, 10, 20, 30]


def test_merge_stable_within_a_port():
    # Out-of-order timestamps inside one file are sorted; equal ones keep file order.
    host = FrameBatch.from_frames([b"a", b"b", b"c", b"d"], port=Port.HOST, time_ns=[3, 1, 3, 1])
    assert merge_inputs([host]).frames() == [b"b", b"d", b"a", b"c"]


def test_merge_empty_inputs():
    assert len(merge_inputs([])) == 0
    assert len(merge_inputs([FrameBatch.empty(), FrameBatch.empty()])) == 0
    net = FrameBatch.from_frames([b"x"], port=Port.NET)
    assert merge_inputs([FrameBatch.empty(), net]).frames() == [b"x"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), max_size=12), st.lists(st.integers(0, 5), max_size=12))
def test_merge_order_property(host_times, net_times):
    host = FrameBatch.from_frames([b"h%d" % i for i in range(len(host_times))], port=Port.HOST,
                                  time_ns=host_times)
    net = FrameBatch.from_frames([b"n%d" % i for i in range(len(net_times))], port=Port.NET,
                                 time_ns=net_times)
    merged = merge_inputs([net, host])
    expect = sorted([(t, 0, i, b"h%d" % i) for i, t in enumerate(host_times)]
                    + [(t, 1, i, b"n%d" % i) for i, t in enumerate(net_times)])
    assert merged.frames() == [f for *_, f in expect]
    assert merged.time_ns.tolist() == [t for t, *_ in expect]
    assert merged.port.tolist() == [p for _, p, *_ in expect]


def test_merge_pcaps_from_files(tmp_path):
    host, net = tmp_path / "h.pcap", tmp_path / "n.pcap"
    write_pcap(host, batch([b"h" * 20, b"H" * 20], [2_000, 4_000]))
    write_pcap(net, batch([b"n" * 20, b"N" * 20], [2_000, 3_000]))
    merged = merge_inputs([read_pcap(net, Port.NET), read_pcap(host, Port.HOST)])
    assert [f[:1] for f in merged.frames()] == [b"h", b"n", b"N", b"H"]
