"""The executor conformance suite: one contract, every backend (Inspect AI's ``self_check`` is the model).

Each test takes the ``backend`` fixture and runs once per executor: ``local``,
``docker`` and ``remote-docker`` (against a second Docker daemon on loopback). A
new backend is done when it passes this file. Known differences are listed here,
not hidden:

* ``local`` isolates nothing: the agent runs as a host process in the run folder
  (``test_isolation`` asserts exactly that, so the README's warning stays true);
  its broker channel is a loopback port, not a socket.
* ``remote-docker`` copies the workspace in and back, so host-side files appear in
  the run folder only after ``collect`` (or ``close``).

The agent process is replaced by small programs (``cat``, ``sh``, a probe) where
the contract is about the process; the real Claude Code CLI runs in
``test_real_cli_turn`` and, through the whole orchestrator, in
``test_each_upstream_end_to_end`` for every upstream type (Anthropic, an
Anthropic-compatible URL, and AWS Bedrock with SigV4 checked on the wire).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fsrlm.executors.base import Executor
from fsrlm.executors.configs import (
    DockerExecutorConfig,
    LocalExecutorConfig,
    RemoteDockerExecutorConfig,
)
from fsrlm.executors.contract import SandboxPlaces, agent_environment
from fsrlm.executors.local import processes_of_run
from fsrlm.executors.registry import create_executor
from support import FAKE_UPSTREAM_KEY, log_lines, run_objects

from fsrlm import RLM
from fsrlm.errors import SandboxError
from fsrlm.testing.bedrock import BedrockCredentials
from fsrlm.testing.plans import count_label_plan
from fsrlm.testing.scripted_model import ScriptedModelServer

pytestmark = pytest.mark.both_kernels  # the executor contract holds under runc and gVisor

BACKENDS = ["local", "docker", "remote-docker"]


@dataclass
class Backend:
    name: str
    executor: Executor
    config: dict  # the executor's configuration, as RLMConfig takes it
    python: str  # a Python interpreter inside the sandbox
    isolates: bool
    leftovers: Callable[[str], list[str]]  # what the backend still holds for a run id

    def settle(self, run_id: str, seconds: float = 10.0) -> list[str]:
        """Leftovers of ``run_id``, after giving asynchronous removal a moment."""
        deadline = time.monotonic() + seconds
        while (left := self.leftovers(run_id)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


@pytest.fixture(params=[pytest.param(name, marks=[] if name == "local" else [pytest.mark.docker])
                        for name in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    name = request.param
    if name == "local":
        return Backend(name, create_executor(LocalExecutorConfig()), {"type": "local"}, sys.executable,
                       isolates=False, leftovers=lambda run_id: [f"pid {p}" for p in processes_of_run(run_id)])
    request.getfixturevalue("docker_image")
    if name == "docker":
        client = request.getfixturevalue("docker_client")
        return Backend(name, create_executor(DockerExecutorConfig()), {"type": "docker"}, "/usr/bin/python3",
                       isolates=True, leftovers=lambda run_id: run_objects(client, run_id))
    daemon = request.getfixturevalue("remote_docker_host")
    import docker

    client = docker.DockerClient(base_url=daemon.url, timeout=60)
    request.addfinalizer(client.close)
    config = {"type": "remote-docker", "host": daemon.url}
    return Backend(name, create_executor(RemoteDockerExecutorConfig(host=daemon.url)), config, "/usr/bin/python3",
                   isolates=True, leftovers=lambda run_id: run_objects(client, run_id))


async def _prepared(backend: Backend, spec):
    sandbox = await backend.executor.prepare(spec)
    return sandbox


# -- the agent process -------------------------------------------------------------------------


async def test_stdin_round_trip(backend: Backend, make_spec, run_to_end) -> None:
    spec = make_spec()
    sandbox = await _prepared(backend, spec)
    try:
        sandbox.cli_path = "/bin/cat"
        payload = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(2000))  # ~420 KB
        lines, result = await run_to_end(await sandbox.start_agent([]), payload)
    finally:
        await sandbox.close()
    assert result.exit_code == 0 and not result.killed
    assert lines == payload.rstrip(b"\n").split(b"\n")
    assert backend.settle(spec.run_id) == []


PROBE = r"""
import json, os, urllib.request, urllib.error
def get(headers, tries=100):
    req = urllib.request.Request(os.environ["FSRLM_BROKER_URL"] + "/fsrlm/v1/health", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError as e:  # the relay starts beside the agent: give it a moment
        if isinstance(e.reason, ConnectionRefusedError) and tries:
            import time; time.sleep(0.05); return get(headers, tries - 1)
        raise
ws = os.environ["FSRLM_WORKSPACE"]
with open(os.path.join(ws, "output", "probe.txt"), "w") as f:
    f.write("written by the agent\n")
print(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(),
                  "health": get({"x-api-key": os.environ["FSRLM_BROKER_TOKEN"]}), "health_without_token": get({})}))
