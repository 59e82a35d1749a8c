"""The ``openvtep`` command line: one command, one subcommand per job.

User mistakes (bad rules, configs, pcaps, arguments) print a clear message naming the file and
exit non-zero, never with a traceback.
"""

import argparse
import importlib
import os
import sys

from . import __version__
from .config import load_config
from .errors import RuleError, UserError
from .rules import load_rules

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _defaults_formatter(prog):
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32)


def _cmd_rules_check(args):
    try:
        ruleset = load_rules(args.file)
    except RuleError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        print(f"{exc.filename}: {len(exc.errors)} error(s); no rule loaded", file=sys.stderr)
        return 1
    for rule in ruleset:
        print(rule.text)
    print(f"{args.file}: {len(ruleset)} rule(s) OK", file=sys.stderr)
    return 0


def _cmd_replay(args):
    from .replay import format_stats, parse_inputs, replay, write_results
    inputs = parse_inputs(args.inputs)
    config = load_config(args.config)
    ruleset = load_rules(args.rules)
    result = replay(config, ruleset, inputs, engine=args.engine)
    write_results(result, args.out)
    if not args.quiet:
        print(format_stats(result.stats))
        print(f"wrote {', '.join(p + '.pcap' for p in ('host', 'net', 'controller'))} and "
              f"stats.json to {args.out}")
    return 0


def _cmd_run(args):
    from .replay import format_stats, parse_inputs, replay, write_results
    inputs = parse_inputs([f"host={args.host_pcap}", f"net={args.net_pcap}"])
    config = load_config(args.config)
    ruleset = load_rules(args.rules)
    print(f"openvtep run: {len(ruleset)} rules from {args.rules}, traffic from "
          f"{args.host_pcap} and {args.net_pcap}, engine {args.engine}")
    result = replay(config, ruleset, inputs, engine=args.engine)
    write_results(result, args.out)
    print(format_stats(result.stats))
    print(f"per-port pcaps and stats.json in {args.out}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="openvtep", formatter_class=_defaults_formatter,
        description="openvtep: an open hardware VXLAN tunnel endpoint. Compile Open vSwitch-"
                    "style rules, replay traffic through the reference model or the simulated "
                    "gateware, benchmark.",
        epilog="example: openvtep replay --config examples/vtep.toml --rules examples/rules.txt "
               "--in host=examples/host.pcap --in net=examples/net.pcap --out out/")
    parser.add_argument("--version", action="version", version=f"openvtep {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    rules = sub.add_parser("rules", help="check rule files")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    check = rules_sub.add_parser(
        "check", help="print each rule normalized (as ovs-ofctl prints flows), or the errors",
        description="Parse a rules file; print each rule normalized, or every error with "
                    "file:line:column. Exit status 1 on any error.",
        epilog="example: openvtep rules check examples/rules.txt")
    check.add_argument("file", help="rules file (one ovs-ofctl-style rule a line)")
    check.set_defaults(func=_cmd_rules_check)

    replay = sub.add_parser(
        "replay", formatter_class=_defaults_formatter,
        help="run pcap traffic through an engine; write per-port pcaps and stats.json",
        description="Replay pcap traffic (merged by timestamp) through the VTEP and write "
                    "DIR/host.pcap, DIR/net.pcap, DIR/controller.pcap and DIR/stats.json.",
        epilog="example: openvtep replay --config examples/vtep.toml --rules examples/rules.txt"
               " --in host=examples/host.pcap --in net=examples/net.pcap --out out/")
    replay.add_argument("--config", required=True, help="vtep.toml with a [vtep] table")
    replay.add_argument("--rules", required=True, help="rules file")
    replay.add_argument("--in", dest="inputs", action="append", default=[], required=True,
                        metavar="PORT=PCAP", help="input traffic: host=FILE or net=FILE "
                        "(repeatable)")
    replay.add_argument("--out", required=True, metavar="DIR", help="output folder")
    replay.add_argument("--engine", default="ref", help="ref (reference model) or rtl "
                        "(simulated gateware)")
    replay.add_argument("--quiet", action="store_true", help="print nothing on success")
    replay.set_defaults(func=_cmd_replay)

    run = sub.add_parser(
        "run", formatter_class=_defaults_formatter,
        help="the main job: the bundled example through the VTEP, with a report",
        description="Load the example rules, send the example traffic and print per-port "
                    "results and counters.")
    run.add_argument("--config", default=os.path.join(EXAMPLES, "vtep.toml"))
    run.add_argument("--rules", default=os.path.join(EXAMPLES, "rules.txt"))
    run.add_argument("--host-pcap", default=os.path.join(EXAMPLES, "host.pcap"))
    run.add_argument("--net-pcap", default=os.path.join(EXAMPLES, "net.pcap"))
    run.add_argument("--out", default="out/run", metavar="DIR")
    run.add_argument("--engine", default="ref", help="ref or rtl")
    run.set_defaults(func=_cmd_run)

    bench = sub.add_parser("bench", help="benchmarks (JSON + PNG)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    for module in BENCHES:
        importlib.import_module(f"openvtep.{module}").add_parser(bench_sub)
    return parser


# Modules (in host/) whose add_parser(subparsers) adds an `openvtep bench` subcommand.
BENCHES = ("bench_ref", "bench_rtl")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RuleError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"openvtep: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("openvtep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
