"""The control bus: how the control bridge reaches registers, tables and counters.

One simple memory-mapped bus, defined here once (:class:`Signature`), with the blocks that hang
targets off it: :class:`BusDecoder` (address ranges to targets), :class:`BusRegister` (a
register stage on a long way), :class:`RegisterFile`
(configuration and ID words), :class:`MemoryTarget` (a block RAM, e.g. a table) and
:class:`CounterBlock` (counters, 64-bit by default).

Protocol (initiator's view; ``addr`` is a *word* address, data words are 32 bits):

- A request is ``valid`` with ``addr``, ``w_en`` (1: write ``w_data``; 0: read) and ``w_data``
  held stable until the target raises ``ready`` (the request is accepted on the cycle with
  ``valid & ready``). ``ready`` may depend on ``valid``.
- Every accepted request gets exactly one response, one or more cycles after it was accepted:
  ``r_valid`` high for one cycle with ``r_data`` (reads) and ``r_err`` (1: no such address, or
  the target refused; nothing was done). Writes get a response too, so the initiator knows the
  write happened and whether it failed.
- An initiator has at most one request outstanding: it issues the next request after the
  previous response. Targets may rely on this.

A slow target (a table behind a hash engine, a counter snapshot in block RAM) simply answers
later. The initiator (:class:`openvtep.hdl.bridge.ControlBridge`) gives up after a timeout.
"""

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .. import protocol

__all__ = ["BusDecoder", "BusRegister", "CounterBlock", "MemoryTarget", "RegisterFile",
           "RegisterPortAdapter", "Signature"]

DATA_BITS = 32


class Signature(wiring.Signature):
    """The control bus signature, from the initiator's side (targets use ``.flip()``, i.e.
    ``In(bus.Signature(...))``).

    Members: ``addr`` (``addr_width``), ``w_en``, ``w_data`` (32), ``valid`` out;
    ``ready``, ``r_valid``, ``r_data`` (32), ``r_err`` in. See the module docstring for the
    protocol.
    """

    def __init__(self, addr_width=protocol.ADDR_BITS):
        if not isinstance(addr_width, int) or isinstance(addr_width, bool) or \
                not 1 <= addr_width <= protocol.ADDR_BITS:
            raise ValueError(f"Bus address width must be an integer in 1..{protocol.ADDR_BITS},"
                             f" not {addr_width!r}")
        self.addr_width = addr_width
        super().__init__({
            "addr": Out(addr_width),
            "w_en": Out(1),
            "w_data": Out(DATA_BITS),
            "valid": Out(1),
            "ready": In(1),
            "r_valid": In(1),
            "r_data": In(DATA_BITS),
            "r_err": In(1),
        })

    def __eq__(self, other):
        return isinstance(other, Signature) and other.addr_width == self.addr_width

    def __hash__(self):
        return hash((Signature, self.addr_width))

    def __repr__(self):
        return f"bus.Signature({self.addr_width})"


def _check_size(size, what):
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size & (size - 1):
        raise ValueError(f"{what} must be a power of two >= 1, not {size!r}")


class BusDecoder(wiring.Component):
    """Routes requests on ``bus`` to targets by address range.

    ``add(target_bus, addr=base, size=n)`` (before elaboration) maps words ``base ..
    base+n-1`` to a target's ``bus`` port (an ``In(bus.Signature(k))`` member, ``2**k >= n``),
    which sees ``addr - base``. ``size`` is a power of two and ``base`` a multiple of it.
    Requests to unmapped addresses are accepted and answered with ``r_err`` one cycle later.

    Latency: none added (requests and responses pass combinationally; the target's own).
    """

    def __init__(self, addr_width=protocol.ADDR_BITS):
        super().__init__({"bus": In(Signature(addr_width))})
        self._targets = []  # (bus, base, size)

    def add(self, target_bus, *, addr, size=None):
        sub_width = len(target_bus.addr)
        size = 1 << sub_width if size is None else size
        _check_size(size, "Target size")
        if size > 1 << sub_width:
            raise ValueError(f"Target of {sub_width} address bits cannot span {size} words")
        if not isinstance(addr, int) or addr < 0 or addr % size:
            raise ValueError(f"Target base {addr!r} is not a multiple of its size {size}")
        if addr + size > 1 << self.bus.signature.addr_width:
            raise ValueError(f"Target {addr:#x}+{size:#x} is outside the bus address space")
        for _, base, other in self._targets:
            if addr < base + other and base < addr + size:
                raise ValueError(f"Target {addr:#x}+{size:#x} overlaps {base:#x}+{other:#x}")
        self._targets.append((target_bus, addr, size))
        return target_bus

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        any_sel = Const(0)
        ready = Const(0)
        r_valid = Const(0)
        r_data = Const(0, DATA_BITS)
        r_err = Const(0)
        for index, (sub, base, size) in enumerate(self._targets):
            sel = Signal(name=f"sel{index}")
            shift = size.bit_length() - 1
            m.d.comb += [
                sel.eq((bus.addr >> shift) == (base >> shift)),
                sub.addr.eq(bus.addr[:shift] if shift else 0),
                sub.w_en.eq(bus.w_en),
                sub.w_data.eq(bus.w_data),
                sub.valid.eq(bus.valid & sel),
            ]
            any_sel = any_sel | sel
            ready = ready | (sel & sub.ready)
            # One request outstanding at a time: only its target answers, so OR the responses.
            r_valid = r_valid | sub.r_valid
            r_data = r_data | Mux(sub.r_valid, sub.r_data, 0)
            r_err = r_err | (sub.r_valid & sub.r_err)

        unmapped = Signal()
        m.d.sync += unmapped.eq(bus.valid & ~any_sel)
        m.d.comb += [
            bus.ready.eq(ready | ~any_sel),
            bus.r_valid.eq(r_valid | unmapped),
            bus.r_data.eq(r_data),
            bus.r_err.eq(r_err | unmapped),
        ]
        return m


