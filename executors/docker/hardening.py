"""The locked-down container settings, as plain data.

``container_options`` is a pure function: it turns the executor config and the
run's particulars into the keyword arguments of the docker SDK's low-level
``APIClient.create_container`` (``create``) and ``create_host_config``
(``host_config``). Nothing here talks to Docker, so tests can check every
default without an engine.

What it sets, and why:

* ``network_mode="none"``: the only way out is the broker socket.
* ``read_only`` root; tmpfs with size caps for ``/tmp`` and ``$HOME``, both
  ``noexec`` (the CLI and scripts run with it: nothing the CLI unpacks there is
  executed; the workspace itself stays executable, Docker cannot mount a bind
  mount ``noexec``); the
  workspace is the only writable mount (a bind mount of the run folder, or for
  a remote host a per-run named volume); the broker socket is mounted
  read-only (connecting to a unix socket does not need a writable mount).
* ``cap_drop=ALL``, ``no-new-privileges``, Docker's default seccomp profile
  (never ``seccomp=unconfined``), a non-root user, ``init`` to reap zombies.
* pids, memory (swap included) and CPU limits; ``ulimits``: no core dumps
  (soft and hard 0, so a crashing program leaves no memory image in the
  workspace) and an explicit cap on open files; the OCI ``runtime`` the
  executor chose (``isolation.choose_runtime``).
* labels so leftovers can always be found and removed.

Under gVisor (``sandbox.kernel == "gvisor"``) the same limits are kept where the
agent's processes live, inside gVisor's kernel, because the host sees only the
sandbox's own processes (``gvisor_limits``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.types import Mount
from docker.utils import parse_bytes
from fsrlm.executors.base import (
    LABEL_APP,
    LABEL_CREATED,
    LABEL_ORCHESTRATOR,
    LABEL_RUN_ID,
    SandboxInfo,
)
from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig
from fsrlm.executors.liveness import orchestrator_id

WORKSPACE = "/workspace"
HOME = "/home/sandbox"
BROKER_SOCKET = "/run/fsrlm/broker.sock"
# CPU weights (cgroup cpu.shares): Docker's default for a sandbox whose run is under way, the
# kernel's minimum for one a warm pool started ahead of its run. A weight, not a limit: the
# nano_cpus cap applies to both.
ACTIVE_CPU_SHARES = 1024
STANDBY_CPU_SHARES = 2
RELAY_URL = "http://127.0.0.1:8080"
CLI_PATH = "/usr/local/bin/claude"
AGENT_SHELL = "/opt/fsrlm/bin/bash"  # read by AGENT_SHELL: the shell of the agent's commands
SANDBOX_UID = 1000
SANDBOX_GID = 1000
NOFILE = 8192  # open files per process in the sandbox (soft = hard)

# gVisor's ptrace platform (runsc's default) backs each process of the sandbox with a stub process on the
# host, of 4-6 host tasks (measured on 2 CPUs: 50 processes, +248 tasks; 150, +784), and the sandbox's kernel
# and file proxy are about 50 host tasks more (about 170 with the CLI running). When the host's pids limit
# is reached, gVisor's kernel cannot make a stub and panics: the whole sandbox dies, agent included. So
# under gVisor the agent's processes are capped inside (RLIMIT_NPROC, which gVisor's kernel counts per
# sandbox, threads included, like the pids cgroup), and the host's cap leaves room for their stubs.
GVISOR_HOST_TASKS_PER_PROCESS = 6
GVISOR_HOST_TASKS_BASE = 256
# What a gVisor sandbox needs besides the agent's commands: the CLI and gVisor's kernel took about 210 MB
# together (host cgroup, CLI idle); the rest is headroom for gVisor's page cache and the relay.
GVISOR_AGENT_RESERVE = 384 << 20
GVISOR_MIN_SCRIPT_MEMORY = 64 << 20
# Tasks kept for the CLI when the agent's commands fork without end (the CLI had 9 threads, the container 16 tasks).
GVISOR_AGENT_TASKS = 64


@dataclass(frozen=True)
class ContainerOptions:
    """Arguments of ``api.create_container(**create, host_config=api.create_host_config(**host_config))``."""

    create: dict[str, Any] = field(default_factory=dict)
    host_config: dict[str, Any] = field(default_factory=dict)


def safe_name(run_id: str) -> str:
    """A run id as a part of a container or volume name."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in run_id).strip("-.")
    return cleaned[:40] or "run"


def run_labels(run_id: str, created: float | None = None) -> dict[str, str]:
    """The labels every container and volume of one run carries."""
    return {
        LABEL_APP: "1",
        LABEL_RUN_ID: run_id,
        LABEL_CREATED: str(int(created if created is not None else time.time())),
        LABEL_ORCHESTRATOR: orchestrator_id(),
    }


