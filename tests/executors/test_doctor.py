"""fsrlm doctor: verdicts on an engine's docker info (pure), and the command against real engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig
from fsrlm.executors.docker.doctor import checks_of, runtime_rows

GOOD = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open"]}


def engine_info(**extra) -> dict:
    base = {"ServerVersion": "20.10.24", "OperatingSystem": "Debian", "KernelVersion": "6.1", "Architecture": "x86_64",
            "NCPU": 2, "Runtimes": {"runc": {"path": "runc"}, "runsc": GOOD},
            "SecurityOptions": ["name=seccomp,profile=default"], "MemoryLimit": True, "SwapLimit": True,
            "PidsLimit": True, "CpuCfsQuota": True, "CgroupVersion": "2", "CgroupDriver": "systemd",
            "Driver": "overlay2"}
    return {**base, **extra}


def by_name(checks) -> dict:
    return {c.name: c for c in checks}


def test_a_sound_engine_with_gvisor():
    checks, chosen = checks_of(engine_info(), DockerExecutorConfig(), engine="the Docker engine")
    c = by_name(checks)
    assert chosen is not None and chosen.kernel == "gvisor"
    assert c["isolation"].status == "ok" and "gVisor (runsc, ptrace)" in c["isolation"].value
    assert c["gVisor"].status == "ok"
    assert (c["seccomp"].status, c["cgroup limits"].status, c["storage driver"].status) == ("ok", "ok", "ok")
    assert c["user namespaces"].status == "warn" and "userns-remap" in c["user namespaces"].fix


def test_what_is_missing_is_named_with_what_to_do():
    info = engine_info(Runtimes={"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc"}},
                       SecurityOptions=["name=userns"], SwapLimit=False, PidsLimit=False, Driver="vfs")
    checks, chosen = checks_of(info, DockerExecutorConfig(isolation="gvisor"), engine="the Docker engine")
    c = by_name(checks)
    assert chosen is None
    assert c["isolation"].status == "fail" and "make gvisor" in c["isolation"].fix
    assert c["gVisor"].status == "warn" and "lacks --network=none --host-uds=open" in c["gVisor"].value
    assert c["seccomp"].status == "fail" and "seccomp" in c["seccomp"].fix
    assert c["user namespaces"].status == "ok" and "remapped" in c["user namespaces"].value
    assert c["cgroup limits"].status == "fail" and "swap, pids" in c["cgroup limits"].value
    assert c["storage driver"].status == "info" and "share_cli" in c["storage driver"].fix


def test_fuse_overlayfs_is_named_with_the_driver_that_avoids_its_cost():
    checks, _ = checks_of(engine_info(Driver="fuse-overlayfs"), DockerExecutorConfig(), engine="the Docker engine")
    fix = by_name(checks)["storage driver"].fix
    assert by_name(checks)["storage driver"].status == "info"
    assert "share_cli" in fix and "overlay2" in fix and "/proc/filesystems" in fix
    vfs, _ = checks_of(engine_info(Driver="vfs"), DockerExecutorConfig(), engine="the Docker engine")
    assert "overlay2" not in by_name(vfs)["storage driver"].fix


def test_runtime_rows_depend_on_the_executor():
    info = engine_info(Runtimes={"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc",
                                                                    "runtimeArgs": ["--network=none"]}})
    local = {r.name: r for r in runtime_rows(info, bind_socket=True)}
    remote = {r.name: r for r in runtime_rows(info, bind_socket=False)}
    assert not local["runsc"].usable and local["runsc"].missing == ["--host-uds=open"]
    assert remote["runsc"].usable  # the remote executor mounts no socket
    checks, chosen = checks_of(info, RemoteDockerExecutorConfig(host="tcp://h:2376"), engine="h")
    assert chosen is not None and chosen.runtime == "runsc"


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "DOCKER_"))}
    return subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "doctor", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.docker
@pytest.mark.one_kernel
def test_doctor_on_this_machine_probes_both_kernels(docker_image, gvisor_available):
    result = doctor("--json", "--probe")
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["executor"] == "docker" and report["ok"] is True
    names = {c["name"]: c for c in report["checks"]}
    assert names["sandbox image"]["status"] == "ok" and docker_image in names["sandbox image"]["value"]
    probes = {p["runtime"]: p for p in report["probes"]}
    assert probes["runc"]["ok"] and probes["runc"]["kernel"] == os.uname().release
    if gvisor_available:
        assert report["isolation"]["kernel"] == "gvisor"  # auto picks it
        gvisor = probes[report["isolation"]["runtime"]]
        assert gvisor["ok"] and gvisor["kernel"] == "4.4.0" and "gVisor" in gvisor["detail"]
    table = doctor()
    assert table.returncode == 0 and "ready" in table.stdout and "runtimes" in table.stdout


@pytest.mark.docker
@pytest.mark.one_kernel
def test_doctor_of_an_unreachable_host_says_so_and_exits_4():
    result = doctor("--host", "tcp://127.0.0.1:9", "--json")
    assert result.returncode == 4
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["checks"][0]["status"] == "fail"
    assert "Cannot reach the Docker host" in report["checks"][0]["fix"]


@pytest.mark.docker
@pytest.mark.one_kernel
def test_doctor_of_an_engine_without_gvisor(plain_dockerd):
    result = doctor("--host", plain_dockerd.url, "--isolation", "gvisor", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 4
    isolation = next(c for c in report["checks"] if c["name"] == "isolation")
    assert isolation["status"] == "fail" and "no usable gVisor runtime" in isolation["fix"]
    auto = json.loads(doctor("--host", plain_dockerd.url, "--json").stdout)
    assert auto["ok"] is True and auto["isolation"]["kernel"] == "host"
