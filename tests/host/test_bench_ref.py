"""`openvtep bench ref` runs all engines on the same job and writes JSON and a PNG (tiny runs:
the numbers themselves belong to the benchmark, not to a pass/fail test)."""

import json
import subprocess
import sys

import pytest

from openvtep.bench_ref import CONFIG, dpkt_engine, make_workload, scapy_engine
from openvtep.headers import Port
from openvtep.reference import Reference


@pytest.mark.parametrize("op", ["encap", "decap"])
@pytest.mark.parametrize("size", [64, 512])
def test_engines_do_the_same_job(op, size):
    ruleset, batch = make_workload(op, size, 40, n_rules=50)
    want = Reference(CONFIG, ruleset).run(batch).outputs[
        Port.NET if op == "encap" else Port.HOST].frames()
    assert len(want) == 40
    frames = batch.frames()
    assert dpkt_engine(CONFIG, ruleset, op, frames) == want
    assert scapy_engine(CONFIG, ruleset, op, frames) == want


def test_bench_cli_writes_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    proc = subprocess.run(
        [sys.executable, "-m", "openvtep.cli", "bench", "ref", "--frames", "2000",
         "--frames-dpkt", "60", "--frames-scapy", "60", "--rules", "100",
         "--json", str(out_json), "--plot", str(out_png)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out_json.read_text())
    assert {(r["engine"], r["op"], r["frame_bytes"]) for r in records} == {
        (e, op, n) for e in ("ref", "dpkt", "scapy") for op in ("encap", "decap")
        for n in (64, 512, 1500)}
    assert all(r["frames_per_s"] > 0 for r in records)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ref/dpkt" in proc.stdout
