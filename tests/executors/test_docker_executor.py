"""The docker executor: hardening settings, the container from inside, streams, cleanup, safe reads.

Tests marked ``docker`` run real containers of the real sandbox image (the
``docker_image`` fixture builds it once); the others need no engine.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from fsrlm.executors.base import (
    LABEL_APP,
    LABEL_CREATED,
    LABEL_ORCHESTRATOR,
    LABEL_RUN_ID,
)
from fsrlm.executors.configs import DockerExecutorConfig
from fsrlm.executors.docker import cleanup, hardening
from fsrlm.executors.docker.errors import EngineRef, docker_errors
from fsrlm.executors.docker.executor import DockerExecutor
from fsrlm.executors.docker.handback import chown_tree
from fsrlm.executors.docker.sandbox import ContainerSandbox
from fsrlm.executors.docker.image import cli_binary
from fsrlm.executors.docker.sharedcli import neutral_dir
from fsrlm.executors.liveness import orchestrator_id
from support import run_objects

from fsrlm.errors import ExecutorUnavailable, ImageError, SandboxError
from fsrlm.safe_fs import read_text_beneath as read_text_in_workspace

# --------------------------------------------------------------------------- no engine needed


def _options(config: DockerExecutorConfig | None = None, **kw) -> hardening.ContainerOptions:
    args = dict(image="img:1", command=["/usr/local/bin/claude", "-p"], environment={"A": "1"}, run_id="r1",
                workspace=Path("/runs/r1"), broker_socket=Path("/priv/broker.sock"), created=1234.0)
    args.update(kw)
    return hardening.container_options(config or DockerExecutorConfig(), **args)


def test_hardening_defaults() -> None:
    opts = _options()
    hc, create = opts.host_config, opts.create
    assert hc["network_mode"] == "none"
    assert hc["read_only"] is True
    assert hc["cap_drop"] == ["ALL"]
    assert "cap_add" not in hc and "privileged" not in hc
    assert hc["security_opt"] == ["no-new-privileges"]
    assert not any("seccomp" in o or "apparmor" in o for o in hc["security_opt"])  # the default profiles stay
    assert hc["init"] is True
    assert hc["pids_limit"] == 256
    assert hc["mem_limit"] == hc["memswap_limit"] == "2g"
    assert hc["nano_cpus"] == 1_000_000_000
    assert "runtime" not in hc
    assert set(hc["tmpfs"]) == {"/tmp", "/home/sandbox"}
    for options in hc["tmpfs"].values():
        assert "size=256m" in options and "nosuid" in options and "nodev" in options
        assert "noexec" in options.split(",") and "exec" not in options.split(",")
    assert {u["Name"]: (u["Soft"], u["Hard"]) for u in hc["ulimits"]} == {
        "core": (0, 0), "nofile": (hardening.NOFILE, hardening.NOFILE)}
    mounts = {m["Target"]: m for m in hc["mounts"]}
    assert set(mounts) == {"/workspace", "/run/fsrlm/broker.sock"}
    assert mounts["/workspace"]["Type"] == "bind" and mounts["/workspace"]["ReadOnly"] is False
    assert mounts["/workspace"]["Source"] == "/runs/r1"
    assert mounts["/run/fsrlm/broker.sock"]["ReadOnly"] is True
    assert [m for m in hc["mounts"] if not m["ReadOnly"]] == [mounts["/workspace"]]  # the only writable mount
    assert create["user"] == "1000:1000"
    assert create["working_dir"] == "/workspace"
    assert create["stdin_open"] is True and create["tty"] is False and create["detach"] is False
    assert create["labels"] == {LABEL_APP: "1", LABEL_RUN_ID: "r1", LABEL_CREATED: "1234",
                                LABEL_ORCHESTRATOR: orchestrator_id()}
    assert create["command"] == ["/usr/local/bin/claude", "-p"]
    assert create["environment"] == {"A": "1"}


def test_hardening_follows_config() -> None:
    config = DockerExecutorConfig(memory="512m", cpus=0.5, pids_limit=64, tmpfs_size="32m", runtime="runsc")
    opts = _options(config, user=(1234, 99), workspace=None, broker_socket=None, name="fsrlm-x")
    hc = opts.host_config
    assert hc["mem_limit"] == hc["memswap_limit"] == "512m"
    assert hc["nano_cpus"] == 500_000_000
    assert hc["pids_limit"] == 64
    assert hc["runtime"] == "runsc"
    assert "uid=1234,gid=99" in hc["tmpfs"]["/home/sandbox"] and "size=32m" in hc["tmpfs"]["/tmp"]
    assert hc["mounts"] == []
    assert opts.create["user"] == "1234:99" and opts.create["name"] == "fsrlm-x"


async def test_check_names_docker_host_and_the_reason_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(ExecutorUnavailable) as info:
        await DockerExecutor(DockerExecutorConfig()).check()
    message = str(info.value)
    assert "\n" not in message
    assert f"unix://{tmp_path}/no-docker.sock (from DOCKER_HOST)" in message
    assert "no such file or directory" in message  # the cause, whole, not a truncated repr
    assert "unset DOCKER_HOST" in message


def test_without_docker_host_the_fix_is_starting_the_local_engine() -> None:
    ref = EngineRef.local({})
    assert ref.label == "the Docker engine at unix:///var/run/docker.sock"
    assert "systemctl start docker" in ref.fix and "scripts/ensure-docker.sh" in ref.fix


def test_docker_errors_are_mapped_once_with_the_innermost_reason() -> None:
    import docker.errors
    import requests

    ref = EngineRef(label="the Docker host tcp://h:2376 (from DOCKER_HOST)", fix="check the host")
    refused = requests.exceptions.ConnectionError(OSError(111, "Connection refused"))
    with pytest.raises(ExecutorUnavailable) as info, docker_errors("start the agent container", ref):
        raise refused
    assert str(info.value) == ("Cannot start the agent container: the Docker host tcp://h:2376 (from DOCKER_HOST) "
                               "is not reachable (connection refused); check the host.")
    with pytest.raises(ImageError), docker_errors("create the agent container", ref):
        raise docker.errors.ImageNotFound("No such image: x")
    with pytest.raises(SandboxError, match="answered 409"), docker_errors("kill it", ref):
        raise docker.errors.APIError("conflict", response=type("R", (), {"status_code": 409, "reason": "x"})(),
                                     explanation="container is not running")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_chown_tree_never_leaves_the_tree(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "a" / "b").mkdir(parents=True)
    (ws / "a" / "b" / "f.txt").write_text("x")
    outside = tmp_path / "outside.txt"
    outside.write_text("host file")
    outside_dir = tmp_path / "outside_dir"
    outside_dir.mkdir()
    (ws / "a" / "link").symlink_to(outside)
    (ws / "dirlink").symlink_to(outside_dir)
    (ws / "hard.txt").hardlink_to(outside)
    chown_tree(ws, 4321, 4321)
    assert (ws / "a" / "b" / "f.txt").stat().st_uid == 4321
    assert (ws / "a" / "b").stat().st_uid == 4321 and ws.stat().st_uid == 4321
    assert os.lstat(ws / "a" / "link").st_uid == 4321  # the link itself
    assert outside.stat().st_uid == 0 and outside_dir.stat().st_uid == 0  # never followed, hard link skipped


# --------------------------------------------------------------------------- real containers

async def _ready_executor(config: DockerExecutorConfig | None = None) -> DockerExecutor:
    executor = DockerExecutor(config or DockerExecutorConfig())
    await executor.check()
    return executor


@pytest.mark.docker
async def test_container_settings_and_stdin_round_trip(
    docker_image, make_spec, run_to_end, docker_client, workspace, sandbox_runtime
) -> None:
    settings = DockerExecutorConfig(memory="768m", cpus=0.5, pids_limit=100)
    executor = await _ready_executor(settings)
    spec = make_spec()
    async with await executor.prepare(spec) as sandbox:
        sandbox.cli_path = "/bin/cat"
        process = await sandbox.start_agent([])
        info = docker_client.api.inspect_container(process.container_id)
        assert info["State"]["Running"]
        hc, config = info["HostConfig"], info["Config"]
        assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
        assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd") and hc["Privileged"] is False
        assert hc["SecurityOpt"] == ["no-new-privileges"]
        # Under gVisor pids_limit holds inside (RLIMIT_NPROC); the host's cap leaves room for gVisor's stubs.
        pids = hardening.gvisor_limits(settings).host_pids if sandbox_runtime == "runsc" else 100
        assert hc["Init"] is True and hc["PidsLimit"] == pids
        assert hc["Runtime"] == sandbox_runtime
        assert hc["Memory"] == hc["MemorySwap"] == 768 * 1024 * 1024
        assert hc["NanoCpus"] == 500_000_000
        assert set(hc["Tmpfs"]) == {"/tmp", "/home/sandbox"}
        writable = [m for m in info["Mounts"] if m["RW"]]
        assert [(m["Destination"], Path(m["Source"])) for m in writable] == [("/workspace", workspace)]
        assert {m["Destination"] for m in info["Mounts"]} == {
            "/workspace", "/run/fsrlm/broker.sock", "/usr/local/bin/claude"}  # share_cli: read-only, same binary
        cli_mount = next(m for m in info["Mounts"] if m["Destination"] == "/usr/local/bin/claude")
        assert not cli_mount["RW"] and Path(cli_mount["Source"]).parent == neutral_dir()
        assert Path(cli_mount["Source"]).stat().st_ino == cli_binary().stat().st_ino  # a hard link, no copy
        assert config["User"] == "1000:1000" and config["WorkingDir"] == "/workspace"
        assert config["OpenStdin"] and config["StdinOnce"] and not config["Tty"]
        assert config["Labels"][LABEL_RUN_ID] == spec.run_id and config["Labels"][LABEL_APP] == "1"
        assert not [e for e in config["Env"] if e.startswith(("AWS_", "FSRLM_TEST"))]

        payload = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(2000))  # ~420 KB
        lines, result = await run_to_end(process, payload)
        assert result.exit_code == 0 and not result.killed
        assert lines == payload.rstrip(b"\n").split(b"\n")
    assert run_objects(docker_client, spec.run_id) == []


@pytest.mark.docker
async def test_cli_version_runs_in_the_sandbox(docker_image, make_spec, run_to_end) -> None:
    executor = await _ready_executor()
    async with await executor.prepare(make_spec()) as sandbox:
        assert sandbox.cli_path == "/usr/local/bin/claude" and sandbox.places.workspace == "/workspace"
        lines, result = await run_to_end(await sandbox.start_agent(["--version"]))
    assert result.exit_code == 0, result.stderr_tail
    assert b"Claude Code" in lines[-1]


@pytest.mark.docker
async def test_cli_turn_reaches_the_broker_and_obeys_the_policy(
    docker_image, make_spec, run_to_end, fake_broker
) -> None:
    """The real CLI answers one turn through relay + socket; the baked-in policy removes the web tools."""
    executor = await _ready_executor()
    argv = ["-p", "say pong", "--output-format", "json", "--model", "fake-model", "--max-turns", "1"]
    async with await executor.prepare(make_spec()) as sandbox:
        lines, result = await run_to_end(await sandbox.start_agent(argv))
    assert result.exit_code == 0, result.stderr_tail
    assert json.loads(lines[-1])["result"] == fake_broker.answer
    calls = [r for r in fake_broker.requests if r["path"] == "/v1/messages"]
    assert calls and all(r["headers"].get("x-api-key") == fake_broker.token for r in calls)
    sent = json.dumps([r["json"] for r in calls])
    assert "WebFetch" not in sent and "WebSearch" not in sent
    assert {"Bash", "Read", "Write"} <= {t["name"] for t in calls[0]["json"]["tools"]}


async def test_policy_control_the_host_cli_offers_web_tools(fake_broker, tmp_path, unused_tcp_port) -> None:
    """Control for the test above: without the managed policy the same CLI does mention the web tools."""
    from fsrlm.executors.docker.image import cli_binary
    from fsrlm.tools import relay

    task = asyncio.ensure_future(relay.serve("127.0.0.1", unused_tcp_port, str(fake_broker.socket)))
    try:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
               "CLAUDE_CONFIG_DIR": str(tmp_path / ".agent"), "ANTHROPIC_API_KEY": fake_broker.token,
               "CLAUDE_CODE_TMPDIR": str(tmp_path),  # not a folder left in the host's /tmp/claude-<uid>
               "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{unused_tcp_port}",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        await asyncio.sleep(0.2)
        proc = await asyncio.create_subprocess_exec(
            str(cli_binary()), "-p", "say pong", "--model", "fake-model", "--max-turns", "1",
            env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert proc.returncode == 0, err[-500:]
    sent = json.dumps([r["json"] for r in fake_broker.requests if r["path"] == "/v1/messages"])
    assert "WebFetch" in sent


@pytest.mark.docker
async def test_killed_from_outside_then_close_cleans_up(
    docker_image, make_spec, docker_client, workspace
) -> None:
    executor = await _ready_executor()
    spec = make_spec()
    sandbox = await executor.prepare(spec)
    sandbox.cli_path = "/bin/sh"
    process = await sandbox.start_agent(["-c", "echo started > /workspace/output/partial.md; exec sleep 300"])
    await asyncio.sleep(0.5)
    docker_client.api.kill(process.container_id)  # someone else kills it
    lines = [line async for line in process.stdout_lines()]
    result = await asyncio.wait_for(process.wait(), 30)
    assert lines == []
    assert result.exit_code == 137 and result.killed is False
    await sandbox.close()
    await sandbox.close()  # idempotent
    assert run_objects(docker_client, spec.run_id) == []
    assert (workspace / "output" / "partial.md").read_text() == "started\n"  # partial work is kept
    assert (workspace / "output" / "partial.md").stat().st_uid == os.getuid()


@pytest.mark.docker
async def test_removed_from_outside_then_close_cleans_up(docker_image, make_spec, docker_client) -> None:
    executor = await _ready_executor()
    spec = make_spec()
    sandbox = await executor.prepare(spec)
    sandbox.cli_path = "/bin/sleep"
    process = await sandbox.start_agent(["300"])
    await asyncio.sleep(0.3)
    docker_client.api.remove_container(process.container_id, force=True)
    result = await asyncio.wait_for(process.wait(), 30)
    assert result.exit_code is None and "removed" in result.stderr_tail
    await sandbox.close()
    assert run_objects(docker_client, spec.run_id) == []


@pytest.mark.docker
async def test_cancelled_while_the_engine_creates_the_container_then_close_cleans_up(
    docker_image, make_spec, docker_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start cancelled mid-create (a warm pool closed while it fills): the engine still makes the container,
    after the cancellation; close() must wait for it and remove it, not miss it."""
    created = threading.Event()
    real_create = ContainerSandbox._create

    def slow_create(api, options):
        time.sleep(0.5)  # the engine answers after the caller has given up
        try:
            return real_create(api, options)
        finally:
            created.set()

    monkeypatch.setattr(ContainerSandbox, "_create", staticmethod(slow_create))
    executor = await _ready_executor()
    spec = make_spec()
    sandbox = await executor.prepare(spec)
    start = asyncio.ensure_future(sandbox.start_agent(["--version"]))
    await asyncio.sleep(0.1)
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    await sandbox.close()
    assert created.wait(10)
    await asyncio.sleep(0.5)
    assert run_objects(docker_client, spec.run_id) == []


