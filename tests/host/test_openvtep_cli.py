"""Tests of the ``openvtep`` command line, run as a subprocess: ``rules check``, ``replay``
(the three pcaps and stats.json), ``run`` on the bundled example, and user mistakes: exit 1,
a short message naming the file on stderr, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest
from scapy.all import rdpcap

from openvtep.config import load_config
from openvtep.frames import merge_inputs, read_pcap, write_pcap
from openvtep.headers import DropReason, Port
from openvtep.reference import Reference
from openvtep.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CONFIG, RULES = EXAMPLES / "vtep.toml", EXAMPLES / "rules.txt"
HOST_PCAP, NET_PCAP = EXAMPLES / "host.pcap", EXAMPLES / "net.pcap"


def openvtep(*args, cwd=None):
    """Run ``openvtep ARGS``; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "openvtep.cli", *map(str, args)],
                          check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def fails(*args, fragments=(), max_lines=3, cwd=None):
    """The command fails as a user mistake: exit 1, a short stderr with ``fragments``."""
    proc = openvtep(*args, cwd=cwd)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= max_lines, proc.stderr
    for fragment in fragments:
        assert str(fragment) in proc.stderr, proc.stderr
    return proc


# --- rules check -----------------------------------------------------------------------------

def test_rules_check_ok():
    proc = openvtep("rules", "check", RULES)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [r.text for r in load_rules(RULES)]
    assert proc.stderr.strip() == f"{RULES}: 7 rule(s) OK"


def test_rules_check_errors(tmp_path):
    path = tmp_path / "bad.rules"
    path.write_text("priority=1,in_port=host,actions=output:net\n"
                    "priority=2,in_port=hots,actions=output:net\n"
                    "\n"
                    "priority=3,actions=set_tunnel:5,output:net\n")
    proc = fails("rules", "check", path, max_lines=3)
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"{path}:2:20: error: in_port must be host or net, got 'hots'",
        (f"{path}:4:20: error: set_tunnel without set_field:IP->tun_dst before an output "
         "that may go to net: the tunnel has no destination"),
        f"{path}: 2 error(s); no rule loaded",
    ]


def test_rules_check_missing_file(tmp_path):
    fails("rules", "check", tmp_path / "none.rules",
          fragments=[tmp_path / "none.rules", "cannot read rules file"])


# --- replay ----------------------------------------------------------------------------------

STATS_KEYS = {"rules", "ports", "drops"}
PORT_KEYS = ["rx_packets", "rx_bytes", "tx_packets", "tx_bytes"]


def check_stats_schema(stats, rules_path):
    assert set(stats) == STATS_KEYS
    rules = list(load_rules(rules_path))
    assert [r["line"] for r in stats["rules"]] == [r.line for r in rules]
    assert [r["rule"] for r in stats["rules"]] == [r.text for r in rules]
    for r in stats["rules"]:
        assert list(r) == ["line", "rule", "n_packets", "n_bytes"]
        assert all(type(r[k]) is int and r[k] >= 0 for k in ("line", "n_packets", "n_bytes"))
    assert list(stats["ports"]) == ["host", "net", "controller"]
    for counters in stats["ports"].values():
        assert list(counters) == PORT_KEYS
        assert all(type(v) is int and v >= 0 for v in counters.values())
    assert list(stats["drops"]) == [r.label for r in DropReason]
    assert all(type(v) is int and v >= 0 for v in stats["drops"].values())


