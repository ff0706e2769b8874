"""The tests' second Docker daemon (tests/dockerd.py) leaves this machine's networking as it found it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from dockerd import BRIDGE_PREFIX, SecondDockerd, free_port, reap_stale

pytestmark = pytest.mark.docker


def _bridges() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip() for line in out.splitlines()}


@pytest.fixture
def root_with_iproute2() -> None:
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("dockerd"):
        (pytest.fail if os.environ.get("CI") else pytest.skip)("needs root, iproute2 and dockerd")


def test_a_second_daemon_keeps_the_hosts_bridges(root_with_iproute2) -> None:
    """``dockerd --bridge=none`` deletes docker0, the main daemon's bridge: the test daemon has a bridge
    of its own instead, gone with it."""
    before = _bridges()
    with SecondDockerd() as daemon:
        assert daemon.bridge and daemon.bridge.startswith(BRIDGE_PREFIX)
        assert _bridges() == before | {daemon.bridge}
        daemon.client().ping()
    assert _bridges() == before


def test_a_stale_daemons_bridge_is_reaped(root_with_iproute2) -> None:
    name = f"{BRIDGE_PREFIX}{free_port()}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        assert name in reap_stale()
        assert name not in _bridges()
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
