"""Tests of ``openvtep.rules``: the ovs-ofctl-subset rule compiler.

Every match field and shorthand, masks and prefixes, the default priority, the normalized text
(and its round trip through ``parse_rules``), OVS prerequisites, every action and its emissions,
and every refusal with the line and column it names. Nothing is ever half-loaded.
"""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openvtep.errors import RuleError, UserError
from openvtep.headers import NO_VLAN, Port
from openvtep.rules import DEFAULT_PRIORITY, FIELDS, Emission, VlanOp, load_rules, parse_rules

MAC48 = 2**48 - 1


def one(text):
    """The single rule of a one-line rules text."""
    ruleset = parse_rules(text, "r.txt")
    assert len(ruleset) == 1
    return ruleset.rules[0]


def refused(text, filename="r.txt"):
    """The RuleError raised for ``text`` (which must be refused)."""
    with pytest.raises(RuleError) as info:
        parse_rules(text, filename)
    assert isinstance(info.value, UserError)
    return info.value


def col(line, needle, occurrence=0):
    """1-based column of ``needle`` in ``line`` (its ``occurrence``-th appearance)."""
    start = -1
    for _ in range(occurrence + 1):
        start = line.index(needle, start + 1)
    return start + 1


def assert_single_error(line, column, fragment):
    err = refused(line)
    assert [(ln, c) for ln, c, _ in err.errors] == [(1, column)], err.errors
    message = err.errors[0][2]
    assert fragment in message, message
    assert f"r.txt:1:{column}: error: " in str(err)
    return message


# --- Match fields ---------------------------------------------------------------------------

MATCHES = [
    # (match text, field, value, mask)
    ("in_port=host", "in_port", int(Port.HOST), 3),
    ("in_port=net", "in_port", int(Port.NET), 3),
    ("dl_src=02:00:00:00:00:01", "dl_src", 0x020000000001, MAC48),
    ("dl_src=02:AB:cd:00:00:0F", "dl_src", 0x02ABCD00000F, MAC48),
    ("dl_src=01:00:00:00:00:00/01:00:00:00:00:00", "dl_src", 0x010000000000, 0x010000000000),
    ("dl_dst=ff:ff:ff:ff:ff:ff", "dl_dst", MAC48, MAC48),
    ("dl_dst=02:00:00:00:12:34/ff:ff:ff:ff:00:00", "dl_dst", 0x020000000000, 0xFFFFFFFF0000),
    ("dl_vlan=10", "dl_vlan", 10, 0xFFFF),
    ("dl_vlan=0", "dl_vlan", 0, 0xFFFF),
    ("dl_vlan=4095", "dl_vlan", 4095, 0xFFFF),
    ("dl_vlan=0xffff", "dl_vlan", NO_VLAN, 0xFFFF),
    ("dl_type=0x0806", "dl_type", 0x0806, 0xFFFF),
    ("dl_type=2054", "dl_type", 0x0806, 0xFFFF),
    ("ip,nw_src=10.0.0.1", "nw_src", 0x0A000001, 0xFFFFFFFF),
    ("ip,nw_src=10.1.2.3/8", "nw_src", 0x0A000000, 0xFF000000),
    ("ip,nw_dst=198.18.0.0/15", "nw_dst", 0xC6120000, 0xFFFE0000),
    ("ip,nw_dst=10.1.2.3/255.255.0.0", "nw_dst", 0x0A010000, 0xFFFF0000),
    ("ip,nw_dst=10.1.2.3/255.0.255.0", "nw_dst", 0x0A000200, 0xFF00FF00),
    ("ip,nw_dst=10.1.2.3/32", "nw_dst", 0x0A010203, 0xFFFFFFFF),
    ("ip,nw_proto=1", "nw_proto", 1, 0xFF),
    ("tcp,tp_src=80", "tp_src", 80, 0xFFFF),
    ("udp,tp_dst=53", "tp_dst", 53, 0xFFFF),
    ("udp,tp_dst=0x1235/0xff00", "tp_dst", 0x1200, 0xFF00),
    ("tcp,tp_src=65535", "tp_src", 65535, 0xFFFF),
    ("tun_id=42", "tun_id", 42, 0xFFFFFF),
    ("tun_id=0x2a", "tun_id", 42, 0xFFFFFF),
    ("tun_id=16777215", "tun_id", 2**24 - 1, 0xFFFFFF),
    ("tun_id=0x1234/0xff", "tun_id", 0x34, 0xFF),
    ("tun_src=198.18.0.2", "tun_src", 0xC6120002, 0xFFFFFFFF),
    ("tun_src=198.18.0.3/31", "tun_src", 0xC6120002, 0xFFFFFFFE),
]


