"""The driver and the bridge over a damaging link (:class:`openvtep.sim.faulty_link.FaultyLink`:
seeded drops, bit flips, duplicates and delays, in both directions, bounded in number).

Every command must either succeed or raise a :class:`DeviceError`; nothing may be applied
twice; afterwards, over a clean connection, the RAM and the captured frames must be what the
driver believes it did (commands that raised may or may not have happened, at most once).

More seeds: ``OPENVTEP_FAULT_SEEDS=11,12,13 pytest tests/hil/test_faults.py``."""

import os
import random

import pytest

from openvtep.driver import Device, DeviceError
from openvtep.headers import Port
from openvtep.sim.bridge_top import COUNTERS, MAP
from openvtep.sim.faulty_link import FaultyLink

RAM = MAP["ram"][0] + 1024  # a region of its own
SIZE = 256
CNT = MAP["counters"][0]


SEEDS = [int(s) for s in os.environ.get("OPENVTEP_FAULT_SEEDS", "11").split(",")]


@pytest.mark.parametrize("seed", SEEDS)
def test_faulty_link(test_top, sim_timeout, seed):
    rng = random.Random(seed)
    with Device(test_top.url, timeout=sim_timeout) as clean:
        before = clean.read_counters(CNT, len(COUNTERS))
        clean.write_block(RAM, [0] * SIZE)
        assert clean.poll() == []
    believed = {RAM + k: {0} for k in range(SIZE)}  # address -> values it may hold
    sure = []     # frames injected for certain
    maybe = []    # frames whose inject raised
    failures = []
    link = FaultyLink(test_top.url, seed=seed, rate=0.004, max_faults=30, max_delay=0.02)
    try:
        dev = Device(link.url, timeout=2.5, retries=10)
        for _ in range(24):
            op = rng.choice(["batch", "batch", "write", "read", "inject", "block"])
            try:
                if op == "batch":
                    pairs = [(RAM + rng.randrange(SIZE), rng.getrandbits(32))
                             for _ in range(rng.randint(1, 120))]
                    # Up to 60 words a message: several messages, pipelined.
                    dev.info["max_request"] = 60 * 7 + 8
                    dev.write_batch(pairs)
                    for addr, value in pairs:
                        believed[addr] = {value}
                elif op == "write":
                    addr, value = RAM + rng.randrange(SIZE), rng.getrandbits(32)
                    dev.write(addr, value)
                    believed[addr] = {value}
                elif op == "read":
                    addr = RAM + rng.randrange(SIZE)
                    assert dev.read(addr) in believed[addr]
                elif op == "block":
                    start = rng.randrange(SIZE - 64)
                    got = dev.read_block(RAM + start, 64)
                    assert all(v in believed[RAM + start + k] for k, v in enumerate(got))
                else:
                    frame = rng.randbytes(rng.randint(14, 200))
                    port = rng.choice([Port.HOST, Port.NET])
                    try:
                        dev.inject(port, frame)
                    except DeviceError:
                        maybe.append((port, frame))
                        raise
                    sure.append((port, frame))
            except DeviceError as exc:
                failures.append(str(exc))
                if op == "batch":
                    for addr, value in pairs:
                        believed[addr] = believed[addr] | {value}
                elif op == "write":
                    believed[addr] = believed[addr] | {value}
        dev.close()
    finally:
        link.close()
    print(f"seed {seed}: {len(link.faults)} faults, {len(failures)} commands raised; "
          f"driver stats {dev.stats}")
    assert len(link.faults) > 5, "the link did not damage anything: test the test"
    assert len(failures) <= 2, failures

    with Device(test_top.url, timeout=sim_timeout) as clean:
        got = clean.read_block(RAM, SIZE)
        wrong = [(hex(RAM + k), v) for k, v in enumerate(got) if v not in believed[RAM + k]]
        assert not wrong, f"seed {seed}: RAM differs from what the driver believes: {wrong[:5]}"
        frames = clean.poll(timeout=2)
        after = clean.read_counters(CNT, len(COUNTERS))
    # Every sure frame exactly once and in order; a maybe frame at most once.
    expected = [f for f in sure]
    got_sure = [f for f in frames if f in sure]
    assert got_sure == expected, f"seed {seed}: captured frames differ"
    assert len(frames) - len(got_sure) <= len(maybe)
    injected = after[COUNTERS.index("inject_frames")] - before[COUNTERS.index("inject_frames")]
    assert injected == len(frames), "a frame was injected twice or lost"
