"""Every host-side path operation on a folder the agent wrote: collect, hand-back, removal, resume, viewer, gc.

Each test is a real run in the Docker sandbox (or on a second Docker daemon standing
in for a remote host) whose scripted agent prepares the trap with its own tools;
the test then lets the host do its part and checks the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from fsrlm import RLM
from fsrlm.viewer import ViewerSettings, create_app

pytestmark = pytest.mark.docker

SECRET = "HOST-SECRET-5e2b-never-shown"


@pytest.fixture
def remote_docker(remote_docker_host, monkeypatch):
    """Point the remote-docker executor at the second daemon (a "remote host" on loopback)."""
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in remote_docker_host.env.items():
        monkeypatch.setenv(name, value)
    return remote_docker_host


def _links_out(root: Path) -> list[str]:
    """Symlinks under ``root`` whose target, resolved on the host, lies outside it."""
    real = os.path.realpath(root)
    out = []
    for path in root.rglob("*"):
        if path.is_symlink():
            target = os.path.realpath(path)
            if target != real and not target.startswith(real + "/"):
                out.append(f"{path.relative_to(root)} -> {os.readlink(path)}")
    return sorted(out)


CHAINED_LINKS = """
os.makedirs("d0"); os.makedirs("d1"); os.makedirs("d2/deep")
os.symlink("..", "d0/l")              # the workspace itself: inside
os.symlink("../d0/l/..", "d1/l")      # each step looks inside; together: the run folder's parent
os.symlink("../../d1/l/..", "d2/deep/l")
os.symlink("/etc", "abs")
os.symlink("../..", "up")
F["planted"] = sorted(os.readlink(p) for p in ("d0/l", "d1/l", "d2/deep/l", "abs", "up"))
save()
from llm_client import write_answer
write_answer("planted")
"""


def test_collect_keeps_no_link_that_climbs_out(attack_run, finding, remote_docker):
    f = finding(
        "remote executor", "chained links in the collected workspace",
        tried="on a remote Docker host, the agent makes `d0/l -> ..`, `d1/l -> ../d0/l/..` and "
              "`d2/deep/l -> ../../d1/l/..` (each looks inside on its own), `abs -> /etc`, `up -> ../..`; "
              "the workspace is copied back as an archive",
        expected="the run folder on the host holds no symlink that resolves outside it; the rest comes back",
    )
    run = attack_run(CHAINED_LINKS, executor="remote-docker")
    assert run.result.success, run.result.errors
    ws = run.workspace
    out = _links_out(ws)
    f.observed = f"links resolving outside the run folder: {out or 'none'}"
    assert out == []
    assert os.readlink(ws / "d0" / "l") == ".."  # a link pointing inside comes back
    assert (ws / "output" / "answer.md").read_text() == "planted"
