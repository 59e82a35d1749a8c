"""Security properties of decapsulation and tenant isolation, on the reference model and on the
gateware (the ``rtl`` engine: cocotb on Icarus, one batched run).

Random tenant configurations and the traffic that attacks them are drawn by
:mod:`security.tenants` (hypothesis through ``st.randoms()`` on the reference; a printed seed,
``OPENVTEP_SEED=<n>``, for the gateware), and :func:`security.tenants.check_security` holds:

- (a) VXLAN to another address than ``local_ip``, to another UDP port than ``udp_port``, or
  from a source the tenant does not know (when its rules name ``tun_src``) is never delivered
  into a tenant nor re-encapsulated; the first two are not even decapsulated.
- (b) a frame that arrived in VNI ``a`` is never delivered on the VLAN of, nor sent in the VNI
  of, another tenant ``b``; what we send in VNI ``b`` goes only to ``b``'s peers.

Elsewhere: ``tests/host/test_reference.py::test_tenant_isolation`` checks that the reference
sends a tunnel frame on in exactly the VNIs its matched rule allows (any rule shapes), and
``tests/hdl/test_pipeline.py::check_isolation`` the same of the gateware's random-rule runs.
These tests state the properties end to end, against configurations built to isolate, with
traffic built to break them.
"""

import os
import random
from collections import Counter

import pytest
from fuzz.strategies import (
    CONFIG,
    describe_mismatch,
    frame_mismatches,
    outputs_by_frame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openvtep.errors import RuleError
from openvtep.frames import FrameBatch
from openvtep.reference import Reference, parse
from openvtep.rtl_engine import rtl_engine
from openvtep.tables import Geometry, compile_tables

from . import tenants as T

# The fuzz tests' config (max_frame 256) and the pipeline tests' geometry: one gateware build
# for tests/security and tests/fuzz/test_fuzz_gateware.py.
GEOMETRY = Geometry(exact_entries=256, exact_profiles=4, wildcard_entries=16)
EXAMPLES = int(os.environ.get("OPENVTEP_FUZZ_EXAMPLES", "60"))
QUICK = settings(max_examples=EXAMPLES, deadline=None, database=None,
                 suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=2000, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def check_reference(case):
    batch = FrameBatch.from_frames(case.pairs())
    result = Reference(case.config, case.ruleset).run(batch)
    counts = T.check_security(case, outputs_by_frame(result, len(batch)), "reference")
    parsed = parse(batch, case.config)
    for i, f in enumerate(case.frames):
        if f.kind in ("wrong_dst", "wrong_port"):
            assert not parsed.decap[i], f"reference: frame {i} ({f.kind}) decapsulated"
            assert int(parsed.tun_id[i]) == 0
        elif f.kind in ("tenant", "foreign_src", "stray_vni") and parsed.drop[i] < 0:
            assert parsed.decap[i] and int(parsed.tun_id[i]) == f.vni, \
                f"reference: frame {i} ({f.kind}): a valid VXLAN frame to us not decapsulated"
    return counts


@QUICK
@given(st.randoms(use_true_random=False))
def test_decoys_never_reach_a_tenant(rng):
    """(a) on the reference: mostly VXLAN from unknown sources, to other addresses and ports."""
    check_reference(T.case(rng, CONFIG, kinds=T.DECOY_KINDS))


@QUICK
@given(st.randoms(use_true_random=False))
def test_vni_isolation_random_rules(rng):
    """(b) on the reference: random tenant rule sets, every kind of traffic."""
    check_reference(T.case(rng, CONFIG))


@pytest.mark.slow
@LONG
@given(st.randoms(use_true_random=False))
def test_isolation_long(rng):
    check_reference(T.case(rng, CONFIG, kinds=rng.choice([T.KINDS, T.DECOY_KINDS])))


def gateware_case(seed, frames):
    """A case of 6 tenants that the gateware's tables (``GEOMETRY``) hold, with ``frames``
    frames: half every kind of traffic, half decoys."""
    for attempt in range(100):
        rng = random.Random(seed * 1000 + attempt)
        case = T.case(rng, CONFIG, tenant_count=6, frames=frames // 2)
        case.frames += [T.frame(rng, CONFIG, case.tenants, T.DECOY_KINDS)
                        for _ in range(frames - frames // 2)]
        rng.shuffle(case.frames)
        try:
            compile_tables(case.ruleset, GEOMETRY)
        except RuleError:
            continue
        return case
    raise AssertionError(f"seed {seed}: no rule set that fits {GEOMETRY}")


def test_gateware_isolation():
    """(a) and (b) on the gateware: one simulation of 400 frames against 6 tenants, with
    random gaps and backpressure; every frame's outputs equal the reference's, and the
    properties hold of what the gateware emitted."""
    seed = int(os.environ.get("OPENVTEP_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"OPENVTEP_SEED={seed}")
    case = gateware_case(seed, 400)
    pairs = case.pairs()
    ref = Reference(CONFIG, case.ruleset).run(FrameBatch.from_frames(pairs))
    rtl = rtl_engine(CONFIG, case.ruleset, pairs, 8, geometry=GEOMETRY, idle=0.2,
                     backpressure=0.3, seed=seed)
    bad = frame_mismatches(ref, rtl, len(pairs))
    assert not bad, (f"seed {seed}: {len(bad)} frames differ from the reference; first:\n"
                     + describe_mismatch(ref, rtl, pairs, bad[0]))
    host, net = T.check_security(case, outputs_by_frame(rtl, len(pairs)), f"seed {seed} rtl")
    kinds = Counter(f.kind for f in case.frames)
    print(f"{len(pairs)} frames {dict(kinds)}: {host} delivered to tenants, {net} "
          f"(re)encapsulated; {rtl.cycles} cycles")
    assert host >= 20 and net >= 1, f"seed {seed}: too little delivered to test isolation"
    assert min(kinds[k] for k in ("foreign_src", "wrong_dst", "wrong_port")) >= 30
