"""The VTEP as the host sees it: rules, counters and frames of a device running
:class:`openvtep.hdl.top.VtepTop` (a board, or the virtual board), over
:class:`openvtep.driver.Device`.

    vtep = Vtep(Device(url))
    vtep.load_rules(load_rules("examples/rules.txt"))   # compile, write, read back
    vtep.inject("host", frame)
    vtep.capture(timeout=1.0)                           # [(Port, bytes), ...]
    vtep.counters()                                     # the stats.json dictionary
    print("\\n".join(vtep.dump_rules()))

Tables are loaded with exactly the writes of :func:`openvtep.regmap.table_writes` and then
read back entry by entry: a load returns only once the device holds what was compiled. A rule
set the tables cannot hold is refused by the compiler with a :class:`RuleError` naming the
rule, before anything is written.

Counters only go up, as a switch operator expects (SNMP's Counter64): :meth:`Vtep.counters`
keeps every raw reading. A hardware counter narrower than 64 bits (the 32-bit drop counters)
that reads lower than before has wrapped: the wrap is counted and the value extended
(``Vtep.counter_wraps``), exact as long as it is read at least once per wrap (2**32 frames:
about 4.5 minutes of minimum-size frames at 125 MHz x 8 bytes). A 64-bit counter that reads
lower cannot have wrapped: the device was reset or its counters cleared by someone else, and
:class:`CounterReset` says which counters went back.
"""

import time

from . import regmap as rm
from .driver import DeviceError
from .headers import DropReason, Port
from .tables import BANKS, KEY_BITS, SLOTS, Geometry, compile_tables

__all__ = ["COUNTER_BITS", "CounterReset", "CounterTracker", "Vtep", "VtepError",
           "format_dump"]

