"""``build``/``flash`` command lines: bad input gives a clear error and a non-zero exit, never a
traceback; ``flash --dry-run`` prints each board's programmer command."""

import os
import subprocess
import sys

import pytest

from openvtep.boards.boards import BOARDS, DEFAULT_BOARDS
from openvtep.boards.build import dfu_suffix
from openvtep.boards.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exc:   # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_unknown_board(capsys):
    code, _, err = run(capsys, "build", "de0-nano")
    assert code == 1
    assert "unknown board 'de0-nano'" in err
    assert all(name in err for name in BOARDS)


@pytest.mark.parametrize("board,width,choices", [
    ("icebreaker", 8, "4"), ("ulx3s-12f", 16, "4"), ("colorlight-5a-75b", 16, "4, 8"),
    ("ulx3s", 3, "4, 8, 16"),
])
def test_width_the_board_cannot_hold(capsys, board, width, choices):
    code, _, err = run(capsys, "build", board, "--width", str(width))
    assert code == 1
    assert f"cannot hold W={width}" in err and f"choose --width from: {choices}" in err


@pytest.mark.parametrize("env,board", [("NEXTPNR_ICE40", "icebreaker"), ("YOSYS", "ulx3s"),
                                       ("ECPPACK", "orangecrab")])
def test_missing_tool_named_by_env_var(capsys, monkeypatch, env, board):
    monkeypatch.setenv(env, "/nonexistent/tool")
    code, _, err = run(capsys, "build", board)
    assert code == 1
    assert f"{env}='/nonexistent/tool'" in err and "no such program" in err


