"""Replay pcap traffic through an engine and write per-port pcaps and stats.json.

    openvtep replay --config vtep.toml --rules rules.txt --in host=a.pcap --in net=b.pcap --out DIR

writes ``DIR/host.pcap``, ``DIR/net.pcap``, ``DIR/controller.pcap`` (each port's frames in
order) and ``DIR/stats.json``:

    {"rules": [{"line": N, "rule": "normalized text", "n_packets": P, "n_bytes": B}, ...],
     "ports": {"host": {"rx_packets": .., "rx_bytes": .., "tx_packets": .., "tx_bytes": ..},
               "net": {..}, "controller": {..}},
     "drops": {"reason": count, ...}}
"""

import json
import os

from .errors import UserError
from .frames import merge_inputs, read_pcap, write_pcap
from .headers import Port
from .reference import Reference

__all__ = ["ENGINES", "parse_inputs", "replay", "write_results", "format_stats"]


def _reference_engine(config, ruleset, frames):
    return Reference(config, ruleset).run(frames)


def _rtl_engine(config, ruleset, frames):
    from .rtl_engine import rtl_engine
    return rtl_engine(config, ruleset, frames)


# Engines by name: each takes (config, ruleset, merged FrameBatch) and returns a Result-like
# object with ``outputs`` (per Port FrameBatch) and ``stats``.
ENGINES = {"ref": _reference_engine, "rtl": _rtl_engine}


def parse_inputs(specs):
    """``["host=a.pcap", "net=b.pcap"]`` -> {Port: path}; raises UserError on a bad spec."""
    inputs = {}
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or name not in ("host", "net") or not path:
            raise UserError(f"--in {spec!r}: expected host=FILE.pcap or net=FILE.pcap")
        port = Port[name.upper()]
        if port in inputs:
            raise UserError(f"--in {name}= given twice")
        inputs[port] = path
    if not inputs:
        raise UserError("no input: give --in host=FILE.pcap and/or --in net=FILE.pcap")
    return inputs


def replay(config, ruleset, inputs, engine="ref"):
    """Run the pcaps ``inputs`` ({Port: path}) through ``engine``; returns its result."""
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    frames = merge_inputs([read_pcap(path, port) for port, path in inputs.items()])
    return ENGINES[engine](config, ruleset, frames)


def write_results(result, out_dir):
    """Write each port's pcap and stats.json into ``out_dir`` (created if missing)."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        for port in Port:
            write_pcap(os.path.join(out_dir, f"{port.label}.pcap"), result.outputs[port])
        with open(os.path.join(out_dir, "stats.json"), "w") as f:
            json.dump(result.stats, f, indent=2)
            f.write("\n")
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot write results: {exc.strerror}") from None


def format_stats(stats):
    """A readable report of a stats dictionary: ports, drops, rules."""
    lines = [f"{'port':<11}{'rx_packets':>11}{'rx_bytes':>11}{'tx_packets':>11}{'tx_bytes':>11}"]
    for name, c in stats["ports"].items():
        lines.append(f"{name:<11}{c['rx_packets']:>11}{c['rx_bytes']:>11}"
                     f"{c['tx_packets']:>11}{c['tx_bytes']:>11}")
    drops = {k: v for k, v in stats["drops"].items() if v}
    lines.append("drops: " + (", ".join(f"{k}={v}" for k, v in drops.items()) or "none"))
    lines.append("rules:")
    for r in stats["rules"]:
        lines.append(f"  line {r['line']:>4}: n_packets={r['n_packets']}, n_bytes={r['n_bytes']}"
                     f"  {r['rule']}")
    return "\n".join(lines)
