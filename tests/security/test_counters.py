"""Counters never wrap without the host noticing.

- Gateware: a :class:`openvtep.hdl.bus.CounterBlock` built narrow (``width=9``) counts frames
  and bytes of real traffic (as the pipeline's port counters do) until both wrap, many times;
  the host's :class:`openvtep.vtep.CounterTracker`, fed the bus readings a host takes while the
  traffic runs, recovers the exact totals and counts every wrap; so it does for any width
  and any increments (hypothesis), read at least once per wrap.
- Driver: :class:`openvtep.vtep.Vtep` over a fake device whose counters go back: a 32-bit drop
  counter that wraps is extended (``counter_wraps``), a 64-bit counter that goes back without a
  clear from this session raises :class:`openvtep.vtep.CounterReset` naming it, and the
  session's own clear raises nothing.
"""

import gc
import random
import warnings

import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from openvtep import regmap as rm
from openvtep.hdl.bus import CounterBlock
from openvtep.headers import DropReason, Port
from openvtep.tables import BANKS, SLOTS, Geometry
from openvtep.vtep import (
    PIPELINE_BASE,
    TOP_BASE,
    TOP_ID,
    CounterReset,
    CounterTracker,
    Vtep,
)


def test_narrow_counter_block_wraps_and_host_extends():
    width, beat = 9, 8  # counters wrap at 512; 8-byte beats as at W = 8
    rng = random.Random(11)
    frames = [rng.randint(1, 120) for _ in range(700)]
    dut = CounterBlock(2, amount_width=8, width=width)
    tracker = CounterTracker()
    seen = []

    async def read(ctx, addr):
        ctx.set(dut.bus.addr, addr)
        ctx.set(dut.bus.w_en, 0)
        ctx.set(dut.bus.valid, 1)
        await ctx.tick()  # accepted at once
        ctx.set(dut.bus.valid, 0)
        _, _, data = await ctx.tick().sample(dut.bus.r_data)
        return data

    async def bench(ctx):
        for k, length in enumerate(frames):
            for start in range(0, length, beat):
                ctx.set(dut.add[0], start + beat >= length)       # a frame: its last beat
                ctx.set(dut.add[1], min(beat, length - start))    # bytes of the beat
                await ctx.tick()
            ctx.set(dut.add[0], 0)
            ctx.set(dut.add[1], 0)
            if k % 4 == 3 or k == len(frames) - 1:  # the host polls: < 512 bytes between reads
                values = []
                for counter in range(2):
                    low = await read(ctx, 2 * counter)
                    high = await read(ctx, 2 * counter + 1)
                    values.append(high << 32 | low)
                assert max(values) < 1 << width and values[1] >> 32 == 0
                extended, went_back = tracker.update({"packets": (values[0], width),
                                                      "bytes": (values[1], width)})
                assert not went_back
                seen.append((k + 1, sum(frames[:k + 1]), extended))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for n, nbytes, extended in seen:
        assert extended == {"packets": n, "bytes": nbytes}
    assert tracker.wraps == {"packets": len(frames) >> width,
                             "bytes": sum(frames) >> width} and tracker.wraps["bytes"] > 50


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(0, 1 << 40), max_size=30))
def test_tracker_extends_any_polled_counter(bits, steps):
    """Read at least once per wrap (each step below ``2**bits``), a counter of any width is
    extended to its exact total; a 64-bit one never goes back."""
    tracker, total = CounterTracker(), 0
    for step in steps:
        total += step % (1 << bits)
        values, went_back = tracker.update({"c": (total % (1 << bits), bits),
                                            "wide": (total, 64)})
        assert values == {"c": total, "wide": total} and not went_back


@pytest.mark.parametrize("width", [0, 65, 8.0, True])
def test_counter_block_width_checked(width):
    with warnings.catch_warnings():
        # The half-made component is collected unused: not worth a warning here.
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(ValueError, match="width"):
            CounterBlock(2, width=width)
        gc.collect()


