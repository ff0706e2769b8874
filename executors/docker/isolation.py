"""Which OCI runtime a sandbox runs with: ``executor.isolation`` (and ``runtime``) against what the engine offers.

``choose_runtime`` is a pure function of the engine's ``docker info`` and the
executor config, so every case is tested without an engine. The executors call
it in ``check()``, before anything is created, and record the answer
(``SandboxInfo``) in the run's result.

A *usable* gVisor runtime is one whose binary is ``runsc`` and whose runtime
arguments include what fsRLM's containers need (checked on this project's
machines, runsc release 20221219):

* ``--network=none`` — without it a ``network_mode=none`` container fails to start
  ("cannot run with network enabled in root network namespace");
* ``--host-uds=open`` (or ``all``) — only for the local ``docker`` executor, which
  bind-mounts the broker's unix socket; without it the mount fails. The remote
  executor tunnels the broker over the exec stream and mounts no socket.

Not ``--oci-seccomp``: it would apply Docker's seccomp profile inside gVisor too,
but with this runsc release that profile refuses ``select(2)`` there (EPERM: bash's
``read -t`` and Python's ``select.select`` fail, the entrypoint cannot start). Without
it gVisor's kernel serves every system call of the agent itself, and only gVisor's
own seccomp filter stands between it and the host's kernel (SECURITY.md).

A runtime that lacks them is refused up front: such a container fails in
``start`` and, with this runsc release, leaves its ``runsc-sandbox`` and
``runsc-gofer`` processes behind on the engine's host.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict

from fsrlm.errors import ExecutorUnavailable
from fsrlm.executors.base import SandboxInfo
from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig

GVISOR_BINARY = "runsc"
HOW_TO_INSTALL = (
    "`make gvisor` (scripts/install-gvisor.sh) installs runsc from Debian's packages and registers it with this "
    "machine's engine; on another host add "
    '"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open"]}} '
    "to its daemon.json and reload it (`systemctl reload docker`); `fsrlm doctor` shows what the engine offers"
)


class EngineRuntime(BaseModel):
    """One entry of the engine's runtimes table."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: str
    args: tuple[str, ...] = ()

    @property
    def is_gvisor(self) -> bool:
        return os.path.basename(self.path) == GVISOR_BINARY

    @property
    def kernel(self) -> str:
        if self.is_gvisor:
            return "gvisor"
        return "host" if os.path.basename(self.path) in ("runc", "crun", "youki") else "other"

    def flag(self, name: str) -> str | None:
        """The value of ``--name=value`` or ``--name value`` among the runtime arguments."""
        for i, arg in enumerate(self.args):
            if arg == f"--{name}" and i + 1 < len(self.args):
                return self.args[i + 1]
            if arg.startswith(f"--{name}="):
                return arg.split("=", 1)[1]
        return None

    @property
    def platform(self) -> str | None:
        if not self.is_gvisor:
            return None
        return self.flag("platform") or "ptrace"

    def missing(self, *, bind_socket: bool) -> list[str]:
        """Runtime arguments fsRLM's containers need that this gVisor runtime lacks."""
        if not self.is_gvisor:
            return []
        lacking = []
        if self.flag("network") != "none":
            lacking.append("--network=none")
        if bind_socket and self.flag("host-uds") not in ("open", "all"):
            lacking.append("--host-uds=open")
        return lacking


def engine_runtimes(info: dict[str, Any]) -> dict[str, EngineRuntime]:
    """The runtimes of ``docker info`` (``Runtimes``), by name."""
    found = {}
    for name, entry in (info.get("Runtimes") or {}).items():
        entry = entry or {}
        found[name] = EngineRuntime(name=name, path=str(entry.get("path") or name),
                                    args=tuple(str(a) for a in entry.get("runtimeArgs") or ()))
    return found


def usable_gvisor(runtimes: dict[str, EngineRuntime], *, bind_socket: bool) -> EngineRuntime | None:
    """The gVisor runtime to use: one named ``runsc`` first, then the others by name."""
    candidates = sorted((r for r in runtimes.values() if r.is_gvisor and not r.missing(bind_socket=bind_socket)),
                        key=lambda r: (r.name != GVISOR_BINARY, r.name))
    return candidates[0] if candidates else None