def test_missing_system_toolchain(capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    for env in ("YOSYS", "NEXTPNR_ECP5", "ECPPACK"):
        monkeypatch.delenv(env, raising=False)
    code, _, err = run(capsys, "build", "ulx3s", "--toolchain", "system")
    assert code == 1
    assert "toolchain system: yosys not found on PATH" in err
    assert "apt-get install yosys" in err and "--toolchain yowasp" in err


def test_unknown_toolchain_lists_choices(capsys):
    code, _, err = run(capsys, "build", "icebreaker", "--toolchain", "vivado")
    assert code == 2
    assert "invalid choice: 'vivado'" in err and "yowasp" in err and "system" in err


def test_bad_geometry(capsys):
    code, _, err = run(capsys, "build", "ulx3s", "--wildcard", "0")
    assert code == 1
    assert "bad table geometry" in err and "wildcard_entries" in err


def test_board_or_all(capsys):
    code, _, err = run(capsys, "build")
    assert code == 1 and "name a BOARD" in err
    code, _, err = run(capsys, "build", "ulx3s", "--all")
    assert code == 1 and "not both" in err


EXPECTED_FLASH = {
    "icebreaker": ["iceprog", "build/icebreaker-w4/top.bin"],
    "ice40-hx8k": ["iceprog", "-S", "build/ice40-hx8k-w4/top.bin"],
    "ulx3s": ["openFPGALoader", "-b", "ulx3s", "-m", "build/ulx3s-w8/top.bit"],
    "ulx3s-45f": ["openFPGALoader", "-b", "ulx3s", "-m", "build/ulx3s-45f-w8/top.bit"],
    "ulx3s-25f": ["openFPGALoader", "-b", "ulx3s", "-m", "build/ulx3s-25f-w4/top.bit"],
    "ulx3s-12f": ["openFPGALoader", "-b", "ulx3s", "-m", "build/ulx3s-12f-w4/top.bit"],
    "colorlight-5a-75b": ["openFPGALoader", "-c", "ft232", "-m",
                          "build/colorlight-5a-75b-w4/top.bit"],
    "orangecrab": ["dfu-util", "-a", "0", "-D", "build/orangecrab-w4/top.bit"],
}


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_flash_dry_run(capsys, monkeypatch, board):
    for env in ("ICEPROG", "OPENFPGALOADER", "DFU_UTIL"):
        monkeypatch.delenv(env, raising=False)
    code, out, _ = run(capsys, "flash", board, "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == " ".join(EXPECTED_FLASH[board])


def test_flash_dry_run_bitstream_and_env(capsys, monkeypatch):
    monkeypatch.setenv("OPENFPGALOADER", "/opt/ofl/openFPGALoader")
    code, out, _ = run(capsys, "flash", "ulx3s", "--dry-run", "--bitstream", "x/y.bit")
    assert code == 0
    assert out.splitlines()[0] == "/opt/ofl/openFPGALoader -b ulx3s -m x/y.bit"


@pytest.mark.parametrize("board,env,package", [("icebreaker", "ICEPROG", "fpga-icestorm"),
                                               ("ulx3s", "OPENFPGALOADER", "openfpgaloader"),
                                               ("orangecrab", "DFU_UTIL", "dfu-util")])
def test_flash_missing_programmer(capsys, monkeypatch, tmp_path, board, env, package):
    bitstream = tmp_path / "top.bit"
    bitstream.write_bytes(b"\xff" * 64)
    monkeypatch.setenv(env, "/nonexistent/programmer")
    code, _, err = run(capsys, "flash", board, "--bitstream", str(bitstream))
    assert code == 1
    assert f"apt-get install {package}" in err and env in err


def test_flash_without_bitstream(capsys, tmp_path):
    code, _, err = run(capsys, "flash", "icebreaker", "--bitstream", str(tmp_path / "no.bin"))
    assert code == 1 and "openvtep build icebreaker" in err


def test_help_has_defaults_and_example():
    out = subprocess.run([sys.executable, "-m", "openvtep.boards", "build", "--help"],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    out = " ".join(out.split())
    assert "(default: yowasp)" in out and "example" in out
    assert all(name in out for name in DEFAULT_BOARDS)


def test_dfu_suffix(tmp_path):
    import zlib
    path = tmp_path / "top.bit"
    path.write_bytes(b"\x00\xff" * 100)
    dfu_suffix(path)
    data = path.read_bytes()
    assert len(data) == 216
    # bcdDevice ffff, idProduct 5af0, idVendor 1209, bcdDFU 0100, "UFD", length 16 (LE)
    assert data[200:212] == bytes.fromhex("fffff05a0912000155464410")
    assert int.from_bytes(data[212:], "little") == zlib.crc32(data[:212]) ^ 0xFFFFFFFF


def _run_router_log(tmp_path, log_lines, progress, then=""):
    """``build._run`` on a stand-in for nextpnr that prints ``log_lines``, then runs ``then``."""
    import io

    from openvtep.boards.build import _run
    script = ("import sys, time; sys.stdout.write(" + repr("\n".join(log_lines) + "\n")
              + "); sys.stdout.flush(); " + (then or "pass"))
    log = io.StringIO()
    return (*_run([sys.executable, "-c", script], str(tmp_path), log, progress, "place"),
            log.getvalue())


def test_route_progress_from_the_router_log(tmp_path):
    """While nextpnr routes, every router2 iteration shows how many wires are still overused
    (a route that stops converging is visible in the progress, not after an hour)."""
    from openvtep.boards.build import _Progress, route_progress
    log_lines = [
        "Info: Max frequency for clock '$glbnet$clk': 41.61 MHz (PASS at 30.00 MHz)",
        "Info: Routing globals...",
        "Info:     routing clock net $glbnet$clk using global 0",
        "Info: Running router2...",
        "Info:     iter=1 wires=502347 overused=37507 overuse=44851 archfail=NA",
        "Info:     iter=2 wires=518110 overused=25373 overuse=27921 archfail=NA",
        "Info: Router2 time 12.00s",
    ]
    assert route_progress(log_lines[4]) == \
        "route iteration 1: 37,507 of 502,347 wires overused"
    assert route_progress(log_lines[0]) is None and route_progress(log_lines[-1]) is None
    said = []
    progress = _Progress("test", said.append)
    progress.enter("place")
    code, lines, stopped, log = _run_router_log(tmp_path, log_lines, progress)
    progress.finish()
    assert code == 0 and lines == log_lines and stopped is None
    shown = [line.split("] ", 1)[1] for line in said]
    assert shown == ["place", "route", "route iteration 1: 37,507 of 502,347 wires overused",
                     "route iteration 2: 25,373 of 518,110 wires overused"]
    assert log.splitlines()[-len(log_lines):] == log_lines   # the tool's output


def test_route_that_stops_converging_is_stopped(tmp_path):
    """router2 never gives up by itself: once the overused wires have not reached a new low
    for ROUTE_STALL_ITERATIONS iterations, the router is killed and the build says why."""
    import signal

    from openvtep.boards.build import ROUTE_STALL_ITERATIONS, _Progress
    overused = [30000, 9000, 209] + [300 + k for k in range(ROUTE_STALL_ITERATIONS)]
    log_lines = _router2_log(overused)
    said = []
    progress = _Progress("test", said.append)
    progress.enter("place")
    # The router would go on (here: sleep) for ten minutes after its last line.
    code, lines, stopped, log = _run_router_log(tmp_path, log_lines, progress,
                                                then="time.sleep(600)")
    progress.finish()
    assert code == -signal.SIGKILL and lines == log_lines
    last = 3 + ROUTE_STALL_ITERATIONS
    assert str(stopped) == (f"routing does not converge: {overused[-1]:,} wires overused at "
                            f"iteration {last}, no better than the 209 of iteration 3 for "
                            f"{ROUTE_STALL_ITERATIONS} iterations; stopped (try --seed, "
                            f"smaller tables with --exact/--wildcard, or a larger device)")
    assert said[-1].endswith(str(stopped)) and str(stopped) in log

    # One iteration fewer without a new low: the route goes on.
    watch_lines = log_lines[:-1]
    code, lines, stopped, _ = _run_router_log(tmp_path, watch_lines,
                                              _Progress("test", said.append))
    assert code == 0 and stopped is None and lines == watch_lines


def test_route_down_to_a_few_wires_gets_more_iterations(tmp_path):
    """Down to ROUTE_TAIL_WIRES overused wires an iteration takes about a second and the last
    wires can take dozens: the route is stopped only after ROUTE_TAIL_ITERATIONS without a new
    low (the 64/4 ULX3S build sat at 1 wire for more than 25 iterations)."""
    from openvtep.boards.build import (
        ROUTE_STALL_ITERATIONS,
        ROUTE_TAIL_ITERATIONS,
        ROUTE_TAIL_WIRES,
        _Progress,
    )
    assert ROUTE_TAIL_ITERATIONS > ROUTE_STALL_ITERATIONS
    head = [30000, 900, ROUTE_TAIL_WIRES + 1, ROUTE_TAIL_WIRES]
    going_on = _router2_log(head + [ROUTE_TAIL_WIRES + 3] * (ROUTE_TAIL_ITERATIONS - 1))
    code, lines, stopped, _ = _run_router_log(tmp_path, going_on, _Progress("test", print))
    assert code == 0 and stopped is None and lines == going_on

    stuck = _router2_log(head + [ROUTE_TAIL_WIRES + 3] * ROUTE_TAIL_ITERATIONS)
    code, lines, stopped, _ = _run_router_log(tmp_path, stuck, _Progress("test", print),
                                              then="time.sleep(600)")
    last = len(head) + ROUTE_TAIL_ITERATIONS
    assert str(stopped).startswith(
        f"routing does not converge: {ROUTE_TAIL_WIRES + 3} wires overused at iteration "
        f"{last}, no better than the {ROUTE_TAIL_WIRES} of iteration {len(head)} for "
        f"{ROUTE_TAIL_ITERATIONS} iterations; stopped")

    # Above ROUTE_TAIL_WIRES, the usual patience.
    wide = _router2_log([30000, ROUTE_TAIL_WIRES + 1] + [900] * ROUTE_STALL_ITERATIONS)
    _, _, stopped, _ = _run_router_log(tmp_path, wide, _Progress("test", print),
                                       then="time.sleep(600)")
    assert stopped is not None and f"for {ROUTE_STALL_ITERATIONS} iterations" in str(stopped)


def test_placement_of_more_cells_than_the_device_has_is_stopped(tmp_path):
    """nextpnr's static placer does not give up on a design larger than the device: it spreads
    it for as long as it is let (a 25F build of 100 block RAMs of 56 placed for 10 minutes). A
    utilisation line with more used than available stops it before placing, as does-not-fit,
    naming the kind; a full device (used == available) goes on."""
    import signal

    from openvtep.boards.build import DoesNotFit, _Progress
    full = ["Info: Device utilisation:",
            "Info: \t          TRELLIS_IO:      11/    197     5%",
            "Info: \t              DP16KD:      56/     56   100%",
            "Info: \t        TRELLIS_COMB:   22093/  24288    90%",
            "Info: Placed 11 cells based on constraints."]
    code, lines, stopped, _ = _run_router_log(tmp_path, full, _Progress("test", print))
    assert code == 0 and stopped is None and lines == full
    over = full[:2] + ["Info: \t              DP16KD:     100/     56   178%"] + full[3:]
    code, lines, stopped, log = _run_router_log(tmp_path, over, _Progress("test", print),
                                                then="time.sleep(600)")
    assert code == -signal.SIGKILL and isinstance(stopped, DoesNotFit)
    assert stopped.status == "does-not-fit"   # the build's status (_run_plan)
    assert str(stopped).startswith("the design does not fit: DP16KD 100 of 56; stopped "
                                   "before placing")
    assert str(stopped) in log


def _router2_log(overused):
    """nextpnr's router2 lines for iterations leaving ``overused`` wires overused."""
    return ["Info: Routing globals...", "Info: Running router2..."] + [
        f"Info:     iter={k + 1} wires=500000 overused={n} overuse={n} archfail=NA"
        for k, n in enumerate(overused)]


def _report_from_log(tmp_path, log_lines, run):
    """``build._make_report`` of a ULX3S build folder whose nextpnr log is ``log_lines``."""
    from types import SimpleNamespace

    from openvtep.boards.build import _make_report
    (tmp_path / "build.log").write_text("\n".join(log_lines) + "\n")
    top = SimpleNamespace(pll=SimpleNamespace(f_out=30e6), requested_mhz=30,
                          design=SimpleNamespace(description="the VTEP", name="pipeline",
                                                 exact_entries=2048, wildcard_entries=32))
    return _make_report(BOARDS["ulx3s"], 4, top, "0" * 64, "yowasp", 1, str(tmp_path),
                        {"built_at": "now", "times": {"total": 1.0}, **run})


def test_unrouted_fmax_is_an_estimate(tmp_path):
    """A route that did not finish leaves nextpnr's post-placement timing only: the report
    shows it as an estimate (``~``, ``routed: false``, ``met: null``, no throughput), never as
    a met clock; a finished route's fmax is the routed one."""
    from openvtep.boards.build import format_report
    placed = [
        "Info: Device utilisation:",
        "Info:             TRELLIS_COMB: 29034/83640    34%",
        "Info: Max frequency for clock '$glbnet$clk': 45.15 MHz (PASS at 30.00 MHz)",
        "Info: Running router2...",
        "Info:     iter=1 wires=500000 overused=45488 overuse=50000 archfail=NA",
    ]
    stopped = _report_from_log(tmp_path, placed, {"status": "does-not-route",
                                                  "error": "nextpnr-ecp5: routing does not "
                                                           "converge"})
    sync = stopped["clocks"]["sync"]
    assert sync["fmax_mhz"] == 45.15 and sync["routed"] is False and sync["met"] is None
    assert stopped["status"] == "does-not-route" and stopped["throughput_gbps"] is None
    assert stopped["error"] == "nextpnr-ecp5: routing does not converge"
    text = format_report(stopped)
    assert "~45.1/30" in text and "not routed" in text and ": met" not in text

    routed = _report_from_log(tmp_path, [*placed, "Info: Routing complete.",
                                         "Info: Max frequency for clock '$glbnet$clk': 41.57 "
                                         "MHz (PASS at 30.00 MHz)"],
                              {"status": "ok", "error": None})
    sync = routed["clocks"]["sync"]
    assert sync["fmax_mhz"] == 41.57 and sync["routed"] is True and sync["met"] is True
    assert routed["throughput_gbps"] == round(41.57 * 4 * 8 / 1000, 3)
    assert "41.6/30" in format_report(routed) and ": met" in format_report(routed)
