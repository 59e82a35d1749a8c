"""Run cocotb testbenches against Amaranth components on Icarus Verilog, from pytest.

The pytest side calls :func:`run_cocotb`; the cocotb side (a testbench module, by convention
``tests/<area>/tb_<block>.py``, which pytest does not collect) reads its parameters with
:func:`test_params` and seeds its randomness with :func:`test_seed`::

    # tests/hdl/test_thing.py
    from pathlib import Path
    from openvtep.hdl.stream import RegisterSlice
    from openvtep.sim.cocotb_runner import run_cocotb

    def test_slice():
        run_cocotb(RegisterSlice(8), Path(__file__).with_name("tb_thing.py"),
                   name="slice_w8", params={"width": 8, "frames": 100})

    # tests/hdl/tb_thing.py
    import cocotb
    from openvtep.sim.cocotb_runner import test_params, test_seed

    @cocotb.test()
    async def frames(dut):
        width = test_params()["width"]
        rng = random.Random(test_seed())
        ...

Builds are cached under ``build/sim/<name>-<hash of the Verilog>/`` (``OPENVTEP_SIM_BUILD``
overrides ``build/sim``) and made atomically, so pytest-xdist workers may build and run the same
or different designs at once; each run gets its own directory below the build's ``runs/``.

Finding the cached build still takes the design's RTLIL, and converting a large design to RTLIL
takes tens of seconds (about 26 s for the pipeline). A caller that can name its design cheaply
passes ``design_key`` (e.g. ``(Pipeline, width, config, geometry)``): the key, with a hash of
the openvtep sources the design's class imports and the Amaranth version, then finds the build
without converting (``build/sim/index/``).

The seed is ``seed=``, else ``$OPENVTEP_SEED``, else random; it is printed, and named in the
failure message, so ``OPENVTEP_SEED=<n> pytest ...`` reproduces a failure.
"""

import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["ICARUS_ARGS", "TIMESCALE", "CocotbFailure", "build_root", "run_cocotb", "test_params",
           "test_seed", "verilog_source"]

TIMESCALE = ("1ns", "1ps")
# Icarus compiles Verilog-2005, not cocotb's default -g2012: under the 2012 rules Icarus does not
# run the ``always @*`` blocks Yosys emits at time 0, so a combinational output that depends only
# on registers still at their reset value (an FSM's ``ready`` in its reset state, the editor's
# controls until the first frame) stays X, and a design can hang on it (a first frame that is
# dropped did). Real hardware has no such state.
ICARUS_ARGS = ("-g2005",)

_PARAMS_ENV = "OPENVTEP_PARAMS"
_SEED_ENV = "OPENVTEP_SEED"
_RUN_SEED_ENV = "OPENVTEP_RUN_SEED"  # the seed as passed to the simulator process


class CocotbFailure(AssertionError):
    """A cocotb test failed (or the simulation did not finish). The message holds the seed, the
    failing cocotb tests with their reasons, and the tail of the simulation log."""


def build_root():
    """The folder of the cached builds (``build/sim``, or ``$OPENVTEP_SIM_BUILD``)."""
    if env := os.environ.get("OPENVTEP_SIM_BUILD"):
        return Path(env).resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").is_file():  # a source checkout (editable install)
        return repo / "build" / "sim"
    return Path.cwd() / "build" / "sim"


