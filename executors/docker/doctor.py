"""``fsrlm doctor``: what a Docker engine offers the sandbox, and what to do for more.

``diagnose(config)`` connects to the engine the configured executor would use
(``docker``: this machine's; ``remote-docker``: its host), reads ``docker info``
and the image store, and returns a ``DoctorReport``: one ``Check`` per concern
(engine, isolation, gVisor, seccomp, user namespaces, cgroup limits, storage
driver, sandbox image), the engine's runtimes, and what ``executor.isolation``
resolves to. With ``probe=True`` it also starts one tiny hardened container per
kernel (runc, and gVisor when usable) and reports the kernel it saw and how long
it took. ``checks_of(info, ...)`` is pure, so every verdict is tested without an
engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from fsrlm.errors import ExecutorUnavailable, FsrlmError
from fsrlm.executors.base import SandboxInfo
from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig
from fsrlm.executors.docker import hardening, isolation

Status = Literal["ok", "warn", "fail", "info"]
_USERNS_FIX = ('user-namespace remapping makes uid 1000 in the container an unprivileged subordinate uid on the host: '
               '"userns-remap": "default" in daemon.json (an engine restart; existing containers and images are '
               'not visible under the new mapping), or rootless Docker')


class Check(BaseModel):
    name: str
    status: Status
    value: str
    fix: str = ""


class RuntimeRow(BaseModel):
    name: str
    path: str
    args: list[str]
    kernel: str
    platform: str | None = None
    usable: bool  # for this executor (the docker executor also needs --host-uds)
    missing: list[str] = Field(default_factory=list)


class Probe(BaseModel):
    runtime: str
    ok: bool
    seconds: float
    kernel: str = ""  # what `uname -r` said inside
    detail: str = ""


class DoctorReport(BaseModel):
    executor: str
    engine: str
    ok: bool  # the configured executor can run as configured
    isolation: SandboxInfo | None = None  # what executor.isolation resolves to on this engine
    checks: list[Check]
    runtimes: list[RuntimeRow] = Field(default_factory=list)
    probes: list[Probe] = Field(default_factory=list)


def runtime_rows(info: dict[str, Any], *, bind_socket: bool) -> list[RuntimeRow]:
    rows = []
    for name, rt in sorted(isolation.engine_runtimes(info).items()):
        missing = rt.missing(bind_socket=bind_socket)
        rows.append(RuntimeRow(name=name, path=rt.path, args=list(rt.args), kernel=rt.kernel, platform=rt.platform,
                               usable=rt.kernel != "other" and not missing, missing=missing))
    return rows


def checks_of(
    info: dict[str, Any],
    config: DockerExecutorConfig | RemoteDockerExecutorConfig,
    *,
    engine: str,
    image: Check | None = None,
) -> tuple[list[Check], SandboxInfo | None]:
    """The verdicts on one engine's ``docker info`` (pure: no engine needed)."""
    bind_socket = config.type == "docker"
    checks = [Check(name="engine", status="ok", value=(
        f"Docker {info.get('ServerVersion', '?')} on {info.get('OperatingSystem', '?')}, kernel "
        f"{info.get('KernelVersion', '?')} ({info.get('Architecture', '?')}, {info.get('NCPU', '?')} CPUs)"))]

    chosen: SandboxInfo | None = None
    try:
        chosen = isolation.choose_runtime(info, config, bind_socket=bind_socket, engine=engine)
        checks.append(Check(name="isolation", status="ok",
                            value=f"executor.isolation={config.isolation!r}: {chosen.label()}; {chosen.reason}"))
    except ExecutorUnavailable as e:
        checks.append(Check(name="isolation", status="fail", value=f"executor.isolation={config.isolation!r}: "
                            "cannot be met", fix=str(e)))

    runtimes = isolation.engine_runtimes(info)
    gvisor = isolation.usable_gvisor(runtimes, bind_socket=bind_socket)
    if gvisor is not None:
        checks.append(Check(name="gVisor", status="ok", value=(
            f"runtime '{gvisor.name}' ({gvisor.path} {' '.join(gvisor.args)}), platform {gvisor.platform}")))
    else:
        broken = [f"'{r.name}' lacks {' '.join(r.missing(bind_socket=bind_socket))}"
                  for r in runtimes.values() if r.is_gvisor]
        checks.append(Check(
            name="gVisor", status="warn",
            value=("registered but unusable: " + "; ".join(broken)) if broken else "not registered with the engine",
            fix="agents share the host's kernel under runc; for gVisor's user-space kernel: " + isolation.HOW_TO_INSTALL))

    security = [str(s) for s in info.get("SecurityOptions") or []]
    seccomp = next((s for s in security if s.startswith("name=seccomp")), None)
    checks.append(Check(name="seccomp", status="ok" if seccomp else "fail", value=seccomp or "off",
                        fix="" if seccomp else "the sandbox relies on Docker's default seccomp profile: use an "
                        "engine built with seccomp and do not set \"seccomp-profile\": \"unconfined\""))
    userns = next((s for s in security if s in ("name=userns", "name=rootless")), None)
    checks.append(Check(name="user namespaces", status="ok" if userns else "warn",
                        value={"name=userns": "remapped (userns-remap)", "name=rootless": "rootless engine"}.get(
                            userns or "", "no remapping: uid 1000 in the sandbox is uid 1000 on the host"),
                        fix="" if userns else _USERNS_FIX))

    cgroup = f"cgroup v{info.get('CgroupVersion') or '?'}, driver {info.get('CgroupDriver') or '?'}"
    lacking = [what for key, what in (("MemoryLimit", "memory"), ("SwapLimit", "swap"), ("PidsLimit", "pids"),
                                      ("CpuCfsQuota", "CPU quota")) if info.get(key) is False]
    checks.append(Check(
        name="cgroup limits", status="fail" if lacking else "ok",
        value=f"{cgroup}: " + (f"NOT enforced: {', '.join(lacking)}" if lacking else "memory, swap, pids and CPU "
                               "limits enforced"),
        fix="" if not lacking else "executor.memory / pids_limit / cpus are not enforced on this engine: enable the "
        "cgroup controllers (swap: kernel parameter swapaccount=1; pids and memory on cgroup v2: "
        "systemd.unified_cgroup_hierarchy=1)"))

    driver = str(info.get("Driver") or "?")
    slow = driver in ("vfs", "fuse-overlayfs")
    fix = ""
    if slow:
        fix = ("reads through this driver are slow: keep executor.share_cli on (the default) so the 400 MB CLI "
               "is not read through it on every run")
    if driver == "fuse-overlayfs":
        # Measured in a sandbox: stat("/usr") 27-31 us against 3 us for a path below it or on the host, and
        # the CLI looks up about 2,500 absolute paths in a 2-turn run (benchmarks/README.md, third pass).
        fix += ("; every lookup of a name at the sandbox's root also goes to the FUSE process (about 10 times "
                "the cost of the host's): give dockerd overlay2 where the kernel has overlay (grep overlay "
                "/proc/filesystems)")
    checks.append(Check(name="storage driver", status="info" if slow else "ok", value=driver, fix=fix))
    if image is not None:
        checks.append(image)
    return checks, chosen


