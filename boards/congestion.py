"""Where a placed design's wires go: which modules a failing route should be blamed on.

    python -m openvtep.boards.congestion build/ulx3s-w4/placed.json [--depth 4] [--top 15]

Reads the JSON nextpnr writes after placement (``nextpnr-ecp5 ... --no-route --write
placed.json``: every cell with its ``NEXTPNR_BEL``) and prints two tables:

- **wire length by module**: each net's half-perimeter wire length (HPWL: the width plus the
  height of the box around its cells, in tiles), charged to the module of the cell that drives
  it (the first ``depth`` parts of the cell's hierarchical name);
- **the hottest tile**: a RUDY estimate (rectangular uniform wire density: each net spreads
  ``(w + h) / (w * h)`` of demand over every tile of its ``w x h`` box), the tiles with the
  most demand, and which modules' nets cross the hottest one.

A net whose cells all share one tile needs no routing between tiles and counts for nothing.
"""

import argparse
import collections
import dataclasses
import json
import re
import sys

__all__ = ["Net", "hot_spot", "load_nets", "main", "module_of", "wire_length"]

_BEL = re.compile(r"X(\d+)/Y(\d+)/")
# Suffixes yosys and nextpnr add to a net's name for the cells they make of it.
_CELL_SUFFIX = re.compile(r"_(TRELLIS|LUT4|PFUMX|L6MUX21|CCU2C|DP16KD|DPR16X4|SB_|ICESTORM).*")


@dataclasses.dataclass(frozen=True)
class Net:
    driver: str          # the driving cell's name
    box: tuple           # (x0, y0, x1, y1), tiles, inclusive

    @property
    def hpwl(self):
        x0, y0, x1, y1 = self.box
        return (x1 - x0) + (y1 - y0)


def module_of(cell, depth):
    """The first ``depth`` dotted parts of ``cell``'s name, without the tools' suffixes."""
    return ".".join(_CELL_SUFFIX.sub("", cell).split(".")[:depth])


def load_nets(design):
    """The nets (with a placed driver and at least one placed sink) of a nextpnr JSON design
    (the parsed dict)."""
    modules = design.get("modules") or {}
    if len(modules) != 1:
        raise ValueError(f"expected one flattened top module, found {len(modules)}")
    cells = next(iter(modules.values()))["cells"]
    where, driver, sinks = {}, {}, collections.defaultdict(list)
    for name, cell in cells.items():
        match = _BEL.match(cell.get("attributes", {}).get("NEXTPNR_BEL", ""))
        if not match:
            continue
        where[name] = (int(match.group(1)), int(match.group(2)))
        directions = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            for bit in bits:
                if isinstance(bit, int):
                    if directions.get(port) == "output":
                        driver[bit] = name
                    else:
                        sinks[bit].append(name)
    if not where:
        raise ValueError("no placed cells (NEXTPNR_BEL): write the JSON after placement")
    nets = []
    for bit, name in driver.items():
        points = [where[name]] + [where[s] for s in sinks.get(bit, ())]
        if len(points) < 2:
            continue
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        nets.append(Net(name, (min(xs), min(ys), max(xs), max(ys))))
    return nets


def wire_length(nets, depth):
    """``[(module, hpwl, nets)]``, most wire first."""
    length, count = collections.Counter(), collections.Counter()
    for net in nets:
        module = module_of(net.driver, depth)
        length[module] += net.hpwl
        count[module] += 1
    return [(module, hpwl, count[module]) for module, hpwl in length.most_common()]


def _share(box):
    x0, y0, x1, y1 = box
    w, h = x1 - x0 + 1, y1 - y0 + 1
    return 0.0 if w * h == 1 else (w + h) / (w * h)


def hot_spot(nets, depth, tiles=5):
    """``(hottest, by_module, median)``: the ``tiles`` tiles with most RUDY demand as
    ``[(x, y, demand)]``, the demand of the nets crossing the hottest one by driving module
    (``[(module, demand)]``, most first), and the median demand of tiles with any."""
    boxes = [(net, _share(net.box)) for net in nets]
    boxes = [(net, share) for net, share in boxes if share]
    if not boxes:
        return [], [], 0.0
    width = max(net.box[2] for net, _ in boxes) + 2
    height = max(net.box[3] for net, _ in boxes) + 2
    # Each box adds its share to every tile it covers: four corners of a difference array,
    # then prefix sums along both axes.
    grid = [[0.0] * height for _ in range(width)]
    for net, share in boxes:
        x0, y0, x1, y1 = net.box
        grid[x0][y0] += share
        grid[x1 + 1][y0] -= share
        grid[x0][y1 + 1] -= share
        grid[x1 + 1][y1 + 1] += share
    for x in range(width):
        column = grid[x]
        for y in range(1, height):
            column[y] += column[y - 1]
    for x in range(1, width):
        column, left = grid[x], grid[x - 1]
        for y in range(height):
            column[y] += left[y]
    demand = {(x, y): grid[x][y] for x in range(width) for y in range(height)
              if grid[x][y] > 1e-9}
    ranked = sorted(demand.items(), key=lambda item: -item[1])[:tiles]
    hottest = [(x, y, d) for (x, y), d in ranked]
    hx, hy, _ = hottest[0]
    crossing = collections.Counter()
    for net, share in boxes:
        x0, y0, x1, y1 = net.box
        if x0 <= hx <= x1 and y0 <= hy <= y1:
            crossing[module_of(net.driver, depth)] += share
    values = sorted(demand.values())
    return hottest, crossing.most_common(), values[len(values) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m openvtep.boards.congestion",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Wire length by module and the hottest tile of a placed nextpnr design "
                    "(nextpnr ... --no-route --write placed.json).",
        epilog="example: python -m openvtep.boards.congestion build/ulx3s-w4/placed.json")
    parser.add_argument("placed", help="JSON written by nextpnr after placement")
    parser.add_argument("--depth", type=int, default=4,
                        help="name parts that make a module (dut.pipeline.classifier.bank0)")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    args = parser.parse_args(argv)
    try:
        with open(args.placed) as f:
            nets = load_nets(json.load(f))
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        print(f"congestion: error: {args.placed}: {exc}", file=sys.stderr)
        return 1
    lengths = wire_length(nets, args.depth)
    total = sum(hpwl for _, hpwl, _ in lengths) or 1
    print(f"{len(nets)} nets, {total} tiles of wire (HPWL)")
    print(f"{'HPWL':>9} {'share':>6} {'nets':>7}  module")
    for module, hpwl, count in lengths[:args.top]:
        print(f"{hpwl:9d} {100 * hpwl / total:5.1f}% {count:7d}  {module}")
    hottest, crossing, median = hot_spot(nets, args.depth)
    if hottest:
        print(f"hottest tiles (x, y, demand; median {median:.1f}): "
              + ", ".join(f"X{x}/Y{y} {d:.1f}" for x, y, d in hottest))
        total = sum(d for _, d in crossing) or 1
        print(f"nets crossing X{hottest[0][0]}/Y{hottest[0][1]}, by driving module:")
        for module, d in crossing[:args.top]:
            print(f"{d:9.1f} {100 * d / total:5.1f}%  {module}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