@pytest.mark.parametrize("text, field, value, mask", MATCHES, ids=[m[0] for m in MATCHES])
def test_match_field(text, field, value, mask):
    rule = one(f"{text},actions=drop")
    assert rule.field(field) == (value, mask)
    assert (field, value, mask) in rule.match


def test_match_fields_cover_fields():
    assert {field for _, field, _, _ in MATCHES} == set(FIELDS)


@pytest.mark.parametrize("shorthand, expect", [
    ("ip", {"dl_type": (0x0800, 0xFFFF)}),
    ("arp", {"dl_type": (0x0806, 0xFFFF)}),
    ("tcp", {"dl_type": (0x0800, 0xFFFF), "nw_proto": (6, 0xFF)}),
    ("udp", {"dl_type": (0x0800, 0xFFFF), "nw_proto": (17, 0xFF)}),
])
def test_shorthand(shorthand, expect):
    rule = one(f"{shorthand},actions=drop")
    assert {f: (v, m) for f, v, m in rule.match} == expect
    assert rule.text == f"{shorthand} actions=drop"


@pytest.mark.parametrize("text", [
    "ip,dl_type=0x0800", "dl_type=0x0800,ip", "udp,ip", "tcp,nw_proto=6", "arp,arp",
    "tun_id=5,tun_id=0x5",
])
def test_consistent_repeats_accepted(text):
    one(f"{text},actions=drop")


def test_match_canonical_order():
    rule = one("tp_dst=53,udp,nw_dst=10.0.0.1,dl_src=02:00:00:00:00:01,in_port=net,tun_id=7,"
               "tun_src=198.18.0.2,dl_vlan=3,actions=drop")
    assert [f for f, _, _ in rule.match] == [f for f in FIELDS if rule.field(f)]
    assert [f for f, _, _ in rule.match] == [
        "tun_id", "tun_src", "in_port", "dl_vlan", "dl_src", "dl_type", "nw_dst", "nw_proto",
        "tp_dst"]


@pytest.mark.parametrize("text, match", [
    ("ip,nw_src=10.0.0.0/0", (("dl_type", 0x0800, 0xFFFF),)),
    ("ip,nw_dst=1.2.3.4/0.0.0.0", (("dl_type", 0x0800, 0xFFFF),)),
    ("tun_id=5/0", ()),
    ("tcp,tp_src=1/0", (("dl_type", 0x0800, 0xFFFF), ("nw_proto", 6, 0xFF))),
    ("dl_src=02:00:00:00:00:01/00:00:00:00:00:00", ()),
])
def test_zero_mask_matches_anything(text, match):
    assert one(f"{text},actions=drop").match == match


# --- Priority -------------------------------------------------------------------------------

def test_default_priority():
    assert DEFAULT_PRIORITY == 32768
    rule = one("in_port=host,actions=output:net")
    assert rule.priority == 32768
    assert rule.text == "in_port=host actions=output:net"
    assert one("priority=32768,in_port=host,actions=output:net").text == rule.text


@pytest.mark.parametrize("text, priority", [
    ("priority=0", 0), ("priority=65535", 65535), ("priority=0x10", 16), ("priority=100", 100),
])
def test_priority(text, priority):
    rule = one(f"{text},actions=drop")
    assert rule.priority == priority
    assert rule.text == f"priority={priority} actions=drop"


def test_lines_comments_and_blank_lines():
    text = ("# header comment\n"
            "\n"
            "priority=1,actions=drop   # trailing comment\n"
            "   \n"
            "  priority=2 , in_port=host , actions=output:net\n"
            "#priority=3,bogus\n")
    ruleset = parse_rules(text, "x.rules")
    assert ruleset.filename == "x.rules"
    assert [r.line for r in ruleset] == [3, 5]
    assert [r.priority for r in ruleset] == [1, 2]
    assert len(ruleset) == 2
    assert [str(r) for r in ruleset] == ["priority=1 actions=drop",
                                         "priority=2,in_port=host actions=output:net"]


def test_empty_file():
    assert len(parse_rules("", "e")) == 0
    assert len(parse_rules("# only a comment\n\n", "e")) == 0


# --- Normalized text ------------------------------------------------------------------------

