"""executor.isolation end to end: auto picks gVisor when the engine has it, runc when not; the run says which.

Engines: this machine's (gVisor registered by `make gvisor`), ``plain_dockerd`` (a second engine the
tests own, without gVisor, on this machine so the docker executor can use it too) and
``remote_docker_host`` (a second engine with gVisor, as a remote host).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from support import FAKE_UPSTREAM_KEY

from fsrlm import RLM
from fsrlm.errors import ExecutorUnavailable
from fsrlm.testing.plans import script_plan
from fsrlm.viewer.snapshot import snapshot

pytestmark = [pytest.mark.docker, pytest.mark.one_kernel]  # each test chooses its engine and kernel itself

KERNEL_SCRIPT = textwrap.dedent("""
    import os
    from llm_client import write_answer
    write_answer(os.uname().release)
""")


def point_at(monkeypatch, daemon) -> None:
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_HOST", daemon.url)


def run_reporting_the_kernel(scripted, make_config, executor: str, **executor_settings):
    scripted.plan = script_plan(KERNEL_SCRIPT)
    config = make_config(executor)
    config.executor = {"type": executor, **executor_settings}
    return RLM(config).invoke("input", question="Which kernel?")


def test_auto_runs_on_gvisor_when_the_engine_has_it(scripted, make_config, docker_image, gvisor_available, tmp_path):
    if not gvisor_available:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("`make gvisor` registers runsc with the engine")
    result = run_reporting_the_kernel(scripted, make_config, "docker", isolation="auto")
    assert result.success, result.errors
    assert result.answer == "4.4.0"  # what gVisor's kernel says, whatever the host runs
    sandbox = result.sandbox
    assert (sandbox.kernel, sandbox.runtime, sandbox.isolation) == ("gvisor", "runsc", "auto")
    # The host-side run record, the job file, the events and the viewer say the same.
    record = json.loads((tmp_path / "cache" / "runs" / f"{result.run_id}.json").read_text())
    assert record["sandbox"]["kernel"] == "gvisor"
    job = json.loads((result.workspace_path / "state" / "job.json").read_text())
    assert job["sandbox"]["runtime"] == "runsc"
    events = [json.loads(line) for line in (result.workspace_path / "state" / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["kind"] == "run_started")
    assert started["data"]["sandbox"]["kernel"] == "gvisor"
    assert snapshot(result.workspace_path).sandbox["kernel"] == "gvisor"


def test_auto_runs_on_runc_when_the_engine_has_no_gvisor(scripted, make_config, plain_dockerd, monkeypatch):
    point_at(monkeypatch, plain_dockerd)  # the docker executor on an engine of this machine without runsc
    result = run_reporting_the_kernel(scripted, make_config, "docker", isolation="auto")
    assert result.success, result.errors
    assert result.answer == os.uname().release  # the host's own kernel
    assert (result.sandbox.kernel, result.sandbox.runtime) == ("host", "runc")
    assert "no usable gVisor runtime" in result.sandbox.reason
    client = plain_dockerd.client()
    try:
        assert not client.containers.list(all=True, filters={"label": "fsrlm=1"})
    finally:
        client.close()


def test_isolation_gvisor_on_an_engine_without_it_stops_before_anything_runs(scripted, make_config, plain_dockerd,
                                                                             monkeypatch, tmp_path):
    point_at(monkeypatch, plain_dockerd)
    with pytest.raises(ExecutorUnavailable, match="no usable gVisor runtime.*make gvisor"):
        run_reporting_the_kernel(scripted, make_config, "docker", isolation="gvisor")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not scripted.requests


def test_auto_on_remote_hosts_with_and_without_gvisor(scripted, make_config, remote_docker_host, plain_dockerd,
                                                      gvisor_available):
    if not gvisor_available:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("`make gvisor` installs runsc, which the test host gets")
    on_gvisor = run_reporting_the_kernel(scripted, make_config, "remote-docker", host=remote_docker_host.url)
    assert on_gvisor.success, on_gvisor.errors
    assert on_gvisor.answer == "4.4.0" and on_gvisor.sandbox.kernel == "gvisor"
    assert on_gvisor.sandbox.executor == "remote-docker"
    on_runc = run_reporting_the_kernel(scripted, make_config, "remote-docker", host=plain_dockerd.url)
    assert on_runc.success, on_runc.errors
    assert on_runc.answer == os.uname().release and on_runc.sandbox.runtime == "runc"


def test_the_json_result_says_which_kernel(scripted, docker_image, tmp_path):
    scripted.plan = script_plan(KERNEL_SCRIPT)
    (tmp_path / "in.txt").write_text("input\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "ANTHROPIC_"))},
        "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
        "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
        "FSRLM_ROOT_MODEL": "scripted-root", "FSRLM_SUBMODEL": "scripted-sub",
    }
    out = subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "run", str(tmp_path / "in.txt"), "-q", "k",
                          "--isolation", "runc", "--workspace", str(tmp_path / "runs"), "--json"],
                         env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["sandbox"] == {"executor": "docker", "kernel": "host", "isolation": "runc", "runtime": "runc",
                                 "platform": None, "reason": "runc: asked for"}
    assert "sandbox: host kernel (runc)" in out.stderr  # the progress lines say it too