"""


@pytest.mark.parametrize("api", ["anthropic", "bedrock"])
async def test_environment_contract(backend: Backend, make_spec, run_to_end, fake_broker, workspace, monkeypatch,
                                    api) -> None:
    """The agent sees the contract's environment and nothing of the host's credentials; the broker answers."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real-host-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-aws-secret")
    monkeypatch.setenv("FSRLM_TEST_HOST_ONLY", "must-not-leak")
    spec = make_spec(api=api)
    sandbox = await _prepared(backend, spec)
    try:
        sandbox.cli_path = backend.python
        lines, result = await run_to_end(await sandbox.start_agent(["-c", PROBE]))
        await sandbox.collect()
    finally:
        await sandbox.close()
    assert result.exit_code == 0, result.stderr_tail
    facts = json.loads(lines[-1])
    env = facts["env"]
    expected = agent_environment(spec.agent, sandbox.places)
    assert {k: env.get(k) for k in expected} == expected  # the contract, whole, wins over anything else
    assert "FSRLM_TEST_HOST_ONLY" not in env and not [k for k in env if k.startswith("AWS_")]
    assert env["ANTHROPIC_API_KEY"] == env["FSRLM_BROKER_TOKEN"] == fake_broker.token
    assert env["PYTHONPATH"] == f"{env['FSRLM_WORKSPACE']}/tools"
    assert env["CLAUDE_CONFIG_DIR"] == f"{env['FSRLM_WORKSPACE']}/.agent"
    assert facts["cwd"] == env["FSRLM_WORKSPACE"]
    if api == "bedrock":  # the CLI in Bedrock mode must talk to the broker too, never to AWS
        assert env["ANTHROPIC_BEDROCK_BASE_URL"] == env["FSRLM_BROKER_URL"]
        assert env["CLAUDE_CODE_USE_BEDROCK"] == env["CLAUDE_CODE_SKIP_BEDROCK_AUTH"] == "1"
        assert env["ANTHROPIC_CUSTOM_HEADERS"] == f"x-api-key: {fake_broker.token}"
    else:
        assert "CLAUDE_CODE_USE_BEDROCK" not in env
    assert (facts["health"], facts["health_without_token"]) == (200, 401)
    assert (workspace / "output" / "probe.txt").read_text() == "written by the agent\n"
    assert backend.settle(spec.run_id) == []


async def test_isolation(backend: Backend, make_spec, run_to_end, tmp_path, sandbox_runtime) -> None:
    """Containers: no network, no capabilities, read-only root. Local: none of it — listed, and shown."""
    from support import SANDBOX_PROBE

    outside = tmp_path / "outside-the-workspace.txt"
    spec = make_spec()
    sandbox = await _prepared(backend, spec)
    try:
        sandbox.cli_path = backend.python
        if backend.isolates:
            lines, result = await run_to_end(await sandbox.start_agent(["-c", SANDBOX_PROBE]))
        else:
            script = f"open({str(outside)!r}, 'w').write('the local agent can write anywhere you can')"
            lines, result = await run_to_end(await sandbox.start_agent(["-c", script]))
    finally:
        await sandbox.close()
    assert result.exit_code == 0, result.stderr_tail
    if not backend.isolates:
        assert outside.read_text().startswith("the local agent can write anywhere")
        return
    facts = json.loads(lines[-1])
    assert (facts["uid"], facts["gid"]) == (1000, 1000)
    assert facts["status"]["CapEff"] and facts["status"]["CapBnd"]
    for cap in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):  # gVisor shows no CapAmb line
        assert int(facts["status"][cap] or "0", 16) == 0, cap
    # Docker's default seccomp profile in filter mode; gVisor's kernel serves the agent's calls itself (no OCI
    # seccomp: executors/docker/isolation.py says why). no_new_privs asked with prctl (gVisor's status lacks it).
    assert facts["no_new_privs"] == 1 and facts["status"]["Seccomp"] == ("0" if sandbox_runtime == "runsc" else "2")
    assert facts["net"] == ["lo"]
    assert facts["writable"] == {
        "/probe": False, "/etc/probe": False, "/usr/local/bin/probe": False, "/opt/fsrlm/probe": False,
        "/workspace/probe.txt": True, "/workspace/output/probe.txt": True, "/tmp/probe": True,
        "/home/sandbox/probe": True,
    }