def _unusable_note(runtimes: dict[str, EngineRuntime], bind_socket: bool) -> str:
    lacking = [f"'{r.name}' lacks {' '.join(r.missing(bind_socket=bind_socket))}"
               for r in runtimes.values() if r.is_gvisor and r.missing(bind_socket=bind_socket)]
    return f" (registered but unusable: {'; '.join(lacking)})" if lacking else ""


def choose_runtime(
    info: dict[str, Any],
    config: DockerExecutorConfig | RemoteDockerExecutorConfig,
    *,
    bind_socket: bool,
    engine: str = "the Docker engine",
) -> SandboxInfo:
    """The runtime a sandbox gets, or ``ExecutorUnavailable`` saying what to do.

    ``bind_socket``: the broker's socket is bind-mounted (the local ``docker``
    executor), so a gVisor runtime needs ``--host-uds``.
    """
    runtimes = engine_runtimes(info)
    isolation = config.isolation
    names = ", ".join(sorted(runtimes)) or "none"

    def info_of(runtime: EngineRuntime, reason: str) -> SandboxInfo:
        kernel = runtime.kernel
        return SandboxInfo(executor=config.type, kernel=kernel, isolation=isolation,  # type: ignore[arg-type]
                           runtime=runtime.name, platform=runtime.platform, reason=reason)

    if config.runtime is not None:
        runtime = runtimes.get(config.runtime)
        if runtime is None:
            raise ExecutorUnavailable(
                f"executor.runtime={config.runtime!r} is not a runtime of {engine} (it has: {names}); "
                + (HOW_TO_INSTALL if config.runtime.startswith("runsc") or isolation == "gvisor"
                   else "register it in the engine's daemon.json, or unset executor.runtime"))
        if isolation == "gvisor" and not runtime.is_gvisor:
            raise ExecutorUnavailable(
                f"executor.isolation='gvisor', but executor.runtime={config.runtime!r} runs {runtime.path}, not "
                "gVisor's runsc; unset executor.runtime or name a gVisor runtime")
        if isolation == "runc" and runtime.is_gvisor:
            raise ExecutorUnavailable(
                f"executor.isolation='runc' asks for the host's kernel, but executor.runtime={config.runtime!r} is "
                "gVisor; set one of the two")
        if lacking := runtime.missing(bind_socket=bind_socket):
            raise ExecutorUnavailable(
                f"The gVisor runtime {runtime.name!r} of {engine} lacks the runtime arguments {' '.join(lacking)}, "
                "without which fsRLM's containers cannot start; add them to its runtimeArgs in daemon.json and "
                "reload the engine (`make gvisor` registers a runtime that has them)")
        return info_of(runtime, "executor.runtime")

    if isolation in ("auto", "gvisor"):
        gvisor = usable_gvisor(runtimes, bind_socket=bind_socket)
        if gvisor is not None:
            return info_of(gvisor, f"{isolation}: {engine} has gVisor as '{gvisor.name}'")
        if isolation == "gvisor":
            raise ExecutorUnavailable(
                f"executor.isolation='gvisor', but {engine} has no usable gVisor runtime (its runtimes: {names})"
                f"{_unusable_note(runtimes, bind_socket)}; {HOW_TO_INSTALL}")

    runc = runtimes.get("runc")
    if runc is None:
        raise ExecutorUnavailable(f"{engine} has no 'runc' runtime (it has: {names}); set executor.runtime")
    reason = "runc: asked for" if isolation == "runc" else (
        f"auto: {engine} has no usable gVisor runtime{_unusable_note(runtimes, bind_socket)}")
    return info_of(runc, reason)





def resolve(client, config: DockerExecutorConfig | RemoteDockerExecutorConfig, *, bind_socket: bool,
            engine: str = "the Docker engine") -> SandboxInfo:
    """``choose_runtime`` for the engine behind ``client`` (a docker SDK client that answered a ping)."""
    try:
        info = client.info()
    except Exception as e:  # noqa: BLE001 - docker SDK and requests errors alike
        raise ExecutorUnavailable(f"Cannot ask {engine} which runtimes it has: {e}") from e
    return choose_runtime(info, config, bind_socket=bind_socket, engine=engine)
__all__ = ["EngineRuntime", "HOW_TO_INSTALL", "choose_runtime", "engine_runtimes", "resolve", "usable_gvisor"]
