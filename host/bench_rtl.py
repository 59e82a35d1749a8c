"""``openvtep bench rtl``: cycles per frame of the gateware datapath (parser -> editor), from
exact cycle counts in simulation (cocotb on Icarus Verilog).

For each operation (pass-through, VXLAN encap, decap, VLAN push, VLAN pop), bus width ``W`` and
frame size ``n``, a run of back-to-back frames is sent with no input gaps and no output
backpressure; the steady-state spacing of the output frames is compared with the ideal
``ceil(max(n_in, n_out) / W)`` cycles (DESIGN.md "line rate"), and the latency (first input
beat to first output beat of the run) is reported. Every output frame is also checked against
the reference model.

This module is also the cocotb testbench it runs (``line_rate``), shared with
``tests/hdl/test_editor.py``.
"""

import argparse
import json
import os
import struct
import sys
import tempfile

from .headers import (
    ENCAP_BYTES,
    ETHERTYPE_IPV4,
    ETHERTYPE_VLAN,
    IPPROTO_UDP,
    IPV4_DF,
    VLAN_BYTES,
    VXLAN_FLAG_I,
    Port,
    ipv4_checksum,
)

__all__ = ["OPS", "add_parser", "format_table", "main", "op_frame", "run_bench"]

OPS = ("pass", "encap", "decap", "vlan_push", "vlan_pop")
OUT_GROWTH = {"pass": 0, "encap": ENCAP_BYTES, "decap": -ENCAP_BYTES, "vlan_push": VLAN_BYTES,
              "vlan_pop": -VLAN_BYTES}
MIN_SIZE = {"decap": ENCAP_BYTES + 14, "vlan_pop": 14 + VLAN_BYTES}
RULES = {
    "pass": "priority=0,actions=output:net",
    "encap": "priority=0,actions=set_tunnel:42,set_field:198.18.0.2->tun_dst,output:net",
    "decap": "priority=0,actions=output:host",
    "vlan_push": "priority=0,actions=mod_vlan_vid:5,output:net",
    "vlan_pop": "priority=0,actions=strip_vlan,output:net",
}
DEFAULT_SIZES = (64, 128, 256, 512, 1024, 1518)
DEFAULT_WIDTHS = (4, 8, 16)


def default_config():
    from .config import VtepConfig
    return VtepConfig(local_ip=0xC6120001, local_mac=0x020000000101, gateway_mac=0x0200000001FE)


def _eth(rng, etype, tci=None):
    head = rng.randbytes(12)
    if tci is not None:
        head += struct.pack(">HH", ETHERTYPE_VLAN, tci)
    return head + struct.pack(">H", etype)


def op_frame(rng, op, size, config):
    """``(port, frame, rule text)``: a frame of ``size`` bytes for operation ``op``."""
    import numpy as np
    if op == "decap":
        inner = _eth(rng, ETHERTYPE_IPV4) + rng.randbytes(size - ENCAP_BYTES - 14)
        udp = struct.pack(">HHHH", 50000, config.udp_port, 16 + len(inner), 0)
        vxlan = bytes([VXLAN_FLAG_I, 0, 0, 0]) + (42).to_bytes(3, "big") + b"\0"
        ip = bytearray(struct.pack(">BBHHHBBHII", 0x45, 0, 36 + len(inner), 0, IPV4_DF, 64,
                                   IPPROTO_UDP, 0, 0xC6120002, config.local_ip))
        ip[10:12] = int(ipv4_checksum(np.frombuffer(bytes(ip), np.uint8)[None])[0]) \
            .to_bytes(2, "big")
        frame = config.local_mac.to_bytes(6, "big") + rng.randbytes(6) + \
            struct.pack(">H", ETHERTYPE_IPV4) + bytes(ip) + udp + vxlan + inner
        return Port.NET, frame, RULES[op]
    frame = _eth(rng, ETHERTYPE_IPV4, 5 if op == "vlan_pop" else None)
    return Port.HOST, frame + rng.randbytes(size - len(frame)), RULES[op]


