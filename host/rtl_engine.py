"""The ``rtl`` engine: the same job as the reference model, done by the gateware pipeline
(``openvtep.hdl.pipeline.Pipeline``) simulated with cocotb on Icarus Verilog.

    result = rtl_engine(config, ruleset, frames)   # frames: FrameBatch in arrival order
    result.outputs[Port.NET]                       # FrameBatch, per-port order
    result.stats                                   # stats.json dictionary, as Reference's

The rule set is compiled into tables (:func:`openvtep.tables.compile_tables`; a rule set the
hardware cannot hold raises RuleError naming the rule), loaded through the pipeline's control
bus with the writes of :func:`openvtep.regmap.table_writes` (what a board receives), every
frame is streamed in order, and the counters are read back over the bus.
"""

import dataclasses
import os
import sys
import tempfile
import threading
import time

import numpy as np

from . import regmap as rm
from .errors import RuleError, UserError
from .frames import FrameBatch
from .headers import DropReason, Port
from .tables import Geometry, compile_tables

__all__ = ["RtlResult", "rtl_engine", "unsupported_rules"]


@dataclasses.dataclass
class RtlResult:
    """``outputs`` ({Port: FrameBatch}) and ``stats`` as :class:`openvtep.reference.Result`;
    per input frame ``rule`` (index in file order, -1 none), ``emits`` and ``drop`` (the
    :class:`DropReason` the pipeline counted it under, -1 when it was emitted: as
    ``Result.drop``), all in input order; ``cycles`` the
    simulated cycles of the traffic, ``load_cycles`` of the table load; ``raw`` all that the
    simulation returned (see ``openvtep.sim.replay_tb``)."""
    outputs: dict
    stats: dict
    rule: np.ndarray
    emits: np.ndarray
    cycles: int
    load_cycles: int
    raw: dict
    drop: np.ndarray = None


def unsupported_rules(image):
    """Rules of a compiled ``image`` that the gateware cannot execute. None: every action
    :func:`openvtep.tables.compile_tables` accepts (one edited output, and at most one
    controller copy beside it) is the editor's; a rule set beyond that is refused there."""
    return []


def _progress(path, stop, total):
    while not stop.wait(2.0):
        try:
            with open(path) as f:
                frames, cycles, rate = f.read().split()
        except (OSError, ValueError):
            continue
        print(f"rtl: {frames}/{total} frames, {cycles} cycles, {rate} cycles/s",
              file=sys.stderr, flush=True)


def rtl_engine(config, ruleset, frames, width=8, *, geometry=None, idle=0.0, backpressure=0.0,
               seed=None, progress=None):
    """Run ``frames`` (a FrameBatch in arrival order, or ``(port, bytes)`` pairs) through the
    simulated pipeline; returns an :class:`RtlResult`.

    ``geometry``: the classifier's table sizes (default ``Geometry()``). ``idle`` and
    ``backpressure``: probabilities of random input gaps and output stalls (testing).
    ``seed``: simulation seed (default: random, printed). ``progress``: print progress to
    stderr (default: when there are more than 2000 frames).
    """
    from .hdl.pipeline import Pipeline
    from .sim.cocotb_runner import run_cocotb

    geometry = Geometry() if geometry is None else geometry
    if not isinstance(frames, FrameBatch):
        frames = FrameBatch.from_frames(frames)
    image = compile_tables(ruleset, geometry)
    bad = unsupported_rules(image)
    if bad:
        message = "the gateware cannot execute this rule's actions"
        raise RuleError(ruleset.filename, [(rule.line, 1, message) for rule in bad])
    if len(frames) and int(frames.length.min()) < 1:
        raise UserError("the rtl engine cannot send an empty (0-byte) frame")
    writes = rm.table_writes(image)
    progress = len(frames) > 2000 if progress is None else progress
    with tempfile.TemporaryDirectory(prefix="openvtep-rtl-") as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        results = os.path.join(tmp, "results.npz")
        progress_file = os.path.join(tmp, "progress")
        np.savez(inputs, data=frames.data, length=frames.length, port=frames.port,
                 addr=np.array([a for a, _ in writes], np.int64),
                 word=np.array([w for _, w in writes], np.int64))
        params = {"width": width, "inputs": inputs, "results": results,
                  "rules": len(image.rules), "idle": idle, "backpressure": backpressure,
                  "progress": progress_file if progress else None}
        stop = threading.Event()
        if progress:
            threading.Thread(target=_progress, args=(progress_file, stop, len(frames)),
                             daemon=True).start()
        started = time.perf_counter()
        try:
            # The key names the design: a cached build is found without making it.
            run_cocotb(lambda: Pipeline(width, config, geometry), "openvtep.sim.replay_tb",
                       name=f"pipeline_w{width}", testcase="replay", params=params, seed=seed,
                       design_key=(Pipeline, width, config, geometry))
        finally:
            stop.set()
        with np.load(results) as f:
            raw = {k: f[k] for k in f.files}
    if progress:
        print(f"rtl: {len(frames)} frames, {int(raw['cycles'])} cycles in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return _result(ruleset, image, frames, raw)


def _result(ruleset, image, frames, raw):
    lengths = raw["out_length"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    width = int(lengths.max(initial=0))
    data = np.zeros((len(lengths), width), np.uint8)
    for k, n in enumerate(lengths.tolist()):
        data[k, :n] = raw["out_data"][offsets[k]:offsets[k] + n]
    ports = raw["out_port"]
    times = frames.time_ns[raw["out_frame"]]
    outputs = {}
    for port in Port:
        here = ports == port
        outputs[port] = FrameBatch(data[here], lengths[here].astype(np.int64),
                                   ports[here].astype(np.uint8), times[here])
    file_index = {rule.line: k for k, rule in enumerate(ruleset)}
    rule = np.where(raw["hit"] != 0, [file_index[image.rules[r].line] if h else -1
                                      for h, r in zip(raw["hit"].tolist(),
                                                      raw["rule"].tolist())], -1)
    counters = raw["rule_counters"]
    hw_index = {r.line: k for k, r in enumerate(image.rules)}
    stats = {
        "rules": [{"line": r.line, "rule": r.text,
                   "n_packets": int(counters[hw_index[r.line], 0]),
                   "n_bytes": int(counters[hw_index[r.line], 1])} for r in ruleset],
        "ports": {port.label: {name: int(raw["port_counters"][port, c])
                               for c, name in enumerate(rm.PORT_COUNTERS)} for port in Port},
        "drops": {reason.label: int(raw["drops"][reason]) for reason in DropReason},
    }
    return RtlResult(outputs, stats, np.asarray(rule, np.int64), raw["emits"],
                     int(raw["cycles"]), int(raw["load_cycles"]), raw,
                     drop=np.asarray(raw["reason"], np.int16))
