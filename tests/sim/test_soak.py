"""Tests of the soak (``openvtep.sim.soak``): a short soak through the Verilator-simulated
pipeline equals the reference model with rule changes, gaps and backpressure and conserves
frames; a corrupted output, a lost output or a wrong counter is caught; flows keep their
fate.

The Verilator testbench is built on first use (a few minutes) and cached under
``build/sim/verilator/``; ``make soak`` shares it.
"""

import json
import random

import numpy as np
import pytest

from openvtep.headers import DropReason, Port
from openvtep.reference import Reference
from openvtep.rules import parse_rules
from openvtep.sim import soak
from openvtep.sim.soak import SoakMismatch, check_conservation, plan_segments, run_soak
from openvtep.sim.traffic import CONFIG, PAYLOAD_START, flow_batch


@pytest.fixture
def seed():
    seed = random.SystemRandom().randrange(1 << 31)
    print(f"soak seed {seed}")
    return seed


def quiet(text):
    print(text)


def test_short_soak(seed):
    """4,000 frames in 3 segments (3 rule sets), the first with gaps and stalls."""
    report = run_soak(4000, seed=seed, segment_frames=1500, log=quiet)
    assert report["result"] == "pass", f"seed {seed}"
    assert report["frames"] == 4000 and len(report["segments"]) == 3
    assert all(s["result"] == "equal" for s in report["segments"])
    first = report["segments"][0]
    assert first["idle"][0] > 0 and first["stall"][0] > 0
    final = report["final_counters"]
    rx = sum(final["ports"][p.label]["rx_packets"] for p in Port)
    tx = sum(final["ports"][p.label]["tx_packets"] for p in Port)
    assert rx == 4000 == report["emitted"] + sum(final["drops"].values())
    assert tx == report["outputs"] >= report["emitted"]  # controller copies come on top


@pytest.mark.slow
def test_long_soak(seed):
    """100,000 frames in 10 segments (about a minute)."""
    report = run_soak(100_000, seed=seed, segment_frames=10_000, log=quiet)
    assert report["result"] == "pass" and report["frames"] == 100_000, f"seed {seed}"


def _soak_failure(seed, tamper):
    with pytest.raises(SoakMismatch) as caught:
        run_soak(1200, seed=seed, segment_frames=600, log=quiet, tamper=tamper)
    text = str(caught.value)
    assert f"soak seed {seed}" in text and "segment" in text
    assert caught.value.report["result"] == "mismatch"
    return caught.value, text


def test_corrupted_byte_is_caught(seed):
    flipped = {}

    def flip(segment, got, counters):
        if segment.index == 1:
            k = len(got["out_bytes"]) // 2
            got["out_bytes"][k] ^= 0x5A
            flipped["at"] = k

    error, text = _soak_failure(seed, flip)
    assert error.segment == 1 and "differs" in text and "!" in text  # the hex diff's mark
    assert error.frame is not None


def test_lost_output_is_caught(seed):
    lost = {}

    def lose(segment, got, counters):
        # The first segment with an output loses its last one (a rule set may drop all).
        if not lost and len(got["out_length"]):
            n = int(got["out_length"][-1])
            got["out_length"] = got["out_length"][:-1]
            got["out_port"] = got["out_port"][:-1]
            got["out_bytes"] = got["out_bytes"][:-n]
            lost["segment"] = segment.index

    error, text = _soak_failure(seed, lose)
    assert error.segment == lost["segment"] and "outputs" in text


def test_wrong_counter_is_caught(seed):
    def miscount(segment, got, counters):
        if segment.index == 1:
            counters["drops"][DropReason.TABLE_MISS] += 1

    error, text = _soak_failure(seed, miscount)
    assert error.segment == 1 and "table_miss" in text


def test_conservation_check():
    """Frames in = emitted + counted dropped, rx/tx against what was sent and seen."""
    ports = np.array([[5, 500, 3, 300], [5, 700, 4, 450], [0, 0, 2, 100]], np.int64)
    drops = np.zeros(len(DropReason), np.int64)
    drops[DropReason.RUNT] = 3
    counters = {"ports": ports, "drops": drops}
    failures = []

    def fail(text, frame=None):
        failures.append(text)
        raise AssertionError(text)

    check_conservation(counters, n=10, in_bytes=1200, emitted=7, outputs=9, out_bytes=850,
                       fail=fail)
    for kwargs in ({"n": 11}, {"emitted": 6}, {"outputs": 8}, {"out_bytes": 851}):
        args = {"n": 10, "in_bytes": 1200, "emitted": 7, "outputs": 9, "out_bytes": 850,
                **kwargs}
        with pytest.raises(AssertionError):
            check_conservation(counters, fail=fail, **args)
    assert len(failures) == 4


def test_plan_segments(seed):
    segments = plan_segments(seed, 10_001, 2500)
    assert [s.frames for s in segments] == [2500] * 4 + [1]
    assert [s.start for s in segments] == [0, 2500, 5000, 7500, 10_000]
    assert segments[0].idle[0] > 0 and segments[0].stall[0] > 0
    assert plan_segments(seed, 10_001, 2500) == segments  # the seed reproduces the plan


def test_flow_batch_keeps_each_flows_fate(seed):
    """Frames of one flow differ only from PAYLOAD_START on, and the reference model treats
    them alike (rule, drop reason, output lengths): the rules made from the flows apply."""
    batch = flow_batch(seed, 3000, flows=100)
    assert len(batch) == 3000 and (batch.time_ns == np.arange(3000)).all()
    heads = batch.data[:, :PAYLOAD_START]
    length = batch.length[:, None]
    key = np.concatenate([heads, (length >> 8).astype(np.uint8), (length & 0xFF).astype(np.uint8),
                          batch.port[:, None]], axis=1)
    _, flow = np.unique(key, axis=0, return_inverse=True)
    flow = flow.reshape(-1)
    assert len(np.unique(flow)) <= 100
    ruleset = parse_rules("priority=10,in_port=net,actions=output:host\n"
                          "priority=5,ip,actions=set_tunnel:9,"
                          "set_field:198.18.0.9->tun_dst,output:net\n"
                          "priority=1,actions=controller")
    result = Reference(CONFIG, ruleset).run(batch)
    for column in (result.rule, result.drop):
        first = np.full(flow.max() + 1, -2)
        first[flow[::-1]] = column[::-1]
        assert (first[flow] == column).all(), f"seed {seed}"
    # Payload bytes past the headers are drawn afresh, zero past each frame's end.
    long = np.flatnonzero(batch.length > PAYLOAD_START + 64)
    if len(long) > 1:
        assert len({batch.data[k, PAYLOAD_START:PAYLOAD_START + 64].tobytes()
                    for k in long}) == len(long)
    assert not batch.data[np.arange(batch.data.shape[1]) >= batch.length[:, None]].any()


def test_command_fails_on_a_difference(tmp_path, monkeypatch, capsys):
    """The command exits 1 naming the seed, segment and frame, with a hex diff and the command
    that reproduces it, and still writes the report."""
    original = soak.Simulator.run

    def corrupted(self, batch, **kwargs):
        got = original(self, batch, **kwargs)
        got["out_bytes"][-1] ^= 1
        return got

    monkeypatch.setattr(soak.Simulator, "run", corrupted)
    report = tmp_path / "soak.json"
    code = soak.main(["--frames", "600", "--segment-frames", "300", "--seed", "5",
                      "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAIL: soak seed 5: segment 0" in err and "differs" in err
    assert "--seed 5 --frames 600 --segment-frames 300 --width 8 --start-segment 0" in err
    assert json.loads(report.read_text())["result"] == "mismatch"