NORMALIZED = [
    (("priority=100,in_port=host,dl_dst=02:00:00:00:00:02,actions=set_tunnel:42,"
      "set_field:198.18.0.2->tun_dst,output:net"),
     ("priority=100,in_port=host,dl_dst=02:00:00:00:00:02 actions=set_tunnel:0x2a,"
      "set_field:198.18.0.2->tun_dst,output:net")),
    ("priority=100,in_port=net,tun_id=42,dl_dst=02:00:00:00:00:01,actions=output:host",
     "priority=100,tun_id=0x2a,in_port=net,dl_dst=02:00:00:00:00:01 actions=output:host"),
    ("priority=0,actions=controller", "priority=0 actions=controller"),
    ("actions=output:controller", "actions=controller"),
    ("actions=", "actions=drop"),
    ("actions=drop", "actions=drop"),
    ("dl_type=0x0800,nw_proto=17,tp_dst=53,actions=controller", "udp,tp_dst=53 actions=controller"),
    ("dl_type=0x800,nw_proto=6,actions=drop", "tcp actions=drop"),
    ("dl_type=2048,actions=drop", "ip actions=drop"),
    ("dl_type=0x0806,actions=drop", "arp actions=drop"),
    ("dl_src=02:AB:CD:EF:00:01,actions=drop", "dl_src=02:ab:cd:ef:00:01 actions=drop"),
    ("dl_src=1:2:3:4:5:6/ff:ff:ff:0:0:0,actions=drop",
     "dl_src=01:02:03:00:00:00/ff:ff:ff:00:00:00 actions=drop"),
    ("ip,nw_src=10.0.0.0/255.0.0.0,actions=drop", "ip,nw_src=10.0.0.0/8 actions=drop"),
    ("ip,nw_src=10.0.0.0/255.0.255.0,actions=drop", "ip,nw_src=10.0.0.0/255.0.255.0 actions=drop"),
    ("ip,nw_dst=10.9.9.9/32,actions=drop", "ip,nw_dst=10.9.9.9 actions=drop"),
    ("tun_src=198.18.0.0/15,actions=drop", "tun_src=198.18.0.0/15 actions=drop"),
    ("tun_id=0x2a/0xff,actions=drop", "tun_id=0x2a/0xff actions=drop"),
    ("dl_vlan=0xffff,actions=drop", "dl_vlan=0xffff actions=drop"),
    ("dl_vlan=0x10,actions=drop", "dl_vlan=16 actions=drop"),
    ("udp,tp_src=0x35,actions=drop", "udp,tp_src=53 actions=drop"),
    ("udp,tp_src=0x1200/0xff00,actions=drop", "udp,tp_src=4608/0xff00 actions=drop"),
    ("actions=in_port", "actions=output:in_port"),
    ("actions=set_field:7->tun_id,set_field:198.18.0.9->tun_dst,output:net",
     "actions=set_tunnel:0x7,set_field:198.18.0.9->tun_dst,output:net"),
    (("actions=mod_vlan_vid:0x10,strip_vlan,mod_dl_src:02:00:00:00:00:AA,"
      "mod_dl_dst:2:0:0:0:0:bb,output:host"),
     ("actions=mod_vlan_vid:16,strip_vlan,mod_dl_src:02:00:00:00:00:aa,"
      "mod_dl_dst:02:00:00:00:00:bb,output:host")),
    ("priority=7 in_port=net actions=output:host", "priority=7,in_port=net actions=output:host"),
]


@pytest.mark.parametrize("text, expect", NORMALIZED)
def test_normalized_text(text, expect):
    rule = one(text)
    assert rule.text == expect
    assert str(rule) == expect
    again = one(rule.text)
    assert again.text == expect
    assert (again.priority, again.match, again.actions, again.emissions) == \
        (rule.priority, rule.match, rule.actions, rule.emissions)


def test_example_rules_round_trip():
    ruleset = load_rules(Path(__file__).resolve().parents[2] / "examples" / "rules.txt")
    again = parse_rules("\n".join(r.text for r in ruleset), "again")
    assert [(r.priority, r.match, r.actions, r.emissions) for r in ruleset] == \
        [(r.priority, r.match, r.actions, r.emissions) for r in again]


# --- Prerequisites (OVS), refused rather than silently dropped --------------------------------

PREREQS = [
    ("nw_src=10.0.0.1,actions=drop", "nw_src", "needs dl_type=0x0800"),
    ("nw_dst=10.0.0.1,actions=drop", "nw_dst", "needs dl_type=0x0800"),
    ("nw_proto=17,actions=drop", "nw_proto", "needs dl_type=0x0800"),
    ("arp,nw_dst=10.0.0.1,actions=drop", "nw_dst", "needs dl_type=0x0800"),
    ("tp_src=80,actions=drop", "tp_src", "needs tcp or udp"),
    ("ip,tp_dst=80,actions=drop", "tp_dst", "needs tcp or udp"),
    ("ip,nw_proto=1,tp_dst=80,actions=drop", "tp_dst", "needs tcp or udp"),
    ("arp,tp_src=1,actions=drop", "tp_src", "needs tcp or udp"),
    ("tp_dst=53,udp,actions=drop", None, None),  # order does not matter: accepted
    ("nw_src=10.0.0.1,ip,actions=drop", None, None),
]