@pytest.mark.docker
async def test_memory_limit_is_enforced(docker_image, make_spec, run_to_end, docker_client, sandbox_runtime) -> None:
    executor = await _ready_executor(DockerExecutorConfig(memory="64m"))
    async with await executor.prepare(make_spec()) as sandbox:
        sandbox.cli_path = "/usr/bin/python3"
        script = "b = []\nwhile True: b.append(bytearray(16 * 1024 * 1024))"
        _, result = await run_to_end(await sandbox.start_agent(["-c", script]))
    assert result.exit_code == 137 and result.killed is False
    # Under gVisor the host's OOM killer kills the whole sandbox and Docker does not always set OOMKilled
    # (gVisor issue 2433; seen here both ways): the exit code is the evidence there.
    assert result.oom_killed is True or sandbox_runtime == "runsc"


@pytest.mark.docker
async def test_missing_configured_image_is_an_image_error(docker_image) -> None:
    with pytest.raises(ImageError, match=r"\(executor.image\) is not on the Docker engine at unix:"):
        await DockerExecutor(DockerExecutorConfig(image="fsrlm-no-such-image:0")).check()


@pytest.mark.docker
async def test_gc_removes_old_leftovers_only(docker_image, docker_client) -> None:
    now = time.time()
    made = []
    for age in (10**6, 0):
        opts = hardening.container_options(DockerExecutorConfig(), image=docker_image, command=["true"],
                                           environment={}, run_id=f"gc-test-{age}", created=now - age)
        made.append(docker_client.api.create_container(
            **opts.create, host_config=docker_client.api.create_host_config(**opts.host_config))["Id"])
    volume = docker_client.volumes.create(labels=hardening.run_labels("gc-test-vol", now - 10**6))
    try:
        removed = await DockerExecutor(DockerExecutorConfig()).gc(older_than_seconds=10**5)
        old = docker_client.api.inspect_container(made[1])  # the young one is still there
        assert old["Config"]["Labels"][LABEL_RUN_ID] == "gc-test-0"
        assert volume.name in removed
        assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}=gc-test-1000000"})
    finally:
        cleanup.remove_run(docker_client, "gc-test-0")
        cleanup.remove_run(docker_client, "gc-test-1000000")
        cleanup.remove_run(docker_client, "gc-test-vol")


