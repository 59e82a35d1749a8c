"""The ``openvtep`` command line: one command, one subcommand per job.

User mistakes (bad rules, configs, pcaps, arguments) print a clear message naming the file and
exit non-zero, never with a traceback.
"""

import argparse
import importlib
import os
import signal
import sys

from . import __version__
from .config import load_config
from .errors import RuleError, UserError
from .rules import load_rules

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" after an option's help, unless the default is None (the help
    then says what happens without the option)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _defaults_formatter(prog):
    return _DefaultsFormatter(prog, max_help_position=32)


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


def _progress(message):
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _session(args, config=None):
    """A Vtep session on ``--port``, or on a virtual board built with ``config`` (default: the
    ``--config`` file, else the example's)."""
    from .vtep import Session
    if args.port is None and config is None:
        config = load_config(getattr(args, "config", None) or
                             os.path.join(EXAMPLES, "vtep.toml"))
    return Session(args.port, config=config, width=getattr(args, "width", 8),
                   progress=_progress)


def _cmd_serve(args):
    from .hdl.top import VtepTop
    from .sim.virtual_board import serve
    config = load_config(args.config)
    listen = "pty" if args.pty else args.listen
    board = serve(lambda: VtepTop(args.width, config), listen, simulator=args.simulator)

    def terminate(signum, frame):
        raise KeyboardInterrupt  # stop the board (and its simulator process) on SIGTERM too

    signal.signal(signal.SIGTERM, terminate)
    print(f"openvtep: serving VtepTop (W={args.width}, {args.config}) on {board.url}; "
          f"Ctrl-C stops it", flush=True)
    try:
        board.run()  # stops the board (and its simulator process) however it ends
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_rules_load(args):
    ruleset = load_rules(args.file)
    with _session(args) as vtep:
        vtep.load_rules(ruleset)
        print(f"{args.file}: {len(ruleset)} rule(s) loaded and verified on {vtep.device.url}")
    return 0


def _cmd_rules_dump(args):
    from .vtep import format_dump
    ruleset = load_rules(args.rules)
    with _session(args) as vtep:
        image = vtep.compile(ruleset)
        if args.port is None:
            vtep.load_rules(ruleset)
        else:  # the device holds the rules already: check it holds exactly these
            vtep.image, vtep.ruleset = image, ruleset
            vtep.verify(image)
        print("\n".join(format_dump(vtep.counters())))
    return 0


def _cmd_counters(args):
    import json

    from .replay import format_stats
    with _session(args) as vtep:
        if args.rules:
            ruleset = load_rules(args.rules)
            vtep.image, vtep.ruleset = vtep.compile(ruleset), ruleset
        stats = vtep.counters()
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def _cmd_inject(args):
    from .frames import read_pcap
    from .headers import Port
    port = Port[args.port_name.upper()]
    batch = read_pcap(args.pcap, port)
    with _session(args) as vtep:
        for frame in batch.frames():
            vtep.inject(port, frame)
    print(f"{args.pcap}: {len(batch)} frame(s) injected on {port.label}")
    return 0


def _cmd_capture(args):
    import numpy as np

    from .frames import FrameBatch, write_pcap
    from .headers import Port
    want = None if args.port_name == "any" else Port[args.port_name.upper()]
    with _session(args) as vtep:
        frames = vtep.capture(count=args.count, timeout=args.timeout)
    others = [f for f in frames if want is not None and f[0] != want]
    frames = [f for f in frames if want is None or f[0] == want]
    batch = FrameBatch.from_frames(frames) if frames else FrameBatch.empty()
    batch.time_ns = np.arange(len(batch), dtype=np.int64) * 1000
    write_pcap(args.pcap, batch)
    print(f"{args.pcap}: {len(frames)} frame(s) captured"
          + (f" ({len(others)} on other ports discarded)" if others else ""))
    return 0


def _cmd_run(args):
    if args.engine != "board":
        return _cmd_run_replay(args)
    from .vtep import run_example
    return run_example(args, _session)


def _cmd_run_replay(args):
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