# -- stopping ----------------------------------------------------------------------------------


async def test_kill_twice_and_close_twice(backend: Backend, make_spec) -> None:
    spec = make_spec()
    sandbox = await _prepared(backend, spec)
    sandbox.cli_path = "/bin/sh"
    process = await sandbox.start_agent(["-c", "while :; do echo tick; sleep 0.05; done"])
    lines = process.stdout_lines()
    assert await asyncio.wait_for(lines.__anext__(), 20) == b"tick"
    await process.kill()
    await process.kill()
    result = await asyncio.wait_for(process.wait(), 30)
    assert result.killed and result.exit_code in (137, -9)
    assert await process.wait() == result  # kept
    await sandbox.close()
    await sandbox.close()
    await lines.aclose()
    assert backend.settle(spec.run_id) == []
    with pytest.raises(SandboxError):
        await sandbox.start_agent(["-c", "true"])  # a closed sandbox starts nothing


async def test_collect_after_kill_keeps_partial_work(backend: Backend, make_spec, workspace) -> None:
    spec = make_spec()
    sandbox = await _prepared(backend, spec)
    try:
        sandbox.cli_path = "/bin/sh"
        process = await sandbox.start_agent(["-c", "echo partial > output/partial.md; echo ready; exec sleep 300"])
        assert await asyncio.wait_for(process.stdout_lines().__anext__(), 20) == b"ready"
        await process.kill()
        await asyncio.wait_for(process.wait(), 30)
        await sandbox.collect()
        assert (workspace / "output" / "partial.md").read_text() == "partial\n"
    finally:
        await sandbox.close()
    assert (workspace / "output" / "partial.md").stat().st_uid == os.getuid()  # the orchestrator's again
    assert backend.settle(spec.run_id) == []


async def test_timeout_stops_the_agent(backend: Backend, make_spec) -> None:
    spec = make_spec(timeout_seconds=4)
    sandbox = await _prepared(backend, spec)
    try:
        sandbox.cli_path = "/bin/sleep"
        process = await sandbox.start_agent(["300"])
        result = await asyncio.wait_for(process.wait(), 120)  # the guard: the agent would sleep 300 s
        assert result.killed is True and result.exit_code in (137, -9)
    finally:
        await sandbox.close()
    assert backend.settle(spec.run_id) == []


async def test_a_credential_is_refused_before_anything_starts(backend: Backend, make_spec) -> None:
    """Whatever a backend adds to the environment goes through the contract's check first."""
    spec = make_spec()
    sandbox = await _prepared(backend, spec)
    try:
        sandbox.places = SandboxPlaces(**{**sandbox.places.model_dump(),
                                          "plumbing": {"AWS_SECRET_ACCESS_KEY": "leaked"}})
        with pytest.raises(SandboxError, match="Refusing"):
            await sandbox.start_agent(["--version"])
        assert backend.leftovers(spec.run_id) == []
    finally:
        await sandbox.close()