@pytest.mark.parametrize("line, field, fragment", PREREQS)
def test_prerequisites(line, field, fragment):
    if field is None:
        one(line)
        return
    assert_single_error(line, col(line, field + "="), fragment)


# --- Actions and their emissions --------------------------------------------------------------

TUN = 0xC6120002  # 198.18.0.2
SET_TUN = "set_field:198.18.0.2->tun_dst"
ACTIONS = [
    ("output:host", (("output", Port.HOST),), (Emission(Port.HOST),)),
    ("output:net", (("output", Port.NET),), (Emission(Port.NET),)),
    ("output:in_port", (("output", None),), (Emission(None),)),
    ("in_port", (("output", None),), (Emission(None),)),
    ("output:controller", (("controller", None),), (Emission(Port.CONTROLLER),)),
    ("controller", (("controller", None),), (Emission(Port.CONTROLLER),)),
    ("drop", (), ()),
    ("", (), ()),
    ("strip_vlan,output:host", (("strip_vlan", None), ("output", Port.HOST)),
     (Emission(Port.HOST, VlanOp.STRIP),)),
    ("mod_vlan_vid:10,output:host", (("mod_vlan_vid", 10), ("output", Port.HOST)),
     (Emission(Port.HOST, VlanOp.SET_VID, 10),)),
    ("strip_vlan,mod_vlan_vid:20,output:host",
     (("strip_vlan", None), ("mod_vlan_vid", 20), ("output", Port.HOST)),
     (Emission(Port.HOST, VlanOp.REPLACE, 20),)),
    ("mod_vlan_vid:20,strip_vlan,output:host",
     (("mod_vlan_vid", 20), ("strip_vlan", None), ("output", Port.HOST)),
     (Emission(Port.HOST, VlanOp.STRIP, 0),)),
    ("mod_vlan_vid:5,mod_vlan_vid:6,output:host",
     (("mod_vlan_vid", 5), ("mod_vlan_vid", 6), ("output", Port.HOST)),
     (Emission(Port.HOST, VlanOp.SET_VID, 6),)),
    ("mod_dl_src:02:00:00:00:00:0a,output:net",
     (("mod_dl_src", 0x02000000000A), ("output", Port.NET)),
     (Emission(Port.NET, dl_src=0x02000000000A),)),
    ("mod_dl_dst:02:00:00:00:00:0b,output:net",
     (("mod_dl_dst", 0x02000000000B), ("output", Port.NET)),
     (Emission(Port.NET, dl_dst=0x02000000000B),)),
    (f"set_tunnel:42,{SET_TUN},output:net",
     (("set_tunnel", 42), ("set_tun_dst", TUN), ("output", Port.NET)),
     (Emission(Port.NET, tun_dst=TUN, vni=42),)),
    (f"set_field:42->tun_id,{SET_TUN},output:net",
     (("set_tunnel", 42), ("set_tun_dst", TUN), ("output", Port.NET)),
     (Emission(Port.NET, tun_dst=TUN, vni=42),)),
    (f"{SET_TUN},set_tunnel:0xffffff,output:net",
     (("set_tun_dst", TUN), ("set_tunnel", 2**24 - 1), ("output", Port.NET)),
     (Emission(Port.NET, tun_dst=TUN, vni=2**24 - 1),)),
    # tun_dst alone: the frame keeps its own tun_id (vni None).
    (f"{SET_TUN},output:net", (("set_tun_dst", TUN), ("output", Port.NET)),
     (Emission(Port.NET, tun_dst=TUN),)),
    # A tunnel never applies to host; in_port may be net, so it carries the tunnel.
    (f"set_tunnel:1,{SET_TUN},output:host,output:in_port",
     (("set_tunnel", 1), ("set_tun_dst", TUN), ("output", Port.HOST), ("output", None)),
     (Emission(Port.HOST), Emission(None, tun_dst=TUN, vni=1))),
    # set_tunnel without tun_dst is fine when nothing can go to net.
    ("set_tunnel:1,output:host,controller",
     (("set_tunnel", 1), ("output", Port.HOST), ("controller", None)),
     (Emission(Port.HOST), Emission(Port.CONTROLLER))),
    # Outputs snapshot the actions before them, in order.
    ("output:host,mod_dl_dst:02:00:00:00:00:0b,output:host,strip_vlan,output:net,controller",
     (("output", Port.HOST), ("mod_dl_dst", 0x02000000000B), ("output", Port.HOST),
      ("strip_vlan", None), ("output", Port.NET), ("controller", None)),
     (Emission(Port.HOST), Emission(Port.HOST, dl_dst=0x02000000000B),
      Emission(Port.NET, VlanOp.STRIP, dl_dst=0x02000000000B), Emission(Port.CONTROLLER))),
    ("set_tunnel:42", (("set_tunnel", 42),), ()),
]