def container_options(
    config: DockerExecutorConfig | RemoteDockerExecutorConfig,
    *,
    image: str,
    command: list[str],
    environment: dict[str, str],
    run_id: str,
    user: tuple[int, int] = (SANDBOX_UID, SANDBOX_GID),
    workspace: Path | None = None,
    broker_socket: Path | None = None,
    volume: str | None = None,
    cli_binary: Path | None = None,
    name: str | None = None,
    created: float | None = None,
    sandbox: SandboxInfo | None = None,
    standby: bool = False,
) -> ContainerOptions:
    """Everything ``create_container`` needs for one hardened agent container.

    ``workspace`` and ``broker_socket`` are host paths to bind-mount; the
    remote backend passes neither (it copies files and tunnels the broker) but
    the name of the run's ``volume``, mounted at ``/workspace``. ``sandbox`` is
    the runtime the executor chose; without it, ``config.runtime`` (or the
    engine's default). A ``standby`` container (a warm pool's) starts with the
    lowest CPU weight, so starting it ahead of time takes only CPU that running
    sandboxes leave idle; ``ACTIVE_CPU_SHARES`` is restored when its run takes it.
    """
    if workspace is not None and volume is not None:
        raise ValueError("the workspace is a bind mount or a volume, not both")
    uid, gid = user
    size = config.tmpfs_size
    mounts: list[Mount] = []
    if workspace is not None:
        mounts.append(Mount(target=WORKSPACE, source=str(workspace), type="bind", read_only=False))
    if volume is not None:
        mounts.append(Mount(target=WORKSPACE, source=volume, type="volume", read_only=False))
    if broker_socket is not None:
        mounts.append(Mount(target=BROKER_SOCKET, source=str(broker_socket), type="bind", read_only=True))
    if cli_binary is not None:  # the same binary the image holds, read-only (see DockerExecutorConfig.share_cli)
        mounts.append(Mount(target=CLI_PATH, source=str(cli_binary), type="bind", read_only=True))

    host_config: dict[str, Any] = {
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {
            "/tmp": f"rw,nosuid,nodev,noexec,size={size},mode=1777",
            HOME: f"rw,nosuid,nodev,noexec,size={size},mode=0700,uid={uid},gid={gid}",
        },
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "init": True,
        "pids_limit": config.pids_limit,
        "mem_limit": config.memory,
        "memswap_limit": config.memory,
        "nano_cpus": int(round(config.cpus * 1e9)),
        "cpu_shares": STANDBY_CPU_SHARES if standby else ACTIVE_CPU_SHARES,
        "ipc_mode": "private",
        "shm_size": "64m",  # /dev/shm: Docker's default cap, stated
        "ulimits": [{"Name": "core", "Soft": 0, "Hard": 0}, {"Name": "nofile", "Soft": NOFILE, "Hard": NOFILE}],
        "mounts": mounts,
        # The attach stream carries the output; keep the daemon's copy small.
        "log_config": {"type": "json-file", "config": {"max-size": "1m", "max-file": "1"}},
    }
    environment = dict(environment)
    runtime = sandbox.runtime if sandbox is not None else config.runtime
    if runtime:
        host_config["runtime"] = runtime
    if sandbox is not None and sandbox.kernel == "gvisor":
        limits = gvisor_limits(config)
        host_config["pids_limit"] = limits.host_pids
        host_config["ulimits"] = [*host_config["ulimits"],
                                  {"Name": "nproc", "Soft": limits.processes, "Hard": limits.processes}]
        environment["FSRLM_SCRIPT_MEMORY_KB"] = str(limits.script_memory >> 10)  # both read by AGENT_SHELL
        environment["FSRLM_SCRIPT_PROCESSES"] = str(limits.script_processes)

    create: dict[str, Any] = {
        "image": image,
        "command": list(command),
        "environment": environment,
        "user": f"{uid}:{gid}",
        "working_dir": WORKSPACE,
        "labels": run_labels(run_id, created),
        "hostname": "sandbox",
        # stdin_open without detach makes docker-py set StdinOnce: half-closing the
        # attach stream closes the agent's stdin (EOF), as a pipe would.
        "stdin_open": True,
        "detach": False,
        "tty": False,
    }
    if name:
        create["name"] = name
    return ContainerOptions(create=create, host_config=host_config)


@dataclass(frozen=True)
class GvisorLimits:
    """The limits of one gVisor sandbox (see ``GVISOR_HOST_TASKS_PER_PROCESS``)."""

    processes: int  # tasks (processes and threads) the sandbox's kernel lets the agent's uid have: pids_limit
    script_processes: int  # the same, for the agent's commands: the rest is kept for the CLI
    host_pids: int  # host tasks of the whole sandbox (kernel, file proxy, stubs)
    script_memory: int  # address space of each of the agent's commands, in bytes


def gvisor_limits(config: DockerExecutorConfig | RemoteDockerExecutorConfig) -> GvisorLimits:
    """``pids_limit`` and ``memory`` applied inside a gVisor sandbox, so a runaway script fails alone.

    Processes: RLIMIT_NPROC = ``pids_limit``, counted by gVisor's kernel (under runc it would count
    the uid's processes host-wide, so it is set only here); the host's pids cap becomes
    ``pids_limit`` x 6 + 256, which the agent's processes cannot reach through their stubs.
    The agent's commands get ``pids_limit`` less 64 of those, kept for the CLI.
    Memory: every command the agent runs gets an address-space cap of ``memory`` less 384 MiB (at
    least 64 MiB) for the CLI and gVisor's kernel. One command cannot exhaust the sandbox; several
    large ones at once still can, and then the sandbox dies as a whole (documented in SECURITY.md).
    """
    memory = parse_bytes(config.memory)
    return GvisorLimits(
        processes=config.pids_limit,
        script_processes=max(config.pids_limit - GVISOR_AGENT_TASKS, config.pids_limit // 2),
        host_pids=config.pids_limit * GVISOR_HOST_TASKS_PER_PROCESS + GVISOR_HOST_TASKS_BASE,
        script_memory=max(memory - GVISOR_AGENT_RESERVE, GVISOR_MIN_SCRIPT_MEMORY),
    )
