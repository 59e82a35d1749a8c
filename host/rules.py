"""The flow-rule compiler: a subset of ``ovs-ofctl`` flow syntax, one rule a line.

    priority=100,in_port=host,dl_dst=02:00:00:00:00:02,actions=set_tunnel:42,set_field:198.18.0.2->tun_dst,output:net
    priority=0,actions=controller     # comments run to the end of the line

Match fields: ``in_port`` (host|net), ``dl_src``, ``dl_dst`` (MAC[/MASK]), ``dl_vlan`` (0..4095, or
0xffff for untagged), ``dl_type``, ``nw_src``, ``nw_dst`` (IP[/PREFIX|/MASK]), ``nw_proto``,
``tp_src``, ``tp_dst`` (N[/MASK]), ``tun_id`` (VNI[/MASK]), ``tun_src`` (IP[/PREFIX]);
shorthands ``ip``, ``udp``, ``tcp``, ``arp``. Prerequisites as in OVS (``nw_*`` need IPv4,
``tp_*`` need TCP or UDP); unlike ``ovs-ofctl``, which silently drops a field whose
prerequisite is missing, we refuse the rule.

Actions (applied in order, see docs/semantics.md): ``output:host|net|controller|in_port``,
``drop``, ``controller``, ``set_tunnel:VNI``, ``set_field:VNI->tun_id``,
``set_field:IP->tun_dst``, ``mod_vlan_vid:N``, ``strip_vlan``, ``mod_dl_src:MAC``,
``mod_dl_dst:MAC``.

Each rule compiles to its *emissions*: one per output, each saying how the frame leaves (port,
VLAN edit, MAC rewrites, tunnel). The reference model and the gateware both execute emissions.
"""

import dataclasses
import enum
import functools
import re

from .addr import format_ipv4, format_mac, parse_ipv4, parse_mac
from .errors import RuleError
from .headers import ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_TCP, IPPROTO_UDP, NO_VLAN, Port

__all__ = ["FIELDS", "Rule", "RuleSet", "Emission", "VlanOp", "parse_rules", "load_rules",
           "DEFAULT_PRIORITY"]

DEFAULT_PRIORITY = 32768
MAX_PRIORITY = 65535
MAX_VNI = 2**24 - 1

# Match fields in canonical order (the order ovs-ofctl prints them), with their widths in bits.
FIELDS = {
    "tun_id": 24, "tun_src": 32, "in_port": 2, "dl_vlan": 16, "dl_src": 48, "dl_dst": 48,
    "dl_type": 16, "nw_src": 32, "nw_dst": 32, "nw_proto": 8, "tp_src": 16, "tp_dst": 16,
}
SHORTHANDS = {
    "ip": {"dl_type": ETHERTYPE_IPV4},
    "arp": {"dl_type": ETHERTYPE_ARP},
    "tcp": {"dl_type": ETHERTYPE_IPV4, "nw_proto": IPPROTO_TCP},
    "udp": {"dl_type": ETHERTYPE_IPV4, "nw_proto": IPPROTO_UDP},
}
_IN_PORTS = {"host": Port.HOST, "net": Port.NET}
_OUT_PORTS = {"host": Port.HOST, "net": Port.NET, "controller": Port.CONTROLLER,
              "in_port": None}


class VlanOp(enum.IntEnum):
    """The net effect of a rule's VLAN actions on an emitted frame (IEEE 802.1Q)."""
    KEEP = 0     # no VLAN action
    STRIP = 1    # remove the tag, if any
    SET_VID = 2  # set the VID keeping the PCP; push a PCP 0 tag if untagged
    REPLACE = 3  # strip then push: a PCP 0 tag with the VID, pushed or replacing the old one


