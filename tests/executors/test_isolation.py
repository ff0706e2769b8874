"""executor.isolation against an engine's runtimes, and what a gVisor sandbox gets (no engine needed)."""

from __future__ import annotations

import pytest

from fsrlm.config import load_config
from fsrlm.errors import ExecutorUnavailable
from fsrlm.executors.base import SandboxInfo
from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig
from fsrlm.executors.docker import hardening
from fsrlm.executors.docker.isolation import choose_runtime, engine_runtimes

RUNC = {"runc": {"path": "runc"}}
GOOD = {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none", "--host-uds=open"]}


def info(**runtimes: dict) -> dict:
    return {"Runtimes": {**RUNC, **runtimes}, "DefaultRuntime": "runc"}


def choose(engine: dict, bind_socket: bool = True, **config) -> SandboxInfo:
    cls = DockerExecutorConfig if bind_socket else RemoteDockerExecutorConfig
    return choose_runtime(engine, cls(**config), bind_socket=bind_socket)


def test_auto_picks_gvisor_when_the_engine_has_it():
    got = choose(info(runsc=GOOD))
    assert (got.kernel, got.runtime, got.platform, got.isolation) == ("gvisor", "runsc", "ptrace", "auto")
    assert got.label() == "gVisor (runsc, ptrace)"
    assert "has gVisor as 'runsc'" in got.reason


def test_auto_falls_back_to_runc_without_gvisor():
    got = choose(info())
    assert (got.kernel, got.runtime) == ("host", "runc")
    assert got.label() == "host kernel (runc)"
    assert "no usable gVisor runtime" in got.reason


def test_auto_skips_a_gvisor_runtime_that_lacks_the_arguments_and_says_so():
    got = choose(info(runsc={"path": "/usr/bin/runsc"}))
    assert got.runtime == "runc"
    assert "'runsc' lacks --network=none --host-uds=open" in got.reason


def test_the_remote_executor_needs_no_host_uds():
    engine = info(runsc={"path": "/usr/bin/runsc", "runtimeArgs": ["--network", "none"]})
    assert choose(engine, bind_socket=False).runtime == "runsc"  # no socket is mounted on a remote host
    assert choose(engine, bind_socket=True).runtime == "runc"


def test_gvisor_is_found_by_its_binary_and_runsc_is_preferred():
    engine = info(gvisor=GOOD, **{"runsc-kvm": {**GOOD, "runtimeArgs": [*GOOD["runtimeArgs"], "--platform=kvm"]}})
    assert choose(engine).runtime == "gvisor"  # any name; sorted, the plain one first
    engine["Runtimes"]["runsc"] = GOOD
    assert choose(engine).runtime == "runsc"
    kvm = choose(engine, runtime="runsc-kvm")
    assert (kvm.kernel, kvm.platform) == ("gvisor", "kvm")


def test_isolation_gvisor_without_gvisor_says_what_to_do():
    with pytest.raises(ExecutorUnavailable) as e:
        choose(info(runsc={"path": "/usr/bin/runsc"}), isolation="gvisor")
    message = str(e.value)
    assert "no usable gVisor runtime" in message and "'runsc' lacks" in message
    assert "make gvisor" in message and "fsrlm doctor" in message


def test_isolation_runc_ignores_gvisor():
    got = choose(info(runsc=GOOD), isolation="runc")
    assert (got.kernel, got.runtime, got.reason) == ("host", "runc", "runc: asked for")


@pytest.mark.parametrize(("config", "message"), [
    ({"runtime": "kata"}, "is not a runtime of the Docker engine (it has: runc, runsc)"),
    ({"runtime": "runc", "isolation": "gvisor"}, "runs runc, not gVisor's runsc"),
    ({"runtime": "runsc", "isolation": "runc"}, "asks for the host's kernel"),
    ({"runtime": "bare"}, "lacks the runtime arguments --network=none --host-uds=open"),
])
def test_an_explicit_runtime_is_checked(config, message):
    engine = info(runsc=GOOD, bare={"path": "/usr/local/bin/runsc"})
    engine["Runtimes"].pop("bare") if config.get("runtime") == "kata" else None
    with pytest.raises(ExecutorUnavailable, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose(engine, **config)


def test_an_explicit_runtime_is_used_as_named():
    got = choose(info(runsc=GOOD, crun={"path": "/usr/bin/crun"}), runtime="crun")
    assert (got.kernel, got.runtime, got.reason) == ("host", "crun", "executor.runtime")
    other = choose(info(kata={"path": "/opt/kata/bin/kata-runtime"}), runtime="kata")
    assert other.kernel == "other" and other.label() == "runtime kata"


def test_engine_runtimes_reads_docker_info():
    runtimes = engine_runtimes({"Runtimes": {"runsc": GOOD, "io.containerd.runc.v2": {"path": "runc"}}})
    assert runtimes["runsc"].args == ("--network=none", "--host-uds=open")
    assert runtimes["runsc"].flag("host-uds") == "open"
    assert runtimes["io.containerd.runc.v2"].kernel == "host"
    assert engine_runtimes({}) == {}


# -- what a gVisor sandbox gets ---------------------------------------------------------------------------


def options(sandbox: SandboxInfo | None, **config):
    return hardening.container_options(DockerExecutorConfig(**config), image="img", command=["x"],
                                       environment={"A": "1"}, run_id="r1", sandbox=sandbox)


GVISOR = SandboxInfo(executor="docker", kernel="gvisor", isolation="auto", runtime="runsc", platform="ptrace")
RUNC_INFO = SandboxInfo(executor="docker", kernel="host", isolation="auto", runtime="runc")


def test_gvisor_limits_live_inside_the_sandbox():
    opts = options(GVISOR, pids_limit=256, memory="2g")
    host = opts.host_config
    assert host["runtime"] == "runsc"
    assert host["pids_limit"] == 256 * hardening.GVISOR_HOST_TASKS_PER_PROCESS + hardening.GVISOR_HOST_TASKS_BASE
    assert host["ulimits"][-1] == {"Name": "nproc", "Soft": 256, "Hard": 256}
    assert {u["Name"] for u in host["ulimits"]} == {"core", "nofile", "nproc"}
    env = opts.create["environment"]
    assert env["FSRLM_SCRIPT_MEMORY_KB"] == str((2048 - 384) * 1024)
    assert env["FSRLM_SCRIPT_PROCESSES"] == str(256 - hardening.GVISOR_AGENT_TASKS)
    assert env["A"] == "1"
    # Everything else stays as hardened as under runc.
    plain = options(RUNC_INFO, pids_limit=256, memory="2g").host_config
    for key in ("network_mode", "read_only", "cap_drop", "security_opt", "mem_limit", "memswap_limit", "nano_cpus",
                "tmpfs", "init", "ipc_mode"):
        assert host[key] == plain[key], key


def test_runc_gets_no_rlimits_and_its_pids_limit_as_configured():
    opts = options(RUNC_INFO, pids_limit=100)
    assert opts.host_config["runtime"] == "runc" and opts.host_config["pids_limit"] == 100
    # no RLIMIT_NPROC under runc: it would count the uid's processes host-wide
    assert {u["Name"] for u in opts.host_config["ulimits"]} == {"core", "nofile"}
    assert not any(k.startswith("FSRLM_SCRIPT_") for k in opts.create["environment"])


def test_gvisor_limits_of_small_sandboxes():
    limits = hardening.gvisor_limits(DockerExecutorConfig(memory="256m", pids_limit=64))
    assert limits.script_memory == hardening.GVISOR_MIN_SCRIPT_MEMORY  # never below 64 MiB
    assert limits.script_processes == 32  # half, when pids_limit leaves less than 64 for the CLI
    assert limits.processes == 64


def test_without_a_choice_the_configured_runtime_is_used():
    assert options(None, runtime="runsc").host_config["runtime"] == "runsc"
    assert "runtime" not in options(None).host_config


# -- configuration ---------------------------------------------------------------------------------------


def test_isolation_from_the_environment_and_its_precedence(tmp_path):
    toml = tmp_path / "fsrlm.toml"
    toml.write_text('[executor]\ntype = "remote-docker"\nisolation = "runc"\n')
    assert load_config(toml, env={}).executor.isolation == "runc"
    assert load_config(toml, env={"FSRLM_ISOLATION": "gvisor"}).executor.isolation == "gvisor"
    assert load_config(toml, env={"FSRLM_ISOLATION": "gvisor"},
                       overrides={"executor": {"isolation": "auto"}}).executor.isolation == "auto"
    assert load_config(env={"FSRLM_ISOLATION": "gvisor", "FSRLM_EXECUTOR": "local"}).executor.type == "local"
    assert DockerExecutorConfig().isolation == "auto"


def test_a_wrong_isolation_names_the_setting():
    from fsrlm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"executor\.isolation: "):
        load_config(env={"FSRLM_ISOLATION": "firecracker"})