def _safe(text, limit=80):
    text = re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")
    if len(text) > limit:
        text = text[:limit - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text or "run"


def _make_runner():
    from cocotb_tools.runner import get_runner
    return get_runner("icarus")


def _to_verilog(component, name, rtlil_text):
    """What ``amaranth.back.verilog.convert(component, name=name)`` returns, from the RTLIL
    already made (the Yosys step is the slow part; it only runs on a cache miss)."""
    from amaranth.back import verilog
    try:
        return verilog._convert_rtlil_text(rtlil_text)
    except AttributeError:  # a later Amaranth without that helper: elaborate again
        return verilog.convert(component, name=name)


def _module_file(name):
    import importlib.util
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def _openvtep_imports(name, path):
    """The openvtep modules (and packages) the source of module ``name`` imports, anywhere in
    it (function-level imports too)."""
    import ast
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            bases, names = [alias.name for alias in node.names], []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            bases, names = [base], [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in bases + names:
            parts = module.split(".")
            if parts[0] == "openvtep":  # the module and the packages it is imported through
                out.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return out


def _source_files(roots):
    """The source files of the openvtep modules ``roots`` import, transitively."""
    seen, files, todo = set(), {}, list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None or path.suffix != ".py":
            continue
        files[name] = path
        todo.extend(_openvtep_imports(name, path))
    return files


def _source_digest(roots=None):
    """A hash of the Amaranth version and of the openvtep sources a design can be built from:
    those the modules ``roots`` import (transitively), or with no ``roots`` every ``.py`` file
    of the openvtep packages. A few milliseconds."""
    import importlib.metadata
    digest = hashlib.sha256(importlib.metadata.version("amaranth").encode())
    if roots:
        files = sorted(_source_files(roots).items())
    else:
        files = []
        for package in ("openvtep", "openvtep.hdl", "openvtep.sim", "openvtep.boards"):
            init = _module_file(package)
            if init is not None:
                files += [(f"{package}/{path.name}", path)
                          for path in sorted(init.parent.glob("*.py"))]
    for name, path in files:
        digest.update(f"\0{name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _index_path(name, design_key, waves):
    """The index file naming the build of the design ``design_key``, or None without a key."""
    if design_key is None:
        return None
    text = repr(design_key)
    if re.search(r" at 0x[0-9a-f]+", text):
        raise ValueError(f"design_key {text} names objects by address: it would never match")
    # A class in the key (the design's) narrows the sources hashed to what its module imports.
    items = design_key if isinstance(design_key, (tuple, list)) else (design_key,)
    roots = [item.__module__ for item in items if isinstance(item, type)]
    key = hashlib.sha256("\0".join([text, name, repr(TIMESCALE), str(waves),
                                     _source_digest(roots)]).encode()).hexdigest()[:16]
    return build_root() / "index" / f"{name}-{key}"


def _indexed_build(index):
    """The build directory an index file names, if that build is complete."""
    try:
        final = index.parent.parent / index.read_text().strip()
    except OSError:
        return None
    return final if (final / "sim.vvp").is_file() else None


def _write_index(index, final):
    index.parent.mkdir(parents=True, exist_ok=True)
    tmp = index.with_name(f".{index.name}.{os.getpid()}")
    tmp.write_text(final.name + "\n")
    os.replace(tmp, index)


def _build(component, name, *, waves, design_key=None, build_args=ICARUS_ARGS):
    """Compile ``component`` (or what the factory ``component`` returns, only made when
    needed) once per distinct design; return the build directory. ``build_args`` go to the
    Icarus compiler (default :data:`ICARUS_ARGS`) and are part of the cache key."""
    from amaranth.hdl import Elaboratable

    if build_args and design_key is not None:
        design_key = (design_key, *build_args)
    index = _index_path(name, design_key, waves)
    if index is not None and (final := _indexed_build(index)) is not None:
        return final
    if callable(component) and not isinstance(component, Elaboratable):
        component = component()
    final = _build_rtlil(component, name, waves=waves, build_args=build_args)
    if index is not None:
        _write_index(index, final)
    return final


def _build_rtlil(component, name, *, waves, build_args=()):
    from amaranth.back import rtlil

    # Cache key: the RTLIL (pure Python, fast), so a cached design skips Yosys too.
    rtlil_text = rtlil.convert(component, name=name)
    key = hashlib.sha256("\0".join([rtlil_text, name, repr(TIMESCALE), str(waves),
                                    *build_args]).encode()).hexdigest()[:16]
    root = build_root()
    final = root / f"{name}-{key}"
    if (final / "sim.vvp").is_file():
        return final

    root.mkdir(parents=True, exist_ok=True)
    # Build in a private directory, then rename it into place: a concurrent worker building
    # the same design either wins the rename or finds the finished directory.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=root))
    try:
        source = tmp / f"{name}.v"
        source.write_text(_to_verilog(component, name, rtlil_text))
        runner = _make_runner()
        runner.build(sources=[source], hdl_toplevel=name, build_dir=tmp, timescale=TIMESCALE,
                     waves=waves, build_args=list(build_args), always=True,
                     log_file=tmp / "build.log")
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "sim.vvp").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def verilog_source(component, name, *, design_key=None):
    """The Verilog of ``component`` (as ``amaranth.back.verilog.convert(component, name=name)``
    gives it): ``<name>.v`` in its cached build, found or made as :func:`run_cocotb` does
    (``component`` and ``design_key`` as there), for other simulators to compile."""
    return _build(component, name, waves=False, design_key=design_key) / f"{name}.v"


def _module_spec(module):
    """(module name, extra sys.path entry or None) for a dotted name or a ``.py`` path."""
    if isinstance(module, os.PathLike) or str(module).endswith(".py"):
        path = Path(module).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"cocotb test module {path} not found")
        return path.stem, str(path.parent)
    return str(module), None


def _failures(results_xml):
    """[(test name, kind, message)] of the failed/errored test cases in a cocotb results file."""
    from xml.etree import ElementTree
    out = []
    for case in ElementTree.parse(results_xml).getroot().iter("testcase"):
        for kind in ("failure", "error"):
            for element in case.findall(kind):
                out.append((case.get("name"), kind, element.get("message") or ""))
    return out


def _tail(path, lines=60):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no simulation log)"
    return "\n".join(text[-lines:])


