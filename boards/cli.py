"""``openvtep build`` and ``openvtep flash``: argparse wiring for the ``openvtep`` command.

``host/cli.py`` adds them with :func:`add_build_parser` and :func:`add_flash_parser`; until
then (and for scripts) ``python -m openvtep.boards build ...`` runs the same commands.
User mistakes raise :class:`openvtep.errors.UserError` (the CLI prints them, exit 1).
"""

import argparse

from .boards import BOARDS, DEFAULT_BOARDS
from .build import TOOLCHAINS, BuildError
from .designs import available_designs

__all__ = ["add_build_parser", "add_flash_parser", "main"]

# Appended to a help that says its default itself (or a flag): ArgumentDefaultsHelpFormatter
# adds "(default: ...)" only to helps without a "%(default)" in them; this one prints nothing.
_OWN = "%(default).0s"


def _board_list():
    return "; ".join(f"{name}: {board.description}, W in {{{', '.join(map(str, board.widths))}}},"
                     f" default {board.default_width}, tables {board.geometry[0]} exact / "
                     f"{board.geometry[1]} wildcard" for name, board in BOARDS.items())


def _cmd_build(args):
    if args.all:
        if args.board:
            raise BuildError("give a BOARD or --all, not both")
        if args.report or args.out or args.width:
            raise BuildError("--report, --out and --width apply to one board, not to --all")
        from .make_boards import build_all
        return build_all(jobs=args.jobs, toolchain=args.toolchain, design=args.design,
                         force=args.force, seed=args.seed, exact=args.exact,
                         wildcard=args.wildcard, clock_mhz=args.clock,
                         timing_allow_fail=args.timing_allow_fail)
    if not args.board:
        raise BuildError(f"name a BOARD (one of: {', '.join(BOARDS)}) or --all")
    from .build import build
    _, code = build(args.board, width=args.width, seed=args.seed, exact=args.exact,
                    wildcard=args.wildcard, toolchain=args.toolchain, report_path=args.report,
                    out_dir=args.out, design=args.design, clock_mhz=args.clock,
                    timing_allow_fail=args.timing_allow_fail, force=args.force,
                    echo=lambda line: print(line, flush=True))
    return code


def _cmd_flash(args):
    from .flash import flash
    return flash(args.board, bitstream=args.bitstream, width=args.width, dry_run=args.dry_run)


def add_build_parser(subparsers, formatter=argparse.ArgumentDefaultsHelpFormatter):
    """Add ``build`` to an argparse ``subparsers``; the command's function is ``args.func``."""
    p = subparsers.add_parser(
        "build", formatter_class=formatter,
        help="synthesize, place and route a board; write a bitstream and report.json",
        description="Build the gateware for a board with yosys and nextpnr (the YoWASP wheels "
                    "by default), write build/<board>-w<W>/report.json (resources and fmax as "
                    "the tools report them) and print a table. The build fails (exit 1) when "
                    "fmax misses the target clock; the report is written anyway. Unchanged "
                    "designs are not rebuilt. Boards: " + _board_list() + ".",
        epilog="examples: openvtep build icebreaker; openvtep build ulx3s --width 8 --seed 3; "
               "openvtep build --all")
    p.add_argument("board", nargs="?", metavar="BOARD",
                   help=f"one of: {', '.join(BOARDS)}{_OWN}")
    p.add_argument("--all", action="store_true",
                   help=f"build {', '.join(DEFAULT_BOARDS)} at their default widths, in "
                        "parallel, and write build/boards-summary.md" + _OWN)
    p.add_argument("--width", type=int, metavar="W",
                   help="bytes per beat (default: the board's, see above)" + _OWN)
    p.add_argument("--seed", type=int, default=1, metavar="N", help="nextpnr placement seed")
    p.add_argument("--exact", type=int, metavar="N",
                   help="exact-match table entries (designs with a classifier; default: the "
                        "board's, see above)" + _OWN)
    p.add_argument("--wildcard", type=int, metavar="N",
                   help="wildcard table entries (designs with a classifier; default: the "
                        "board's)" + _OWN)
    p.add_argument("--toolchain", choices=TOOLCHAINS, default="yowasp",
                   help="yowasp: the PyPI wheels; system: yosys/nextpnr/icepack/ecppack on PATH")
    p.add_argument("--design", choices=available_designs(), default="auto",
                   help="what to build: auto takes the largest that exists")
    p.add_argument("--clock", type=float, metavar="MHZ",
                   help="target clock (default: the board's for the width)" + _OWN)
    p.add_argument("--timing-allow-fail", action="store_true",
                   help="keep the bitstream when fmax misses the target (still exit 1)" + _OWN)
    p.add_argument("--report", metavar="PATH", help="report file (default: OUT/report.json)" + _OWN)
    p.add_argument("--out", metavar="DIR", help="build folder (default: build/<board>-w<W>)" + _OWN)
    p.add_argument("--force", action="store_true", help="rebuild even if cached" + _OWN)
    p.add_argument("--jobs", type=int, default=2, help="parallel builds with --all")
    p.set_defaults(func=_cmd_build)
    return p


def add_flash_parser(subparsers, formatter=argparse.ArgumentDefaultsHelpFormatter):
    """Add ``flash`` to an argparse ``subparsers``; the command's function is ``args.func``."""
    programmers = "; ".join(f"{name}: {' '.join(board.program)}"
                            for name, board in BOARDS.items())
    p = subparsers.add_parser(
        "flash", formatter_class=formatter,
        help="program a board with its built bitstream",
        description="Load the bitstream onto the board with its programmer (iceprog from "
                    "fpga-icestorm, openFPGALoader, dfu-util), as amaranth-boards does; "
                    "ICEPROG, OPENFPGALOADER or DFU_UTIL name another program. "
                    "Commands: " + programmers + ".",
        epilog="examples: openvtep flash icebreaker --dry-run; openvtep flash ulx3s "
               "--bitstream build/ulx3s-w8/top.bit")
    p.add_argument("board", metavar="BOARD", help=f"one of: {', '.join(BOARDS)}")
    p.add_argument("--bitstream", metavar="PATH",
                   help="bitstream to load (default: build/<board>-w<W>/top.bin or top.bit)" + _OWN)
    p.add_argument("--width", type=int, metavar="W",
                   help="which build's bitstream (default: the board's default width)" + _OWN)
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing" + _OWN)
    p.set_defaults(func=_cmd_flash)
    return p


def main(argv=None):
    """``python -m openvtep.boards build|flash ...``: the same commands as ``openvtep``."""
    from ..cli import main as openvtep_main
    return openvtep_main(argv)