def _add_port(parser, config=True):
    parser.add_argument("--port", metavar="URL", default=None,
                        help="device: a serial port, pty or socket:// URL (default: start a "
                             "virtual board for the duration of the command)")
    if config:
        parser.add_argument("--config", default=os.path.join(EXAMPLES, "vtep.toml"),
                            help="vtep.toml the virtual board's gateware is built with")


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
    load = rules_sub.add_parser(
        "load", formatter_class=_defaults_formatter,
        help="compile rules, write them to the device, read them back",
        description="Compile a rules file for the device's tables, load it and verify every "
                    "table entry by reading it back. A rule set that does not fit is refused, "
                    "naming the rule.",
        epilog="example: openvtep rules load examples/rules.txt --port socket://127.0.0.1:5555")
    load.add_argument("file", help="rules file")
    _add_port(load)
    load.set_defaults(func=_cmd_rules_load)
    dump = rules_sub.add_parser(
        "dump", formatter_class=_defaults_formatter,
        help="the device's rules with their counters (like ovs-ofctl dump-flows)",
        description="Check the device holds RULES (read-back; without --port they are loaded "
                    "first) and print each rule normalized with n_packets and n_bytes from "
                    "its counters, in file order.",
        epilog="example: openvtep rules dump --rules examples/rules.txt "
               "--port socket://127.0.0.1:5555")
    dump.add_argument("--rules", default=os.path.join(EXAMPLES, "rules.txt"),
                      help="the rules file the device was loaded with")
    _add_port(dump)
    dump.set_defaults(func=_cmd_rules_dump)

    serve = sub.add_parser(
        "serve", formatter_class=_defaults_formatter,
        help="serve the simulated VTEP on a socket or pty (a virtual board)",
        description="Build VtepTop (control bridge + pipeline) for --config and serve it "
                    "as a virtual board until Ctrl-C; print its URL for --port.",
        epilog="example: openvtep serve --listen socket://127.0.0.1:5555")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--listen", default="socket://127.0.0.1:5555", metavar="URL",
                       help="socket://HOST:PORT (PORT 0: any free port)")
    where.add_argument("--pty", action="store_true", help="serve on a pseudo-terminal")
    serve.add_argument("--width", type=int, default=8, help="bytes per beat (W)")
    serve.add_argument("--config", default=os.path.join(EXAMPLES, "vtep.toml"),
                       help="vtep.toml the gateware is built with")
    serve.add_argument("--simulator", default="icarus", choices=("icarus", "amaranth"),
                       help="simulator")
    serve.set_defaults(func=_cmd_serve)

    counters = sub.add_parser(
        "counters", formatter_class=_defaults_formatter,
        help="read the device's port, drop and rule counters",
        description="Read the per-port, drop and (with --rules, the file the device was "
                    "loaded with) per-rule counters.",
        epilog="example: openvtep counters --json --port socket://127.0.0.1:5555")
    counters.add_argument("--json", action="store_true", help="print stats.json format")
    counters.add_argument("--rules", default=None, help="rules file loaded on the device")
    _add_port(counters)
    counters.set_defaults(func=_cmd_counters)

    inject = sub.add_parser(
        "inject", formatter_class=_defaults_formatter,
        help="send a pcap's frames into the device on a port",
        description="Inject every frame of a pcap into the pipeline as if it arrived on "
                    "PORT (host or net).",
        epilog="example: openvtep inject host examples/host.pcap --port socket://127.0.0.1:5555")
    inject.add_argument("port_name", metavar="PORT", choices=("host", "net"),
                        help="host or net")
    inject.add_argument("pcap", metavar="FILE.pcap")
    _add_port(inject)
    inject.set_defaults(func=_cmd_inject)

    capture = sub.add_parser(
        "capture", formatter_class=_defaults_formatter,
        help="write the frames the device emitted on a port to a pcap",
        description="Capture the frames waiting on the device (PORT: host, net, controller "
                    "or any; frames of other ports are taken and discarded) into a pcap.",
        epilog="example: openvtep capture net out/net.pcap --count 5 --timeout 10 "
               "--port socket://127.0.0.1:5555")
    capture.add_argument("port_name", metavar="PORT",
                         choices=("host", "net", "controller", "any"))
    capture.add_argument("pcap", metavar="FILE.pcap")
    capture.add_argument("--count", type=int, default=None,
                         help="frames to wait for (default: all that are waiting)")
    capture.add_argument("--timeout", type=float, default=2.0, help="seconds to wait")
    _add_port(capture)
    capture.set_defaults(func=_cmd_capture)

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
        help="the main job: the bundled example through the VTEP, checked against the "
             "reference",
        description="Start a virtual board (or use --port), load the example rules, inject "
                    "the example traffic, capture every frame, read the counters and compare "
                    "all of it with the reference model. Exit status 1 on any difference. "
                    "--engine ref|rtl replays through the reference model or the bare "
                    "pipeline simulation instead (no comparison).",
        epilog="example: openvtep run   (or: openvtep run --port socket://127.0.0.1:5555)")
    run.add_argument("--config", default=os.path.join(EXAMPLES, "vtep.toml"),
                     help="vtep.toml (the virtual board's gateware is built with it)")
    run.add_argument("--rules", default=os.path.join(EXAMPLES, "rules.txt"), help="rules file")
    run.add_argument("--host-pcap", default=os.path.join(EXAMPLES, "host.pcap"),
                     help="traffic arriving on host")
    run.add_argument("--net-pcap", default=os.path.join(EXAMPLES, "net.pcap"),
                     help="traffic arriving on net")
    run.add_argument("--out", default="out/run", metavar="DIR",
                     help="where the captured pcaps and stats.json go")
    run.add_argument("--engine", default="board", choices=("board", "ref", "rtl"),
                     help="board: the device (virtual board unless --port); ref/rtl: replay")
    run.add_argument("--port", metavar="URL", default=None,
                     help="device URL (default: start a virtual board)")
    run.add_argument("--width", type=int, default=8, help="virtual board's W")
    run.set_defaults(func=_cmd_run)

    from .boards.cli import add_build_parser, add_flash_parser
    add_build_parser(sub, _defaults_formatter)
    add_flash_parser(sub, _defaults_formatter)

    bench = sub.add_parser("bench", help="benchmarks (JSON + PNG)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    for module in BENCHES:
        importlib.import_module(f"openvtep.{module}").add_parser(bench_sub)
    return parser


# Modules (in host/) whose add_parser(subparsers) adds an `openvtep bench` subcommand.
BENCHES = ("bench_ref", "bench_rtl", "bench_rules")


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
