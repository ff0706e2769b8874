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
from dockerd import free_port
from fsrlm.executors.base import LABEL_APP, LABEL_RUN_ID
from fsrlm.executors.configs import RemoteDockerExecutorConfig
from fsrlm.executors.docker import hardening
from fsrlm.executors.docker.endpoint import resolve_endpoint
from fsrlm.executors.docker.image import LABEL_IMAGE_HASH, expected_hash
from fsrlm.executors.docker.remote import RemoteDockerExecutor
from support import SANDBOX_PROBE, run_objects

from fsrlm.errors import ExecutorUnavailable


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


@pytest.mark.docker
async def test_locked_down_container_with_a_volume_and_a_tunnel(
    remote, remote_client, make_spec, run_to_end, fake_broker, workspace, monkeypatch, sandbox_runtime
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-aws-secret")
    await remote.check()
    image = remote_client.images.get(remote.image)
    assert image.labels[LABEL_IMAGE_HASH] == expected_hash()  # shipped (or reused) with the current inputs
    spec = make_spec()
    sandbox = await remote.prepare(spec)
    try:
        sandbox.cli_path = "/usr/bin/python3"
        process = await sandbox.start_agent(["-c", SANDBOX_PROBE])
        info = remote_client.api.inspect_container(process.container_id)
        lines, result = await run_to_end(process)
        assert result.exit_code == 0, result.stderr_tail
        await sandbox.collect()
    finally:
        await sandbox.close()
    facts = json.loads(lines[-1])

    # the container: no bind mount at all, the run's volume as the only writable mount, no network
    assert [(m["Type"], m["Destination"], m["Name"]) for m in info["Mounts"]] == [
        ("volume", "/workspace", sandbox.workspace.volume)]
    assert info["HostConfig"]["NetworkMode"] == "none" and info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["HostConfig"]["CapDrop"] == ["ALL"] and info["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert info["Config"]["Labels"][LABEL_APP] == "1" and info["Config"]["Labels"][LABEL_RUN_ID] == spec.run_id
    assert facts["uid"] == 1000 and int(facts["status"]["CapEff"], 16) == 0
    # Docker's default seccomp profile in filter mode; under gVisor its kernel serves the agent's calls itself
    assert facts["no_new_privs"] == 1 and facts["status"]["Seccomp"] == ("0" if sandbox_runtime == "runsc" else "2")
    assert facts["net"] == ["lo"]
    assert facts["writable"]["/workspace/output/probe.txt"] is True  # the rest: test_conformance.py::test_isolation
    assert facts["input"] == "the input\n"  # copied in
    env = facts["env"]
    assert not [k for k in env if k.startswith("AWS_")] and env["ANTHROPIC_API_KEY"] == fake_broker.token
    assert env["FSRLM_RELAY_MODE"] == "tunnel"
    assert facts["health"] == [200, {"ok": True}]  # through the tunnel to the broker's unix socket
    assert facts["health_without_token"][0] == 401
    # copied back, owned by us; nothing of the run left on the remote daemon
    assert (workspace / "output" / "probe.txt").read_text() == "x"
    assert (workspace / "probe.txt").stat().st_uid == os.getuid()
    assert run_objects(remote_client, spec.run_id) == []


@pytest.mark.docker
async def test_stdin_round_trip_and_many_connections(
    remote, remote_client, make_spec, run_to_end, fake_broker
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
        process = await sandbox.start_agent(["-c", script])
        payload = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(2000))
        lines, result = await run_to_end(process, payload)
        assert result.exit_code == 0, result.stderr_tail
    assert lines == payload.rstrip(b"\n").split(b"\n")
    assert len([r for r in fake_broker.requests if r["path"] == "/fsrlm/v1/health"]) == 200
    assert run_objects(remote_client, spec.run_id) == []


@pytest.mark.docker
async def test_close_copies_back_what_was_never_collected(
    remote, remote_client, make_spec, workspace
) -> None:
    spec = make_spec(timeout_seconds=3)
    sandbox = await remote.prepare(spec)
    sandbox.cli_path = "/bin/sh"
    process = await sandbox.start_agent(["-c", "echo partial > output/partial.md; exec sleep 300"])
    result = await asyncio.wait_for(process.wait(), 30)
    assert result.killed and process.timed_out
    await sandbox.close()  # never collected: close copies back first
    assert (workspace / "output" / "partial.md").read_text() == "partial\n"
    assert run_objects(remote_client, spec.run_id) == []


@pytest.mark.docker
async def test_host_side_writes_win_and_hostile_links_stay_out(
    remote, make_spec, run_to_end, workspace, tmp_path
) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host secret")
    (workspace / "state" / "events.jsonl").write_text("event 1\n")
    script = ("echo agent > state/events.jsonl; echo agent > state/subcalls.jsonl; "
              f"ln -s {secret} output/answer.md; ln -s ../input/prompt.md output/copy.md; "
              "mkfifo output/fifo; echo ok > output/plain.md")
    async with await remote.prepare(make_spec()) as sandbox:
        sandbox.cli_path = "/bin/sh"
        process = await sandbox.start_agent(["-c", script])
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


async def test_connection_refused_is_a_one_line_error() -> None:
    url = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ExecutorUnavailable) as info:
        await RemoteDockerExecutor(RemoteDockerExecutorConfig(host=url, connect_timeout=3)).check()
    message = str(info.value)
    assert "\n" not in message and url in message and "connection refused" in message
    assert "DOCKER_HOST" in message


def test_volume_is_the_only_writable_mount() -> None:
    opts = hardening.container_options(RemoteDockerExecutorConfig(), image="img:1", command=["x"], environment={},
                                       run_id="r1", volume="fsrlm-r1-abc")
    assert [(m["Type"], m["Source"], m["Target"], m["ReadOnly"]) for m in opts.host_config["mounts"]] == [
        ("volume", "fsrlm-r1-abc", "/workspace", False)]
    assert opts.host_config["network_mode"] == "none" and opts.host_config["read_only"] is True
    with pytest.raises(ValueError):
        hardening.container_options(RemoteDockerExecutorConfig(), image="i", command=[], environment={}, run_id="r",
                                    volume="v", workspace=Path("/w"))


def test_endpoint_resolution(tmp_path: Path) -> None:
    config = RemoteDockerExecutorConfig
    env = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    e = resolve_endpoint(config(), env)
    assert (e.host, e.source, e.tls_dir, e.tls_verify) == ("tcp://h:2376", "DOCKER_HOST", tmp_path, True)
    e = resolve_endpoint(config(host="tcp://other:2375"), env)  # config wins; TLS settings still from env
    assert (e.host, e.source, e.tls_dir) == ("tcp://other:2375", "executor.host", tmp_path)
    e = resolve_endpoint(config(host="tcp://other:2375", tls_verify=False), {})
    assert e.tls_dir is None
    e = resolve_endpoint(config(host="tcp://other:2376", cert_path=str(tmp_path)), {})  # certificates: verified
    assert (e.tls_dir, e.tls_verify) == (tmp_path, True)
    e = resolve_endpoint(config(), {**env, "DOCKER_TLS_VERIFY": ""})  # empty: TLS with the certificates, unverified
    assert (e.tls_dir, e.tls_verify) == (tmp_path, False)
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


@pytest.mark.docker
async def test_a_stale_image_on_the_host_is_replaced(remote_docker_host, remote_client, docker_image) -> None:
    from fsrlm.executors.docker.image import default_tag

    current = remote_client.images.get(default_tag()) if remote_client.images.list(default_tag()) else None
    if current is None:  # first test to need the image: ship it
        await RemoteDockerExecutor(RemoteDockerExecutorConfig(host=remote_docker_host.url)).check()
        current = remote_client.images.get(default_tag())
    box = remote_client.containers.create(current.id, command=["true"], labels={LABEL_APP: "1"})
    try:
        stale = box.commit(changes=[f"LABEL {LABEL_IMAGE_HASH}=stale"])
    finally:
        box.remove()
    stale.tag(default_tag())
    executor = RemoteDockerExecutor(RemoteDockerExecutorConfig(host=remote_docker_host.url))
    await executor.check()
    image = remote_client.images.get(default_tag())
    assert image.labels[LABEL_IMAGE_HASH] == expected_hash() and image.id != stale.id
    assert not [i for i in remote_client.images.list() if i.id == stale.id]  # the stale one is gone


# -- other ways to reach a host: TLS, ssh -------------------------------------------------


async def _round_trip(executor, make_spec, run_to_end) -> list[bytes]:
    script = ("import os, sys, urllib.request\n"
              "req = urllib.request.Request(os.environ['FSRLM_BROKER_URL'] + '/fsrlm/v1/health', "
              "headers={'x-api-key': os.environ['FSRLM_BROKER_TOKEN']})\n"
              "print(urllib.request.urlopen(req, timeout=30).status)\n"
              "sys.stdout.write(sys.stdin.read().upper())\n")
    async with await executor.prepare(make_spec()) as sandbox:
        sandbox.cli_path = "/usr/bin/python3"
        process = await sandbox.start_agent(["-c", script])
        lines, result = await run_to_end(process, b"hello over the wire\n" * 5000)
        assert result.exit_code == 0, result.stderr_tail
        await sandbox.collect()
    return lines


def _xfail_lost_tail_under_gvisor(runtime: str | None, lines: list[bytes], expected: int) -> None:
    """Known and open: under gVisor, over a TCP/TLS or ssh attach, the tail of a fast writer's stdout that exits
    at once was lost (3278 of 5001 lines here); the local socket and the e2e runs are not affected."""
    if runtime == "runsc" and len(lines) < expected:
        pytest.xfail(f"gVisor over a remote attach stream: {len(lines)} of {expected} lines arrived (open)")


@pytest.mark.docker
async def test_tls_host_runs_the_sandbox(remote_tls_host, docker_image, make_spec, run_to_end, sandbox_runtime,
                                         monkeypatch) -> None:
    for name, value in remote_tls_host.env.items():
        monkeypatch.setenv(name, value)
    executor = RemoteDockerExecutor(RemoteDockerExecutorConfig())  # all from DOCKER_HOST / _TLS_VERIFY / _CERT_PATH
    assert executor.endpoint.tls_dir == remote_tls_host.certs["client"]
    lines = await _round_trip(executor, make_spec, run_to_end)
    _xfail_lost_tail_under_gvisor(sandbox_runtime, lines, 5001)
    assert lines[0] == b"200" and lines[1:] == [b"HELLO OVER THE WIRE"] * 5000


@pytest.mark.docker
async def test_tls_with_the_wrong_ca_is_a_clear_error(remote_tls_host) -> None:
    config = RemoteDockerExecutorConfig(host=remote_tls_host.url, tls_verify=True,
                                        cert_path=str(remote_tls_host.certs["wrong_ca"]), connect_timeout=5)
    with pytest.raises(ExecutorUnavailable) as info:
        await RemoteDockerExecutor(config).check()
    message = str(info.value)
    assert "\n" not in message and remote_tls_host.url in message
    assert "TLS" in message and "certificate verify failed" in message and "DOCKER_CERT_PATH" in message
    # and a client without TLS is told the host speaks it
    plain = RemoteDockerExecutorConfig(host=remote_tls_host.url, connect_timeout=5)
    with pytest.raises(ExecutorUnavailable, match="speaks TLS"):
        await RemoteDockerExecutor(plain).check()


FAKE_SSH = r"""#!/usr/bin/env python3
# Plays `ssh HOST docker system dial-stdio`: logs its arguments, bridges stdio to the test daemon.
import os, socket, sys, threading
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\n")
if "-O" in sys.argv:
    sys.exit(0)
s = socket.create_connection(("127.0.0.1", int(os.environ["FAKE_SSH_PORT"])))
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""


@pytest.mark.docker
async def test_ssh_host_goes_through_dial_stdio(remote_docker_host, docker_image, make_spec, sandbox_runtime,
                                                run_to_end, tmp_path, monkeypatch) -> None:
    from fsrlm.executors.docker.sshdial import SSHDialer

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_PORT", str(remote_docker_host.port))
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    url = "ssh://tester@build-box:2222"
    try:
        executor = RemoteDockerExecutor(RemoteDockerExecutorConfig(host=url))
        lines = await _round_trip(executor, make_spec, run_to_end)
    finally:
        SSHDialer.shared(url).close()
    _xfail_lost_tail_under_gvisor(sandbox_runtime, lines, 5001)
    assert lines[0] == b"200" and len(lines) == 5001
    calls = (tmp_path / "ssh.log").read_text().splitlines()
    assert calls and all("-l tester -p 2222 -- build-box docker system dial-stdio" in c for c in calls[:-1])
    assert "BatchMode=yes" in calls[0] and "-O exit" in calls[-1]


async def test_ssh_failure_says_what_ssh_said(tmp_path, monkeypatch) -> None:
    from fsrlm.executors.docker.sshdial import SSHDialer

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text("#!/bin/sh\necho 'me@nowhere: Permission denied (publickey).' >&2\nexit 255\n")
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    url = "ssh://me@nowhere"
    try:
        with pytest.raises(ExecutorUnavailable) as info:
            await RemoteDockerExecutor(RemoteDockerExecutorConfig(host=url, connect_timeout=5)).check()
    finally:
        SSHDialer.shared(url).close()
    message = str(info.value)
    assert "\n" not in message and url in message
    assert "Permission denied (publickey)" in message and "ssh me@nowhere docker version" in message


# -- a host that goes away ----------------------------------------------------------------


class Proxy:
    """A TCP proxy in front of the test daemon: ``cut()`` drops every open connection, ``down()`` all of it."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._conns: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        import socket

        try:
            while data := a.recv(65536):
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self) -> None:
        import socket

        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def down(self) -> None:
        self._listener.close()
        self.cut()