class BusRegister(wiring.Component):
    """A register stage between an initiator (on ``i``) and a target (on ``o``): the request
    leaves for the target from registers and the response returns from registers, so no
    combinational path crosses the stage either way (a board's bridge FSM, two decoders and
    the classifier's register port made one 19 ns path).

    Latency: 2 cycles added to every request, one each way.
    """

    def __init__(self, addr_width=protocol.ADDR_BITS):
        super().__init__({"i": In(Signature(addr_width)), "o": Out(Signature(addr_width))})

    def elaborate(self, platform):
        m = Module()
        i, o = self.i, self.o
        held = Signal()     # a request in the registers, not yet taken by the target
        m.d.comb += [i.ready.eq(~held), o.valid.eq(held)]
        with m.If(i.valid & ~held):
            m.d.sync += [held.eq(1), o.addr.eq(i.addr), o.w_en.eq(i.w_en),
                         o.w_data.eq(i.w_data)]
        with m.Elif(o.ready):
            m.d.sync += held.eq(0)
        m.d.sync += [i.r_valid.eq(o.r_valid), i.r_data.eq(o.r_data), i.r_err.eq(o.r_err)]
        return m


class RegisterFile(wiring.Component):
    """``count`` 32-bit registers on the bus: configuration words the gateware reads from
    ``values[i]``, and read-only words (IDs, versions, status) given as ``read_only={index:
    value}`` (an int or a 32-bit Amaranth value, e.g. a status signal). Writes to read-only
    words answer ``r_err``; so do accesses past ``count``.

    Latency: accepts every request at once; responds the next cycle.
    """

    def __init__(self, count, *, init=(), read_only=None):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"RegisterFile count must be a positive integer, not {count!r}")
        self.count = count
        self.read_only = dict(read_only or {})
        for index in self.read_only:
            if not 0 <= index < count:
                raise ValueError(f"Read-only register {index} is outside 0..{count - 1}")
        init = list(init) + [0] * (count - len(init))
        self.values = [Signal(DATA_BITS, init=init[i], name=f"reg{i}") for i in range(count)]
        super().__init__({"bus": In(Signature(max(1, (count - 1).bit_length())))})

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        words = [Const(self.read_only[i], DATA_BITS) if isinstance(self.read_only.get(i), int)
                 else self.read_only.get(i, self.values[i]) for i in range(self.count)]

        m.d.comb += bus.ready.eq(1)
        m.d.sync += [bus.r_valid.eq(bus.valid), bus.r_err.eq(0), bus.r_data.eq(0)]
        with m.If(bus.valid), m.Switch(bus.addr):
            for i in range(self.count):
                with m.Case(i):
                    with m.If(bus.w_en):
                        if i in self.read_only:
                            m.d.sync += bus.r_err.eq(1)
                        else:
                            m.d.sync += self.values[i].eq(bus.w_data)
                    with m.Else():
                        m.d.sync += bus.r_data.eq(words[i])
            with m.Default():
                m.d.sync += bus.r_err.eq(1)
        return m


