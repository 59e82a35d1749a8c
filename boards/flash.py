"""``openvtep flash``: load a built bitstream onto a board with its programmer.

The commands are amaranth-boards' own (``toolchain_program`` of each platform): ``iceprog``
(iCEBreaker; ``iceprog -S``, SRAM, on the iCE40-HX8K breakout), ``openFPGALoader -b ulx3s -m``
(ULX3S, SRAM), ``openFPGALoader -c ft232 -m`` (Colorlight 5A-75B through an FT232 JTAG
adapter), ``dfu-util -a 0 -D`` (OrangeCrab, in its DFU bootloader). The same environment
variables override the tool: ``ICEPROG``, ``OPENFPGALOADER``, ``DFU_UTIL``.
"""

import os
import shlex
import shutil
import subprocess

from .boards import get_board
from .build import BuildError

__all__ = ["flash", "flash_command"]


def default_bitstream(board, width=None):
    return os.path.join("build", f"{board.name}-w{width or board.default_width}",
                        board.bitstream)


def flash_command(board_name, bitstream=None, width=None):
    """``(argv, board)``: the programmer command for ``board_name``. Raises BuildError for an
    unknown board."""
    try:
        board = get_board(board_name)
    except KeyError as exc:
        raise BuildError(exc.args[0]) from None
    bitstream = bitstream or default_bitstream(board, width)
    tool = os.environ.get(board.program_env) or board.program[0]
    argv = [tool, *(arg.format(bitstream=bitstream) for arg in board.program[1:])]
    return argv, board


def flash(board_name, *, bitstream=None, width=None, dry_run=False, echo=print):
    """Program the board; returns the exit status. ``dry_run`` prints the command only."""
    argv, board = flash_command(board_name, bitstream, width)
    bitstream = argv[-1]
    if dry_run:
        echo(shlex.join(argv))
        if not os.path.exists(bitstream):
            echo(f"(no bitstream at {bitstream} yet: openvtep build {board.name})")
        return 0
    if not os.path.exists(bitstream):
        raise BuildError(f"no bitstream at {bitstream}; build it first with `openvtep build "
                         f"{board.name}` or name one with --bitstream")
    if shutil.which(argv[0]) is None:
        raise BuildError(f"{argv[0]} not found: it programs the {board.description}; install "
                         f"the Debian package {board.program_package} (apt-get install "
                         f"{board.program_package}) or set {board.program_env}")
    echo(f"openvtep flash {board.name}: {shlex.join(argv)}")
    return subprocess.call(argv)
