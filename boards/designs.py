"""Which gateware a board build holds: the largest piece of the VTEP that exists.

The board top builds one *design*, chosen here in one place:

- ``pipeline``: ``hdl.pipeline.Pipeline`` (parser -> classifier -> editor with its table and
  counter port) behind ``hdl.bridge`` on the board UART, once those modules exist and match the
  adapter below;
- ``datapath``: ``hdl.datapath.Datapath`` (parser -> editor, the edit command riding along each
  frame), fed by an LFSR packet generator, its output folded into LEDs (and a UART status echo);
- ``fifo``: ``hdl.stream.PacketFifo`` in the same harness: the floor, for smoke tests.

``auto`` takes the first one available. The report says which one was built.
"""

import dataclasses
import importlib.util

__all__ = ["DESIGNS", "Design", "DesignUnavailable", "available_designs", "resolve_design"]


class DesignUnavailable(Exception):
    """The design cannot be built from this tree (its modules are missing or do not match)."""


@dataclasses.dataclass(frozen=True)
class Design:
    """A built design: ``component`` (a ``wiring.Component`` with packet streams ``i``/``o``
    and any number of plain output ports), a one-line ``description`` for the report, and the
    table geometry it holds (0 entries when it has no classifier)."""
    name: str
    description: str
    component: object
    exact_entries: int = 0
    wildcard_entries: int = 0
    uses_uart: bool = False


def _has_module(name):
    try:
        return importlib.util.find_spec(f"openvtep.hdl.{name}") is not None
    except ImportError:
        return False


def _pipeline(width, geometry, config):
    if not (_has_module("pipeline") and _has_module("bridge")):
        raise DesignUnavailable("hdl/pipeline.py and hdl/bridge.py do not exist yet")
    # TODO(#7): the adapter for the full pipeline + control bridge, once their interfaces land:
    # Pipeline(width, config, geometry=...) with its table/counter port on hdl.bus, and
    # ControlBridge on hdl.uart at the board UART.
    raise DesignUnavailable("hdl/pipeline.py exists, but boards/designs.py has no adapter for "
                            "its interface yet")


def _datapath(width, geometry, config):
    if not _has_module("datapath"):
        raise DesignUnavailable("hdl/datapath.py does not exist")
    from openvtep.hdl.datapath import Datapath
    frames = 16
    return Design("datapath",
                  f"hdl.datapath.Datapath (parser -> editor, frames={frames}, max_frame="
                  f"{config.max_frame}), W={width}; no classifier or control bridge yet: fed by "
                  f"an LFSR packet generator (random frames, commands, gaps, backpressure), "
                  f"outputs and drop counters folded into LEDs (and a UART status echo on "
                  f"boards with a free UART)",
                  Datapath(width, config, frames=frames))


def _fifo(width, geometry, config):
    from openvtep.hdl.stream import PacketFifo
    depth = 512
    return Design("fifo",
                  f"hdl.stream.PacketFifo (depth={depth}), W={width}, fed by an LFSR packet "
                  f"generator, output folded into LEDs (a smoke-test design, not the VTEP)",
                  PacketFifo(width, depth))


DESIGNS = {"pipeline": _pipeline, "datapath": _datapath, "fifo": _fifo}


def available_designs():
    return ("auto", *DESIGNS)


def resolve_design(name, width, geometry, config):
    """Build the design ``name`` (or the first available one for ``auto``); returns
    ``(Design, notes)`` where ``notes`` says why larger designs were skipped."""
    notes = []
    if name != "auto":
        if name not in DESIGNS:
            raise DesignUnavailable(f"unknown design {name!r}; choose one of: "
                                    f"{', '.join(available_designs())}")
        return DESIGNS[name](width, geometry, config), notes
    for candidate, factory in DESIGNS.items():
        try:
            return factory(width, geometry, config), notes
        except DesignUnavailable as exc:
            notes.append(f"{candidate}: {exc}")
    raise DesignUnavailable("no design can be built: " + "; ".join(notes))
