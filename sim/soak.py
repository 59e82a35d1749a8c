"""Soak: millions of frames through the simulated gateware pipeline
(:class:`openvtep.hdl.pipeline.Pipeline`), checked frame by frame against the reference model.

    python -m openvtep.sim.soak --frames 1000000 --seed 7 --report out/soak.json

The pipeline's Verilog (the cocotb builds' own, :func:`openvtep.sim.cocotb_runner.
verilog_source`) is compiled with Verilator together with ``sim/soak_tb.cpp``, a testbench
that streams whole segments of frames without Python in the cycle loop (cached under
``build/sim/verilator/``). The traffic comes in *segments*, each with its own rule set:

- frames: :func:`openvtep.sim.traffic.flow_batch` (flows of every kind of frame, valid and
  malformed, from host and net), rules: :func:`openvtep.sim.flow_rules.ruleset_for` over the
  flows' fields (exact and wildcard rules, overlapping priorities, controller copies), at
  times with a random catch-all rule (:func:`openvtep.sim.traffic.random_rule`) below them;
- a schedule: input gaps and output stalls, each a fraction of cycles in runs of a mean
  length (1: independent cycles; longer: bursts);
- before a segment the pipeline is quiet (every frame decided and out); its tables are
  rewritten over the control bus with :func:`openvtep.regmap.table_writes` of the new image
  (every entry, rule counters cleared), as the rtl engine and the boards load them.

After each segment the port, drop and rule counters are read over the bus, and checked:
every output (bytes, port, order per port, the input frame it came from), each frame's rule and
drop reason, the rule counters and the port and drop counters' increments equal the
reference model's for that segment's rule set; and frames are conserved: frames in (the
``rx`` counters, and the testbench's count) = frames emitted + frames counted as dropped,
``tx`` = outputs seen. At the end the absolute counters are checked against the totals.

The first difference stops the soak: the message names the seed, segment and frame and shows a
hex diff; the command exits 1. A segment's seed derives from the soak's seed and its index, so
``--seed`` reproduces a run.
"""

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import regmap as rm
from ..errors import RuleError
from ..headers import DropReason, Port
from ..reference import Reference
from ..rules import parse_rules
from ..tables import Geometry, compile_tables
from . import flow_rules
from .cocotb_runner import build_root, verilog_source
from .stream import hexdiff
from .traffic import CONFIG, flow_batch, random_rule

__all__ = ["Segment", "Simulator", "SoakError", "SoakMismatch", "build_simulator", "main",
           "plan_segments", "run_soak"]

TB_SOURCE = Path(__file__).with_name("soak_tb.cpp")
VERILATOR_FLAGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--x-assign", "0", "--x-initial",
                   "0", "-O3")
# Fast paths optimized, the (large, run-once) initialization code not: halves the build.
MAKE_FLAGS = "OPT_FAST=-O2 OPT_SLOW=-O0 OPT_GLOBAL=-O1"

RULE_COUNTS = (4, 16, 64, 256, 1024)
IDLE = ((0.0, 1), (0.0, 1), (0.05, 1), (0.2, 1), (0.2, 8), (0.5, 32))
STALL = ((0.0, 1), (0.1, 1), (0.3, 1), (0.3, 8), (0.5, 4), (0.6, 64), (0.8, 2))


class SoakError(Exception):
    """The soak could not run (no Verilator, a failed build, a simulator that died)."""


class SoakMismatch(AssertionError):
    """The gateware differs from the reference model or loses a frame: ``segment``, ``frame``
    (index in the segment, or None) and the message (seed, what differs, hex diff)."""

    def __init__(self, message, *, segment=None, frame=None):
        super().__init__(message)
        self.segment = segment
        self.frame = frame


# --- The Verilator build ---------------------------------------------------------------------

def _defines(width):
    from amaranth.lib import data

    from ..hdl.headers import port_packet_layout
    from ..hdl.pipeline import FrameDone

    payload = port_packet_layout(width)
    done = data.Layout.cast(FrameDone)
    values = {"W": width, "PAYLOAD_BITS": payload.size, "DATA_OFF": payload["data"].offset,
              "KEEP_OFF": payload["keep"].offset, "LAST_OFF": payload["last"].offset,
              "PORT_OFF": payload["port"].offset}
    for name in ("valid", "hit", "rule", "emits", "punt", "reason"):
        values[f"DONE_{name.upper()}_OFF"] = done[name].offset
    values["DONE_RULE_BITS"] = done["rule"].width
    values["DONE_REASON_BITS"] = done["reason"].width
    return [f"-D{k}={v}" for k, v in values.items()]