# Where VtepTop puts things on the bridge's bus (see openvtep.hdl.top; repeated here so the
# host does not import the gateware).
PIPELINE_BASE = 0x000000
TOP_BASE = 0x010000
TOP_ID = 0x0E7E_7001
TOP_TABLES = TOP_BASE + 5     # written after a load; reset clears it
LOADED_MARK = 0x4C4F4144      # "LOAD"
# Staging words the classifier implements: as many as its widest entry (an exact row).
STAGING_USED = -(-max(SLOTS * rm.layout_bits(rm.EXACT_ENTRY), rm.layout_bits(rm.WILDCARD_ENTRY),
                      KEY_BITS, rm.layout_bits(rm.action_layout()),
                      rm.layout_bits(rm.COUNTER_ENTRY)) // 32)


# Widths of VtepTop's hardware counters: per-port and per-rule counters are 64-bit
# (hdl.bus.CounterBlock, the classifier's counter table), the editor's drop counters 32-bit.
COUNTER_BITS = {"ports": 64, "rules": 64, "drops": 32}


class VtepError(DeviceError):
    """The device is not a VTEP top, or its tables do not hold what was loaded."""


class CounterReset(VtepError):
    """Counters read lower than before without a clear from this session: the device was
    reset or cleared by someone else. ``counters`` names them (``ports.net.rx_bytes``, ...);
    ``stats`` is the reading, counted from the reset on, as later readings will be."""

    def __init__(self, url, counters, stats, detail):
        self.counters = counters
        self.stats = stats
        super().__init__(url, "counters", f"{len(counters)} counter(s) went back without a "
                         f"clear from this session (device reset or cleared elsewhere): "
                         f"{detail}")


class CounterTracker:
    """The last raw reading of every counter, to extend counters narrower than 64 bits over
    their wraps and to notice counters that go back.

    ``update(readings)`` takes ``{name: (raw, bits)}`` and returns ``({name: extended},
    went_back)``: a counter that reads lower than last time has wrapped if it is narrower
    than 64 bits (``wraps[name]`` counts it, the value is extended by ``wraps << bits``); a
    64-bit one cannot wrap, so it is listed in ``went_back`` with its two readings. If any
    64-bit counter went back, the device was reset: the narrow ones that went back with it
    are not wraps, and every counter starts over from this reading."""

    def __init__(self):
        self.last = {}
        self.wraps = {}

    def forget(self, names=None):
        """Start ``names`` (default: all) over, e.g. after clearing them."""
        for name in list(self.last) if names is None else names:
            self.last.pop(name, None)
            self.wraps.pop(name, None)

    def update(self, readings):
        went_back = [(name, self.last[name], raw) for name, (raw, bits) in readings.items()
                     if name in self.last and raw < self.last[name] and bits >= 64]
        if went_back:
            self.forget(readings)
        for name, (raw, bits) in readings.items():
            if name in self.last and raw < self.last[name]:
                self.wraps[name] = self.wraps.get(name, 0) + 1
            self.last[name] = raw
        return ({name: self.wraps.get(name, 0) << bits | raw
                 for name, (raw, bits) in readings.items()}, went_back)


def _words(value, bits):
    return [(value >> (32 * k)) & 0xFFFFFFFF for k in range(-(-bits // 32))]


def format_dump(stats):
    """``ovs-ofctl dump-flows``-like lines from a stats dictionary's ``rules`` (file order)."""
    return [f"n_packets={r['n_packets']}, n_bytes={r['n_bytes']}, {r['rule']}"
            for r in stats["rules"]]


class Vtep:
    """A VTEP device behind ``device`` (an open :class:`openvtep.driver.Device`).

    ``progress``: a callable taking a message string (e.g. ``print``), or None.
    ``counter_bits``: widths of the device's counters, if not :data:`COUNTER_BITS` (a
    build with narrower counters).
    """

    def __init__(self, device, *, progress=None, counter_bits=None):
        self.device = device
        self.progress = progress
        self.counter_bits = {**COUNTER_BITS, **(counter_bits or {})}
        self._tracker = CounterTracker()
        top_id = self._read(TOP_BASE)
        if top_id != TOP_ID:
            raise VtepError(device.url, "identify", f"not an openvtep VTEP top (id word "
                            f"{top_id:#010x}, expected {TOP_ID:#010x})")
        word = self._read(PIPELINE_BASE + rm.GEOMETRY)
        self.geometry = Geometry(
            exact_entries=BANKS * SLOTS << (word & 0x1F),
            exact_profiles=(word >> 8) & 0xF,
            wildcard_entries=word >> 16,
            hash_seeds=(word >> 12) & 0xF)
        self.ruleset = None
        self.image = None
        self.stats = {"load_writes": 0, "verify_entries": 0}
        # Extended drop counts at the last clear: the drop counters cannot be written.
        self._drops_base = {reason: 0 for reason in DropReason}
        # Rule indices whose counters may be nonzero: unknown (all) until this session loads.
        self._used_indices = self.geometry.rules

    # --- Helpers --------------------------------------------------------------------------

    def _read(self, addr):
        return self.device.read(addr)

    def _say(self, message):
        if self.progress is not None:
            self.progress(message)

    def read_entry(self, table, index, bits):
        """One table entry's value (``bits`` wide) through the staging buffer."""
        self.device.write(PIPELINE_BASE + rm.COMMAND, rm.command(rm.OP_READ, table, index))
        words = self.device.read_block(PIPELINE_BASE + rm.STAGING, -(-bits // 32))
        return sum(w << (32 * k) for k, w in enumerate(words))

    # --- Rules ----------------------------------------------------------------------------

    def load_writes(self, image):
        """The ``(address, word)`` writes that replace whatever the device holds with
        ``image``: the staging buffer zeroed, entries of the previous image that the new one
        does not overwrite cleared, then :func:`openvtep.regmap.table_writes`."""
        known_fresh = self.image is None and self._read(TOP_TABLES) != LOADED_MARK
        if known_fresh:
            self._used_indices = 0  # reset contents: every rule counter is zero
        if self.image is None and not known_fresh:
            # Another session loaded tables we do not know: rewrite every entry.
            writes = rm.table_writes(image, fresh=False, clear_counters=True)
        else:
            writes = rm.table_writes(image, fresh=True)
            if self.image is not None:
                # Counters of the rule indices earlier images used (the others still hold
                # their reset zeros), with the staging buffer zeroed just before.
                clear = [(rm.COMMAND, rm.command(rm.OP_WRITE, rm.TABLE_COUNTER, index))
                         for index in range(min(self._used_indices, len(image.rules)))]
                writes = writes[:1] + clear + self._stale_writes(self.image, image) + writes[1:]
        staging = [(PIPELINE_BASE + rm.STAGING + k, 0) for k in range(STAGING_USED)]
        return staging + [(PIPELINE_BASE + a, w) for a, w in writes]

    @staticmethod
    def _stale_writes(old, new):
        writes = []
        new_rows = {(b, k) for b, k, _ in new.exact}
        for bank, bucket in sorted({(b, k) for b, k, _ in old.exact} - new_rows):
            writes += rm.entry_writes(rm.TABLE_EXACT, bank << rm.BANK_SHIFT | bucket,
                                      (("row", SLOTS * rm.layout_bits(rm.EXACT_ENTRY)),), {})
        for position in range(len(new.wildcard), len(old.wildcard)):
            writes += rm.entry_writes(rm.TABLE_WILDCARD, position, rm.WILDCARD_ENTRY, {})
        return writes

    def expected_entries(self, image):
        """``[(table, index, value, bits)]``: what the tables must hold for ``image``."""
        out = [(rm.TABLE_PROFILE, p, mask, KEY_BITS) for p, mask in enumerate(image.profiles)]
        wildcard = sorted(image.wildcard, key=lambda entry: entry[2])
        for position, (value, mask, index) in enumerate(wildcard):
            out.append((rm.TABLE_WILDCARD, position, rm.pack_fields(rm.WILDCARD_ENTRY, {
                "valid": 1, "index": index, "value": value, "mask": mask}),
                rm.layout_bits(rm.WILDCARD_ENTRY)))
        entry_bits = rm.layout_bits(rm.EXACT_ENTRY)
        rows = {}
        for (bank, bucket, slot), (profile, key, index) in image.exact.items():
            entry = rm.pack_fields(rm.EXACT_ENTRY, {"valid": 1, "profile": profile, "key": key,
                                                     "index": index})
            rows[bank, bucket] = rows.get((bank, bucket), 0) | entry << (slot * entry_bits)
        for (bank, bucket), row in sorted(rows.items()):
            out.append((rm.TABLE_EXACT, bank << rm.BANK_SHIFT | bucket, row, SLOTS * entry_bits))
        layout = rm.action_layout()
        for index, action in enumerate(image.actions):
            out.append((rm.TABLE_ACTION, index, rm.pack_fields(layout, rm.action_fields(action)),
                        rm.layout_bits(layout)))
        return out

    def compile(self, ruleset):
        """The TableImage of ``ruleset`` for this device's geometry (RuleError if it does not
        fit)."""
        return compile_tables(ruleset, self.geometry)

    def load_rules(self, ruleset, *, verify=True):
        """Compile ``ruleset``, write it and (``verify``) read every entry back. Returns the
        TableImage. Raises RuleError (naming the rule) if it does not fit, VtepError if the
        read-back differs."""
        image = self.compile(ruleset)
        writes = self.load_writes(image)
        self._say(f"loading {len(ruleset)} rules: {len(writes)} words")
        self.device.write_batch(writes)
        self.device.write(TOP_TABLES, LOADED_MARK)
        self._tracker.forget([n for n in self._tracker.last if n.startswith("rules.")])
        self._used_indices = max(self._used_indices, len(image.rules))
        self.stats["load_writes"] += len(writes)
        self.image, self.ruleset = image, ruleset
        if verify:
            self.verify(image)
        return image

    def verify(self, image=None):
        """Read back every entry of ``image`` (default: the loaded one); raise VtepError on
        the first difference."""
        image = self.image if image is None else image
        entries = self.expected_entries(image)
        self._say(f"verifying {len(entries)} table entries")
        names = {rm.TABLE_PROFILE: "profile", rm.TABLE_WILDCARD: "wildcard",
                 rm.TABLE_EXACT: "exact", rm.TABLE_ACTION: "action"}
        for table, index, value, bits in entries:
            got = self.read_entry(table, index, bits) & ((1 << bits) - 1)
            self.stats["verify_entries"] += 1
            if got != value:
                raise VtepError(self.device.url, "verify", (
                    f"{names[table]} table entry {index:#x} reads back {got:#x}, "
                    f"expected {value:#x}"))
        config = self._read(PIPELINE_BASE + rm.CONFIG)
        if config != rm.config_word(len(image.profiles), image.seed):
            raise VtepError(self.device.url, "verify", f"CONFIG reads {config:#x}")
        return len(entries)

    # --- Counters -------------------------------------------------------------------------

    @property
    def counter_wraps(self):
        """``{counter name: wraps}`` of the narrow counters that wrapped and were extended."""
        return dict(self._tracker.wraps)

    def clear_counters(self):
        """Zero the rule and port counters; the drop counters (read-only in the gateware)
        count on, so :meth:`counters` reports them from here on."""
        writes = [(PIPELINE_BASE + rm.STAGING + k, 0) for k in range(4)]
        for index in range(len(self.image.rules) if self.image else 0):
            writes.append((PIPELINE_BASE + rm.COMMAND,
                           rm.command(rm.OP_WRITE, rm.TABLE_COUNTER, index)))
        for port in Port:
            for name in rm.PORT_COUNTERS:
                writes.append((PIPELINE_BASE + rm.port_counter_address(port, name), 0))
        self.device.write_batch(writes)
        self._tracker.forget([n for n in self._tracker.last if not n.startswith("drops.")])
        drops = self._extend(self._raw_readings(rules=False))[0]
        self._drops_base = {reason: drops[f"drops.{reason.label}"] for reason in DropReason}

    def _raw_readings(self, rules=True):
        """``{name: (raw value, bits)}`` of every counter (the rules' if ``rules`` and a rule
        set is loaded); names as in :class:`CounterReset`."""
        bits = self.counter_bits
        values = self.device.read_counters(PIPELINE_BASE + rm.PORTS, len(Port) * 4)
        out = {f"ports.{port.label}.{name}": (values[4 * port + c], bits["ports"])
               for port in Port for c, name in enumerate(rm.PORT_COUNTERS)}
        words = self.device.read_block(PIPELINE_BASE + rm.DROPS, len(DropReason))
        out.update({f"drops.{reason.label}": (words[reason], bits["drops"])
                    for reason in DropReason})
        if rules and self.image is not None:
            entry_bits = rm.layout_bits(rm.COUNTER_ENTRY)
            for index, rule in enumerate(self.image.rules):
                entry = rm.unpack_fields(rm.COUNTER_ENTRY,
                                         self.read_entry(rm.TABLE_COUNTER, index, entry_bits))
                out[f"rules.{rule.line}.n_packets"] = (entry["packets"], bits["rules"])
                out[f"rules.{rule.line}.n_bytes"] = (entry["bytes"], bits["rules"])
        return out

    def _extend(self, readings):
        values, went_back = self._tracker.update(readings)
        if went_back:
            self._drops_base = {reason: 0 for reason in DropReason}
        return values, went_back

    def counters(self):
        """The stats.json dictionary: ``rules`` (file order, with line and text; by hardware
        index if no rule set was loaded in this session), ``ports``, ``drops``.

        Narrow counters are extended over their wraps (:attr:`counter_wraps`); a counter that
        went back without a clear from this session raises :class:`CounterReset` (naming it,
        with this reading; the next one counts from the reset)."""
        values, went_back = self._extend(self._raw_readings())
        ports = {port.label: {name: values[f"ports.{port.label}.{name}"]
                              for name in rm.PORT_COUNTERS} for port in Port}
        drops = {reason.label: values[f"drops.{reason.label}"] - self._drops_base[reason]
                 for reason in DropReason}
        rules = [{"line": r.line, "rule": r.text, "n_packets": values[f"rules.{r.line}.n_packets"],
                  "n_bytes": values[f"rules.{r.line}.n_bytes"]}
                 for r in (self.ruleset if self.image is not None else ())]
        stats = {"rules": rules, "ports": ports, "drops": drops}
        if went_back:
            raise CounterReset(self.device.url, [name for name, _, _ in went_back], stats,
                               ", ".join(f"{name} from {old} to {new}"
                                         for name, old, new in went_back[:4]))
        return stats

    def dump_rules(self, stats=None):
        """The loaded rules, ``ovs-ofctl dump-flows`` style, with their counters."""
        if self.image is None:
            raise VtepError(self.device.url, "dump", "no rule set loaded in this session")
        return format_dump(stats or self.counters())

    # --- Frames ---------------------------------------------------------------------------

    def inject(self, port, frame):
        """Send ``frame`` into the pipeline as if it arrived on ``port`` (host or net)."""
        self.device.inject(port, frame)

    def capture(self, count=None, timeout=0.0):
        """Captured frames ``[(Port, bytes)]``: up to ``count`` (all waiting if None), waiting
        up to ``timeout`` seconds in all for them (for the first one if ``count`` is None)."""
        frames = []
        deadline = time.monotonic() + timeout
        while count is None or len(frames) < count:
            left = max(0.0, deadline - time.monotonic())
            got = self.device.capture(left if (count is not None or not frames) else 0.0)
            if got is None:
                break
            frames.append(got)
        return frames

    def exchange(self, frames, *, expected=None, settle=1.0, timeout=60.0):
        """Inject ``frames`` (``(port, bytes)`` pairs, in order) and capture everything they
        produce; returns the captured ``[(Port, bytes)]`` in capture order.

        Captures are drained after every inject, so the capture FIFO never backs up into the
        pipeline. Afterwards waits for ``expected`` frames in all (if given; up to
        ``timeout`` seconds), then until ``settle`` seconds pass without a new frame."""
        out = []
        total = len(frames)
        for n, (port, frame) in enumerate(frames, 1):
            self.inject(port, frame)
            out += self.capture()
            self._say(f"injected {n}/{total}, captured {len(out)}")
        deadline = time.monotonic() + timeout
        while expected is not None and len(out) < expected and time.monotonic() < deadline:
            out += self.capture(count=expected - len(out),
                                timeout=min(settle, deadline - time.monotonic()))
        while True:
            more = self.capture(timeout=settle)
            if not more:
                break
            out += more
        self._say(f"captured {len(out)} frames")
        return out



# --- Sessions and comparisons (the CLI and the HIL tests) ------------------------------------

SIM_TIMEOUT = 8.0  # seconds before the driver retransmits to a virtual board (a slow simulator)


class Session:
    """A :class:`Vtep` on ``url``, or (``url`` None) on a virtual board serving
    :class:`openvtep.hdl.top.VtepTop` built with ``config``, started for the session and
    stopped at its end. A context manager; ``board`` is the virtual board (or None)."""

    def __init__(self, url=None, *, config=None, width=8, geometry=None, progress=None,
                 simulator="icarus"):
        self.board = None
        self.progress = progress
        if url is None:
            from .sim.virtual_board import serve
            if config is None:
                raise ValueError("a virtual board needs a config to build its gateware")
            if progress:
                progress(f"starting a virtual board (VtepTop W={width}, {simulator}; the first "
                         f"start builds the gateware, a few minutes)")
            self.board = serve(lambda: _vtep_top(width, config, geometry), simulator=simulator)
            url = self.board.url
        self.url = url
        # A socket or pty is (nearly always) a virtual board: slow to answer a full batch.
        virtual = self.board is not None or url.startswith(("socket://", "/dev/pts/"))
        timeout = SIM_TIMEOUT if virtual else 1.0
        from .driver import Device
        try:
            self.device = Device(url, timeout=timeout, retries=3)
            self.vtep = Vtep(self.device, progress=progress)
        except BaseException:
            self.close()
            raise

    def close(self):
        device = getattr(self, "device", None)
        if device is not None:
            device.close()
            self.device = None
        if self.board is not None:
            board, self.board = self.board, None
            board.stop()

    def __enter__(self):
        return self.vtep

    def __exit__(self, *exc):
        self.close()


def _vtep_top(width, config, geometry):
    from .hdl.top import VtepTop
    return VtepTop(width, config, geometry)


def split_ports(frames):
    """``[(Port, bytes)]`` -> ``{Port: [bytes]}`` (every port present)."""
    out = {port: [] for port in Port}
    for port, frame in frames:
        out[Port(port)].append(bytes(frame))
    return out


def compare(expected, got, expected_stats, stats):
    """Compare per-port frame lists (``{Port: [bytes]}``) and counters (stats dictionaries);
    returns ``(ok, report lines)``."""
    from .sim.stream import hexdiff
    ok = True
    lines = [f"{'port':<11}{'frames':>7}{'bytes':>8}  result"]
    for port in Port:
        want, have = expected[port], got[port]
        nbytes = sum(len(f) for f in have)
        if want == have:
            lines.append(f"{port.label:<11}{len(have):>7}{nbytes:>8}  equal")
            continue
        ok = False
        index = next((k for k, (a, b) in enumerate(zip(want, have)) if a != b),
                     min(len(want), len(have)))
        lines.append(f"{port.label:<11}{len(have):>7}{nbytes:>8}  DIFFERENT: expected "
                     f"{len(want)} frames ({sum(len(f) for f in want)} bytes); first difference"
                     f" at frame {index}")
        a = want[index] if index < len(want) else b""
        b = have[index] if index < len(have) else b""
        lines += [f"  frame {index}: " + row if k == 0 else "  " + row
                  for k, row in enumerate(hexdiff(a, b).splitlines())]
    bad = []
    for kind in ("ports", "drops"):
        for name, values in expected_stats[kind].items():
            if isinstance(values, dict):
                for counter, value in values.items():
                    if stats[kind][name][counter] != value:
                        bad.append(f"{name}.{counter}: expected {value}, got "
                                   f"{stats[kind][name][counter]}")
            elif stats[kind][name] != values:
                bad.append(f"drops.{name}: expected {values}, got {stats[kind][name]}")
    got_rules = {r["line"]: r for r in stats["rules"]}
    for r in expected_stats["rules"]:
        have = got_rules.get(r["line"], {})
        for counter in ("n_packets", "n_bytes"):
            if have.get(counter) != r[counter]:
                bad.append(f"rule line {r['line']} {counter}: expected {r[counter]}, got "
                           f"{have.get(counter)}")
    n = (sum(len(v) for v in expected_stats["ports"].values()) +
         len(expected_stats["drops"]) + 2 * len(expected_stats["rules"]))
    if bad:
        ok = False
        lines.append(f"counters: {len(bad)} of {n} differ:")
        lines += ["  " + line for line in bad]
    else:
        lines.append(f"counters: all {n} equal (ports, drops, rules)")
    return ok, lines


def run_example(args, session):
    """``openvtep run`` on a device: load ``args.rules``, inject ``args.host_pcap`` and
    ``args.net_pcap`` (merged by timestamp), capture, read counters, compare with the reference
    model; print a report; return the exit status (1 on any difference)."""
    import types

    from .config import load_config
    from .frames import FrameBatch, merge_inputs, read_pcap
    from .reference import Reference
    from .replay import write_results
    from .rules import load_rules

    started = time.perf_counter()
    config = load_config(args.config)
    ruleset = load_rules(args.rules)
    frames = merge_inputs([read_pcap(args.host_pcap, Port.HOST),
                           read_pcap(args.net_pcap, Port.NET)])
    reference = Reference(config, ruleset).run(frames)
    expected = {port: reference.outputs[port].frames() for port in Port}
    where = "a virtual board (VtepTop simulated on Icarus Verilog)" if args.port is None \
        else args.port
    print(f"openvtep run: {len(ruleset)} rules from {args.rules}, {len(frames)} frames from "
          f"{args.host_pcap} and {args.net_pcap}, on {where}")
    print("  one board session without an Ethernet PHY: host and net frames are injected "
          "through the control bridge and every output frame is captured through it", flush=True)
    pairs = [(Port(int(port)), frame) for port, frame in zip(frames.port, frames.frames())]
    sess = session(args, config)
    with sess as vtep:
        setup = time.perf_counter()
        vtep.load_rules(ruleset)
        vtep.clear_counters()
        loaded = time.perf_counter()
        total = sum(len(v) for v in expected.values())
        captured = vtep.exchange(pairs, expected=total)
        vtep._say("reading counters")
        stats = vtep.counters()
        done = time.perf_counter()
    got = split_ports(captured)
    ok, lines = compare(expected, got, reference.stats, stats)
    print("\n".join(lines))
    result = types.SimpleNamespace(stats=stats, outputs={
        port: FrameBatch.from_frames(got[port], port=port) if got[port] else FrameBatch.empty()
        for port in Port})
    write_results(result, args.out)
    print(f"captured pcaps and stats.json in {args.out}")
    print(f"time: {done - started:.1f} s (board start {setup - started:.1f} s, rules "
          f"{loaded - setup:.1f} s, traffic and counters {done - loaded:.1f} s)")
    print("PASS: every frame and counter equals the reference model" if ok else
          "FAIL: the device differs from the reference model")
    return 0 if ok else 1