@pytest.mark.parametrize("actions, parsed, emissions", ACTIONS, ids=[a[0] or "empty"
                                                                    for a in ACTIONS])
def test_action(actions, parsed, emissions):
    rule = one(f"actions={actions}")
    assert rule.actions == parsed
    assert rule.emissions == emissions
    again = one(rule.text)
    assert (again.actions, again.emissions) == (rule.actions, rule.emissions)


def test_actions_cover_every_action():
    names = {a.split(":")[0] for text, _, _ in ACTIONS for a in text.split(",")}
    assert names >= {"output", "drop", "controller", "set_tunnel", "set_field", "mod_vlan_vid",
                     "strip_vlan", "mod_dl_src", "mod_dl_dst", "in_port"}


# --- Refusals: line and column --------------------------------------------------------------

REFUSED = [
    # (line, needle whose column the error names, fragment of the message)
    ("actions=drop,output:host", "drop", "drop must be the only action"),
    ("in_port=host,actions=output:host,drop", "output:host", "drop must be the only action"),
    ("actions=drop,drop", "drop", "drop must be the only action"),
    ("in_port=host,actions=set_tunnel:5,output:net", "set_tunnel", "tun_dst"),
    ("actions=set_field:5->tun_id,output:in_port", "set_field", "tun_dst"),
    (f"actions=set_tunnel:5,output:net,{SET_TUN}", "set_tunnel", "tun_dst"),
    ("in_port=host,foo=1,actions=drop", "foo=1", "unknown match field 'foo'"),
    ("in_port=host,bogus,actions=drop", "bogus", "expected FIELD=VALUE"),
    ("in_port=host,actions=output:host,frobnicate", "frobnicate", "unknown action 'frobnicate'"),
    ("actions=normal", "normal", "unknown action 'normal'"),
    ("in_port=host,output:host", "in_port", "missing actions="),
    ("dl_src=02:00:00:00:00,actions=drop", "02:00", "expected a MAC address"),
    ("dl_dst=02:00:00:00:00:0g,actions=drop", "02:00", "expected a MAC address"),
    ("dl_dst=02:00:00:00:00:01/ff,actions=drop", "02:00", "expected a MAC address"),
    ("in_port=host,actions=mod_dl_src:02-00-00-00-00-01,output:host", "mod_dl_src",
     "expected a MAC address"),
    ("in_port=host,actions=mod_dl_dst:,output:host", "mod_dl_dst", "expected a MAC address"),
    ("ip,nw_src=10.0.0.256,actions=drop", "10.0.0.256", "each part 0..255"),
    ("ip,nw_dst=10.0.0,actions=drop", "10.0.0", "expected an IPv4 address"),
    ("ip,nw_dst=10.0.0.1/33,actions=drop", "10.0.0.1", "prefix length must be 0..32"),
    ("ip,nw_dst=10.0.0.1/255.255.0.300,actions=drop", "10.0.0.1", "IPv4"),
    ("tun_src=198.18.0.x,actions=drop", "198.18", "expected an IPv4 address"),
    ("actions=set_field:198.18.0.256->tun_dst,output:net", "set_field", "each part 0..255"),
    ("tun_id=16777216,actions=drop", "16777216", "0..16777215"),
    ("tun_id=0x1000000,actions=drop", "0x1000000", "0..16777215"),
    ("tun_id=5/0x1000000,actions=drop", "5/0x1000000", "0..16777215"),
    (f"actions=set_tunnel:16777216,{SET_TUN},output:net", "set_tunnel", "0..16777215"),
    (f"actions=set_field:0x1000000->tun_id,{SET_TUN},output:net", "set_field", "0..16777215"),
    ("actions=set_tunnel:abc", "set_tunnel", "expected a VNI"),
    ("priority=65536,actions=drop", "65536", "0..65535"),
    ("priority=-1,actions=drop", "-1", "0..65535"),
    ("priority=high,actions=drop", "high", "expected a priority"),
    ("dl_vlan=4096,actions=drop", "4096", "0..4095"),
    ("dl_vlan=0xfffe,actions=drop", "0xfffe", "0..4095"),
    ("dl_vlan=65536,actions=drop", "65536", "0..65535"),
    ("dl_vlan=10/0xfff,actions=drop", "10/0xfff", "dl_vlan takes no mask"),
    ("in_port=host,actions=mod_vlan_vid:4096,output:host", "mod_vlan_vid", "0..4095"),
    ("in_port=controller,actions=drop", "controller", "in_port must be host or net"),
    ("in_port=1,actions=drop", "1,", "in_port must be host or net"),
    ("actions=output:2", "output", "output port must be"),
    ("actions=output:", "output", "output port must be"),
    ("udp,tp_dst=65536,actions=drop", "65536", "0..65535"),
    ("tcp,tp_src=http,actions=drop", "http", "expected a port"),
    ("ip,nw_proto=256,actions=drop", "256", "0..255"),
    ("dl_type=0x10000,actions=drop", "0x10000", "0..65535"),
    # As in OVS, dl_type and nw_proto match exactly or not at all.
    ("dl_type=0x86dd/0xff00,actions=drop", "0x86dd", "dl_type takes no mask"),
    ("dl_type=0x0800/0,actions=drop", "0x0800", "dl_type takes no mask"),
    ("ip,nw_proto=6/0xf,actions=drop", "6/0xf", "nw_proto takes no mask"),
    # The controller gets the whole frame: a shorter OpenFlow max_len is refused.
    ("actions=controller:100", "controller", "controller always gets the whole frame"),
    ("actions=strip_vlan:1", "strip_vlan", "takes no argument"),
    ("actions=drop:1", "drop", "takes no argument"),
    ("actions=set_field:1.2.3.4->nw_dst,output:host", "set_field",
     "supports ->tun_id and ->tun_dst"),
    ("actions=set_field:42,output:host", "set_field", "expected set_field:VALUE->FIELD"),
    ("arp,ip,actions=drop", "ip,", "ip conflicts with dl_type"),
    ("tcp,udp,actions=drop", "udp", "udp conflicts with"),
    ("tun_id=1,tun_id=2,actions=drop", "tun_id=2", "tun_id given twice"),
    ("ip,dl_type=0x0806,actions=drop", "dl_type", "dl_type given twice"),
    # Columns stay exact with spaces after the commas.
    ("in_port=host, actions=output:host, frobnicate", "frobnicate", "unknown action"),
    ("in_port=host,  nope=1, actions=drop", "nope", "unknown match field"),
    ("priority=1, in_port=host, actions=output:host,  output:nowhere", "output:nowhere",
     "output port must be"),
]