def _verilator_version():
    try:
        out = subprocess.run(["verilator", "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SoakError(f"verilator not found ({exc}): install it (make deps, or apt-get "
                        "install verilator)") from None
    return out.strip()


def build_simulator(width=8, config=CONFIG, geometry=None, *, log=None):
    """The path of the Verilator testbench binary for ``Pipeline(width, config, geometry)``,
    built on the first call (a few minutes) and cached by the Verilog, the testbench source,
    the flags and the Verilator version. Concurrent callers wait for one build."""
    from ..hdl.pipeline import Pipeline

    geometry = Geometry() if geometry is None else geometry
    name = f"pipeline_w{width}"
    verilog = verilog_source(lambda: Pipeline(width, config, geometry), name,
                             design_key=(Pipeline, width, config, geometry))
    defines = _defines(width)
    key = hashlib.sha256("\0".join([
        verilog.parent.name, TB_SOURCE.read_text(), *defines, *VERILATOR_FLAGS, MAKE_FLAGS,
        _verilator_version()]).encode()).hexdigest()[:16]
    root = build_root() / "verilator"
    final = root / f"{name}-{key}"
    binary = final / "Vsoak"
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build; the others find it done
        if binary.is_file():
            return binary
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=root))
        try:
            obj = tmp / "obj"
            cflags = " ".join(defines + [f"-DVTOP=V{name}", f'-DVTOP_HEADER=\\"V{name}.h\\"'])
            cmd = ["verilator", "--cc", "--exe", "--build", "-j", "1", str(verilog),
                   str(TB_SOURCE), "--top-module", name, "-Mdir", str(obj), "-o", "Vsoak",
                   *VERILATOR_FLAGS, "-CFLAGS", cflags, "-MAKEFLAGS", MAKE_FLAGS]
            if log:
                log(f"soak: building the Verilator testbench for {name} (a few minutes, once)")
            started = time.perf_counter()
            with open(tmp / "build.log", "w") as out:
                status = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                        check=False).returncode
            if status:
                tail = (tmp / "build.log").read_text(errors="replace").splitlines()[-30:]
                raise SoakError(f"verilator build failed ({status}):\n" + "\n".join(tail))
            os.replace(obj / "Vsoak", tmp / "Vsoak")
            shutil.rmtree(obj)
            (tmp / "build.json").write_text(json.dumps({
                "verilog": str(verilog), "command": cmd,
                "seconds": round(time.perf_counter() - started, 1)}, indent=1) + "\n")
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return binary


# --- The simulator process -------------------------------------------------------------------