class FakeVtepDevice:
    """The registers of a VtepTop that :class:`Vtep` reads for counters, with counters a test
    sets at will (``ports[(port, name)]``, ``drops[reason]``); writes to a port counter's low
    word clear it, as on the gateware."""

    url = "fake://vtep"

    def __init__(self):
        self.ports = {(port, name): 0 for port in Port for name in rm.PORT_COUNTERS}
        self.drops = {reason: 0 for reason in DropReason}

    def read(self, addr):
        if addr == TOP_BASE:
            return TOP_ID
        if addr == PIPELINE_BASE + rm.GEOMETRY:
            g = Geometry()
            return ((g.exact_entries // (BANKS * SLOTS)).bit_length() - 1 |
                    g.exact_profiles << 8 | g.hash_seeds << 12 | g.wildcard_entries << 16)
        raise AssertionError(f"unexpected read {addr:#x}")

    def read_block(self, addr, count):
        assert addr == PIPELINE_BASE + rm.DROPS and count == len(DropReason)
        return [self.drops[reason] for reason in DropReason]

    def read_counters(self, addr, count):
        assert addr == PIPELINE_BASE + rm.PORTS and count == 4 * len(Port)
        return [self.ports[port, name] for port in Port for name in rm.PORT_COUNTERS]

    def write_batch(self, pairs):
        for addr, _ in pairs:
            for port in Port:
                for name in rm.PORT_COUNTERS:
                    if addr == PIPELINE_BASE + rm.port_counter_address(port, name):
                        self.ports[port, name] = 0
        return len(pairs)


def test_drop_counter_wrap_is_extended():
    dev = FakeVtepDevice()
    vtep = Vtep(dev)
    dev.drops[DropReason.TABLE_MISS] = 0xFFFF_FFF0
    assert vtep.counters()["drops"]["table_miss"] == 0xFFFF_FFF0
    dev.drops[DropReason.TABLE_MISS] = 0x10  # 0x20 more frames: the 32-bit counter wrapped
    dev.ports[Port.NET, "rx_packets"] = 0x20
    stats = vtep.counters()
    assert stats["drops"]["table_miss"] == 0x1_0000_0010
    assert vtep.counter_wraps == {"drops.table_miss": 1}
    # After a clear, drops count from it, across the next wrap too.
    vtep.clear_counters()
    dev.drops[DropReason.TABLE_MISS] = 0x5
    dev.ports[Port.NET, "rx_packets"] = 0xFFFF_FFF5
    assert vtep.counters()["drops"]["table_miss"] == 0xFFFF_FFF5
    assert vtep.counter_wraps == {"drops.table_miss": 2}


def test_64_bit_counter_going_back_is_reported():
    dev = FakeVtepDevice()
    vtep = Vtep(dev)
    dev.ports[Port.NET, "rx_bytes"] = 100_000
    dev.ports[Port.NET, "rx_packets"] = 1000
    dev.drops[DropReason.RUNT] = 7
    vtep.counters()
    # A reset (or another session's clear): everything back near zero.
    dev.ports[Port.NET, "rx_bytes"] = 640
    dev.ports[Port.NET, "rx_packets"] = 10
    dev.drops[DropReason.RUNT] = 2
    with pytest.raises(CounterReset, match=r"ports\.net\.rx_packets from 1000 to 10") as info:
        vtep.counters()
    assert info.value.counters == ["ports.net.rx_packets", "ports.net.rx_bytes"]
    assert info.value.url == dev.url
    # The reading counts from the reset: the drop counter that went back with it is no wrap.
    assert info.value.stats["drops"]["runt"] == 2
    assert info.value.stats["ports"]["net"]["rx_packets"] == 10
    assert vtep.counter_wraps == {}
    dev.drops[DropReason.RUNT] = 3
    assert vtep.counters()["drops"]["runt"] == 3  # and later readings go on from there


def test_own_clear_is_not_a_reset():
    dev = FakeVtepDevice()
    vtep = Vtep(dev)
    dev.ports[Port.HOST, "tx_bytes"] = 5000
    dev.drops[DropReason.OVERSIZE] = 4
    vtep.counters()
    vtep.clear_counters()
    assert dev.ports[Port.HOST, "tx_bytes"] == 0
    stats = vtep.counters()
    assert stats["ports"]["host"]["tx_bytes"] == 0 and stats["drops"]["oversize"] == 0
    dev.drops[DropReason.OVERSIZE] = 6
    assert vtep.counters()["drops"]["oversize"] == 2


def test_narrow_port_counters_are_extended():
    """A build with narrow port counters (``counter_bits``): wraps extended, not errors."""
    dev = FakeVtepDevice()
    vtep = Vtep(dev, counter_bits={"ports": 16})
    total = 0
    for step in (40_000, 40_000, 40_000):
        total += step
        dev.ports[Port.HOST, "rx_bytes"] = total & 0xFFFF
        assert vtep.counters()["ports"]["host"]["rx_bytes"] == total
    assert vtep.counter_wraps == {"ports.host.rx_bytes": 1}