@pytest.mark.parametrize("line, needle, fragment", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_names_line_and_column(line, needle, fragment):
    assert_single_error(line, col(line, needle), fragment)


def test_refused_value_column_points_at_value():
    # The column of a bad value is the value, not the field name.
    line = "priority=10,in_port=host,dl_dst=zz,actions=drop"
    assert_single_error(line, col(line, "zz"), "dl_dst: expected a MAC address")


def test_duplicate_priority_and_match():
    text = ("priority=10,in_port=host,actions=output:net\n"
            "priority=10,in_port=host,actions=output:host\n")
    err = refused(text)
    assert len(err.errors) == 1
    line, column, message = err.errors[0]
    assert (line, column) == (2, 1)
    assert "line 1" in message and "same priority and match" in message
    assert "r.txt:2:1: error: " in str(err)


@pytest.mark.parametrize("first, second", [
    ("ip,actions=drop", "dl_type=0x0800,actions=output:host"),
    ("udp,in_port=net,actions=drop", "in_port=net,dl_type=2048,nw_proto=17,actions=drop"),
    ("ip,nw_src=10.1.2.3/8,actions=drop", "ip,nw_src=10.0.0.0/255.0.0.0,actions=controller"),
    ("actions=drop", "priority=32768,actions=controller"),
    ("tun_id=5/0,actions=drop", "actions=controller"),
])
def test_duplicate_after_normalization(first, second):
    err = refused(f"{first}\n# in between\n{second}\n")
    assert [(ln, c) for ln, c, _ in err.errors] == [(3, 1)]
    assert "line 1" in err.errors[0][2]


def test_same_match_different_priority_accepted():
    ruleset = parse_rules("priority=10,in_port=host,actions=drop\n"
                          "priority=11,in_port=host,actions=drop\n"
                          "priority=10,in_port=net,actions=drop\n")
    assert len(ruleset) == 3


def test_nothing_half_loaded():
    text = ("priority=1,in_port=host,actions=output:net\n"        # 1 ok
            "priority=2,in_port=hots,actions=output:net\n"        # 2 bad in_port
            "# comment\n"                                         # 3
            "priority=3,dl_vlan=5000,actions=output:host\n"       # 4 bad vlan
            "priority=4,actions=output:host\n"                    # 5 ok
            "priority=1,in_port=host,actions=output:host\n"       # 6 duplicate of line 1
            "priority=5,tp_dst=1,actions=drop\n"                  # 7 prerequisite
            "priority=6,actions=set_tunnel:1,output:net\n")       # 8 no tun_dst
    err = refused(text, "many.rules")
    assert [(ln, c) for ln, c, _ in err.errors] == [(2, 20), (4, 20), (6, 1), (7, 12), (8, 20)]
    lines = err.lines()
    assert len(lines) == 5
    assert all(line.startswith("many.rules:") and ": error: " in line for line in lines)
    assert str(err) == "\n".join(lines)
    assert err.filename == "many.rules"


def test_load_rules(tmp_path):
    path = tmp_path / "ok.rules"
    path.write_text("priority=5,in_port=host,actions=output:net\n")
    ruleset = load_rules(path)
    assert ruleset.filename == str(path)
    assert [r.text for r in ruleset] == ["priority=5,in_port=host actions=output:net"]
    bad = tmp_path / "bad.rules"
    bad.write_text("\n\npriority=5,in_port=hots,actions=output:net\n")
    with pytest.raises(RuleError) as info:
        load_rules(bad)
    assert str(info.value).startswith(f"{bad}:3:20: error: ")


def test_load_rules_missing_file(tmp_path):
    path = tmp_path / "missing.rules"
    with pytest.raises(RuleError) as info:
        load_rules(path)
    assert str(info.value) == f"{path}: error: cannot read rules file: No such file or directory"


def test_load_rules_directory(tmp_path):
    with pytest.raises(RuleError) as info:
        load_rules(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: error: cannot read rules file")


def test_load_rules_not_utf8(tmp_path):
    path = tmp_path / "binary.rules"
    path.write_bytes(b"priority=1,actions=drop\n\xff\xfe\x00garbage\n")
    with pytest.raises(RuleError) as info:
        load_rules(path)
    assert str(info.value) == f"{path}: error: rules file is not UTF-8 text"


# --- Hypothesis: generated valid rules round-trip through their normalized text ---------------

def _mac(v):
    return ":".join(f"{(v >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6))


def _ip(v):
    return ".".join(str((v >> (24 - 8 * i)) & 0xFF) for i in range(4))


@st.composite
def match_items(draw):
    """(list of match tokens, expected {field: (value, mask)})."""
    tokens, expect = [], {}
    l3 = draw(st.sampled_from(["none", "ip", "arp", "tcp", "udp", "dl_type", "ip_proto"]))
    if l3 in ("ip", "arp", "tcp", "udp"):
        tokens.append(l3)
        expect["dl_type"] = (0x0806 if l3 == "arp" else 0x0800, 0xFFFF)
        if l3 in ("tcp", "udp"):
            expect["nw_proto"] = (6 if l3 == "tcp" else 17, 0xFF)
    elif l3 == "dl_type":
        value = draw(st.integers(0, 0xFFFF))
        tokens.append(f"dl_type={value:#x}")
        expect["dl_type"] = (value, 0xFFFF)
    elif l3 == "ip_proto":
        proto = draw(st.integers(0, 255))
        tokens += ["dl_type=0x0800", f"nw_proto={proto}"]
        expect["dl_type"] = (0x0800, 0xFFFF)
        expect["nw_proto"] = (proto, 0xFF)

    def masked(field, bits, fmt, kinds=("full", "mask")):
        value = draw(st.integers(0, 2**bits - 1))
        kind = draw(st.sampled_from(kinds))
        full = 2**bits - 1
        if kind == "full":
            tokens.append(f"{field}={fmt(value)}")
            expect[field] = (value, full)
            return
        if kind == "prefix":
            n = draw(st.integers(1, bits))
            mask = (full << (bits - n)) & full
            tokens.append(f"{field}={fmt(value)}/{n}")
        else:
            mask = draw(st.integers(1, full))
            tokens.append(f"{field}={fmt(value)}/{fmt(mask)}")
        expect[field] = (value & mask, mask)

    if draw(st.booleans()):
        port = draw(st.sampled_from(["host", "net"]))
        tokens.append(f"in_port={port}")
        expect["in_port"] = (int(Port[port.upper()]), 3)
    if draw(st.booleans()):
        masked("dl_src", 48, _mac)
    if draw(st.booleans()):
        masked("dl_dst", 48, _mac)
    if draw(st.booleans()):
        vid = draw(st.one_of(st.integers(0, 4095), st.just(NO_VLAN)))
        tokens.append(f"dl_vlan={vid}")
        expect["dl_vlan"] = (vid, 0xFFFF)
    if draw(st.booleans()):
        masked("tun_id", 24, hex)
    if draw(st.booleans()):
        masked("tun_src", 32, _ip, ("full", "mask", "prefix"))
    if expect.get("dl_type") == (0x0800, 0xFFFF):
        for field in ("nw_src", "nw_dst"):
            if draw(st.booleans()):
                masked(field, 32, _ip, ("full", "mask", "prefix"))
    if expect.get("nw_proto") in ((6, 0xFF), (17, 0xFF)):
        for field in ("tp_src", "tp_dst"):
            if draw(st.booleans()):
                masked(field, 16, str)
    return draw(st.permutations(tokens)), expect


@st.composite
def action_items(draw):
    """(list of action tokens, expected actions tuple)."""
    tokens, expect, tun_dst = [], [], False
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["output", "controller", "set_tunnel", "tun_dst",
                                     "mod_vlan_vid", "strip_vlan", "mod_dl_src", "mod_dl_dst"]))
        if kind == "output":
            port = draw(st.sampled_from(["host", "net", "in_port", "controller"]))
            if port != "host" and any(a[0] == "set_tunnel" for a in expect) and not tun_dst:
                port = "host"
            tokens.append(f"output:{port}")
            expect.append(("controller", None) if port == "controller" else
                          ("output", None if port == "in_port" else Port[port.upper()]))
        elif kind == "controller":
            tokens.append("controller")
            expect.append(("controller", None))
        elif kind == "set_tunnel":
            vni = draw(st.integers(0, 2**24 - 1))
            tokens.append(draw(st.sampled_from([f"set_tunnel:{vni}", f"set_tunnel:{vni:#x}",
                                                f"set_field:{vni}->tun_id"])))
            expect.append(("set_tunnel", vni))
        elif kind == "tun_dst":
            ip = draw(st.integers(0, 2**32 - 1))
            tokens.append(f"set_field:{_ip(ip)}->tun_dst")
            expect.append(("set_tun_dst", ip))
            tun_dst = True
        elif kind == "mod_vlan_vid":
            vid = draw(st.integers(0, 4095))
            tokens.append(f"mod_vlan_vid:{vid}")
            expect.append(("mod_vlan_vid", vid))
        elif kind == "strip_vlan":
            tokens.append("strip_vlan")
            expect.append(("strip_vlan", None))
        else:
            mac = draw(st.integers(0, MAC48))
            tokens.append(f"{kind}:{_mac(mac)}")
            expect.append((kind, mac))
    if not tokens and draw(st.booleans()):
        tokens.append("drop")
    return tokens, tuple(expect)


@st.composite
def rule_lines(draw):
    (match_tokens, match), (action_tokens, actions) = draw(match_items()), draw(action_items())
    priority = draw(st.one_of(st.none(), st.integers(0, 65535)))
    head = ([] if priority is None else [f"priority={priority}"]) + list(match_tokens)
    sep = draw(st.sampled_from([",", " , ", ", "]))
    line = sep.join(head + ["actions=" + ",".join(action_tokens)])
    return line, DEFAULT_PRIORITY if priority is None else priority, match, actions


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_lines())
def test_generated_rules_round_trip(case):
    line, priority, match, actions = case
    rule = one(line)
    assert rule.priority == priority
    assert {f: (v, m) for f, v, m in rule.match} == match
    assert [f for f, _, _ in rule.match] == [f for f in FIELDS if f in match]
    assert rule.actions == actions
    again = one(rule.text)
    assert again.text == rule.text
    assert (again.priority, again.match, again.actions, again.emissions) == \
        (rule.priority, rule.match, rule.actions, rule.emissions)
    assert len(rule.emissions) == sum(a[0] in ("output", "controller") for a in actions)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rule_lines(), min_size=1, max_size=12))
def test_generated_rule_files_round_trip(cases):
    # Lines with the same priority and match would be refused: keep the first of each.
    text = "\n".join(line for line, *_ in cases)
    try:
        ruleset = parse_rules(text, "gen")
    except RuleError as err:
        assert all("same priority and match" in msg for _, _, msg in err.errors)
        return
    again = parse_rules("\n".join(r.text for r in ruleset), "gen2")
    assert [(r.priority, r.match, r.actions, r.emissions) for r in ruleset] == \
        [(r.priority, r.match, r.actions, r.emissions) for r in again]
    assert [r.line for r in ruleset] == list(range(1, len(cases) + 1))


def test_crlf_and_tabs():
    ruleset = parse_rules("priority=1,\tin_port=host\tactions=output:net\r\n"
                          "# comment\r\n"
                          "priority=2,in_port=net,actions=output:host\r\n", "dos.rules")
    assert [(r.line, r.text) for r in ruleset] == [
        (1, "priority=1,in_port=host actions=output:net"),
        (3, "priority=2,in_port=net actions=output:host")]
    err = refused("\r\n\r\npriority=1,in_port=x,actions=drop\r\n")
    assert [(ln, c) for ln, c, _ in err.errors] == [(3, 20)]
