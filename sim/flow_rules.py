"""Random rule sets for the classifier and pipeline testbenches and the soak: rules of many
match shapes (so that some land in the exact table's profiles and some in the wildcard table),
with overlapping priorities, most of them built from the fields of the frames they are for so
that frames hit them, some from random values (misses).
"""

import random

import numpy as np

from ..addr import format_ipv4, format_mac
from ..errors import RuleError
from ..frames import FrameBatch
from ..headers import IPPROTO_TCP, IPPROTO_UDP, NO_VLAN, Port
from ..reference import parse
from ..rules import parse_rules
from ..tables import Geometry, compile_tables

__all__ = ["frame_fields", "random_ruleset", "ruleset_for"]

# Match shapes: each a tuple of field specs. "ip"/"l4"/"arp" add the prerequisites.
SHAPES = [
    ("in_port", "dl_dst"), ("tun_id", "dl_dst"), ("dl_dst",), ("in_port",), ("dl_vlan",),
    ("in_port", "dl_vlan"), ("ip", "nw_dst/24"), ("ip", "nw_src", "nw_dst"), ("l4", "tp_dst"),
    ("l4", "nw_dst", "tp_src"), ("tun_src", "tun_id"), ("dl_src/24",), ("arp",), ("dl_type",),
    ("in_port", "tun_id", "dl_vlan", "dl_type"),
]
PRIORITIES = [0, 5, 10, 10, 20, 100, 100, 1000, 32768, 65535]
ACTIONS = [
    "output:host", "output:net", "output:in_port", "controller", "drop",
    "mod_vlan_vid:7,output:host", "strip_vlan,output:net",
    "mod_dl_src:02:00:00:00:aa:01,mod_dl_dst:02:00:00:00:bb:02,output:in_port",
    "set_tunnel:77,set_field:198.18.0.9->tun_dst,output:net",
    "set_field:198.18.0.7->tun_dst,output:net", "strip_vlan,mod_vlan_vid:100,output:host",
]
REDRAWS = 8
PUNT_ACTIONS = ["output:host,controller",
                "controller,set_tunnel:5,set_field:198.18.0.5->tun_dst,output:net"]


def frame_fields(frames, config):
    """Per frame (not dropped by the parser) the reference's match fields as dicts."""
    batch = frames if isinstance(frames, FrameBatch) else FrameBatch.from_frames(frames)
    parsed = parse(batch, config)
    names = ["in_port", "tun_id", "tun_src", "dl_dst", "dl_src", "dl_vlan", "dl_type",
             "has_ip", "nw_src", "nw_dst", "nw_proto", "has_l4", "tp_src", "tp_dst"]
    cols = {n: np.asarray(getattr(parsed, n)).astype(np.int64).tolist() for n in names}
    return [{n: cols[n][i] for n in names} for i in range(len(batch)) if parsed.drop[i] < 0]


def _spec_text(spec, f, rng):
    """The match text of one field spec, from frame fields ``f`` (or random values)."""
    if spec == "in_port":
        return f"in_port={Port(f['in_port']).label}"
    if spec in ("dl_dst", "dl_src/24"):
        name = spec[:6]
        text = f"{name}={format_mac(f[name])}"
        return text + "/ff:ff:ff:00:00:00" if spec.endswith("/24") else text
    if spec == "dl_vlan":
        return f"dl_vlan={f['dl_vlan']}" if f["dl_vlan"] != NO_VLAN else "dl_vlan=0xffff"
    if spec == "dl_type":
        return f"dl_type=0x{f['dl_type']:04x}"
    if spec == "tun_id":
        return f"tun_id={f['tun_id']}"
    if spec == "tun_src":
        return f"tun_src={format_ipv4(f['tun_src'])}"
    if spec.startswith(("nw_src", "nw_dst")):
        name, _, prefix = spec.partition("/")
        return f"{name}={format_ipv4(f[name])}" + (f"/{prefix}" if prefix else "")
    if spec in ("tp_src", "tp_dst"):
        return f"{spec}={f[spec]}"
    raise ValueError(spec)


