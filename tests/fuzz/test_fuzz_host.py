"""Fuzzing the host toolchain with hypothesis: nothing a user or a wire can feed it crashes.

- Rule files (mutations of examples/rules.txt, random text): ``parse_rules`` returns a rule
  set or raises :class:`RuleError` and nothing else; every error has a line and a column
  inside the text.
- Configs (mutated and generated TOML): ``parse_config`` raises only :class:`ConfigError`.
- pcaps (mutated valid files, random bytes): ``read_pcap`` raises only :class:`PcapError`.
- Control protocol (random and mutated line bytes): the decoders raise only
  :class:`ProtocolError`; encode -> decode round trips; the deframer never loses or invents a
  byte.
- The reference model on fuzzed frames (random bytes, scapy ``fuzz()`` stacks, mutated VXLAN
  frames): never raises; every input frame either is counted in exactly one drop reason or
  produces at least one output; rx counts every input, tx every output, the drop counters
  and rule counters add up; a controller copy is the input byte for byte.

The default run is a quick pass (tens of examples each); ``-m slow`` runs the long profile.
"""

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from openvtep import protocol as p
from openvtep.config import parse_config
from openvtep.errors import ConfigError, PcapError, RuleError
from openvtep.frames import FrameBatch, read_pcap
from openvtep.headers import DropReason, Port
from openvtep.reference import Reference
from openvtep.rules import parse_rules

from .strategies import (
    CONFIG,
    RULES_TEXT,
    config_texts,
    frames,
    mutated_pcaps,
    pcap_bytes,
    rule_texts,
)

QUICK = settings(max_examples=int(os.environ.get("OPENVTEP_FUZZ_EXAMPLES", "60")), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LONG = settings(max_examples=3000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- Rules ---------------------------------------------------------------------------------


def check_rules(text):
    try:
        parse_rules(text, "fuzz.rules")
    except RuleError as exc:
        lines = text.splitlines()
        assert exc.errors, "RuleError without errors"
        for line, column, message in exc.errors:
            assert 1 <= line <= len(lines), (line, message)
            assert 1 <= column <= len(lines[line - 1]) + 1, (line, column, message)
            assert message and "\n" not in message


@QUICK
@given(rule_texts)
@example("priority=1,actions=output:net,set_tunnel:5")  # error column on the action
@example("dl_vlan=0x1000,actions=drop")
@example("nw_src=1.2.3.4/33,ip,actions=drop")
@example("priority=99999999999999999999,actions=drop")
@example("tun_id=0x1/0x0,actions=drop\ntun_id=0x2/0x0,actions=drop")  # duplicate after masking
@example("in_port=host,actions=set_field:1.2.3.4->tun_dst,set_field:->tun_id,output:net")
@example("\u0085priority=1,actions=drop")  # a Unicode line break inside a line
def test_rules_fuzz(text):
    check_rules(text)


@pytest.mark.slow
@LONG
@given(rule_texts)
def test_rules_fuzz_long(text):
    check_rules(text)


# --- Configs -------------------------------------------------------------------------------


def check_config(text):
    try:
        parse_config(text, "fuzz.toml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.toml: ")


@QUICK
@given(config_texts)
@example('[vtep]\nlocal_ip = 5\nlocal_mac = "02:00:00:00:01:01"\ngateway_mac = "02:00:00:00:01:fe"')
@example('[vtep]\nlocal_ip = "1.2.3.4"\nlocal_mac = "02:00:00:00:01:01"\n'
         'gateway_mac = "02:00:00:00:01:fe"\nmax_frame = 1e3')
@example("vtep = 1")
@example("[vtep]\nlocal_ip = [1]\nlocal_mac = {}\ngateway_mac = true")
def test_config_fuzz(text):
    check_config(text)


@pytest.mark.slow
@LONG
@given(config_texts)
def test_config_fuzz_long(text):
    check_config(text)


# --- pcaps ---------------------------------------------------------------------------------

_VALID_PCAP = None


def valid_pcap():
    global _VALID_PCAP
    if _VALID_PCAP is None:
        with tempfile.TemporaryDirectory() as tmp:
            _VALID_PCAP = pcap_bytes([bytes(range(60)), bytes(range(14)), bytes(100)],
                                     Path(tmp) / "valid.pcap")
    return _VALID_PCAP


def check_pcap(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.pcap"
        path.write_bytes(blob)
        try:
            batch = read_pcap(path, Port.HOST)
        except PcapError as exc:
            assert str(exc).startswith(str(path))
            return
        assert len(batch.length) == len(batch.time_ns) == len(batch.port)
        assert (batch.length >= 0).all()


@QUICK
@given(st.one_of(mutated_pcaps(valid_pcap()), st.binary(max_size=120)))
@example(valid_pcap()[:24] + b"\x00" * 15)  # a record header cut short
@example(b"\x0a\x0d\x0d\x0a" + bytes(40))     # pcapng
def test_pcap_fuzz(blob):
    check_pcap(blob)


@pytest.mark.slow
@LONG
@given(st.one_of(mutated_pcaps(valid_pcap()), st.binary(max_size=400)))
def test_pcap_fuzz_long(blob):
    check_pcap(blob)


# --- Control protocol ----------------------------------------------------------------------


def check_decoders(line):
    for decode in (p.cobs_decode, p.decode_request, p.decode_reply):
        try:
            decode(line)
        except p.ProtocolError:
            pass
    for table in (p.IDENTIFY_BODY, p.STATUS_BODY, p.ERROR_BODY, p.CAPTURE_REPLY):
        try:
            p.unpack_fields(table, line)
        except p.ProtocolError:
            pass


@st.composite
def mutated_messages(draw):
    seq, tag = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFF))
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        line = p.encode_request(seq, tag, draw(st.sampled_from(list(p.Command))), body)
    else:
        line = p.encode_reply(seq, tag, draw(st.integers(0, 255)), draw(st.integers(0, 255)),
                              body)
    data = bytearray(line[:-1])  # without the delimiter
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("flip", "cut", "insert")))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            data = data[:pos]
        else:
            data.insert(pos, draw(st.integers(0, 255)))
    return bytes(data)


