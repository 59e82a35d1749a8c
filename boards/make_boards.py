"""Build every board (two at a time) and write one summary table.

    python -m openvtep.boards.make_boards [--jobs 2] [--boards icebreaker,ulx3s] [--force]

Each board builds at its default width into ``build/<board>-w<W>/`` (cached: an unchanged
design is not rebuilt); the summary goes to ``build/boards-summary.md`` and stdout. Exit status
1 when any board failed (a tool error, or fmax below the target clock).
"""

import argparse
import concurrent.futures
import os
import sys
import time

from .boards import BOARDS, DEFAULT_BOARDS
from .build import BuildError, build, format_table, table_row

__all__ = ["build_all", "main"]

SUMMARY = os.path.join("build", "boards-summary.md")


def _echo(line):
    print(line, flush=True)


def _build_one(name, options, root):
    if root is not None:
        options = {**options, "out_dir": os.path.join(root, name)}
    try:
        report, code = build(name, echo=_echo, **options)
    except BuildError as exc:
        return name, None, str(exc)
    except Exception as exc:  # noqa: BLE001 (a bug, not a user mistake: build the others)
        import traceback
        traceback.print_exc()
        return name, None, f"internal error: {type(exc).__name__}: {exc}"
    return name, report, None if code == 0 else report["error"]


def build_all(boards=DEFAULT_BOARDS, *, jobs=2, summary=SUMMARY, root=None, echo=_echo,
              **options):
    """Build ``boards`` with ``jobs`` processes; write the summary; returns the exit status.
    Each board builds in ``build/<board>-w<W>``, or ``root/<board>`` if ``root`` is given;
    ``options`` go to :func:`openvtep.boards.build.build`."""
    started = time.monotonic()
    results = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_build_one, name, options, root) for name in boards]
        for future in concurrent.futures.as_completed(futures):
            name, report, error = future.result()
            results[name] = (report, error)
    rows, notes, designs, failed = [], [], {}, 0
    for name in boards:
        report, error = results[name]
        if report is not None:
            rows.append(table_row(report))
            designs.setdefault(report["design"], []).append(name)
        else:
            rows.append((name, "-", "-", "-", "-", "-", "-", "-", "error", "-"))
        if error:
            failed += 1
            notes.append(f"- {name}: FAILED: {error}")
        path = report and report.get("critical_path")
        if path:
            notes.append(f"- {name}: critical path {path['from']} -> {path['to']}, "
                         f"{path['logic_levels']} logic levels, {path['delay_ns']} ns")
    notes += ["", "Designs built:", ""]
    notes += [f"- {', '.join(names)}: {design}" for design, names in designs.items()]
    text = "\n".join([
        "# openvtep board builds",
        "",
        (f"Built {time.strftime('%Y-%m-%d %H:%M')} with `python -m openvtep.boards.make_boards`"
        f" ({len(boards)} boards, {jobs} jobs, {time.monotonic() - started:.0f} s). logic = "
        "iCE40 logic cells / ECP5 LUT4s, FF = flip-flops, BRAM = iCE40 4 kbit / ECP5 18 kbit "
        "blocks; fmax from nextpnr against the target clock; Gbps = fmax x W x 8. Per-board "
        "reports: build/<board>-w<W>/report.json."),
        "",
        format_table(rows, markdown=True),
        "",
        *notes,
        "",
    ])
    os.makedirs(os.path.dirname(summary) or ".", exist_ok=True)
    with open(summary, "w") as f:
        f.write(text)
    echo("")
    echo(format_table(rows))
    echo(f"summary: {summary}; {failed} of {len(boards)} board(s) failed")
    return 1 if failed else 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m openvtep.boards.make_boards",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Build every board (cached) and write build/boards-summary.md.")
    parser.add_argument("--boards", default=",".join(DEFAULT_BOARDS),
                        help=f"comma-separated boards, from: {', '.join(BOARDS)}")
    parser.add_argument("--jobs", type=int, default=2, help="builds at once")
    parser.add_argument("--toolchain", default="yowasp", choices=("yowasp", "system"))
    parser.add_argument("--design", default="auto")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    boards = [name.strip() for name in args.boards.split(",") if name.strip()]
    unknown = [name for name in boards if name not in BOARDS]
    if unknown:
        print(f"make_boards: error: unknown board(s) {', '.join(unknown)}; choose from: "
              f"{', '.join(BOARDS)}", file=sys.stderr)
        return 2
    return build_all(boards, jobs=args.jobs, toolchain=args.toolchain, design=args.design,
                     force=args.force)


if __name__ == "__main__":
    sys.exit(main())