def _image_check(client, config: DockerExecutorConfig | RemoteDockerExecutorConfig) -> Check:
    from fsrlm.executors.docker.image import LABEL_IMAGE_HASH, default_tag, expected_hash

    import docker.errors

    name = config.image or default_tag()
    try:
        found = client.images.get(name)
    except docker.errors.ImageNotFound:
        found = None
    if config.image is not None:
        return Check(name="sandbox image", status="ok" if found else "fail", value=f"{name} (executor.image)"
                     + ("" if found else ": missing"), fix="" if found else "`docker load` or `docker pull` it on "
                     "the engine, or unset executor.image to use the default image")
    if found is None:
        where = "built on the first run" if config.type == "docker" else "copied there on the first run"
        return Check(name="sandbox image", status="warn", value=f"{name}: not on the engine yet ({where})",
                     fix="`fsrlm image build` (or `make image`) builds it now")
    if found.labels.get(LABEL_IMAGE_HASH) != expected_hash():
        return Check(name="sandbox image", status="warn", value=f"{name}: present but stale",
                     fix="`fsrlm image build --force` rebuilds it")
    return Check(name="sandbox image", status="ok", value=f"{name} (current)")


def _host_checks(local: bool) -> list[Check]:
    """Facts of this machine that matter when the engine runs here."""
    if not local:
        return []
    checks = []
    runsc = shutil.which("runsc")
    if runsc:
        try:
            out = subprocess.run([runsc, "--version"], capture_output=True, text=True, timeout=10).stdout
            version = out.splitlines()[0] if out else "?"
        except (OSError, subprocess.TimeoutExpired) as e:
            version = f"does not run: {e}"
        checks.append(Check(name="runsc binary", status="info", value=f"{runsc}: {version}"))
    kvm = os.path.exists("/dev/kvm")
    checks.append(Check(name="KVM", status="info", value="/dev/kvm present" if kvm else "no /dev/kvm",
                        fix="gVisor's --platform=kvm needs /dev/kvm; measure it before using it (benchmarks/README.md: "
                        "with runsc 20221219 inside this project's VMs the sandbox never started)" if kvm else ""))
    return checks