@QUICK
@given(st.one_of(st.binary(max_size=300), mutated_messages()))
@example(b"\x05\x01")     # a code group longer than the frame
@example(b"\x01\x00\x01")  # 0x00 inside a frame
@example(b"\x01" * 9)     # a 8-byte message of zeros: too short for a reply, CRC wrong
def test_protocol_decoders_fuzz(line):
    check_decoders(line)


@QUICK
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.sampled_from(list(p.Command)),
       st.binary(max_size=600))
@example(0, 0, p.Command.INJECT, b"\x00" * 254)
@example(0, 0, p.Command.INJECT, b"\x01" * 254 + b"\x00")
def test_request_round_trip(seq, tag, cmd, body):
    line = p.encode_request(seq, tag, cmd, body)
    assert line.endswith(b"\x00") and b"\x00" not in line[:-1]
    request = p.decode_request(line[:-1])
    assert (request.seq, request.tag, request.cmd, request.body) == (seq, tag, cmd, body)


@QUICK
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0xFF),
       st.integers(0, 0xFF), st.binary(max_size=600))
def test_reply_round_trip(seq, tag, cmd, status, body):
    reply = p.decode_reply(p.encode_reply(seq, tag, cmd, status, body)[:-1])
    assert (reply.seq, reply.tag, reply.cmd, int(reply.status), reply.body) == \
        (seq, tag, cmd, status, body)
    repr(reply)
    if status != 0 and len(body) >= p.table_bytes(p.ERROR_BODY):
        assert reply.info == int.from_bytes(body[2:6], "little")


@QUICK
@given(st.lists(st.binary(max_size=80), max_size=6), st.lists(st.integers(1, 50), max_size=8))
def test_deframer_keeps_every_byte(messages, chunks):
    """Messages COBS-framed and fed in arbitrary chunks come out whole, in order."""
    line = b"".join(p.cobs_encode(m) + b"\x00" for m in messages)
    deframer, out, pos = p.Deframer(), [], 0
    for size in chunks + [len(line)]:
        out += deframer.feed(line[pos:pos + size])
        pos += size
    assert [p.cobs_decode(f) for f in out] == [m for m in messages if p.cobs_encode(m)]


# --- Reference model -----------------------------------------------------------------------

RULESET = parse_rules(RULES_TEXT, "rules.txt")
REFERENCE = Reference(CONFIG, RULESET)


def check_reference(batch_frames):
    batch = FrameBatch.from_frames(batch_frames)  # timestamps 0..N-1: one per input
    result = REFERENCE.run(batch)
    n = len(batch)
    out_per_input = Counter()
    for port, out in result.outputs.items():
        out_per_input.update(out.time_ns.tolist())
        if port == Port.CONTROLLER:
            for t, frame in zip(out.time_ns.tolist(), out.frames()):
                assert frame == batch_frames[t][1], "controller copy differs from the input"
    for i in range(n):
        dropped = result.drop[i] >= 0
        assert dropped != (out_per_input[i] >= 1), (i, result.drop[i], out_per_input[i])
    stats = result.stats
    assert sum(v["rx_packets"] for v in stats["ports"].values()) == n
    assert sum(v["rx_bytes"] for v in stats["ports"].values()) == sum(
        len(f) for _, f in batch_frames)
    for port in Port:
        assert stats["ports"][port.label]["tx_packets"] == len(result.outputs[port])
        assert stats["ports"][port.label]["tx_bytes"] == int(result.outputs[port].length.sum())
    assert sum(stats["drops"].values()) == int((result.drop >= 0).sum())
    for reason in DropReason:
        assert stats["drops"][reason.label] == int((result.drop == reason).sum())
    assert sum(r["n_packets"] for r in stats["rules"]) == int((result.rule >= 0).sum())
    assert not np.any((result.rule >= 0) & (result.drop >= 0) &
                      (result.drop != DropReason.ACTION_DROP))


@QUICK
@given(st.lists(frames, min_size=1, max_size=12))
@example([(Port.NET, b"")])                    # an empty frame
@example([(Port.HOST, b"\x81\x00" * 8)])       # a tag announced in a 16-byte frame
def test_reference_fuzz(batch_frames):
    check_reference(batch_frames)


@pytest.mark.slow
@LONG
@given(st.lists(frames, min_size=1, max_size=40))
def test_reference_fuzz_long(batch_frames):
    check_reference(batch_frames)
