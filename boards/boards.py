"""The boards openvtep builds for: amaranth-boards platform, widths, clock targets, programmer.

Clock targets are line rates: W bytes per beat at f MHz carry ``W * 8 * f / 1000`` Gbps.

- iCE40, W=4: 31.25 MHz = 1 Gbps (one 1 GbE port).
- ECP5, W=4: 62.5 MHz = 2 Gbps (the two 1 GbE ports of a Colorlight 5A-75B).
- ECP5, W=8: 125 MHz = 8 Gbps (156.25 MHz, 10 Gbps, is the aim: ``--clock 156.25``).
- ECP5, W=16: 78.125 MHz = 10 Gbps.

The PLL rounds the target up to a frequency it can make (:mod:`openvtep.boards.pll`); that
frequency is the constraint given to nextpnr and the ``target_mhz`` of the report.

``widths`` lists what each device can hold: the parser and editor need ``W`` a power of two, 4
or more, and the editor's per-frame plan and the parser's header window grow with ``W`` (see
the per-board results in the build reports: wider datapaths are refused before synthesis on
the devices they do not fit).
"""

import dataclasses

from amaranth_boards.colorlight_5a75b_r7_0 import Colorlight_5A75B_R70Platform
from amaranth_boards.ice40_hx8k_b_evn import ICE40HX8KBEVNPlatform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform
from amaranth_boards.ulx3s import (
    ULX3S_12F_Platform,
    ULX3S_25F_Platform,
    ULX3S_45F_Platform,
    ULX3S_85F_Platform,
)

__all__ = ["BOARDS", "DEFAULT_BOARDS", "Board", "get_board"]

ICE40_TARGETS = {4: 31.25}
ECP5_TARGETS = {4: 62.5, 8: 125.0, 16: 78.125}


@dataclasses.dataclass(frozen=True)
class Board:
    """One buildable board.

    ``program`` is the programmer command with ``{bitstream}`` for the file; ``program_env`` the
    environment variable that overrides the tool (as amaranth-boards' ``toolchain_program``
    reads it); ``program_package`` the Debian package that has the tool.
    """
    name: str
    platform: type
    family: str                 # "ice40" or "ecp5"
    description: str
    widths: tuple
    default_width: int
    program: tuple
    program_env: str
    program_package: str
    bitstream: str              # file name of the bitstream in the build folder
    leds: tuple = (("led", 0),)  # (resource, index[, subsignal]) of each LED output bit
    entropy: tuple = ("button", 0)  # an input pin folded into the traffic generator
    uart: bool = True
    pll_pad: bool = True        # iCE40: the oscillator enters on a PLL pad (SB_PLL40_PAD)
    # The pipeline design's control UART: the fastest rate its USB-UART takes (the build may
    # step down to the next FTDI rate the sync clock divides to within 2%), what carries it,
    # and, for a board whose platform has no "uart" resource, (rx, tx, connector) pins for one.
    uart_baud: int = 3_000_000
    uart_via: str = "on-board FTDI USB-UART"
    uart_pins: tuple = ()
    # Default table geometry of the pipeline design: (exact_entries, wildcard_entries). With
    # up to 128 exact entries the exact-match rows are LUT RAM (64: 16 buckets, one LUT RAM
    # deep), and the ECP5 boards' wildcard CAM is LUT RAM up to 32 positions
    # (designs.cam_chunk_bits). From 256 exact entries the rows take 36 block RAMs, and no such
    # build has routed on the 85F (256/32 at W=8: 5,037 overused wires at iteration 15, falling
    # slowly; README, "Boards"). The ULX3S-85F's 128/32 routes at W=8 (iteration 60 at the 125
    # MHz target, 33,777 LUTs, 23 block RAMs). The 25Fs' 64/8 fits their block RAMs (22 of
    # 56) but not the VTEP's LUTs (24,642 of 24,288); the iCE40s hold neither.
    geometry: tuple = (64, 8)

    @property
    def targets(self):
        return ICE40_TARGETS if self.family == "ice40" else ECP5_TARGETS

    def target_mhz(self, width):
        return self.targets[width]

    @property
    def device(self):
        p = self.platform
        return f"{p.device}-{p.package}"