ORPHAN = r"""
import asyncio, json, sys
from pathlib import Path
from fsrlm.broker.endpoint import BrokerEndpoint
from fsrlm.config import build_config
from fsrlm.executors.base import SandboxSpec
from fsrlm.executors.contract import AgentContract
from fsrlm.executors.registry import create_executor

args = json.loads(sys.argv[1])

async def main():
    async def open_tcp():
        return args["port"]
    executor = create_executor(build_config({"executor": args["executor"]}).executor)
    spec = SandboxSpec(workspace=Path(args["workspace"]),
                       broker=BrokerEndpoint(unix_socket=Path(args["socket"]), open_tcp=open_tcp),
                       agent=AgentContract(run_id=args["run_id"], token=args["token"]), timeout_seconds=600)
    sandbox = await executor.prepare(spec)
    sandbox.cli_path = "/bin/sh"
    process = await sandbox.start_agent(["-c", "setsid sleep 300 & echo started; exec sleep 300"])
    async for line in process.stdout_lines():
        print(line.decode(), flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_leftovers_of_a_crashed_orchestrator_are_reaped(backend: Backend, make_spec, fake_broker,
                                                              workspace) -> None:
    """An orchestrator killed with SIGKILL mid-run leaves its sandbox; ``gc`` removes it, and only it."""
    spec = make_spec()
    args = {"executor": backend.config, "workspace": str(workspace), "socket": str(fake_broker.socket),
            "port": fake_broker.port, "run_id": spec.run_id, "token": fake_broker.token}
    child = subprocess.Popen([sys.executable, "-c", ORPHAN, json.dumps(args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 90)
        assert line.strip() == "started", child.stderr.read() if child.poll() is not None else line
        assert backend.leftovers(spec.run_id), "the sandbox should be running"
        kept = await backend.executor.gc()  # the orchestrator is alive: nothing of it is touched
        assert backend.leftovers(spec.run_id) and not [k for k in kept if spec.run_id in k]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    await asyncio.sleep(0.5)
    removed = await backend.executor.gc()
    assert backend.settle(spec.run_id) == [], removed


# -- the real CLI ------------------------------------------------------------------------------


async def test_real_cli_turn(backend: Backend, make_spec, run_to_end, fake_broker) -> None:
    """The real Claude Code CLI answers one turn through the backend's broker channel."""
    argv = ["-p", "say pong", "--output-format", "json", "--model", "fake-model", "--max-turns", "1"]
    spec = make_spec()
    sandbox = await _prepared(backend, spec)
    try:
        lines, result = await run_to_end(await sandbox.start_agent(argv))
    finally:
        await sandbox.close()
    assert result.exit_code == 0, result.stderr_tail
    assert json.loads(lines[-1])["result"] == fake_broker.answer
    calls = [r for r in fake_broker.requests if r["path"] == "/v1/messages"]
    assert calls and all(r["headers"].get("x-api-key") == fake_broker.token for r in calls)
    assert fake_broker.tcp_opened is (backend.name == "local")  # containers never get a host port


UPSTREAMS = ["anthropic", "compatible", "bedrock"]


@pytest.mark.slow
@pytest.mark.parametrize("upstream", UPSTREAMS)
def test_each_upstream_end_to_end(backend: Backend, upstream: str, tmp_path: Path, monkeypatch) -> None:
    """A whole run — real CLI, broker, this backend — against each kind of upstream; keys stay on the host."""
    bedrock = BedrockCredentials() if upstream == "bedrock" else None
    text, expected = log_lines(1200, label="ERROR", every=13)
    with ScriptedModelServer(count_label_plan(chunk_size=8_000), bedrock=bedrock) as model:
        if bedrock is not None:
            for name, value in bedrock.environment().items():
                monkeypatch.setenv(name, value)
            up = {"type": "bedrock", "base_url": model.url, "max_retries": 1}
            models = {"bedrock_model": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                      "bedrock_submodel": "us.anthropic.claude-haiku-4-5-20251001-v1:0"}
        else:
            up = {"type": upstream, "base_url": model.url, "api_key": FAKE_UPSTREAM_KEY, "max_retries": 1}
            models = {"root_model": "scripted-root", "submodel": "scripted-sub"}
        rlm = RLM(executor=backend.config, upstream=up, cache_dir=str(tmp_path / "cache"),
                  workspace_dir=str(tmp_path / "runs"), preserve_workspace=True, timeout_seconds=180, **models)
        result = rlm.invoke(text, question="How many lines contain ERROR?")
        seen = model.requests
    assert result.success, result.errors
    assert result.answer == str(expected)
    assert result.metrics.subcalls > 0 and result.metrics.root_calls > 0
    if bedrock is not None:
        assert {r.path.rsplit("/", 1)[-1] for r in seen} == {"invoke", "invoke-with-response-stream"}
        assert all(r.headers["authorization"].startswith("AWS4-HMAC-SHA256 ") for r in seen)  # signed, verified
    else:
        assert all(r.path.startswith("/v1/messages") for r in seen)
        assert all(r.headers.get("x-api-key") == FAKE_UPSTREAM_KEY for r in seen)  # the broker's key, not the token
    # Nothing secret of the host's reached the sandbox: the workspace holds no key.
    secrets = [FAKE_UPSTREAM_KEY] + ([bedrock.secret_key, bedrock.access_key] if bedrock else [])
    for path in (result.workspace_path or tmp_path).rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path
    assert backend.settle(result.run_id) == []
