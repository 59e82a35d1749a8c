"""PLLs that turn a board's oscillator into the datapath clock.

amaranth-boards gives each board its oscillator as ``platform.default_clk`` (12 MHz on the iCE40
boards, 25 MHz on ULX3S and Colorlight, 48 MHz on OrangeCrab). The datapath runs from a PLL
output at the board's target frequency; :func:`ice40_pll` and :func:`ecp5_pll` search the
divider settings the same way Project IceStorm's ``icepll`` and Project Trellis' ``ecppll`` do
(the limits below are theirs, from the iCE40 sysCLOCK and ECP5 sysCLOCK technical notes), but
pick the *lowest frequency at or above* the request, so the target clock is never slower than
asked. ``tests/boards/test_pll.py`` checks them against the YoWASP builds of those tools.

:class:`PLLClock` instantiates the primitive (``SB_PLL40_CORE`` / ``EHXPLLL``), and derives the
``sync`` domain with a reset held until the PLL has locked and a few hundred cycles more (iCE40
block RAM needs a few microseconds after configuration before it works).
"""

import dataclasses

from amaranth.hdl import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer

__all__ = ["Ecp5PllParams", "Ice40PllParams", "PLLClock", "ecp5_pll", "ice40_pll"]


@dataclasses.dataclass(frozen=True)
class Ice40PllParams:
    """``SB_PLL40_CORE`` settings, SIMPLE feedback: f_out = f_in * (DIVF+1) / ((DIVR+1) * 2**DIVQ)."""
    f_in: float
    f_out: float
    divr: int
    divf: int
    divq: int
    filter_range: int


@dataclasses.dataclass(frozen=True)
class Ecp5PllParams:
    """``EHXPLLL`` settings, feedback from CLKOP: f_out = f_in * CLKFB_DIV / CLKI_DIV."""
    f_in: float
    f_out: float
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_vco(self):
        return self.f_out * self.clkop_div


def _best(candidates, f_req, what):
    """The lowest candidate frequency >= f_req (with a little float slack)."""
    ok = [c for c in candidates if c.f_out >= f_req * (1 - 1e-9)]
    if not ok:
        raise ValueError(f"{what}: no PLL setting reaches {f_req / 1e6:g} MHz")
    return min(ok, key=lambda c: (c.f_out, getattr(c, "divr", 0)))


def ice40_pll(f_in, f_req):
    """iCE40 PLL settings for ``f_req`` Hz from ``f_in`` Hz (limits as in ``icepll``:
    PFD 10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz)."""
    candidates = []
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                f_out = f_vco / (1 << divq)
                if 16e6 <= f_out <= 275e6:
                    candidates.append(Ice40PllParams(f_in, f_out, divr, divf, divq,
                                                     _filter_range(f_pfd)))
    return _best(candidates, f_req, "iCE40 PLL")


def _filter_range(f_pfd):
    for limit, value in ((17e6, 1), (26e6, 2), (44e6, 3), (66e6, 4), (101e6, 5)):
        if f_pfd < limit:
            return value
    return 6


def ecp5_pll(f_in, f_req):
    """ECP5 PLL settings for ``f_req`` Hz from ``f_in`` Hz (limits as in ``ecppll``: PFD
    3.125..400 MHz, VCO 400..800 MHz, output 3.125..400 MHz)."""
    candidates = []
    for clki_div in range(1, 129):
        f_pfd = f_in / clki_div
        if not 3.125e6 <= f_pfd <= 400e6:
            continue
        for clkfb_div in range(1, 81):
            f_out = f_pfd * clkfb_div
            if not 3.125e6 <= f_out <= 400e6:
                continue
            for clkop_div in range(1, 129):
                if 400e6 <= f_out * clkop_div <= 800e6:
                    candidates.append(Ecp5PllParams(f_in, f_out, clki_div, clkfb_div, clkop_div))
                    break  # any VCO in range does; take the first
    return _best(candidates, f_req, "ECP5 PLL")


class PLLClock(Elaboratable):
    """The ``sync`` clock domain from a PLL on the board oscillator.

    ``sync`` is held in reset until the PLL reports lock, then for ``2**reset_bits`` more cycles.
    ``params`` comes from :func:`ice40_pll` or :func:`ecp5_pll` (which picks the primitive).
    """

    def __init__(self, params, *, pad=True, reset_bits=10):
        self.params = params
        self.pad = pad
        self.reset_bits = reset_bits
        self.locked = Signal()

    def elaborate(self, platform):
        m = Module()
        p = self.params
        clk_in = platform.request(platform.default_clk, dir="-")
        ice40_pad = isinstance(p, Ice40PllParams) and self.pad
        if not ice40_pad:
            m.submodules.clk_in = clk_buf = io.Buffer("i", clk_in)

        m.domains.sync = cd_sync = ClockDomain("sync")
        m.domains.por = cd_por = ClockDomain("por", reset_less=True)
        pll_clk = Signal()
        locked = self.locked
        if isinstance(p, Ice40PllParams):
            # An oscillator on a PLL pad (iCEBreaker): the PLL takes the pin itself (an SB_IO
            # there would take the pad's PLL site). Elsewhere (the HX8K breakout's J3 is no PLL
            # pad) the PLL takes the clock from a global buffer.
            primitive, clock = (("SB_PLL40_PAD", {"i_PACKAGEPIN": clk_in.io}) if ice40_pad else
                                ("SB_PLL40_CORE", {"i_REFERENCECLK": clk_buf.i}))
            m.submodules.pll = Instance(
                primitive,
                p_FEEDBACK_PATH="SIMPLE",
                p_DIVR=p.divr, p_DIVF=p.divf, p_DIVQ=p.divq, p_FILTER_RANGE=p.filter_range,
                i_RESETB=1, i_BYPASS=0, o_PLLOUTGLOBAL=pll_clk, o_LOCK=locked, **clock)
        elif isinstance(p, Ecp5PllParams):
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{p.f_in / 1e6:g}",
                a_FREQUENCY_PIN_CLKOP=f"{p.f_out / 1e6:g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
                a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA",
                p_CLKI_DIV=p.clki_div, p_CLKFB_DIV=p.clkfb_div,
                p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
                p_CLKOP_CPHASE=(p.clkop_div - 1) // 2, p_CLKOP_FPHASE=0,
                p_FEEDBK_PATH="CLKOP",
                i_RST=0, i_STDBY=0, i_CLKI=clk_buf.i, i_CLKFB=pll_clk,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_CLKOP=pll_clk, o_LOCK=locked)
        else:
            raise TypeError(f"unknown PLL parameters {p!r}")
        m.d.comb += [cd_sync.clk.eq(pll_clk), cd_por.clk.eq(pll_clk)]
        platform.add_clock_constraint(cd_sync.clk, p.f_out)

        locked_sync = Signal()
        m.submodules.lock_sync = FFSynchronizer(locked, locked_sync, o_domain="por")
        delay = Signal(self.reset_bits + 1)
        with m.If(~locked_sync):
            m.d.por += delay.eq(0)
        with m.Elif(~delay[-1]):
            m.d.por += delay.eq(delay + 1)
        m.d.por += cd_sync.rst.eq(~delay[-1])
        return m