_ICEPROG = {"program_env": "ICEPROG", "program_package": "fpga-icestorm", "bitstream": "top.bin"}
_OFL = {"program_env": "OPENFPGALOADER", "program_package": "openfpgaloader", "bitstream": "top.bit"}
_ULX3S = dict(family="ecp5", uart_via="on-board FTDI FT231X USB-UART", program=("openFPGALoader", "-b", "ulx3s", "-m", "{bitstream}"),
              leds=tuple(("led", i) for i in range(8)), entropy=("button", 1), **_OFL)

BOARDS = {board.name: board for board in [
    Board("icebreaker", ICEBreakerPlatform, "ice40", "1BitSquared iCEBreaker (iCE40 UP5K)",
          widths=(4,), default_width=4, program=("iceprog", "{bitstream}"),
          leds=(("led", 0), ("led", 1)), uart_via="on-board FTDI FT2232H, channel B",
          **_ICEPROG),
    Board("ice40-hx8k", ICE40HX8KBEVNPlatform, "ice40", "Lattice iCE40-HX8K breakout board",
          widths=(4,), default_width=4, program=("iceprog", "-S", "{bitstream}"),
          leds=tuple(("led", i) for i in range(8)), entropy=("uart", 0, "rx"), pll_pad=False,
          uart_via="on-board FTDI FT2232H, channel B", **_ICEPROG),
    Board("ulx3s", ULX3S_85F_Platform, description="Radiona ULX3S, ECP5-85F",
          widths=(4, 8, 16), default_width=8, geometry=(128, 32), **_ULX3S),
    Board("ulx3s-45f", ULX3S_45F_Platform, description="Radiona ULX3S, ECP5-45F",
          widths=(4, 8), default_width=8, geometry=(64, 32), **_ULX3S),
    Board("ulx3s-25f", ULX3S_25F_Platform, description="Radiona ULX3S, ECP5-25F",
          widths=(4, 8), default_width=4, **_ULX3S),
    Board("ulx3s-12f", ULX3S_12F_Platform, description="Radiona ULX3S, ECP5-12F",
          widths=(4,), default_width=4, geometry=(64, 4), **_ULX3S),
    # The 5A-75B's only LED and button share pins with its UART (J19): the board top uses one
    # or the other.
    Board("colorlight-5a-75b", Colorlight_5A75B_R70Platform, "ecp5",
          "Colorlight 5A-75B v7.0 (ECP5-25F)", widths=(4, 8), default_width=4,
          program=("openFPGALoader", "-c", "ft232", "-m", "{bitstream}"), uart=False,
          uart_baud=115200, uart_via="an external 3.3 V USB-UART on J19 (no LED then)",
          **_OFL),
    # The OrangeCrab build appends a DFU suffix to top.bit (amaranth-boards runs dfu-suffix).
    Board("orangecrab", OrangeCrabR0_2_25FPlatform, "ecp5", "OrangeCrab r0.2 "
          "(ECP5-25F)", widths=(4, 8), default_width=4,
          program=("dfu-util", "-a", "0", "-D", "{bitstream}"), program_env="DFU_UTIL",
          program_package="dfu-util", bitstream="top.bit",
          leds=(("rgb_led", 0, "r"), ("rgb_led", 0, "g"), ("rgb_led", 0, "b")), uart=False,
          uart_baud=115200, uart_via="an external 3.3 V USB-UART on Feather pins 0 (RX) and 1 "
          "(TX)", uart_pins=("0", "1", ("io", 0))),
]}

# What `make boards` builds: one of each board (the ULX3S in its 85F variant).
DEFAULT_BOARDS = ("icebreaker", "ice40-hx8k", "ulx3s", "colorlight-5a-75b", "orangecrab")


def get_board(name):
    """The :class:`Board` called ``name``; ``KeyError`` with the choices otherwise."""
    try:
        return BOARDS[name]
    except KeyError:
        raise KeyError(f"unknown board {name!r}; choose one of: {', '.join(BOARDS)}") from None