def run_bench(widths=DEFAULT_WIDTHS, sizes=DEFAULT_SIZES, ops=OPS, count=8, seed=None,
              strict=False):
    """Simulate and measure; returns ``(records, cycles per second per width)``."""
    from .hdl.datapath import Datapath
    from .sim.cocotb_runner import run_cocotb
    records, rates = [], {}
    for width in widths:
        with tempfile.TemporaryDirectory() as tmp:
            results = os.path.join(tmp, "results.json")
            run_cocotb(Datapath(width, default_config()), "openvtep.sim.bench_rtl_tb",
                       name=f"datapath_w{width}", testcase="line_rate", seed=seed,
                       params={"width": width, "sizes": list(sizes), "ops": list(ops),
                               "count": count, "results": results, "strict": strict})
            with open(results) as f:
                out = json.load(f)
        records += out["records"]
        rates[width] = out["cycles_per_second"]
    return records, rates


def format_table(records, rates):
    lines = [(f"{'op':<10} {'W':>3} {'bytes':>6} {'cycles/frame':>13} {'ideal':>6} "
              f"{'efficiency':>10} {'latency':>8}")]
    for r in records:
        lines.append(f"{r['op']:<10} {r['width']:>3} {r['frame_bytes']:>6} "
                     f"{r['cycles_per_frame']:>13.2f} {r['ideal_cycles']:>6} "
                     f"{r['ideal_cycles'] / r['cycles_per_frame']:>10.3f} "
                     f"{r['latency_cycles']:>8}")
    for width, rate in rates.items():
        lines.append(f"simulated {rate:,.0f} cycles/s at W={width} (cocotb + Icarus)")
    return "\n".join(lines)


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    widths = sorted({r["width"] for r in records})
    fig, axes = plt.subplots(1, len(widths), figsize=(5 * len(widths), 4), squeeze=False,
                             sharey=True)
    for ax, width in zip(axes[0], widths):
        for op in OPS:
            rows = [r for r in records if r["width"] == width and r["op"] == op]
            if rows:
                ax.plot([r["frame_bytes"] for r in rows],
                        [r["ideal_cycles"] / r["cycles_per_frame"] for r in rows],
                        marker="o", label=op)
        ax.set_title(f"W = {width} bytes")
        ax.set_xlabel("frame bytes (input)")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.1)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("efficiency (ideal / measured cycles per frame)")
    axes[0][-1].legend()
    fig.tight_layout()
    fig.savefig(path)


def add_parser(subparsers):
    """Add ``rtl`` to a ``bench`` subcommand's subparsers (or any subparsers object)."""
    parser = subparsers.add_parser(
        "rtl", help="cycles/frame of the gateware datapath in simulation (cocotb + Icarus)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=list(DEFAULT_WIDTHS),
                        metavar="W", help="bus widths in bytes (default: %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        metavar="N", help="input frame sizes in bytes (default: %(default)s)")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS, metavar="OP",
                        help=f"operations, of {', '.join(OPS)} (default: all)")
    parser.add_argument("--count", type=int, default=8,
                        help="frames per run (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--json", metavar="FILE", help="write the records as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="plot efficiency vs frame size")
    parser.set_defaults(func=main)
    return parser


def main(args):
    """Run the bench for parsed ``args`` (see :func:`add_parser`); returns the exit status."""
    for width in args.widths:
        if width < 4 or width & (width - 1):
            print(f"openvtep bench rtl: --widths: {width} is not a power of two >= 4",
                  file=sys.stderr)
            return 2
    for size in args.sizes:
        if not 14 <= size <= default_config().max_frame:
            print(f"openvtep bench rtl: --sizes: {size} is outside 14..max_frame",
                  file=sys.stderr)
            return 2
    if args.count < 3:
        print("openvtep bench rtl: --count must be at least 3", file=sys.stderr)
        return 2
    records, rates = run_bench(args.widths, args.sizes, args.ops, args.count, args.seed)
    print(format_table(records, rates))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(records, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(r["cycles_per_frame"] == r["ideal_cycles"] for r in records) else 1


if __name__ == "__main__":  # python -m openvtep.bench_rtl [options]
    _parser = argparse.ArgumentParser(prog="openvtep bench rtl")
    _sub = _parser.add_subparsers(dest="command", required=True)
    add_parser(_sub)
    sys.exit(main(_parser.parse_args(["rtl", *sys.argv[1:]])))
