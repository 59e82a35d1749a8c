"""cocotb driver for a control bus port (``openvtep.hdl.bus.Signature``, initiator side), and
the table loader and counter readers built on it with the address map of
:mod:`openvtep.regmap`.

    regs = RegisterDriver(dut, "bus", clock=clock)   # before clock.start()
    await regs.write_all(regmap.table_writes(image))
    counters = await read_rule_counters(regs, len(image.rules))
"""

from openvtep import regmap as rm
from openvtep.headers import DropReason, Port

__all__ = ["RegisterDriver", "read_drops", "read_port_counters", "read_rule_counters"]


def _reader(handle):
    raw = getattr(getattr(handle, "_handle", None), "get_signal_val_binstr", None)
    if raw is not None:
        return lambda: int(raw(), 2)
    return lambda: int(handle.value)


class RegisterDriver:
    """The initiator side of the bus port ``name`` of ``dut`` (``<name>__valid``, ...).

    One request at a time, as the bus protocol asks: ``await write(addr, word)`` and
    ``await read(addr)`` return with the response; an ``r_err`` response raises
    ``AssertionError`` naming the address.
    """

    def __init__(self, dut, name, *, clock):
        self.clock = clock
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = _reader(getattr(dut, f"{name}__ready"))
        self._addr = getattr(dut, f"{name}__addr")
        self._write = getattr(dut, f"{name}__w_en")
        self._w_data = getattr(dut, f"{name}__w_data")
        self._r_valid = _reader(getattr(dut, f"{name}__r_valid"))
        self._r_data = _reader(getattr(dut, f"{name}__r_data"))
        self._r_err = _reader(getattr(dut, f"{name}__r_err"))
        self._valid.value = 0
        self._addr.value = 0
        self._write.value = 0
        self._w_data.value = 0
        self.requests = 0

    async def _request(self, addr, write, word):
        edge = self.clock.edge
        self._addr.value = addr
        self._write.value = write
        self._w_data.value = word
        self._valid.value = 1
        while True:
            await edge
            if self._ready():
                break
        self._valid.value = 0
        self.requests += 1
        while True:
            await edge
            if self._r_valid():
                break
        if self._r_err():
            raise AssertionError(f"bus {'write' if write else 'read'} at {addr:#x}: r_err")
        return self._r_data()

    async def write(self, addr, word):
        await self._request(addr, 1, word)

    async def read(self, addr):
        return await self._request(addr, 0, 0)

    async def write_all(self, writes):
        """Issue ``(address, word)`` writes in order."""
        for addr, word in writes:
            await self._request(addr, 1, word)

    async def read64(self, addr):
        low = await self.read(addr)
        return low | (await self.read(addr + 1)) << 32

    async def read_raw(self, table, index, bits):
        """Read a table entry (through the staging buffer) as an integer of ``bits`` bits."""
        await self.write(rm.COMMAND, rm.command(rm.OP_READ, table, index))
        value = 0
        for k in range(-(-bits // 32)):
            value |= await self.read(rm.STAGING + k) << (32 * k)
        return value & ((1 << bits) - 1)

    async def read_entry(self, table, index, layout):
        """Read a table entry as a dict of the fields of ``layout``."""
        return rm.unpack_fields(layout, await self.read_raw(table, index,
                                                            rm.layout_bits(layout)))


async def read_rule_counters(regs, count):
    """``[(packets, bytes)]`` of rule indices ``0 .. count - 1``."""
    out = []
    for index in range(count):
        entry = await regs.read_entry(rm.TABLE_COUNTER, index, rm.COUNTER_ENTRY)
        out.append((entry["packets"], entry["bytes"]))
    return out


async def read_port_counters(regs):
    """``{Port: {counter name: value}}`` of the pipeline's per-port counters."""
    return {port: {name: await regs.read64(rm.port_counter_address(port, name))
                   for name in rm.PORT_COUNTERS} for port in Port}


async def read_drops(regs):
    """``{DropReason: count}``."""
    return {reason: await regs.read(rm.drop_address(reason)) for reason in DropReason}

