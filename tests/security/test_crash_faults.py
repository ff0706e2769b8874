"""Crashes and infrastructure faults: a killed orchestrator, a killed container, a full disk, a lost socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from security_support import PREAMBLE, our_containers
from support import FAKE_UPSTREAM_KEY, kernel_env

from fsrlm import RLM
from fsrlm.testing.plans import script_plan

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the orchestrator exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _container_of(tmp_path: Path) -> dict:
    import docker

    client = docker.from_env()
    try:
        for c in client.containers.list(all=True, filters={"label": "fsrlm=1"}):
            for m in c.attrs.get("Mounts") or []:
                if str(m.get("Source", "")).startswith(str(tmp_path)):
                    return {"name": c.name, "status": c.status, "mounts": c.attrs["Mounts"]}
        return {}
    finally:
        client.close()


KILLABLE = """
import time
from llm_client import llm_batch, write_answer
answers = llm_batch([f"ECHO: part {i}" for i in range(6)])
open("scratch/subcalls-done", "w").write("x")
if SLEEP:
    time.sleep(600)  # the orchestrator is SIGKILLed here
write_answer(" ".join(a.split()[-1] for a in answers))
"""


def test_sigkilled_orchestrator_then_gc_then_rerun(scripted, docker_image, finding, tmp_path):
    f = finding(
        "crash and infrastructure faults", "orchestrator SIGKILLed mid-run",
        tried="`fsrlm run --executor docker` killed with SIGKILL after its agent made 6 subcalls; then "
              "`fsrlm gc`; then the same question again with the same cache_dir",
        expected="the container and the broker's socket folder outlive the orchestrator; `fsrlm gc` removes "
                 "both (and leaves live runs alone); "
                 "the rerun answers with all 6 subcalls from the cache (none paid twice)",
    )
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "ANTHROPIC_"))},
        "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
        "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(cache),
        "FSRLM_ROOT_MODEL": "scripted-root", "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_EXECUTOR": "docker",
        **kernel_env(),  # this test's kernel (runc or gVisor)
    }
    (tmp_path / "in.txt").write_text("some input\n")
    command = [sys.executable, "-m", "fsrlm.cli.main", "run", str(tmp_path / "in.txt"), "-q", "Which parts?",
               "--workspace", str(runs), "--json"]
    scripted.plan = script_plan(PREAMBLE + "SLEEP = True\n" + KILLABLE)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: list(runs.glob("*/scratch/subcalls-done")), 90, "the subcalls", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    paid = len(scripted.requests_of("subcall"))
    assert paid == 6
    orphan = _container_of(tmp_path)
    assert orphan and orphan["status"] == "running", orphan  # the sandbox outlived its orchestrator
    socket_dir = next(Path(m["Source"]).parent for m in orphan["mounts"] if m["Destination"].endswith("broker.sock"))
    assert socket_dir.is_dir()  # and so did the broker's socket folder

    # A large --older-than: only leftovers of dead orchestrators go (other runs on this machine are left alone).
    gc = subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "gc", "--older-than", "86400", "--json"],
                        env=env, capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    removed = json.loads(gc.stdout)["removed"]
    assert orphan["name"] in removed, removed
    assert our_containers(tmp_path) == []
    assert f"broker socket {socket_dir}" in removed and not socket_dir.exists()

    scripted.plan = script_plan(PREAMBLE + "SLEEP = False\n" + KILLABLE)
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout)
    assert summary["answer"] == "0 1 2 3 4 5"
    assert summary["metrics"]["subcalls_cached"] == 6 and summary["metrics"]["subcalls"] == 0
    assert len(scripted.requests_of("subcall")) == paid  # nothing paid twice
    f.observed = (f"container {orphan['status']} after the kill; gc removed the container and the socket folder "
                  f"({len(removed)} items in all); rerun answered "
                  f"{summary['answer']!r} with {summary['metrics']['subcalls_cached']} cached subcalls and "
                  f"{len(scripted.requests_of('subcall')) - paid} new upstream subcalls")


SLEEPER = """
open("scratch/started", "w").write("x")
import time
time.sleep(600)
"""


def test_container_killed_mid_run(scripted, make_config, docker_image, finding, tmp_path):
    import docker

    f = finding(
        "crash and infrastructure faults", "the container dies mid-run (stands in for a Docker daemon restart)",
        tried="`docker kill` of the agent's container while its script runs (restarting the shared daemon would "
              "harm other users of this machine; a restart kills running containers the same way)",
        expected="the run ends at once with stop_reason sandbox_error and the exit code; the workspace is kept; "
                 "nothing is left behind",
    )
    scripted.plan = script_plan(PREAMBLE + SLEEPER)
    killed: dict = {}

    def killer() -> None:
        try:
            _wait_for(lambda: list((tmp_path / "runs").glob("*/scratch/started")), 90, "the script")
            killed.update(_container_of(tmp_path))
            client = docker.from_env()
            try:
                client.containers.get(killed["name"]).kill()
            finally:
                client.close()
        except Exception as e:  # reported by the assertions below
            killed["error"] = repr(e)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    started = time.monotonic()
    result = RLM(make_config("docker")).invoke("input", question="q")
    wall = time.monotonic() - started
    thread.join(10)
    assert "error" not in killed, killed
    assert result.stop_reason == "sandbox_error", (result.stop_reason, result.errors)
    assert any("exit code 137" in e for e in result.errors), result.errors
    assert result.workspace_path and (result.workspace_path / "scratch" / "started").exists()
    assert wall < 60
    f.observed = f"stop_reason {result.stop_reason} after {wall:.1f} s: {result.errors[0][:90]}"


CACHE_CALLS = """
from llm_client import llm_query, write_answer
write_answer(" ".join(llm_query(f"ECHO: entry {i}").split()[-1] for i in range(6)))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_full_disk_under_the_cache(scripted, make_config, docker_image, finding, tmp_path):
    f = finding(
        "crash and infrastructure faults", "disk full on the host cache dir",
        tried="cache_dir on a 1 MB tmpfs filled up but for 8 KB, then a run making 6 subcalls",
        expected="the run still answers; the cache holds only complete entries (each parses), no temp files",
    )
    cache = tmp_path / "cachefs"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache)], check=True)
    try:
        filler = cache / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, max(filler.stat().st_size - 8192, 0))  # two pages free: some writes fit, most not
        scripted.plan = script_plan(CACHE_CALLS)
        result = RLM(make_config("docker", cache_dir=str(cache))).invoke("input", question="q")
        entries = [p for p in (cache / "llm").rglob("*") if p.is_file()] if (cache / "llm").exists() else []
        temps = [p.name for p in cache.rglob("*") if p.name.startswith(".tmp")]
        valid = 0
        for p in entries:
            json.loads(p.read_text())  # a half-written entry would fail here
            valid += 1
        records = list((cache / "runs").glob("*.json")) if (cache / "runs").exists() else []
        for p in records:
            json.loads(p.read_text())
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)
    assert result.success, (result.stop_reason, result.errors)
    assert result.answer == "0 1 2 3 4 5"
    assert temps == [], temps
    f.observed = (f"answer {result.answer!r}; {valid} complete cache entries and {len(records)} run records "
                  f"written before the disk filled, every one parses; temp files left: {temps or 'none'}")


