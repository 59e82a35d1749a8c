"""Fixtures of the external-oracle tests. Helpers live in ``oracle_support.py``."""

import shutil

import pytest
from oracle_support import TSHARK, tshark_profile


@pytest.fixture(scope="session")
def tshark_home(tmp_path_factory):
    """An XDG config home in which tshark dissects only the VTEP's layers (see
    ``oracle_support.tshark_profile``)."""
    if TSHARK is None:
        pytest.fail("tshark is not installed (Debian package tshark; `make deps` installs it)")
    return tshark_profile(tmp_path_factory.mktemp("tshark"))


@pytest.fixture(scope="session")
def ovs_ofctl():
    path = shutil.which("ovs-ofctl")
    if path is None:
        pytest.fail("ovs-ofctl is not installed (Debian package openvswitch-common; "
                    "`make deps` installs it)")
    return path
