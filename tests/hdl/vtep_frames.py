"""The datapath testbenches' frames and rules (one implementation: :mod:`openvtep.sim.traffic`,
re-exported here), and :func:`expected`, the results the reference model gives them.
"""

import numpy as np

from openvtep.frames import FrameBatch
from openvtep.hdl.headers import EditCommand, command_from_emission, pack
from openvtep.headers import DropReason, Port
from openvtep.reference import Reference
from openvtep.rules import parse_rules
from openvtep.sim.traffic import (
    CONFIG,
    PEER_IP,
    eth,
    inner_frame,
    ipv4,
    l4,
    mac,
    random_frame,
    random_rule,
    random_workload,
    vxlan_frame,
)

__all__ = ["CONFIG", "PEER_IP", "eth", "expected", "inner_frame", "ipv4", "l4", "mac",
           "random_frame", "random_rule", "random_workload", "vxlan_frame"]


def expected(frames, rule_texts, config=CONFIG):
    """Run the reference model on ``frames`` (``(port, bytes)``), frame ``k`` under the rule
    set ``rule_texts[k]``. Returns ``(outputs, commands, drops)``: per input frame the list of
    its outputs ``(port, bytes)`` in the editor's order (the edited output, then a controller
    copy); per input frame the packed EditCommand the classifier and pipeline would give it;
    the total drop counts per reason (a list indexed by DropReason)."""
    outputs = [[] for _ in frames]
    commands = [0] * len(frames)
    drops = [0] * len(DropReason)
    groups = {}
    for index, text in enumerate(rule_texts):
        groups.setdefault(text, []).append(index)
    for text, indices in groups.items():
        ruleset = parse_rules(text)
        batch = FrameBatch.from_frames([frames[k] for k in indices],
                                       time_ns=np.array(indices, np.int64))
        result = Reference(config, ruleset).run(batch)
        for reason in DropReason:
            drops[reason] += result.stats["drops"][reason.label]
        for port in Port:
            out = result.outputs[port]
            for k, frame in zip(out.time_ns.tolist(), out.frames()):
                outputs[k].append((port, frame))
        for k, rule, drop in zip(indices, result.rule.tolist(), result.drop.tolist()):
            emissions = ruleset.rules[rule].emissions if rule >= 0 else ()
            edited = [e for e in emissions if e.port is not Port.CONTROLLER]
            assert len(edited) <= 1 and len(emissions) - len(edited) <= 1, "one output per frame"
            outputs[k].sort(key=lambda out: out[0] == Port.CONTROLLER and bool(edited))
            if edited:
                fields = command_from_emission(edited[0], punt=len(emissions) > 1)
            elif emissions:
                fields = command_from_emission(emissions[0])
            else:
                reason = DropReason.TABLE_MISS if rule < 0 else DropReason.ACTION_DROP
                fields = command_from_emission(None, drop_reason=reason)
            commands[k] = pack(EditCommand, fields)
    return outputs, commands, drops

