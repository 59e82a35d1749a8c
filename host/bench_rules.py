"""``openvtep bench rules``: the rule-setup rate of a device (a virtual board by default).

Generates N exact-match rules (one match shape, distinct MACs, each with its own tunnel), and
times compile + load (``write_batch`` of :func:`openvtep.regmap.table_writes`) + verify (read
back every table entry). Counts the bytes the driver puts on the wire for the load, and from
them the rate a 3 Mbaud UART (10 bits a byte) allows: the simulator's own rate says little
about a board, the wire bytes do. The load goes as ``WRITE_PACKED`` messages (see
:func:`openvtep.protocol.encode_packed`): ~27-29 bytes a rule, over 10,000 rules/s at 3 Mbaud.

    openvtep bench rules --rules 200 --json out/bench-rules.json
"""

import argparse
import json
import sys
import time

from .errors import UserError
from .rules import parse_rules

__all__ = ["add_parser", "generate_rules", "main"]

BAUD = 3_000_000
GOAL = 10_000  # rules/s at 3 Mbaud


def generate_rules(n):
    """``n`` exact-match rules (host -> tunnel), as a RuleSet."""
    lines = [f"priority=100,in_port=host,dl_dst=02:00:{k >> 16 & 255:02x}:{k >> 8 & 255:02x}:"
             f"{k & 255:02x}:01,actions=set_tunnel:{k % 4000 + 1},"
             f"set_field:198.18.{k >> 8 & 255}.{k & 255}->tun_dst,output:net" for k in range(n)]
    return parse_rules("\n".join(lines), f"<{n} generated rules>")


class _Counting:
    """A transport wrapper that counts the bytes sent and received."""

    def __init__(self, inner):
        self.inner = inner
        self.sent = self.received = 0

    def send(self, data):
        self.sent += len(data)
        self.inner.send(data)

    def recv(self, timeout):
        data = self.inner.recv(timeout)
        self.received += len(data)
        return data

    def flush(self):
        self.inner.flush()

    def close(self):
        self.inner.close()


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "rules", help="rule-setup rate of a device: compile + load + verify, wire bytes/rule",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: openvtep bench rules --rules 200 --json out/bench-rules.json")
    parser.add_argument("--port", metavar="URL", default=None,
                        help="device URL (default: start a virtual board)")
    parser.add_argument("--rules", type=int, default=200,
                        help="exact-match rules to load (default: %(default)s)")
    parser.add_argument("--config", default=None,
                        help="vtep.toml of the virtual board (default: the example's)")
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")
    parser.set_defaults(func=main)
    return parser


def bench(vtep, n):
    """Load ``n`` generated rules on ``vtep``; returns the result dictionary."""
    ruleset = generate_rules(n)
    if vtep.image is None:
        # Tables of an unknown earlier load: clear them first (untimed), so the measured
        # load is the usual one, onto tables whose contents the host knows.
        vtep.load_rules(parse_rules("", "<no rules>"), verify=False)
    counting = _Counting(vtep.device._transport)
    vtep.device._transport = counting
    started = time.perf_counter()
    image = vtep.compile(ruleset)
    compiled = time.perf_counter()
    writes = vtep.load_writes(image)
    vtep.device.write_batch(writes)
    loaded = time.perf_counter()
    load_bytes = counting.sent
    vtep.image, vtep.ruleset = image, ruleset
    vtep.verify(image)
    verified = time.perf_counter()
    per_rule = load_bytes / n
    return {
        "rules": n,
        "rules_per_s": n / (verified - started),
        "wire_bytes_per_rule": per_rule,
        "rules_per_s_at_3mbaud": BAUD / 10 / per_rule,
        "words_per_rule": len(writes) / n,
        "load_rules_per_s": n / (loaded - compiled),
        "compile_s": compiled - started,
        "load_s": loaded - compiled,
        "verify_s": verified - loaded,
        "verify_wire_bytes_per_rule": (counting.sent + counting.received - load_bytes) / n,
    }


def main(args):
    from .config import load_config
    from .vtep import Session
    if args.rules < 1:
        raise UserError("--rules must be at least 1")
    config = None
    if args.port is None:
        import os
        config = load_config(args.config or os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples",
            "vtep.toml"))
    with Session(args.port, config=config,
                 progress=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)) as vtep:
        result = bench(vtep, args.rules)
    print(f"{result['rules']} rules: {result['rules_per_s']:.1f} rules/s measured (compile "
          f"{result['compile_s']:.2f} s, load {result['load_s']:.1f} s, verify "
          f"{result['verify_s']:.1f} s)")
    print(f"wire: {result['words_per_rule']:.2f} words, {result['wire_bytes_per_rule']:.1f} "
          f"bytes per rule -> {result['rules_per_s_at_3mbaud']:,.0f} rules/s at 3 Mbaud "
          f"(goal {GOAL:,})")
    if result["rules_per_s_at_3mbaud"] < GOAL:
        print(f"below the goal: a rule costs {result['words_per_rule']:.1f} register writes "
              f"(WRITE_PACKED: 2..5 bytes each, WRITE_BATCH: 7) plus framing; "
              f"{BAUD // 10 // GOAL} bytes a rule would be needed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: result[k] for k in ("rules", "rules_per_s", "wire_bytes_per_rule",
                                               "rules_per_s_at_3mbaud")} | result, f, indent=2)
            f.write("\n")
    return 0