def probe(client, config: DockerExecutorConfig | RemoteDockerExecutorConfig, image: str, sandbox: SandboxInfo,
          timeout: float = 60.0) -> Probe:
    """Start one hardened container under ``sandbox``'s runtime; report the kernel it saw and the time."""
    options = hardening.container_options(
        config, image=image, command=["/bin/sh", "-c", "uname -r; (dmesg 2>/dev/null || true) | head -1"],
        environment={"FSRLM_RELAY": "0"}, run_id=f"doctor-{uuid.uuid4().hex[:8]}", sandbox=sandbox,
        name=f"fsrlm-doctor-{uuid.uuid4().hex[:8]}")
    options.create["stdin_open"] = False
    api = client.api
    started = time.monotonic()
    container_id = None
    try:
        container_id = api.create_container(**options.create,
                                            host_config=api.create_host_config(**options.host_config))["Id"]
        api.start(container_id)
        code = api.wait(container_id, timeout=timeout).get("StatusCode")
        out = api.logs(container_id, stdout=True, stderr=True).decode(errors="replace").strip().splitlines()
        seconds = round(time.monotonic() - started, 2)
        kernel = out[0] if out else ""
        detail = " ".join(out[1:2])
        return Probe(runtime=sandbox.runtime or "default", ok=code == 0, seconds=seconds, kernel=kernel,
                     detail=detail if code == 0 else f"exit code {code}: {' '.join(out)[:300]}")
    except Exception as e:  # noqa: BLE001 - a probe reports, it does not raise
        return Probe(runtime=sandbox.runtime or "default", ok=False, seconds=round(time.monotonic() - started, 2),
                     detail=str(getattr(e, "explanation", None) or e)[:300])
    finally:
        if container_id is not None:
            try:
                api.remove_container(container_id, force=True)
            except Exception:  # noqa: BLE001 - gone already
                pass


def _local_client():
    """The engine the ``docker`` executor uses (``DOCKER_HOST`` and friends, else the local socket)."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - DockerException, OSError, requests errors
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ExecutorUnavailable(f"the Docker daemon is not reachable ({detail}); start it with `sudo systemctl "
                                  "start docker` or `scripts/ensure-docker.sh`") from None


def diagnose(config: DockerExecutorConfig | RemoteDockerExecutorConfig, *, run_probes: bool = False) -> DoctorReport:
    """Everything ``fsrlm doctor`` reports about the engine ``config`` points at."""
    from fsrlm.executors.docker.endpoint import DEFAULT_LOCAL, Endpoint, connect, resolve_endpoint

    if config.type == "remote-docker":
        endpoint = resolve_endpoint(config)
        local = endpoint.host == DEFAULT_LOCAL
        engine = f"the Docker host {endpoint.label}"
    else:
        endpoint = Endpoint(host=os.environ.get("DOCKER_HOST") or DEFAULT_LOCAL, source="DOCKER_HOST"
                            if os.environ.get("DOCKER_HOST") else "the default local socket")
        local = endpoint.host.startswith("unix://")
        engine = "the Docker engine"
    try:
        if config.type == "remote-docker":
            client = connect(endpoint, ping_timeout=config.connect_timeout, api_timeout=(config.connect_timeout, 120))
        else:
            client = _local_client()
    except FsrlmError as e:
        return DoctorReport(executor=config.type, engine=endpoint.label, ok=False, checks=[
            Check(name="engine", status="fail", value="does not answer", fix=str(e)), *_host_checks(local)])
    try:
        info = client.info()
        checks, chosen = checks_of(info, config, engine=engine, image=_image_check(client, config))
        checks += _host_checks(local)
        report = DoctorReport(executor=config.type, engine=endpoint.label, isolation=chosen, checks=checks,
                              runtimes=runtime_rows(info, bind_socket=config.type == "docker"),
                              ok=not any(c.status == "fail" for c in checks))
        if run_probes:
            report.probes = _probes(client, config, info)
            report.ok = report.ok and all(p.ok for p in report.probes)
        return report
    finally:
        client.close()


def _probes(client, config, info: dict[str, Any]) -> list[Probe]:
    from fsrlm.executors.docker.image import default_tag

    image = config.image or default_tag()
    try:
        client.images.get(image)
    except Exception:  # noqa: BLE001 - not there: nothing to probe with
        return [Probe(runtime="-", ok=False, seconds=0.0, detail=f"{image} is not on the engine; `fsrlm image build`")]
    wanted = [config.model_copy(update={"isolation": "runc", "runtime": None})]
    runtimes = isolation.engine_runtimes(info)
    if isolation.usable_gvisor(runtimes, bind_socket=config.type == "docker") is not None:
        wanted.append(config.model_copy(update={"isolation": "gvisor", "runtime": None}))
    results = []
    for each in wanted:
        sandbox = isolation.choose_runtime(info, each, bind_socket=config.type == "docker")
        results.append(probe(client, each, image, sandbox))
    return results


__all__ = ["Check", "DoctorReport", "Probe", "RuntimeRow", "checks_of", "diagnose", "probe", "runtime_rows"]