def _random_fields(rng):
    return {"in_port": rng.randrange(2), "tun_id": rng.getrandbits(24),
            "tun_src": rng.getrandbits(32), "dl_dst": rng.getrandbits(48) & ~(1 << 40),
            "dl_src": rng.getrandbits(48), "dl_vlan": rng.choice([NO_VLAN, rng.randrange(4096)]),
            "dl_type": rng.choice([0x0800, 0x0806, 0x86DD, 0x1234]), "has_ip": 1,
            "nw_src": rng.getrandbits(32), "nw_dst": rng.getrandbits(32),
            "nw_proto": rng.choice([IPPROTO_TCP, IPPROTO_UDP]), "has_l4": 1,
            "tp_src": rng.getrandbits(16), "tp_dst": rng.getrandbits(16)}


def _rule(rng, shape, fields, actions, hit_rate, priority=None):
    need_ip = "ip" in shape or "l4" in shape
    pool = [f for f in fields if (f["has_ip"] or not need_ip) and (f["has_l4"] or "l4" not in shape)
            and (f["dl_type"] == 0x0806 or "arp" not in shape)]
    f = rng.choice(pool) if pool and rng.random() < hit_rate else _random_fields(rng)
    parts = [f"priority={rng.choice(PRIORITIES) if priority is None else priority}"]
    for spec in shape:
        if spec == "ip":
            parts.append("ip")
        elif spec == "arp":
            parts.append("arp")
        elif spec == "l4":
            parts.append("tcp" if f["nw_proto"] == IPPROTO_TCP else "udp")
        else:
            parts.append(_spec_text(spec, f, rng))
    return ",".join(parts) + ",actions=" + rng.choice(actions)


def random_ruleset(rng, fields, count, *, geometry=None, punt=False):
    """A RuleSet of ``count`` rules (one more with a catch-all) over frame ``fields`` (from
    :func:`frame_fields`) that ``geometry`` holds. A rule that repeats an earlier one's priority
    and match is drawn again from random values and any priority (a shape with few values, such
    as ``in_port``, would otherwise run out), and dropped after ``REDRAWS`` tries."""
    geometry = Geometry() if geometry is None else geometry
    actions = ACTIONS + (PUNT_ACTIONS if punt else [])
    shapes = rng.sample(SHAPES, len(SHAPES))
    main, minor = shapes[:geometry.exact_profiles], shapes[geometry.exact_profiles:]
    minor = minor[:rng.randint(0, 6)]
    n_minor = min(3 * len(minor), count // 3)
    plan = [rng.choice(minor) for _ in range(n_minor)] if minor else []
    plan += [main[k % len(main)] for k in range(count - len(plan))]
    rng.shuffle(plan)
    if rng.random() < 0.3:
        plan.append(())  # a catch-all (OpenFlow's usual priority=0 rule), else misses
    hit_rate = min(0.8, 4 * len(fields) / max(count, 1))
    lines, seen = [], set()
    for shape in plan:
        for attempt in range(REDRAWS):
            line = (_rule(rng, shape, fields, actions, hit_rate) if attempt == 0 else
                    _rule(rng, shape, fields, actions, 0.0, priority=rng.randrange(65536)))
            key = line.split(",actions=")[0]
            if key not in seen:
                seen.add(key)
                lines.append(line)
                break
    ruleset = parse_rules("\n".join(lines), "random.rules")
    compile_tables(ruleset, geometry)  # raises RuleError if the hardware cannot hold it
    return ruleset


def ruleset_for(seed, fields, count, *, geometry=None, punt=False, tries=20):
    """:func:`random_ruleset` with a fresh draw when one does not fit ``geometry``."""
    rng = random.Random(seed)
    for _ in range(tries):
        try:
            return random_ruleset(rng, fields, count, geometry=geometry, punt=punt)
        except RuleError:
            continue
    raise AssertionError(f"seed {seed}: no rule set of {count} rules fits {geometry}")
