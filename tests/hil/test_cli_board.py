"""The main job end to end: ``openvtep run`` starts a virtual board serving VtepTop, loads the
example, sends its traffic and compares everything with the reference model (a minute or
two: the one end-to-end CLI test)."""

import subprocess
import sys


def test_openvtep_run_passes(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "openvtep.cli", "run", "--out",
                           str(tmp_path / "run")], check=False, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
    assert "injected through the control bridge" in proc.stdout
    for port in ("host", "net", "controller"):
        assert (tmp_path / "run" / f"{port}.pcap").is_file()
