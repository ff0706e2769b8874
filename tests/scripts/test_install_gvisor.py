"""scripts/install-gvisor.sh against Docker engines the tests own: registered by a reload, nothing else touched.

Each test starts its own dockerd (``tests/dockerd.py``), never the machine's: the script is pointed at
it with ``FSRLM_DOCKERD_PID`` (local mode) or only through ``DOCKER_HOST`` (another engine: look only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.one_kernel, pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runsc"),
                                                     reason="needs root and runsc (`make gvisor`)")]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-gvisor.sh"
NEEDED = ["--network=none", "--host-uds=open"]


def install(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "FSRLM_"))}
    return subprocess.run(["bash", str(SCRIPT)], env={**clean, **env}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def dockerd_pids() -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
            and (p / "comm").is_file() and _read(p / "comm") == "dockerd"}


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


@pytest.fixture
def engine():
    """A second dockerd of this test, with a setting of its own in its daemon.json."""
    from dockerd import SecondDockerd

    with SecondDockerd() as daemon:
        daemon.config_file.write_text(json.dumps({"max-concurrent-downloads": 2}))  # a setting that must survive
        client = daemon.client()
        try:
            yield daemon, client
        finally:
            client.close()


def test_registers_runsc_by_a_reload_and_leaves_the_rest_alone(engine, docker_image):
    import docker

    from fsrlm.executors.docker.ship import ship

    daemon, client = engine
    local = docker.from_env()
    try:
        ship(local, client, docker_image)
    finally:
        local.close()
    running = client.containers.run(docker_image, ["sleep", "300"], entrypoint=[], detach=True, network_mode="none")
    running.reload()
    started = running.attrs["State"]["StartedAt"]
    result = install({"DOCKER_HOST": daemon.url, "FSRLM_DOCKERD_PID": str(daemon.pid)})
    assert result.returncode == 0, result.stderr
    assert "now offers 'runsc'" in result.stderr

    written = json.loads(daemon.config_file.read_text())
    assert written["max-concurrent-downloads"] == 2  # the engine's other settings are kept
    assert written["runtimes"]["runsc"] == {"path": shutil.which("runsc"), "runtimeArgs": NEEDED}
    assert json.loads(Path(f"{daemon.config_file}.fsrlm-backup").read_text()) == {"max-concurrent-downloads": 2}
    assert client.info()["Runtimes"]["runsc"]["runtimeArgs"] == NEEDED

    running.reload()  # the container that was running before the reload still is, never restarted
    assert running.status == "running" and running.attrs["State"]["StartedAt"] == started

    out = client.containers.run(running.image.id, ["uname", "-r"], entrypoint=[], runtime="runsc",
                                network_mode="none", remove=True)
    assert out.decode().strip() == "4.4.0"  # gVisor's kernel answers

    again = install({"DOCKER_HOST": daemon.url, "FSRLM_DOCKERD_PID": str(daemon.pid)})
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert json.loads(daemon.config_file.read_text()) == written
    running.remove(force=True)


def test_a_runsc_entry_of_the_users_own_is_left_alone(engine):
    daemon, client = engine
    theirs = {"path": shutil.which("runsc"), "runtimeArgs": ["--debug"]}
    daemon.config_file.write_text(json.dumps({"runtimes": {"runsc": theirs}}))
    result = install({"DOCKER_HOST": daemon.url, "FSRLM_DOCKERD_PID": str(daemon.pid)})
    assert result.returncode == 0, result.stderr
    runtimes = json.loads(daemon.config_file.read_text())["runtimes"]
    assert runtimes["runsc"] == theirs
    assert runtimes["fsrlm-runsc"]["runtimeArgs"] == NEEDED
    assert "fsrlm-runsc" in client.info()["Runtimes"]


def test_invalid_daemon_json_is_not_touched(engine):
    daemon, client = engine
    daemon.config_file.write_text("{not json")
    result = install({"DOCKER_HOST": daemon.url, "FSRLM_DOCKERD_PID": str(daemon.pid)})
    assert result.returncode == 1
    assert "not valid JSON" in result.stderr and "nothing was changed" in result.stderr
    assert daemon.config_file.read_text() == "{not json"
    client.ping()  # the engine still answers


def test_another_engine_is_only_looked_at(engine):
    daemon, client = engine
    before = daemon.config_file.read_text()
    result = install({"DOCKER_HOST": daemon.url})  # no FSRLM_DOCKERD_PID: "another engine"
    assert result.returncode == 1
    assert "changes nothing" in result.stderr and "has no gVisor runtime" in result.stderr
    assert "daemon.json" in result.stderr  # it says what to do there
    assert daemon.config_file.read_text() == before
    assert "runsc" not in client.info()["Runtimes"]


def test_an_engine_that_does_not_answer_starts_no_daemon():
    before = dockerd_pids()
    result = install({"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert result.returncode == 1
    assert "does not answer" in result.stderr and "no local daemon was started" in result.stderr
    assert dockerd_pids() <= before
