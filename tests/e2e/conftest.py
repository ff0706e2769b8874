"""Every end-to-end test must leave nothing behind: no agent process, no container, no volume.

Only this test's own objects count (other test sessions may share the machine's engine):
containers and volumes labelled with this process as their orchestrator, and processes of
the runs whose folders lie under the test's ``tmp_path``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fsrlm.executors.base import LABEL_ORCHESTRATOR
from fsrlm.executors.liveness import orchestrator_id
from support import run_ids_under, run_processes


def _docker_leftovers(client=None) -> list[str]:
    try:
        import docker

        client = client or docker.from_env()
        client.ping()
    except Exception:
        return []  # no engine: the docker tests themselves fail loudly
    ours = {"label": f"{LABEL_ORCHESTRATOR}={orchestrator_id()}"}
    try:
        containers = [c.name for c in client.containers.list(all=True, filters=ours, ignore_removed=True)]
        volumes = [v.name for v in client.volumes.list(filters=ours)]
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
def nothing_left_behind(request: pytest.FixtureRequest, tmp_path: Path):
    docker_before = set(_docker_leftovers())
    remote_before = set(_remote_leftovers(request))
    yield
    deadline = time.monotonic() + 5
    while (left := run_processes(run_ids_under(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"agent processes left running: {sorted(left)}"
    left_docker = set(_docker_leftovers()) - docker_before
    assert not left_docker, f"docker objects left behind: {sorted(left_docker)}"
    left_remote = set(_remote_leftovers(request)) - remote_before
    assert not left_remote, f"docker objects left behind on the remote host: {sorted(left_remote)}"