@pytest.mark.docker
async def test_safe_read_refuses_links_the_agent_planted(
    docker_image, make_spec, run_to_end, workspace
) -> None:
    executor = await _ready_executor()
    script = ("ln -s /etc/passwd output/answer.md && echo fact > state/real.jsonl && "
              "ln state/real.jsonl state/artifacts.jsonl && ln -s / output/root && echo ok > output/plain.md")
    async with await executor.prepare(make_spec()) as sandbox:
        sandbox.cli_path = "/bin/sh"
        _, result = await run_to_end(await sandbox.start_agent(["-c", script]))
        assert result.exit_code == 0, result.stderr_tail
    assert stat.S_ISLNK(os.lstat(workspace / "output" / "answer.md").st_mode)
    assert read_text_in_workspace(workspace, "output/answer.md", 1 << 20) is None
    assert read_text_in_workspace(workspace, "state/artifacts.jsonl", 1 << 20) is None  # hard link
    assert read_text_in_workspace(workspace, "output/root/etc/passwd", 1 << 20) is None
    assert read_text_in_workspace(workspace, "output/plain.md", 1 << 20) == "ok\n"


@pytest.mark.docker
async def test_cli_runs_as_a_uid_without_passwd_entry(
    docker_image, make_spec, run_to_end, fake_broker, workspace, monkeypatch
) -> None:
    """A non-root orchestrator runs the container as its own uid, which the image does not know."""
    import fsrlm.executors.docker.executor as executor_mod

    monkeypatch.setattr(executor_mod, "sandbox_user", lambda: (4242, 4242))  # as a non-root orchestrator
    executor = await _ready_executor()
    argv = ["-p", "say pong", "--output-format", "json", "--model", "fake-model", "--max-turns", "1"]
    async with await executor.prepare(make_spec()) as sandbox:
        process = await sandbox.start_agent(argv)
        assert (workspace / "input" / "prompt.md").stat().st_uid == 4242  # handed over before the start
        lines, result = await run_to_end(process)
    assert result.exit_code == 0, result.stderr_tail
    assert json.loads(lines[-1])["result"] == fake_broker.answer
    assert (workspace / "input" / "prompt.md").stat().st_uid == os.getuid()