STARTED_THEN_SLEEP = """
import time
from llm_client import append_artifact, llm_query
append_artifact({"partial": True})
llm_query("ECHO: started")
time.sleep(300)
"""


def _when_started(scripted, action) -> "threading.Thread":
    import threading

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not scripted.requests_of("subcall") and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.docker
def test_connection_lost_mid_run_ends_the_run_and_brings_the_work_back(
    remote_docker_host, remote_client, docker_image, scripted, make_config
) -> None:
    from fsrlm import RLM
    from fsrlm.testing.plans import script_plan

    proxy = Proxy(remote_docker_host.port)
    scripted.plan = script_plan(STARTED_THEN_SLEEP)
    config = make_config("remote-docker").model_copy(
        update={"executor": RemoteDockerExecutorConfig(host=proxy.url)})
    asyncio.run(RemoteDockerExecutor(config.executor).check())  # the image is there before the clock starts
    watcher = _when_started(scripted, proxy.cut)  # every stream drops; the host stays reachable
    started = time.monotonic()
    try:
        result = RLM(config).invoke("input", question="q")
    finally:
        proxy.down()
    watcher.join(5)
    assert not result.success and result.stop_reason == "sandbox_error"
    assert time.monotonic() - started < 60
    assert any("connection to the agent's container broke" in e for e in result.errors), result.errors
    assert result.artifacts == [{"partial": True}]  # copied back: the host was still reachable
    assert not remote_client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={result.run_id}"})
    assert not remote_client.volumes.list(filters={"label": f"{LABEL_RUN_ID}={result.run_id}"})