SOCKET_GONE = """
import time
from llm_client import llm_query, LLMError, write_answer
before = llm_query("ECHO: before")
open("scratch/ready", "w").write("x")
deadline = time.time() + 60
while not os.path.exists("scratch/go") and time.time() < deadline:
    time.sleep(0.1)
try:
    after = llm_query("ECHO: after")
except LLMError as e:
    after = f"LLMError {e.error_type}: {e}"
F["before"], F["after"] = before, after
save()
write_answer(after)
"""


def test_broker_socket_removed_mid_run(scripted, make_config, docker_image, finding, tmp_path):
    f = finding(
        "crash and infrastructure faults", "broker socket removed mid-run",
        tried="delete the broker's socket file on the host while the agent's script runs, then make a subcall",
        expected="a clear outcome and a clean end: the call fails with a connection error naming the broker "
                 "URL, or still works through the mounted inode; the run finishes and its socket folder is removed",
    )
    scripted.plan = script_plan(PREAMBLE + SOCKET_GONE)
    removed: dict = {}

    def remover() -> None:
        try:
            ready = _wait_for(lambda: list((tmp_path / "runs").glob("*/scratch/ready")), 90, "the script")
            mounts = _container_of(tmp_path)["mounts"]
            socket_path = next(Path(m["Source"]) for m in mounts if m["Destination"].endswith("broker.sock"))
            socket_path.unlink()
            removed["socket"] = socket_path
            (ready[0].parent / "go").write_text("x")
        except Exception as e:
            removed["error"] = repr(e)

    thread = threading.Thread(target=remover, daemon=True)
    thread.start()
    result = RLM(make_config("docker")).invoke("input", question="q")
    thread.join(10)
    assert "error" not in removed, removed
    assert result.stop_reason in ("completed", "no_answer", "sandbox_error"), (result.stop_reason, result.errors)
    found = json.loads((result.workspace_path / "scratch" / "findings.json").read_text())
    assert found["before"] == "before"
    assert found["after"] == "after" or "broker is not reachable" in found["after"], found["after"]
    assert not removed["socket"].parent.exists()  # the broker removed its private folder at the end
    f.observed = f"the next subcall gave {found['after'][:120]!r}; run {result.stop_reason}; socket folder removed"


def test_broker_socket_missing_before_the_sandbox_starts(scripted, make_config, docker_image, finding,
                                                         monkeypatch):
    from fsrlm.broker.server import Broker

    f = finding(
        "crash and infrastructure faults", "broker socket missing when the sandbox starts",
        tried="the socket file is deleted between the broker's start and the container's",
        expected="stop_reason sandbox_error with a message naming the missing socket; no container is created",
    )
    start = Broker.start

    async def start_then_lose_socket(self):
        endpoint = await start(self)
        endpoint.unix_socket.unlink()
        return endpoint

    monkeypatch.setattr(Broker, "start", start_then_lose_socket)
    scripted.plan = script_plan(textwrap.dedent("""
        from llm_client import write_answer
        write_answer("should not run")
    """))
    result = RLM(make_config("docker")).invoke("input", question="q")
    assert result.stop_reason == "sandbox_error", (result.stop_reason, result.errors)
    assert any("broker socket" in e and "missing" in e for e in result.errors), result.errors
    f.observed = f"stop_reason {result.stop_reason}: {result.errors[0][:120]}"