@dataclasses.dataclass(frozen=True)
class Emission:
    """One output of a rule: the frame as the actions before this output left it.

    ``port`` None means in_port. For ``Port.CONTROLLER`` the frame leaves exactly as it arrived
    and the other fields are unused. ``dl_src``/``dl_dst`` None: unchanged. ``tun_dst`` None:
    no encapsulation. ``vni`` None: the frame's own tun_id.
    """
    port: Port | None
    vlan_op: VlanOp = VlanOp.KEEP
    vid: int = 0
    dl_src: int | None = None
    dl_dst: int | None = None
    tun_dst: int | None = None
    vni: int | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    line: int                 # line number in the rules file
    priority: int
    match: tuple              # ((field, value, mask), ...) in FIELDS order, mask != 0
    actions: tuple            # ((name, argument), ...) as written
    emissions: tuple          # (Emission, ...)

    def field(self, name):
        """``(value, mask)`` of a match field, or None when the rule does not match on it."""
        for field, value, mask in self.match:
            if field == name:
                return value, mask
        return None

    @functools.cached_property
    def text(self):
        """The rule normalized, in the order and notation ``ovs-ofctl`` prints flows."""
        parts = [] if self.priority == DEFAULT_PRIORITY else [f"priority={self.priority}"]
        fields = dict((f, (v, m)) for f, v, m in self.match)
        for name, implied in reversed(SHORTHANDS.items()):
            if all(fields.get(f) == (v, _full(f)) for f, v in implied.items()):
                parts.append(name)
                for f in implied:
                    fields.pop(f)
                break
        for name, (value, mask) in fields.items():
            parts.append(f"{name}={_format_value(name, value, mask)}")
        actions = ",".join(_format_action(name, arg) for name, arg in self.actions) or "drop"
        return f"{','.join(parts)} actions={actions}".lstrip()

    def __str__(self):
        return self.text


@dataclasses.dataclass(frozen=True)
class RuleSet:
    filename: str
    rules: tuple

    def __len__(self):
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)


def _full(field):
    return (1 << FIELDS[field]) - 1


def _format_value(field, value, mask):
    full = _full(field)
    if field == "in_port":
        return Port(value).label
    if field in ("dl_src", "dl_dst"):
        return format_mac(value) + ("" if mask == full else "/" + format_mac(mask))
    if field in ("nw_src", "nw_dst", "tun_src"):
        prefix = _prefix_len(mask)
        text = format_ipv4(value)
        if mask == full:
            return text
        return f"{text}/{prefix}" if prefix is not None else f"{text}/{format_ipv4(mask)}"
    if field in ("dl_type", "tun_id"):
        text = f"0x{value:04x}" if field == "dl_type" else f"0x{value:x}"
    elif field == "dl_vlan" and value == NO_VLAN:
        text = "0xffff"
    else:
        text = str(value)
    return text if mask == full else f"{text}/0x{mask:x}"


def _format_action(name, arg):
    if name == "output":
        return f"output:{'in_port' if arg is None else arg.label}"
    if name in ("controller", "strip_vlan", "drop"):
        return name
    if name == "set_tunnel":
        return f"set_tunnel:0x{arg:x}"
    if name == "set_tun_dst":
        return f"set_field:{format_ipv4(arg)}->tun_dst"
    if name in ("mod_dl_src", "mod_dl_dst"):
        return f"{name}:{format_mac(arg)}"
    return f"{name}:{arg}"


