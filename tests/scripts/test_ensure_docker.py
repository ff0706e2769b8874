"""scripts/ensure-docker.sh and the Makefile respect DOCKER_HOST: a named engine is checked, never started.

The commands that could install or start a daemon (dockerd, systemctl, sudo, apt-get)
are replaced on PATH by recorders: any call to one is a failure of the test. The
docker command line itself is the real one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ensure-docker.sh"
STARTERS = ("dockerd", "systemctl", "sudo", "apt-get", "setsid", "nohup")
UNREACHABLE = "tcp://127.0.0.1:1"  # nothing listens on port 1: refused at once


@pytest.fixture
def recorders(tmp_path: Path) -> tuple[dict[str, str], Path]:
    if shutil.which("docker") is None:
        pytest.fail("these tests need the docker command line (scripts/ensure-docker.sh installs it)")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in STARTERS:
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["FSRLM_DOCKER_WAIT"] = "600"  # longer than run()'s timeout: waiting for a daemon would fail the test
    return env, calls


def run(cmd: list[str], env: dict[str, str], **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, **kwargs)
    return proc, time.monotonic() - started


def assert_named_not_started(proc: subprocess.CompletedProcess, calls: Path, what: str) -> None:
    assert proc.returncode != 0
    # Fails without waiting for a daemon: the recorders' env sets that wait past run()'s own timeout,
    # so a wait would end in TimeoutExpired (no timed assertion: this machine's load varies).
    assert f"the Docker engine of {what} does not answer" in proc.stderr, proc.stderr
    assert "fsRLM starts no daemon for an engine that DOCKER_HOST or a docker context names" in proc.stderr
    assert not calls.exists(), calls.read_text()


def test_an_unreachable_docker_host_is_reported_not_started(recorders) -> None:
    env, calls = recorders
    proc, _ = run(["bash", str(SCRIPT)], {**env, "DOCKER_HOST": UNREACHABLE})
    assert proc.returncode == 1
    assert_named_not_started(proc, calls, f"DOCKER_HOST={UNREACHABLE}")
    assert "Cannot connect to the Docker daemon at tcp://127.0.0.1:1" in proc.stderr  # docker's own reason


def test_a_docker_context_elsewhere_is_reported_not_started(recorders) -> None:
    env, calls = recorders
    proc, _ = run(["bash", str(SCRIPT)], {**env, "DOCKER_CONTEXT": "no-such-context"})
    assert_named_not_started(proc, calls, "DOCKER_CONTEXT=no-such-context")


def test_make_docker_and_make_run_fail_fast_on_a_bad_docker_host(recorders, tmp_path: Path) -> None:
    env, calls = recorders
    env = {**env, "DOCKER_HOST": UNREACHABLE}
    proc, _ = run(["make", "-C", str(ROOT), "--no-print-directory", "docker"], env)
    assert_named_not_started(proc, calls, f"DOCKER_HOST={UNREACHABLE}")

    # make run, with the test's own virtualenv taken as set up (it is the one running this test)
    venv = Path(sys.prefix)
    log = tmp_path / "app.log"
    log.write_text("ERROR x\n")
    proc, _ = run(["make", "-C", str(ROOT), "--no-print-directory", f"VENV={venv}",
                      "-o", f"{venv}/.fsrlm-installed", "run", f"INPUT={log}"], env)
    assert_named_not_started(proc, calls, f"DOCKER_HOST={UNREACHABLE}")
    assert proc.stderr.count("does not answer") == 1  # tried once, not once per target


@pytest.mark.docker
def test_a_reachable_docker_host_elsewhere_is_used_as_it_is(recorders, remote_docker_host) -> None:
    env, calls = recorders
    proc, _ = run(["bash", str(SCRIPT)], {**env, **remote_docker_host.env})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and not calls.exists()


def test_the_default_socket_is_this_machines_own(recorders) -> None:
    env, calls = recorders
    proc, _ = run(["bash", "-c", f'source <(sed -n "/^elsewhere()/,/^}}/p" {SCRIPT}); elsewhere'],
                  {**env, "DOCKER_HOST": "unix:///var/run/docker.sock", "DOCKER_CONTEXT": "default"})
    assert proc.returncode == 1 and proc.stdout == ""  # not "elsewhere": the script may start it