class MemoryTarget(wiring.Component):
    """A ``depth``-word block RAM (:class:`amaranth.lib.memory.Memory`) on the bus, e.g. a
    table. The gateware uses it through ``read_port()`` of :attr:`memory` if it needs to.

    Latency: accepts every request at once; responds the next cycle (the RAM's read latency).
    """

    def __init__(self, depth, *, init=()):
        _check_size(depth, "MemoryTarget depth")
        self.depth = depth
        self.memory = Memory(shape=DATA_BITS, depth=depth, init=init)
        super().__init__({"bus": In(Signature(max(1, (depth - 1).bit_length())))})

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        m.submodules.memory = self.memory
        rd = self.memory.read_port()
        wr = self.memory.write_port()
        m.d.comb += [
            bus.ready.eq(1),
            rd.addr.eq(bus.addr),
            rd.en.eq(bus.valid & ~bus.w_en),
            wr.addr.eq(bus.addr),
            wr.data.eq(bus.w_data),
            wr.en.eq(bus.valid & bus.w_en),
            bus.r_data.eq(rd.data),
            bus.r_err.eq(0),
        ]
        m.d.sync += bus.r_valid.eq(bus.valid)
        return m


class CounterBlock(wiring.Component):
    """``count`` counters of ``width`` bits (default 64) on the bus, two words each (counter
    ``k``: low word at ``2k``, high word at ``2k+1``), as the protocol's ``COUNTERS`` command
    reads them; bits above ``width`` read as 0.

    Each cycle counter ``k`` grows by ``add[k]`` (``amount_width`` bits), modulo
    ``2**width``. Reading a low word returns it and snapshots the counter's high word, which
    the next read of the high word returns: read low then high for a consistent value. Writing
    the low word clears the counter (any value); writing the high word answers ``r_err``.
    A counter narrower than 64 bits wraps within reach of real traffic: the host extends it
    (:class:`openvtep.vtep.Vtep` counts the wraps).

    Latency: accepts every request at once; responds the next cycle.
    """

    def __init__(self, count, *, amount_width=16, width=64):
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"CounterBlock count must be a positive integer, not {count!r}")
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 64:
            raise ValueError(f"CounterBlock width must be an integer in 1..64, not {width!r}")
        self.count = count
        self.width = width
        super().__init__({
            "bus": In(Signature(max(1, (2 * count - 1).bit_length()))),
            "add": In(data.ArrayLayout(amount_width, count)),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        counters = [Signal(self.width, name=f"counter{k}") for k in range(self.count)]
        snapshot = Signal(DATA_BITS)
        clear = Signal(self.count)

        for k, counter in enumerate(counters):
            with m.If(clear[k]):
                m.d.sync += counter.eq(0)
            with m.Else():
                m.d.sync += counter.eq(counter + self.add[k])

        m.d.comb += bus.ready.eq(1)
        m.d.sync += [bus.r_valid.eq(bus.valid), bus.r_err.eq(0), bus.r_data.eq(0)]
        with m.If(bus.valid), m.Switch(bus.addr):
            for k, counter in enumerate(counters):
                with m.Case(2 * k):
                    with m.If(bus.w_en):
                        m.d.comb += clear[k].eq(1)
                    with m.Else():
                        # Slices past the width are empty: they read as 0.
                        m.d.sync += [bus.r_data.eq(counter[:32]),
                                     snapshot.eq(counter[32:])]
                with m.Case(2 * k + 1):
                    with m.If(bus.w_en):
                        m.d.sync += bus.r_err.eq(1)
                    with m.Else():
                        m.d.sync += bus.r_data.eq(snapshot)
            with m.Default():
                m.d.sync += bus.r_err.eq(1)
        return m


class RegisterPortAdapter(wiring.Component):
    """Puts a block with a *register port* (``valid``/``ready``/``addr``/``write``/``w_data``
    out, ``r_valid``/``r_data`` in, from the initiator's side: the classifier's
    ``openvtep.hdl.regport.RegisterPort``, whose writes get no response) on the control bus.

    ``bus`` (``In(bus.Signature(addr_width))``) faces the decoder; ``port`` (``Out``) faces the
    block, e.g. ``wiring.connect(m, adapter.port, classifier.regs)``. Requests pass through
    combinationally; a write gets its bus response the cycle after the block accepts it, a
    read the block's ``r_valid``. The block never reports errors, so ``r_err`` is 0.
    """

    def __init__(self, addr_width):
        super().__init__({
            "bus": In(Signature(addr_width)),
            "port": Out(wiring.Signature({
                "valid": Out(1), "ready": In(1), "addr": Out(addr_width), "write": Out(1),
                "w_data": Out(DATA_BITS), "r_valid": In(1), "r_data": In(DATA_BITS),
            })),
        })

    def elaborate(self, platform):
        m = Module()
        bus, port = self.bus, self.port
        write_done = Signal()
        m.d.sync += write_done.eq(bus.valid & bus.w_en & port.ready)
        m.d.comb += [
            port.valid.eq(bus.valid), port.addr.eq(bus.addr), port.write.eq(bus.w_en),
            port.w_data.eq(bus.w_data), bus.ready.eq(port.ready),
            bus.r_valid.eq(port.r_valid | write_done), bus.r_data.eq(port.r_data),
            bus.r_err.eq(0),
        ]
        return m