class Simulator:
    """One running testbench (``sim/soak_tb.cpp``): a pipeline out of reset that keeps its
    state from command to command. A context manager; :meth:`close` ends the process."""

    def __init__(self, binary, width=8):
        self.width = width
        self._dir = Path(tempfile.mkdtemp(prefix="openvtep-soak-"))
        self._proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self.cycle = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.stdin.write("quit\n")
                self._proc.stdin.flush()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _command(self, line):
        try:
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
        except OSError as exc:
            raise SoakError(f"simulator: {exc}") from None
        if not answer:
            raise SoakError(f"simulator exited ({self._proc.wait()}) on: {line}")
        words = answer.split()
        self.cycle = int(words[-1])
        return words[0] == "ok", " ".join(words[1:-2])

    def bus(self, ops):
        """Issue ``ops`` (``(write, addr, word)``, one at a time); returns ``(reads, cycles)``,
        the words read in order. An ``r_err`` response raises SoakError."""
        ops = np.asarray(ops, np.uint32).reshape(-1, 3)
        path_in, path_out = self._dir / "bus.in", self._dir / "bus.out"
        ops.astype("<u4").tofile(path_in)
        ok, text = self._command(f"bus {path_in} {path_out}")
        if not ok:
            raise SoakError(f"simulator: {text}")
        return np.fromfile(path_out, "<u4").astype(np.int64), int(text.split()[1])

    def run(self, batch, *, seed, idle=(0.0, 1), stall=(0.0, 1), limit=None):
        """Stream ``batch`` (a FrameBatch, in order) into the pipeline with input gaps
        ``idle`` and output stalls ``stall`` (each ``(fraction of cycles, mean run length)``)
        until every frame is decided and out. Returns a dict: ``cycles``; per verdict (input
        order) ``rule``, ``hit``, ``emits``, ``punt``, ``reason``; per output ``out_length``,
        ``out_port``; ``out_bytes`` (concatenated); ``error`` (None, or why the run stopped
        early: stuck, or the stream rules broken on ``o``; frames may then still be in the
        pipeline, so a later run would see them)."""
        n = len(batch)
        beats = int((-(-batch.length // self.width)).sum())
        if limit is None:
            limit = 100 * (beats + n) + 100_000
        path_in, path_out = self._dir / "run.in", self._dir / "run.out"
        with open(path_in, "wb") as f:
            f.write(np.uint32(n).astype("<u4").tobytes())
            f.write(batch.length.astype("<u4").tobytes())
            f.write(batch.port.astype(np.uint8).tobytes())
            f.write(batch.packed().tobytes())
        ppm = [round(idle[0] * 1e6), int(idle[1]), round(stall[0] * 1e6), int(stall[1])]
        ok, text = self._command(f"run {path_in} {path_out} {seed} "
                                 f"{' '.join(map(str, ppm))} {limit}")
        raw = np.fromfile(path_out, np.uint8)
        count = int(raw[:4].view("<u4")[0])
        verdicts = raw[4:4 + 8 * count].reshape(count, 8)
        at = 4 + 8 * count
        m = int(raw[at:at + 4].view("<u4")[0])
        at += 4
        out_length = raw[at:at + 4 * m].view("<u4").astype(np.int64)
        at += 4 * m
        result = {
            "rule": verdicts[:, :4].copy().view("<u4")[:, 0].astype(np.int64),
            "hit": verdicts[:, 4].astype(np.int64), "emits": verdicts[:, 5].astype(np.int64),
            "punt": verdicts[:, 6].astype(np.int64), "reason": verdicts[:, 7].astype(np.int64),
            "out_length": out_length, "out_port": raw[at:at + m].astype(np.int64),
            "out_bytes": raw[at + m:], "error": None if ok else text,
            "cycles": int(text.split()[1]) if ok else None,
        }
        return result


# --- Counters over the bus --------------------------------------------------------------------

def _counter_ops(rules):
    ops = []
    for port in Port:
        for name in rm.PORT_COUNTERS:
            addr = rm.port_counter_address(port, name)
            ops += [(0, addr, 0), (0, addr + 1, 0)]  # the low word snapshots the high word
    ops += [(0, rm.drop_address(reason), 0) for reason in DropReason]
    for index in range(rules):
        ops.append((1, rm.COMMAND, rm.command(rm.OP_READ, rm.TABLE_COUNTER, index)))
        ops += [(0, rm.STAGING + k, 0) for k in range(4)]
    return ops


def read_counters(sim, rules):
    """``{"ports": (ports, 4) int64 in PORT_COUNTERS order, "drops": (reasons,), "rules":
    (rules, 2) packets and bytes}`` read over the bus."""
    words, _ = sim.bus(_counter_ops(rules))
    n_ports = len(Port) * len(rm.PORT_COUNTERS)
    pairs = words[:2 * n_ports].reshape(-1, 2)
    ports = (pairs[:, 0] | pairs[:, 1] << 32).reshape(len(Port), len(rm.PORT_COUNTERS))
    drops = words[2 * n_ports:2 * n_ports + len(DropReason)]
    entry = words[2 * n_ports + len(DropReason):].reshape(-1, 4)
    return {"ports": ports, "drops": drops,
            "rules": np.stack([entry[:, 0] | entry[:, 1] << 32,
                               entry[:, 2] | entry[:, 3] << 32], axis=1)}


# --- Segments -------------------------------------------------------------------------------

@dataclasses.dataclass
class Segment:
    """One rule set's stretch of the soak: ``frames`` frames from ``start`` (the global index
    of its first frame), about ``rules`` rules (``punt``: some with controller copies;
    ``catch_all``: a random catch-all rule below them), input gaps ``idle`` and output stalls
    ``stall`` (each ``(fraction, mean run length)``), all drawn from ``seed``."""
    index: int
    start: int
    frames: int
    seed: int
    rules: int
    punt: bool
    catch_all: bool
    idle: tuple
    stall: tuple


def plan_segments(seed, frames, segment_frames):
    """The segments of a soak of ``frames`` frames from ``seed``."""
    out, start = [], 0
    while start < frames:
        index = len(out)
        rng = random.Random(f"openvtep-soak:{seed}:{index}")
        n = min(segment_frames, frames - start)
        # The first segment always has gaps and stalls: even a short soak sees backpressure.
        idle = rng.choice(IDLE[2:] if index == 0 else IDLE)
        stall = rng.choice(STALL[1:] if index == 0 else STALL)
        out.append(Segment(index, start, n, rng.getrandbits(63), rng.choice(RULE_COUNTS),
                           rng.random() < 0.5, rng.random() < 0.4, idle, stall))
        start += n
    return out


def segment_rules(segment, batch, geometry, config=CONFIG):
    """The segment's RuleSet, made from the fields of its frames."""
    fields = flow_rules.frame_fields(batch.take(np.arange(min(len(batch), 4000))), config)
    ruleset = flow_rules.ruleset_for(segment.seed, fields, segment.rules, geometry=geometry,
                                     punt=segment.punt)
    if segment.catch_all:
        text = "\n".join(r.text for r in ruleset)
        rng = random.Random(segment.seed)
        for _ in range(10):
            try:
                extra = parse_rules(text + "\n" + random_rule(rng), "soak.rules")
                compile_tables(extra, geometry)
            except RuleError:
                continue
            return extra
    return ruleset


# --- Comparison -----------------------------------------------------------------------------

def _reason_text(value):
    return DropReason(value).label if value >= 0 else "emitted"


def compare_segment(segment, batch, ruleset, image, ref, got, counters, *, seed):
    """Raise SoakMismatch at the first difference between the simulation ``got`` (and the
    segment's counter increments ``counters``) and the reference result ``ref``."""
    where = f"soak seed {seed}: segment {segment.index} (frames {segment.start}.."
    where += f"{segment.start + segment.frames - 1}, {len(ruleset)} rules)"

    def fail(text, frame=None):
        if frame is not None:
            text = f"frame {frame} (soak frame {segment.start + frame}): {text}"
        raise SoakMismatch(f"{where}: {text}", segment=segment.index, frame=frame)

    n = len(batch)
    if got["error"]:
        fail(f"simulation stopped: {got['error']}")
    if len(got["emits"]) != n:
        fail(f"{len(got['emits'])} of {n} frames decided", len(got["emits"]))
    # Each frame's rule and fate.
    file_index = {rule.line: k for k, rule in enumerate(ruleset)}
    to_file = np.array([file_index[r.line] for r in image.rules] + [-1], np.int64)
    rule_index = np.where(got["hit"] != 0,
                          to_file[np.minimum(got["rule"], len(image.rules))], -1)
    drop = np.where(got["emits"] != 0, -1, got["reason"])
    for what, mine, theirs, text in (("rule", rule_index, ref.rule, str),
                                     ("fate", drop, ref.drop, _reason_text)):
        differ = np.flatnonzero(mine != np.asarray(theirs))
        if len(differ):
            k = int(differ[0])
            fail(f"{what} {text(int(mine[k]))}, expected {text(int(theirs[k]))}", k)
    # Outputs, per port: the frame each came from, its length and bytes, in order.
    out_frame = np.repeat(np.arange(n), got["emits"] + got["punt"])
    if len(out_frame) != len(got["out_length"]):
        fail(f"{len(got['out_length'])} outputs, the verdicts announce {len(out_frame)}")
    offsets = np.concatenate([[0], np.cumsum(got["out_length"])])
    for port in Port:
        want = ref.outputs[port]
        here = np.flatnonzero(got["out_port"] == port)
        mask = np.repeat(got["out_port"] == port, got["out_length"])
        frames_got, lengths_got = out_frame[here], got["out_length"][here]
        bytes_got, bytes_want = got["out_bytes"][mask], want.packed()
        same = (len(here) == len(want) and (frames_got == want.time_ns).all()
                and (lengths_got == want.length).all() and (bytes_got == bytes_want).all())
        if same:
            continue
        count = min(len(here), len(want))
        bad = np.flatnonzero((frames_got[:count] != want.time_ns[:count])
                             | (lengths_got[:count] != want.length[:count]))
        k = int(bad[0]) if len(bad) else count
        if k == count and len(here) == len(want):  # same frames and lengths: the bytes differ
            at = int(np.flatnonzero(bytes_got != bytes_want)[0])
            k = int(np.searchsorted(np.cumsum(want.length), at, side="right"))
        if k == count:
            missing = want.time_ns[k] if len(want) > count else None
            extra = frames_got[k] if len(here) > count else None
            fail(f"{port.label}: {len(here)} outputs, expected {len(want)} "
                 f"(first {'missing' if missing is not None else 'extra'} from input frame "
                 f"{missing if missing is not None else extra})",
                 int(missing if missing is not None else extra))
        g = int(here[k])
        frame_got = got["out_bytes"][offsets[g]:offsets[g + 1]].tobytes()
        frame_want = want.data[k, :want.length[k]].tobytes()
        source = int(want.time_ns[k])
        if frames_got[k] != source:
            fail(f"{port.label} output {k} comes from input frame {int(frames_got[k])}, "
                 f"expected from input frame {source}\n{hexdiff(frame_want, frame_got)}",
                 source)
        fail(f"{port.label} output {k} differs\n{hexdiff(frame_want, frame_got)}", source)
    # Counters: rule counters (cleared by the load), increments of the port and drop counters.
    for k, rule in enumerate(image.rules):
        entry = ref.stats["rules"][file_index[rule.line]]
        mine = tuple(int(v) for v in counters["rules"][k])
        if mine != (entry["n_packets"], entry["n_bytes"]):
            fail(f"rule counter of line {rule.line} ({rule.text}): {mine}, expected "
                 f"{(entry['n_packets'], entry['n_bytes'])}")
    for port in Port:
        for c, name in enumerate(rm.PORT_COUNTERS):
            mine, theirs = int(counters["ports"][port, c]), ref.stats["ports"][port.label][name]
            if mine != theirs:
                fail(f"port counter {port.label} {name} rose by {mine}, expected {theirs}")
    for reason in DropReason:
        mine, theirs = int(counters["drops"][reason]), ref.stats["drops"][reason.label]
        if mine != theirs:
            fail(f"drop counter {reason.label} rose by {mine}, expected {theirs}")
    check_conservation(counters, n=n, in_bytes=int(batch.length.sum()),
                       emitted=int(got["emits"].sum()), outputs=len(got["out_length"]),
                       out_bytes=len(got["out_bytes"]), fail=fail)


def check_conservation(counters, *, n, in_bytes, emitted, outputs, out_bytes, fail):
    """Frames in = frames emitted + frames counted dropped, by the pipeline's own counters
    (``counters``: increments or totals) and by what the testbench sent and saw."""
    rx = counters["ports"][:, 0]
    tx = counters["ports"][:, 2]
    dropped = int(counters["drops"].sum())
    if int(rx.sum()) != n or int(counters["ports"][:, 1].sum()) != in_bytes:
        fail(f"rx counters count {int(rx.sum())} frames / {int(counters['ports'][:, 1].sum())}"
             f" bytes, {n} / {in_bytes} were sent")
    if int(rx.sum()) != emitted + dropped:
        fail(f"frames not conserved: {int(rx.sum())} in, {emitted} emitted + {dropped} "
             f"counted dropped")
    if int(tx.sum()) != outputs or int(counters["ports"][:, 3].sum()) != out_bytes:
        fail(f"tx counters count {int(tx.sum())} frames / {int(counters['ports'][:, 3].sum())}"
             f" bytes, {outputs} / {out_bytes} left the pipeline")


# --- The soak -------------------------------------------------------------------------------

def run_soak(frames, *, seed, segment_frames=20_000, width=8, config=CONFIG, geometry=None,
             start_segment=0, log=print, tamper=None):
    """Run the soak; returns the report dict. Raises SoakMismatch at the first difference
    (the report so far in its ``report`` attribute), SoakError if it cannot run.

    ``start_segment``: begin with that segment of the plan (the same frames, rules and
    schedule as in the whole run), to reproduce a failure quickly.

    ``tamper(segment, got, counters)``, for testing the checks, may alter a segment's
    simulation results (:meth:`Simulator.run`) or counter increments before they are
    compared."""
    geometry = Geometry() if geometry is None else geometry
    started = time.perf_counter()
    binary = build_simulator(width, config, geometry, log=log)
    build_s = time.perf_counter() - started
    segments = plan_segments(seed, frames, segment_frames)[start_segment:]
    report = {"seed": seed, "width": width, "geometry": dataclasses.asdict(geometry),
              "frames_requested": frames, "segment_frames": segment_frames,
              "start_segment": start_segment,
              "simulator": str(binary), "build_s": round(build_s, 1), "source": _source(),
              "segments": [],
              "result": "running"}
    totals = {"frames": 0, "in_bytes": 0, "emitted": 0, "outputs": 0, "out_bytes": 0,
              "cycles": 0, "load_cycles": 0, "sim_s": 0.0}
    started = time.perf_counter()
    log(f"soak: seed {seed}: {sum(s.frames for s in segments)} frames in {len(segments)} "
        f"segments, W={width}, {geometry}")
    try:
        with Simulator(binary, width) as sim:
            previous = read_counters(sim, 0)
            for segment in segments:
                t0 = time.perf_counter()
                batch = flow_batch(segment.seed, segment.frames,
                                   flows=max(64, segment.frames // 8),
                                   max_frame=config.max_frame)
                ruleset = segment_rules(segment, batch, geometry, config)
                image = compile_tables(ruleset, geometry)
                first = segment is segments[0]  # tables as reset left them
                writes = rm.table_writes(image, fresh=first, clear_counters=not first)
                t1 = time.perf_counter()
                _, load_cycles = sim.bus([(1, a, w) for a, w in writes])
                got = sim.run(batch, seed=segment.seed, idle=segment.idle, stall=segment.stall)
                after = read_counters(sim, len(image.rules))
                t2 = time.perf_counter()
                counters = {"ports": after["ports"] - previous["ports"],
                            "drops": (after["drops"] - previous["drops"]) & 0xFFFFFFFF,
                            "rules": after["rules"]}
                previous = after
                if tamper is not None:
                    tamper(segment, got, counters)
                ref = Reference(config, ruleset).run(batch)
                entry = {**dataclasses.asdict(segment), "rule_count": len(ruleset),
                         "cycles": got["cycles"], "load_cycles": load_cycles,
                         "outputs": len(got["out_length"]),
                         "dropped": int(counters["drops"].sum()),
                         "sim_s": round(t2 - t1, 2), "result": "running"}
                report["segments"].append(entry)
                compare_segment(segment, batch, ruleset, image, ref, got, counters, seed=seed)
                entry["result"] = "equal"
                entry["wall_s"] = round(time.perf_counter() - t0, 2)
                totals["frames"] += len(batch)
                totals["in_bytes"] += int(batch.length.sum())
                totals["emitted"] += int(got["emits"].sum())
                totals["outputs"] += len(got["out_length"])
                totals["out_bytes"] += len(got["out_bytes"])
                totals["cycles"] += got["cycles"]
                totals["load_cycles"] += load_cycles
                totals["sim_s"] += t2 - t1
                elapsed = time.perf_counter() - started
                log(f"segment {segment.index + 1}/{start_segment + len(segments)}: "
                    f"{len(batch)} frames, "
                    f"{len(ruleset)} rules, gaps {segment.idle[0]:.2f}x{segment.idle[1]}, "
                    f"stalls {segment.stall[0]:.2f}x{segment.stall[1]}: {got['cycles']} "
                    f"cycles in {t2 - t1:.1f} s, equal ({totals['frames']} frames, "
                    f"{totals['frames'] / elapsed:.0f} frames/s)")

            def fail(text, frame=None):
                raise SoakMismatch(f"soak seed {seed}: whole run: {text}")

            check_conservation(previous, n=totals["frames"], in_bytes=totals["in_bytes"],
                               emitted=totals["emitted"], outputs=totals["outputs"],
                               out_bytes=totals["out_bytes"], fail=fail)
    except SoakMismatch as exc:
        report["result"] = "mismatch"
        report["mismatch"] = {"segment": exc.segment, "frame": exc.frame, "message": str(exc)}
        _finish(report, totals, started)
        exc.report = report
        raise
    report["result"] = "pass"
    report["final_counters"] = {
        "ports": {port.label: {name: int(previous["ports"][port, c])
                               for c, name in enumerate(rm.PORT_COUNTERS)} for port in Port},
        "drops": {reason.label: int(previous["drops"][reason]) for reason in DropReason}}
    return _finish(report, totals, started)


def _source():
    """The commit the gateware was built from, and the files that differed from it."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                  text=True, check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    modified = [line[3:] for line in git("status", "--porcelain", "--", "hdl", "host",
                                         "sim").splitlines()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "modified": modified}


def _finish(report, totals, started):
    wall = time.perf_counter() - started
    report.update({
        "frames": totals["frames"], "emitted": totals["emitted"], "outputs": totals["outputs"],
        "in_bytes": totals["in_bytes"], "out_bytes": totals["out_bytes"],
        "cycles": totals["cycles"], "load_cycles": totals["load_cycles"],
        "wall_s": round(wall, 1), "sim_s": round(totals["sim_s"], 1),
        "frames_per_s": round(totals["frames"] / wall, 1) if wall else None,
        "cycles_per_s": round(totals["cycles"] / totals["sim_s"]) if totals["sim_s"] else None,
    })
    return report


# --- Command line ---------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m openvtep.sim.soak",
        description="Soak the simulated gateware pipeline (Verilator) against the reference "
                    "model, frame by frame, with rule changes, gaps and backpressure.",
        epilog="example: python -m openvtep.sim.soak --frames 1000000 --seed 7 "
               "--report out/soak.json")
    parser.add_argument("--frames", type=int, default=1_000_000,
                        help="frames to simulate (default: %(default)s)")
    parser.add_argument("--segment-frames", type=int, default=20_000,
                        help="frames per rule set (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed (default: a random one, printed)")
    parser.add_argument("--start-segment", type=int, default=0, metavar="K",
                        help="begin with segment K (numbered from 0) of the same plan, to "
                             "reproduce a failure (default: %(default)s)")
    parser.add_argument("--width", type=int, default=8, choices=(4, 8, 16),
                        help="bytes per beat (default: %(default)s)")
    parser.add_argument("--report", type=Path, default=Path("out/soak.json"),
                        help="JSON report to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.segment_frames < 1:
        parser.error("--frames and --segment-frames must be at least 1")
    if not 0 <= args.start_segment < -(-args.frames // args.segment_frames):
        parser.error(f"--start-segment must be 0..{-(-args.frames // args.segment_frames) - 1}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)

    def log(text):
        print(text, flush=True)

    code = 0
    try:
        report = run_soak(args.frames, seed=seed, segment_frames=args.segment_frames,
                          width=args.width, start_segment=args.start_segment, log=log)
    except SoakMismatch as exc:
        print(f"FAIL: {exc}", file=sys.stderr)
        if exc.segment is not None:
            print(f"reproduce: python -m openvtep.sim.soak --seed {seed} --frames {args.frames}"
                  f" --segment-frames {args.segment_frames} --width {args.width} "
                  f"--start-segment {exc.segment}", file=sys.stderr)
        report, code = exc.report, 1
    except SoakError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"soak: seed {seed}: {report['frames']} frames, {len(report['segments'])} segments, "
          f"{report['cycles']} cycles in {report['wall_s']} s ({report['frames_per_s']} "
          f"frames/s; simulation {report['cycles_per_s']} cycles/s): "
          f"{'PASS' if code == 0 else 'FAIL'}; report {args.report}")
    return code


if __name__ == "__main__":
    sys.exit(main())