def run_cocotb(component, module, *, name, params=None, seed=None, testcase=None,
               extra_env=None, waves=False, design_key=None):
    """Simulate ``component`` with the cocotb tests in ``module``; raise if any of them fails.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component, or a function returning one
        The design under test, converted as ``amaranth.back.verilog.convert(component,
        name=name)`` would: its ports appear as ``i__valid``, ``i__payload``, ``o__ready``,
        ..., plus ``clk`` and ``rst`` if it has a ``sync`` domain. A function is only called
        when the design has to be converted (with ``design_key``, not for a cached build:
        no component is made, so none is left unused).
    module : str or path-like
        The cocotb test module: a dotted module name importable from ``sys.path``, or the path
        of a ``.py`` file (its folder is put on the simulator's ``PYTHONPATH``).
    name : str
        Verilog top-level module name; also names the build directory.
    params : dict, optional
        JSON-serialisable parameters for the testbench, read there with :func:`test_params`.
    seed : int, optional
        Random seed (:func:`test_seed` in the testbench; also ``COCOTB_RANDOM_SEED``).
        Default: ``$OPENVTEP_SEED`` if set, else a random one. Printed either way.
    testcase : str or list of str, optional
        Only run these cocotb tests of ``module`` (default: all).
    extra_env : dict, optional
        Extra environment variables for the simulator process.
    waves : bool
        Dump an FST waveform into the run directory (also ``WAVES=1`` in the environment).
    design_key : optional
        A cheap name for the design (its ``repr`` is hashed): everything ``component``'s
        Verilog depends on besides the openvtep sources and the Amaranth version, e.g.
        ``(Pipeline, width, config, geometry)``. A class in it limits the sources hashed to
        those its module imports (transitively; else all of openvtep's). With it a cached
        build is found without converting ``component`` (tens of seconds for large designs);
        without it the RTLIL is the key. A design built from code outside the openvtep
        packages (a test's own component) must not pass one, or must put that code's hash in
        it.

    Returns the run directory (holding ``results.xml``, ``sim.log`` and any waveform).
    Raises :class:`CocotbFailure` (an ``AssertionError``) if a cocotb test fails, errors, or the
    simulator dies; the message names the seed and includes the failing tests and log tail.
    """
    __tracebackhide__ = True  # pytest: show the failure message, not this function
    if seed is None:
        seed = os.environ.get(_SEED_ENV) or os.environ.get("COCOTB_RANDOM_SEED")
        seed = int(seed) if seed else random.SystemRandom().randrange(1 << 31)
    waves = waves or os.environ.get("WAVES", "0") not in ("", "0")
    print(f"cocotb: {name}: seed {seed} (reproduce with {_SEED_ENV}={seed})")

    build_dir = _build(component, name, waves=waves, design_key=design_key)

    module_name, module_dir = _module_spec(module)
    # One run directory per pytest test (reused from session to session), else per process.
    test_id = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0].split("::")[-1]
    run_dir = build_dir / "runs" / _safe(test_id or f"{module_name}-{os.getpid()}")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    results = run_dir / "results.xml"
    log = run_dir / "sim.log"

    env = {_PARAMS_ENV: json.dumps(params or {}), _RUN_SEED_ENV: str(seed),
           "COCOTB_ANSI_OUTPUT": "0"}
    env.update(extra_env or {})
    # cocotb_tools hands the simulator our sys.path as its PYTHONPATH (and lets os.environ
    # override extra_env), so a testbench folder has to be on sys.path here.
    if module_dir is not None and module_dir not in sys.path:
        sys.path.append(module_dir)

    plusargs = [f"+dumpfile_path={run_dir / (name + '.fst')}"] if waves else []
    runner = _make_runner()
    simulator_exit = None
    try:
        runner.test(test_module=module_name, hdl_toplevel=name, hdl_toplevel_lang="verilog",
                    build_dir=build_dir, test_dir=run_dir, results_xml=str(results),
                    testcase=testcase, seed=seed, extra_env=env, plusargs=plusargs,
                    waves=waves, log_file=log)
    except SystemExit as exc:  # cocotb_tools reports failures under pytest by sys.exit()
        simulator_exit = exc.code
    except RuntimeError as exc:
        simulator_exit = str(exc)

    failed = _failures(results) if results.is_file() else [("(simulation)", "error",
                                                            "no results file written")]
    if failed or simulator_exit not in (None, 0):
        lines = [(f"cocotb {module_name} on {name} failed, seed {seed} "
                  f"(reproduce with {_SEED_ENV}={seed}); run dir {run_dir}")]
        lines += [f"  {test}: {kind}: {message}" for test, kind, message in failed]
        if not failed:
            lines.append(f"  simulator exit: {simulator_exit}")
        lines += ["--- tail of sim.log ---", _tail(log)]
        raise CocotbFailure("\n".join(lines))
    return run_dir


def test_params():
    """The ``params`` dict :func:`run_cocotb` was given, inside the cocotb testbench."""
    return json.loads(os.environ.get(_PARAMS_ENV, "{}"))


def test_seed():
    """The seed :func:`run_cocotb` printed, inside the cocotb testbench: seed the testbench's
    ``random.Random`` with it and name it in failure messages. (``cocotb.RANDOM_SEED`` is a
    per-test value derived from it, which does not reproduce the run by itself.)"""
    return int(os.environ[_RUN_SEED_ENV])


test_params.__test__ = test_seed.__test__ = False  # not pytest tests, despite their names