@pytest.mark.docker
def test_host_gone_mid_run_is_a_clear_error_and_gc_reaps_it_later(
    remote_docker_host, remote_client, docker_image, scripted, make_config
) -> None:
    from fsrlm import RLM
    from fsrlm.testing.plans import script_plan

    proxy = Proxy(remote_docker_host.port)
    scripted.plan = script_plan(STARTED_THEN_SLEEP)
    config = make_config("remote-docker").model_copy(
        update={"executor": RemoteDockerExecutorConfig(host=proxy.url, connect_timeout=3)})
    asyncio.run(RemoteDockerExecutor(config.executor).check())
    watcher = _when_started(scripted, proxy.down)  # the host is gone for good
    started = time.monotonic()
    result = RLM(config).invoke("input", question="q")
    watcher.join(5)
    try:
        assert not result.success and result.stop_reason == "sandbox_error"
        assert time.monotonic() - started < 90
        text = " ".join(result.errors)
        assert f"Lost the Docker host {proxy.url}" in text and "unreachable" in text
        assert f"fsrlm gc --host {proxy.url}" in text
        assert result.workspace_path is not None  # kept, as for every failed run
        left = remote_client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={result.run_id}"})
        assert left  # left on the host, as the message says...
    finally:
        reaper = RemoteDockerExecutor(RemoteDockerExecutorConfig(host=remote_docker_host.url))
        removed = asyncio.run(reaper.gc(older_than_seconds=1e-6))  # this (live) process made it: give an age
    assert {c.name for c in left} <= set(removed), (removed, left)  # ...and `fsrlm gc --host` reaps it
    assert not remote_client.volumes.list(filters={"label": f"{LABEL_RUN_ID}={result.run_id}"})