def test_replay_example(tmp_path):
    out = tmp_path / "out"
    proc = openvtep("replay", "--config", CONFIG, "--rules", RULES, "--in", f"host={HOST_PCAP}",
                    "--in", f"net={NET_PCAP}", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == \
        ["controller.pcap", "host.pcap", "net.pcap", "stats.json"]
    stats = json.loads((out / "stats.json").read_text())
    check_stats_schema(stats, RULES)
    # The files hold exactly what the reference model gives for the merged inputs.
    merged = merge_inputs([read_pcap(HOST_PCAP, Port.HOST), read_pcap(NET_PCAP, Port.NET)])
    result = Reference(load_config(CONFIG), load_rules(RULES)).run(merged)
    assert stats == result.stats
    for port in Port:
        got = read_pcap(out / f"{port.label}.pcap", port)
        assert got.frames() == result.outputs[port].frames()
        assert got.time_ns.tolist() == result.outputs[port].time_ns.tolist()
        assert [bytes(p) for p in rdpcap(str(out / f"{port.label}.pcap"))] == got.frames()
        with open(out / f"{port.label}.pcap", "rb") as f:
            assert [bytes(buf) for _, buf in dpkt.pcap.Reader(f)] == got.frames()
        assert stats["ports"][port.label]["tx_packets"] == len(got)
    assert stats["ports"]["host"]["rx_packets"] == len(read_pcap(HOST_PCAP, Port.HOST))
    assert sum(stats["drops"].values()) > 0 and stats["ports"]["net"]["tx_packets"] > 0
    # The report on stdout names every port and rule line.
    assert "controller" in proc.stdout and "line    3" in proc.stdout
    assert f"stats.json to {out}" in proc.stdout


def test_replay_quiet_one_input_and_empty_rules(tmp_path):
    rules = tmp_path / "empty.rules"
    rules.write_text("# no rules: every frame is a table miss\n")
    out = tmp_path / "o"
    proc = openvtep("replay", "--quiet", "--config", CONFIG, "--rules", rules,
                    "--in", f"net={NET_PCAP}", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    stats = json.loads((out / "stats.json").read_text())
    n = len(read_pcap(NET_PCAP, Port.NET))
    assert stats["rules"] == []
    assert stats["ports"]["net"]["rx_packets"] == n
    assert stats["ports"]["host"]["rx_packets"] == 0
    assert sum(stats["drops"].values()) == n
    assert all(len(read_pcap(out / f"{p.label}.pcap", p)) == 0 for p in Port)


# --- run ----------------------------------------------------------------------------------------

def test_run_bundled_example(tmp_path):
    proc = openvtep("run", "--engine", "ref", "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    stats = json.loads((tmp_path / "run" / "stats.json").read_text())
    check_stats_schema(stats, RULES)
    assert stats["drops"] == {**{r.label: 0 for r in DropReason}, "bad_ip_checksum": 1,
                              "vxlan_flags": 1, "table_miss": 1, "action_drop": 1}
    for line in ("host", "net", "controller", "drops: bad_ip_checksum=1",
                 f"per-port pcaps and stats.json in {tmp_path / 'run'}"):
        assert line in proc.stdout
    for port in Port:
        assert len(read_pcap(tmp_path / "run" / f"{port.label}.pcap", port)) == \
            stats["ports"][port.label]["tx_packets"]


def test_version_and_help():
    proc = openvtep("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("openvtep ")
    proc = openvtep("replay", "--help")
    assert proc.returncode == 0 and "(default: ref)" in " ".join(proc.stdout.split())


# --- User mistakes ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "bad.rules").write_text("priority=1,in_port=host,actions=output:net\n"
                                 "priority=70000,actions=drop\n")
    (d / "bad.toml").write_text('[vtep]\nlocal_ip = "198.18.0.300"\nlocal_mac = '
                                '"02:00:00:00:01:01"\ngateway_mac = "02:00:00:00:01:fe"\n')
    (d / "notoml.toml").write_text("[vtep\n")
    (d / "corrupt.pcap").write_bytes(HOST_PCAP.read_bytes()[:-7])
    (d / "text.pcap").write_text("hello\n" * 10)
    (d / "file").write_text("x")
    return d


def replay_args(tmp, config=CONFIG, rules=RULES, host=HOST_PCAP, net=NET_PCAP, out=None):
    args = ["replay", "--config", config, "--rules", rules]
    if host:
        args += ["--in", f"host={host}"]
    if net:
        args += ["--in", f"net={net}"]
    return args + ["--out", out or tmp / "out"]


@pytest.mark.parametrize("case", [
    "bad_rules", "bad_config", "not_toml", "corrupt_pcap", "text_pcap", "missing_pcap",
    "missing_config", "missing_rules", "out_is_a_file",
])
def test_replay_user_mistakes(bad_files, tmp_path, case):
    d = bad_files
    args, fragments = {
        "bad_rules": (replay_args(tmp_path, rules=d / "bad.rules"),
                      [f"{d / 'bad.rules'}:2:10: error:", "0..65535"]),
        "bad_config": (replay_args(tmp_path, config=d / "bad.toml"),
                       [d / "bad.toml", "local_ip", "0..255"]),
        "not_toml": (replay_args(tmp_path, config=d / "notoml.toml"),
                     [d / "notoml.toml", "not valid TOML"]),
        "corrupt_pcap": (replay_args(tmp_path, host=d / "corrupt.pcap"),
                         [d / "corrupt.pcap", "truncated"]),
        "text_pcap": (replay_args(tmp_path, net=d / "text.pcap"),
                      [d / "text.pcap", "not a pcap file"]),
        "missing_pcap": (replay_args(tmp_path, net=d / "missing.pcap"),
                         [d / "missing.pcap", "No such file"]),
        "missing_config": (replay_args(tmp_path, config=d / "missing.toml"),
                           [d / "missing.toml", "cannot read config"]),
        "missing_rules": (replay_args(tmp_path, rules=d / "missing.rules"),
                          [d / "missing.rules", "cannot read rules file"]),
        "out_is_a_file": (replay_args(tmp_path, out=d / "file"),
                          [d / "file", "cannot write results"]),
    }[case]
    fails(*args, fragments=fragments)
    assert not (tmp_path / "out" / "stats.json").exists()


@pytest.mark.parametrize("spec, fragment", [
    ("foo=x.pcap", "expected host=FILE.pcap or net=FILE.pcap"),
    ("host=", "expected host=FILE.pcap or net=FILE.pcap"),
    ("controller=x.pcap", "expected host=FILE.pcap or net=FILE.pcap"),
])
def test_replay_bad_in_spec(tmp_path, spec, fragment):
    fails("replay", "--config", CONFIG, "--rules", RULES, "--in", spec, "--out", tmp_path,
          fragments=[f"--in {spec!r}", fragment])


def test_replay_in_twice_and_unknown_engine(tmp_path):
    fails("replay", "--config", CONFIG, "--rules", RULES, "--in", f"host={HOST_PCAP}",
          "--in", f"host={HOST_PCAP}", "--out", tmp_path, fragments=["given twice"])
    fails(*replay_args(tmp_path), "--engine", "nope", fragments=["unknown engine 'nope'"])


def test_run_user_mistakes(bad_files, tmp_path):
    fails("run", "--rules", bad_files / "bad.rules", "--out", tmp_path / "r",
          fragments=[f"{bad_files / 'bad.rules'}:2:10: error:"])
    fails("run", "--net-pcap", bad_files / "corrupt.pcap", "--out", tmp_path / "r",
          fragments=[bad_files / "corrupt.pcap"])


def test_argument_errors_are_usage_not_tracebacks(tmp_path):
    for args in (["replay", "--config", CONFIG], ["frobnicate"]):
        proc = openvtep(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "usage: openvtep" in proc.stderr and "Traceback" not in proc.stderr


def test_write_pcap_output_is_what_cli_reads(tmp_path):
    # A pcap written by the library replays through the CLI like one written by scapy.
    batch = read_pcap(HOST_PCAP, Port.HOST)
    write_pcap(tmp_path / "copy.pcap", batch, nanos=True)
    a, b = tmp_path / "a", tmp_path / "b"
    for src, out in ((HOST_PCAP, a), (tmp_path / "copy.pcap", b)):
        proc = openvtep("replay", "--quiet", "--config", CONFIG, "--rules", RULES,
                        "--in", f"host={src}", "--out", out)
        assert proc.returncode == 0, proc.stderr
    assert (a / "stats.json").read_text() == (b / "stats.json").read_text()
    assert read_pcap(a / "net.pcap", Port.NET).frames() == \
        read_pcap(b / "net.pcap", Port.NET).frames()