def _prefix_len(mask):
    for n in range(33):
        if mask == (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF:
            return n
    return None


class _Bad(Exception):
    """A problem at a column of the current line."""

    def __init__(self, column, message):
        self.column = column
        super().__init__(message)


def _parse_int(text, column, what, high):
    try:
        value = int(text, 0)
    except ValueError:
        raise _Bad(column, f"expected {what} (a number, decimal or 0x hex), got {text!r}")
    if not 0 <= value <= high:
        raise _Bad(column, f"{what} must be in 0..{high}, got {text}")
    return value


def _parse_match_value(field, text, column):
    """Parse ``text`` for match field ``field`` into (value, mask)."""
    full = _full(field)
    value_text, _, mask_text = text.partition("/")
    try:
        if field == "in_port":
            if text not in _IN_PORTS:
                raise _Bad(column, f"in_port must be host or net, got {text!r}")
            return int(_IN_PORTS[text]), full
        if field in ("dl_src", "dl_dst"):
            value = parse_mac(value_text)
            mask = parse_mac(mask_text) if mask_text else full
        elif field in ("nw_src", "nw_dst", "tun_src"):
            value = parse_ipv4(value_text)
            if not mask_text:
                mask = full
            elif mask_text.isdigit():
                prefix = int(mask_text)
                if prefix > 32:
                    raise _Bad(column, f"prefix length must be 0..32, got /{mask_text}")
                mask = (full << (32 - prefix)) & full
            else:
                mask = parse_ipv4(mask_text)
        elif field == "dl_vlan":
            if mask_text:
                raise _Bad(column, "dl_vlan takes no mask")
            value = _parse_int(value_text, column, "a VLAN id", 0xFFFF)
            if value > 4095 and value != NO_VLAN:
                raise _Bad(column, f"dl_vlan must be 0..4095 or 0xffff (untagged), got {text}")
            mask = full
        else:
            what = {"tun_id": "a VNI", "dl_type": "an EtherType", "nw_proto": "an IP protocol",
                    "tp_src": "a port", "tp_dst": "a port"}[field]
            if mask_text and field in _UNMASKABLE:
                raise _Bad(column, f"{field} takes no mask (it matches exactly, as in OVS)")
            value = _parse_int(value_text, column, what, full)
            mask = _parse_int(mask_text, column, "a mask", full) if mask_text else full
    except ValueError as exc:
        raise _Bad(column, f"{field}: {exc}")
    if mask == 0:
        return None
    return value & mask, mask


def _parse_action(text, column):
    name, sep, arg = text.partition(":")
    name = name.strip().lower()
    if name in ("drop", "controller", "strip_vlan"):
        if sep and not (name == "controller" and arg.strip() == str(_CONTROLLER_WHOLE_FRAME)):
            raise _Bad(column, f"{name} takes no argument" if name != "controller" else
                       f"controller:{arg}: the controller always gets the whole frame; "
                       f"only controller or controller:{_CONTROLLER_WHOLE_FRAME} is supported")
        return (name, None)
    if name == "output":
        if arg not in _OUT_PORTS:
            raise _Bad(column, f"output port must be host, net, controller or in_port, "
                               f"got {arg!r}")
        port = _OUT_PORTS[arg]
        return ("controller", None) if port is Port.CONTROLLER else ("output", port)
    if name == "in_port" and not sep:
        return ("output", None)
    if name == "set_tunnel":
        return ("set_tunnel", _parse_int(arg, column, "a VNI", MAX_VNI))
    if name == "set_field":
        value, arrow, target = arg.partition("->")
        if not arrow:
            raise _Bad(column, f"expected set_field:VALUE->FIELD, got {text!r}")
        if target == "tun_id":
            return ("set_tunnel", _parse_int(value, column, "a VNI", MAX_VNI))
        if target == "tun_dst":
            try:
                return ("set_tun_dst", parse_ipv4(value))
            except ValueError as exc:
                raise _Bad(column, f"set_field ->tun_dst: {exc}")
        raise _Bad(column, f"set_field supports ->tun_id and ->tun_dst, got ->{target}")
    if name == "mod_vlan_vid":
        return ("mod_vlan_vid", _parse_int(arg, column, "a VLAN id", 4095))
    if name in ("mod_dl_src", "mod_dl_dst"):
        try:
            return (name, parse_mac(arg))
        except ValueError as exc:
            raise _Bad(column, f"{name}: {exc}")
    raise _Bad(column, f"unknown action {name!r}; expected output, drop, controller, "
                       "set_tunnel, set_field, mod_vlan_vid, strip_vlan, mod_dl_src, mod_dl_dst")


def _emissions(actions, column):
    """Run the action list symbolically: what each output emits."""
    vlan_op, vid = VlanOp.KEEP, 0
    dl_src = dl_dst = tun_dst = vni = None
    emissions = []
    for name, arg in actions:
        if name == "mod_vlan_vid":
            vlan_op = VlanOp.REPLACE if vlan_op in (VlanOp.STRIP, VlanOp.REPLACE) \
                else VlanOp.SET_VID
            vid = arg
        elif name == "strip_vlan":
            vlan_op, vid = VlanOp.STRIP, 0
        elif name == "mod_dl_src":
            dl_src = arg
        elif name == "mod_dl_dst":
            dl_dst = arg
        elif name == "set_tunnel":
            vni = arg
        elif name == "set_tun_dst":
            tun_dst = arg
        elif name == "controller":
            emissions.append(Emission(Port.CONTROLLER))
        elif name == "output":
            encap = arg is not Port.HOST and tun_dst is not None
            if arg is not Port.HOST and vni is not None and tun_dst is None:
                raise _Bad(column, "set_tunnel without set_field:IP->tun_dst before an output "
                                   "that may go to net: the tunnel has no destination")
            emissions.append(Emission(arg, vlan_op, vid, dl_src, dl_dst,
                                      tun_dst if encap else None, vni if encap else None))
    return tuple(emissions)


_CONTROLLER_WHOLE_FRAME = 65535  # OpenFlow max_len meaning "the whole frame"
_UNMASKABLE = ("dl_type", "nw_proto")  # as in OVS: exact or absent
_COMMENT = re.compile(r"#.*")
_TOKEN = re.compile(r"[^,\s]+")


def _parse_line(line, number):
    """Parse one non-empty rule line; raises _Bad."""
    head, sep, actions_text = line.partition("actions=")
    if not sep:
        raise _Bad(1, "missing actions= (every rule needs an action list, e.g. actions=drop)")
    actions_col = len(head) + len("actions=") + 1
    priority = DEFAULT_PRIORITY
    match, columns = {}, {}
    for token in _TOKEN.finditer(head):
        col, text = token.start() + 1, token.group()
        key, eq, value = text.partition("=")
        if key in SHORTHANDS and not eq:
            for field, implied in SHORTHANDS[key].items():
                if field in match and match[field] != (implied, _full(field)):
                    raise _Bad(col, f"{key} conflicts with {field} given earlier")
                match[field] = (implied, _full(field))
            continue
        if not eq:
            raise _Bad(col, f"expected FIELD=VALUE or one of ip, udp, tcp, arp, got {text!r}")
        if key == "priority":
            priority = _parse_int(value, col + len(key) + 1, "a priority", MAX_PRIORITY)
            continue
        if key not in FIELDS:
            raise _Bad(col, f"unknown match field {key!r}; expected priority or one of "
                            f"{', '.join(FIELDS)}")
        parsed = _parse_match_value(key, value, col + len(key) + 1)
        if key in match and parsed != match[key]:
            raise _Bad(col, f"{key} given twice with different values")
        if parsed is not None:
            match[key] = parsed
            columns[key] = col
    is_ip = match.get("dl_type") == (ETHERTYPE_IPV4, 0xFFFF)
    for field in ("nw_src", "nw_dst", "nw_proto"):
        if field in match and not is_ip:
            raise _Bad(columns[field], f"{field} needs dl_type=0x0800 (add ip, tcp or udp)")
    for field in ("tp_src", "tp_dst"):
        proto = match.get("nw_proto")
        if field in match and (not is_ip or proto not in ((IPPROTO_TCP, 0xFF),
                                                           (IPPROTO_UDP, 0xFF))):
            raise _Bad(columns[field], f"{field} needs tcp or udp (nw_proto=6 or 17)")
    actions = []
    for token in re.finditer(r"[^,\s][^,]*", actions_text):
        text = token.group().strip()
        if text:
            actions.append(_parse_action(text, actions_col + token.start()))
    if any(name == "drop" for name, _ in actions):
        if len(actions) > 1:
            raise _Bad(actions_col, "drop must be the only action")
        actions = []
    canonical = tuple((f, *match[f]) for f in FIELDS if f in match)
    return Rule(number, priority, canonical, tuple(actions), _emissions(actions, actions_col))


def parse_rules(text, filename="<rules>"):
    """Parse a rules file's text into a RuleSet, or raise RuleError listing every bad line
    (nothing is half-loaded)."""
    rules, errors, seen = [], [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).rstrip()
        if not line.strip():
            continue
        try:
            rule = _parse_line(line, number)
        except _Bad as exc:
            errors.append((number, exc.column, str(exc)))
            continue
        key = (rule.priority, rule.match)
        if key in seen:
            errors.append((number, 1, f"same priority and match as the rule on line "
                                      f"{seen[key]}: which one applies would be ambiguous"))
            continue
        seen[key] = number
        rules.append(rule)
    if errors:
        raise RuleError(filename, errors)
    return RuleSet(filename, tuple(rules))


def load_rules(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise RuleError(str(path), [(0, 0, f"cannot read rules file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise RuleError(str(path), [(0, 0, "rules file is not UTF-8 text")]) from None
    return parse_rules(text, str(path))
