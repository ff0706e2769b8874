"""Every end-to-end test must leave nothing behind: no agent process, no container, no volume."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def _agent_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"FSRLM_RUN_ID=" in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _docker_leftovers(client=None) -> list[str]:
    try:
        import docker

        client = client or docker.from_env()
        client.ping()
    except Exception:
        return []  # no engine: the docker tests themselves fail loudly
    try:
        containers = [c.name for c in client.containers.list(all=True, filters={"label": "fsrlm=1"})]
        volumes = [v.name for v in client.volumes.list(filters={"label": "fsrlm=1"})]
        return containers + volumes
    finally:
        client.close()


def _remote_leftovers(request: pytest.FixtureRequest) -> list[str]:
    """For remote-docker runs: what the second daemon (the "remote host") holds."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("executor_type") != "remote-docker":
        return []
    return _docker_leftovers(request.getfixturevalue("remote_docker_host").client())


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest):
    before = set(_agent_processes())
    docker_before = set(_docker_leftovers())
    remote_before = set(_remote_leftovers(request))
    yield
    deadline = time.monotonic() + 5
    while (left := set(_agent_processes()) - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"agent processes left running: {sorted(left)}"
    left_docker = set(_docker_leftovers()) - docker_before
    assert not left_docker, f"docker objects left behind: {sorted(left_docker)}"
    left_remote = set(_remote_leftovers(request)) - remote_before
    assert not left_remote, f"docker objects left behind on the remote host: {sorted(left_remote)}"
