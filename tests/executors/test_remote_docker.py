"""The remote-docker executor against a second Docker daemon on loopback (plain TCP, TLS, ssh://).

The daemons are session fixtures (``remote_docker_host`` in tests/conftest.py,
``remote_tls_host`` in tests/executors/conftest.py); the first test to need
one starts it and ships the sandbox image to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from executors.base import LABEL_APP, LABEL_RUN_ID
from executors.configs import RemoteDockerExecutorConfig
from executors.docker import hardening
from executors.docker.endpoint import resolve_endpoint
from executors.docker.image import LABEL_IMAGE_HASH, expected_hash
from executors.docker.remote import RemoteDockerExecutor
from fsrlm.errors import ExecutorUnavailable, SandboxError
from fsrlm.testing.dockerd import free_port

pytestmark = pytest.mark.docker

PROBE = r"""
import json, os, urllib.request, urllib.error
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False
def get(headers):
    req = urllib.request.Request(os.environ["FSRLM_BROKER_URL"] + "/fsrlm/v1/health", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, None
print(json.dumps({
    "uid": os.getuid(),
    "status": {k: status[k].strip() for k in ("CapEff", "NoNewPrivs", "Seccomp")},
    "net": sorted(os.listdir("/sys/class/net")),
    "writable": {p: writable(p) for p in ("/probe", "/workspace/probe.txt", "/workspace/output/probe.txt")},
    "input": open("/workspace/input/prompt.md").read(),
    "env": dict(os.environ),
    "health": get({"x-api-key": os.environ["FSRLM_BROKER_TOKEN"]}),
    "health_without_token": get({}),
}))
"""


def _run_objects(client, run_id: str) -> list[str]:
    filters = {"label": f"{LABEL_RUN_ID}={run_id}"}
    return ([c.name for c in client.containers.list(all=True, filters=filters)]
            + [v.name for v in client.volumes.list(filters=filters)])


@pytest.fixture
def remote(remote_docker_host, docker_image, monkeypatch) -> RemoteDockerExecutor:
    for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    return RemoteDockerExecutor(RemoteDockerExecutorConfig(host=remote_docker_host.url))


@pytest.fixture
def remote_client(remote_docker_host):
    client = remote_docker_host.client()
    yield client
    client.close()


async def test_locked_down_container_with_a_volume_and_a_tunnel(
    remote, remote_client, make_spec, agent_env, run_to_end, fake_broker, workspace, monkeypatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-aws-secret")
    await remote.check()
    image = remote_client.images.get(remote.image)
    assert image.labels[LABEL_IMAGE_HASH] == expected_hash()  # shipped (or reused) with the current inputs
    spec = make_spec()
    sandbox = await remote.prepare(spec)
    try:
        sandbox.cli_path = "/usr/bin/python3"
        process = await sandbox.start_agent(["-c", PROBE], agent_env)
        info = remote_client.api.inspect_container(process.container_id)
        lines, result = await run_to_end(process)
        assert result.exit_code == 0, result.stderr_tail
        await sandbox.collect()
    finally:
        await sandbox.close()
    facts = json.loads(lines[-1])

    # the container: no bind mount at all, the run's volume as the only writable mount, no network
    assert [(m["Type"], m["Destination"], m["Name"]) for m in info["Mounts"]] == [
        ("volume", "/workspace", sandbox.volume)]
    assert info["HostConfig"]["NetworkMode"] == "none" and info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["CapDrop"] == ["ALL"] and info["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert info["Config"]["Labels"][LABEL_APP] == "1" and info["Config"]["Labels"][LABEL_RUN_ID] == spec.run_id
    assert facts["uid"] == 1000 and int(facts["status"]["CapEff"], 16) == 0
    assert facts["status"]["NoNewPrivs"] == "1" and facts["status"]["Seccomp"] == "2"
    assert facts["net"] == ["lo"]
    assert facts["writable"] == {"/probe": False, "/workspace/probe.txt": True, "/workspace/output/probe.txt": True}
    assert facts["input"] == "the input\n"  # copied in
    env = facts["env"]
    assert not [k for k in env if k.startswith("AWS_")] and env["ANTHROPIC_API_KEY"] == fake_broker.token
    assert env["FSRLM_RELAY_MODE"] == "tunnel"
    assert facts["health"] == [200, {"ok": True}]  # through the tunnel to the broker's unix socket
    assert facts["health_without_token"][0] == 401
    # copied back, owned by us; nothing of the run left on the remote daemon
    assert (workspace / "output" / "probe.txt").read_text() == "x"
    assert (workspace / "probe.txt").stat().st_uid == os.getuid()
    assert _run_objects(remote_client, spec.run_id) == []


async def test_cli_turn_through_the_tunnel(remote, make_spec, agent_env, run_to_end, fake_broker) -> None:
    argv = ["-p", "say pong", "--output-format", "json", "--model", "fake-model", "--max-turns", "1"]
    async with await remote.prepare(make_spec()) as sandbox:
        lines, result = await run_to_end(await sandbox.start_agent(argv, agent_env))
    assert result.exit_code == 0, result.stderr_tail
    assert json.loads(lines[-1])["result"] == fake_broker.answer
    assert any(r["path"] == "/v1/messages" for r in fake_broker.requests)


async def test_stdin_round_trip_and_many_connections(
    remote, remote_client, make_spec, agent_env, run_to_end, fake_broker
) -> None:
    script = r"""
import concurrent.futures, os, sys, urllib.request
def health(i):
    req = urllib.request.Request(os.environ["FSRLM_BROKER_URL"] + "/fsrlm/v1/health",
                                 headers={"x-api-key": os.environ["FSRLM_BROKER_TOKEN"]})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status
with concurrent.futures.ThreadPoolExecutor(32) as pool:
    assert set(pool.map(health, range(200))) == {200}
for line in sys.stdin:
    sys.stdout.write(line)
"""
    spec = make_spec()
    async with await remote.prepare(spec) as sandbox:
        sandbox.cli_path = "/usr/bin/python3"
        process = await sandbox.start_agent(["-c", script], agent_env)
        payload = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(2000))
        lines, result = await run_to_end(process, payload)
        assert result.exit_code == 0, result.stderr_tail
    assert lines == payload.rstrip(b"\n").split(b"\n")
    assert len([r for r in fake_broker.requests if r["path"] == "/fsrlm/v1/health"]) == 200
    assert _run_objects(remote_client, spec.run_id) == []


async def test_timeout_kill_and_partial_work_comes_back(
    remote, remote_client, make_spec, agent_env, workspace
) -> None:
    spec = make_spec(timeout_seconds=3)
    sandbox = await remote.prepare(spec)
    sandbox.cli_path = "/bin/sh"
    process = await sandbox.start_agent(["-c", "echo partial > output/partial.md; exec sleep 300"], agent_env)
    started = time.monotonic()
    result = await asyncio.wait_for(process.wait(), 30)
    assert result.killed and process.timed_out and time.monotonic() - started < 15
    await sandbox.close()  # never collected: close copies back first
    assert (workspace / "output" / "partial.md").read_text() == "partial\n"
    assert _run_objects(remote_client, spec.run_id) == []


async def test_host_side_writes_win_and_hostile_links_stay_out(
    remote, make_spec, agent_env, run_to_end, workspace, tmp_path
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host secret")
    (workspace / "state" / "events.jsonl").write_text("event 1\n")
    script = ("echo agent > state/events.jsonl; echo agent > state/subcalls.jsonl; "
              f"ln -s {secret} output/answer.md; ln -s ../input/prompt.md output/copy.md; "
              "mkfifo output/fifo; echo ok > output/plain.md")
    async with await remote.prepare(make_spec()) as sandbox:
        sandbox.cli_path = "/bin/sh"
        process = await sandbox.start_agent(["-c", script], agent_env)
        # meanwhile the broker writes on the host
        (workspace / "state" / "events.jsonl").write_text("event 1\nevent 2\n")
        (workspace / "state" / "subcalls.jsonl").write_text("broker line\n")
        _, result = await run_to_end(process)
        assert result.exit_code == 0, result.stderr_tail
        await sandbox.collect()
    assert (workspace / "state" / "events.jsonl").read_text() == "event 1\nevent 2\n"
    assert (workspace / "state" / "subcalls.jsonl").read_text() == "broker line\n"
    assert not (workspace / "output" / "answer.md").exists() and not (workspace / "output" / "answer.md").is_symlink()
    assert os.readlink(workspace / "output" / "copy.md") == "../input/prompt.md"
    assert not (workspace / "output" / "fifo").exists()
    assert (workspace / "output" / "plain.md").read_text() == "ok\n"
    assert secret.read_text() == "host secret"


async def test_refuses_credentials_before_creating_anything(
    remote, remote_client, make_spec, fake_broker
) -> None:
    spec = make_spec()
    async with await remote.prepare(spec) as sandbox:
        with pytest.raises(SandboxError, match="Refusing"):
            await sandbox.start_agent(["--version"], {"FSRLM_BROKER_TOKEN": fake_broker.token,
                                                      "AWS_ACCESS_KEY_ID": "AKIA-host"})
        assert _run_objects(remote_client, spec.run_id) == []


async def test_connection_refused_is_a_one_line_error() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ExecutorUnavailable) as info:
        await RemoteDockerExecutor(RemoteDockerExecutorConfig(host=url, connect_timeout=3)).check()
    message = str(info.value)
    assert "\n" not in message and url in message and "connection refused" in message
    assert "DOCKER_HOST" in message


async def test_gc_reaps_the_remote_host(remote, remote_client, docker_image) -> None:
    labels = hardening.run_labels("gc-remote-test", time.time() - 10**6)
    volume = remote_client.volumes.create(labels=labels)
    removed = await remote.gc(older_than_seconds=10**5)
    assert volume.name in removed
    assert not remote_client.volumes.list(filters={"label": f"{LABEL_RUN_ID}=gc-remote-test"})


def test_endpoint_resolution(tmp_path: Path) -> None:
    config = RemoteDockerExecutorConfig
    env = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    e = resolve_endpoint(config(), env)
    assert (e.host, e.source, e.tls_dir, e.tls_verify) == ("tcp://h:2376", "DOCKER_HOST", tmp_path, True)
    e = resolve_endpoint(config(host="tcp://other:2375"), env)  # config wins; TLS settings still from env
    assert (e.host, e.source, e.tls_dir) == ("tcp://other:2375", "executor.host", tmp_path)
    e = resolve_endpoint(config(host="tcp://other:2375", tls_verify=False), {})
    assert e.tls_dir is None
    assert resolve_endpoint(config(host="ssh://me@box"), env).tls_dir is None
    # a docker context, as `docker context create` stores it
    import hashlib

    digest = hashlib.sha256(b"big").hexdigest()
    meta = tmp_path / "cfg" / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": "big", "Endpoints": {
        "docker": {"Host": "tcp://big:2376", "SkipTLSVerify": False}}}))
    tls = tmp_path / "cfg" / "contexts" / "tls" / digest / "docker"
    tls.mkdir(parents=True)
    (tls / "ca.pem").write_text("x")
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"currentContext": "big"}))
    e = resolve_endpoint(config(), {"DOCKER_CONFIG": str(tmp_path / "cfg")})
    assert (e.host, e.tls_dir, e.source) == ("tcp://big:2376", tls, "docker context 'big'")
    assert resolve_endpoint(config(), {"DOCKER_CONFIG": str(tmp_path / "cfg"),
                                       "DOCKER_HOST": "tcp://h:1"}).host == "tcp://h:1"
    with pytest.raises(ExecutorUnavailable, match="nope"):
        resolve_endpoint(config(context="nope"), {"DOCKER_CONFIG": str(tmp_path / "cfg")})
    assert resolve_endpoint(config(), {"DOCKER_CONFIG": str(tmp_path / "none")}).host.startswith("unix://")
