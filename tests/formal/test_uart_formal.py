"""Formal contract of the UART transmitter (hdl/uart.py, UARTTx), divisor 4.

A shadow of the wire format (8N1, LSB first, RS-232 idle high) runs beside the transmitter
from each byte it takes: the contract asserts, on every cycle, that ``tx`` is exactly the
shadow's bit (idle high, start bit 0 for ``divisor`` cycles, the 8 data bits LSB first, stop bit
1) and that ``i.ready`` is high exactly when the shadow is idle or in the last cycle of a stop
bit (so bytes go back to back, none is taken while another is on the wire, and the
transmitter never gets stuck). Proven by k-induction; the window must span the longest run of a state the transmitter
can hold that no reset reaches (its 4-bit bit counter at 15: 16 bit times), so it is about
``16 * divisor`` cycles.
"""

from amaranth.hdl import Assert, Cat, Const, Cover, Elaboratable, Signal

from openvtep.hdl.uart import UARTTx
from openvtep.sim import formal

from .contracts import contract_module, stream_source

DIVISOR = 4
BYTE_CYCLES = 10 * DIVISOR
INDUCTION_DEPTH = 16 * DIVISOR + 4


class UARTTxContract(Elaboratable):
    def __init__(self, dut):
        self.dut = dut

    def elaborate(self, platform):
        m = contract_module()
        m.submodules.dut = dut = self.dut
        took = stream_source(m, dut.i, "i")

        busy = Signal()
        bit = Signal(range(10))
        sub = Signal(range(DIVISOR))
        frame = Signal(10)   # start bit, data LSB first, stop bit
        sent = Signal(2)     # bytes sent, for the cover
        with m.If(took):
            m.d.sync += [busy.eq(1), bit.eq(0), sub.eq(0),
                         frame.eq(Cat(Const(0, 1), dut.i.payload, Const(1, 1)))]
        with m.Elif(busy):
            with m.If(sub == DIVISOR - 1):
                m.d.sync += sub.eq(0)
                with m.If(bit == 9):
                    m.d.sync += [busy.eq(0), sent.eq(sent + 1)]
                with m.Else():
                    m.d.sync += bit.eq(bit + 1)
            with m.Else():
                m.d.sync += sub.eq(sub + 1)

        stop_ends = busy & (bit == 9) & (sub == DIVISOR - 1)
        m.d.comb += [
            Assert(dut.tx == (~busy | frame.bit_select(bit, 1))),
            Assert(dut.i.ready == (~busy | stop_ends)),
            Cover((sent == 1) & ~busy & ~dut.i.valid),  # a byte sent, line idle again
            Cover(took & stop_ends),  # back to back: a byte taken as the stop bit ends
        ]
        return m


class BusyTakingTx(UARTTx):
    """Broken: takes a new byte while one is on the wire (the byte is lost)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.comb += self.i.ready.eq(1)
        return m




def test_uart_tx_proof():
    formal.check(UARTTxContract(UARTTx(DIVISOR)), "uart_tx", mode="prove",
                 depth=INDUCTION_DEPTH)


def test_uart_tx_cover():
    formal.check(UARTTxContract(UARTTx(DIVISOR)), "uart_tx", mode="cover",
                 depth=BYTE_CYCLES + 4)


def test_uart_tx_broken_takes_while_busy():
    formal.check_fails(UARTTxContract(BusyTakingTx(DIVISOR)), "uart_tx_busy_taking",
                       mode="prove", depth=BYTE_CYCLES + 4)
