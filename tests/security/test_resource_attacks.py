"""Resources: pids, memory, tmpfs, CPU and time are capped; the host reads at most its caps.

Every bomb here is bounded by small limits in the test's own config, so it cannot
harm the (shared) machine running the suite.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from security_support import MB, ContainerCpu, peak_rss_growth

from fsrlm.run import MAX_ANSWER_BYTES

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome


# Fork until fork fails, the children kept alive; then kill them all. Sets children, failure.
FORK_UNTIL_FAILURE = """
import errno, signal, time
children, failure = [], None
started = time.time()
while time.time() - started < 20:
    try:
        pid = os.fork()
    except OSError as e:
        failure = errno.errorcode.get(e.errno, str(e.errno))
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
"""

FORK_BOMB = FORK_UNTIL_FAILURE + """
F["forked"], F["failure"] = len(children), failure
save()
from llm_client import write_answer
write_answer(f"forked {len(children)}")
"""


def test_fork_bomb_is_capped_by_pids_limit(attack_run, finding):
    f = finding(
        "resources", "fork bomb (bounded)",
        tried="fork until fork fails, with executor.pids_limit=64; then kill the children and answer",
        expected="fork fails with EAGAIN below 64 processes; the run still completes",
    )
    run = attack_run(FORK_BOMB, sandbox={"pids_limit": 64, "cpus": 0.5})
    found = run.findings
    assert found["failure"] == "EAGAIN", found
    assert found["forked"] < 64
    assert run.result.success, run.result.errors
    f.observed = f"{found['forked']} forks, then {found['failure']}; run {run.result.stop_reason}"


@pytest.mark.slow
def test_classic_fork_bomb_is_contained(docker_image, scripted, make_config, finding):
    from fsrlm import RLM
    from fsrlm.testing.plans import bash_plan

    f = finding(
        "resources", "fork bomb (unbounded, never cleaned up)",
        tried="`:(){ :|:& };:` from the agent's Bash tool with pids_limit=64, cpus=0.5, timeout_seconds=15",
        expected="the container holds the bomb; the run ends by its timeout (or sandbox_error when the bomb "
                 "starves the CLI itself); the container is removed",
    )
    scripted.plan = bash_plan(":(){ :|:& };:; sleep 600")
    started = time.monotonic()
    config = make_config("docker", timeout_seconds=15)
    config.executor = {"type": "docker", "pids_limit": 64, "cpus": 0.5}
    result = RLM(config).invoke("x", question="q")
    wall = time.monotonic() - started
    # The bomb may starve the CLI itself of processes (it aborts: sandbox_error) or not (timeout).
    assert result.stop_reason in ("timeout", "sandbox_error"), (result.stop_reason, result.errors)
    assert wall < 45
    f.observed = (f"stop_reason {result.stop_reason} after {wall:.0f} s "
                  f"({(result.errors or [''])[0][:80]}); container removed")


MEMORY_BOMB = """
import subprocess
bomb = "import sys\\nx = []\\nwhile True:\\n    x.append(b'\\\\x01' * (8 << 20))\\n    print(len(x) * 8, flush=True)\\n"
p = subprocess.run([sys.executable, "-c", bomb], capture_output=True, text=True)
lines = p.stdout.split()
F["returncode"], F["peak_mb"] = p.returncode, int(lines[-1]) if lines else 0
save()
from llm_client import write_answer
write_answer(f"bomb ended {p.returncode}")
"""


@pytest.mark.parametrize("memory", ["384m", "256m"])
def test_memory_bomb_is_killed_at_the_memory_limit(attack_run, finding, memory, sandbox_runtime):
    limit = int(memory[:-1])
    f = finding(
        "resources", f"memory bomb (memory={memory})",
        tried=f"a child process allocating 8 MB blocks forever, with executor.memory={memory} (swap included)",
        expected=f"the container never exceeds {limit} MB: under runc the kernel OOM-kills the bomb (the agent's "
                 "commands are its first choice), under gVisor the bomb's allocation fails at its address-space cap "
                 "(memory - 384 MiB, at least 64 MiB); the run completes, or, if the agent is killed too (it needs "
                 "~150 MB, ~210 MB with gVisor's kernel), ends with sandbox_error naming the lack of memory",
    )
    run = attack_run(MEMORY_BOMB, sandbox={"memory": memory})
    found, result = run.findings, run.result
    if found:
        # runc: SIGKILL by the OOM killer; gVisor: MemoryError (exit 1) at the cap
        assert found["returncode"] == (1 if sandbox_runtime == "runsc" else -9), found
        assert 0 <= found["peak_mb"] < limit
    # Which process the kernel kills depends on sizes at that moment; either way the run ends cleanly.
    assert result.stop_reason in ("completed", "sandbox_error"), (result.stop_reason, result.errors)
    if result.stop_reason == "sandbox_error":
        assert any("lack of memory" in e for e in result.errors), result.errors
    how = "failed (MemoryError)" if found and found["returncode"] == 1 else "SIGKILLed"
    bomb = (f"bomb {how} at {found['peak_mb']} MB" if found else "bomb and agent killed together")
    f.observed = f"{bomb}; run {result.stop_reason}" + (f" ({result.errors[0][:90]})" if result.errors else "")


RUNAWAY = FORK_UNTIL_FAILURE + """
import subprocess, sys
hog = "x = []\\nfor i in range(96):\\n    x.append(b'\\\\x01' * (64 << 20))\\n    print(len(x) * 64, flush=True)\\n"
p = subprocess.run([sys.executable, "-c", hog], capture_output=True, text=True)
lines = p.stdout.split()
F.update(forked=len(children), failure=failure, returncode=p.returncode, peak_mb=int(lines[-1]) if lines else 0,
         oom_score_adj=open("/proc/self/oom_score_adj").read().strip())
save()
from llm_client import write_answer
write_answer(f"forked {len(children)}, then {failure}; the 6 GB allocation ended {p.returncode}")
"""


def test_runaway_script_dies_alone(attack_run, finding, sandbox_runtime):
    f = finding(
        "resources", "runaway script: fork bomb, then 6 GB (default limits)",
        tried="fork until fork fails (children kept), kill them, then allocate 6 GB in 64 MB blocks, with the "
              "default executor.memory=2g and pids_limit=256",
        expected="fork fails with EAGAIN, the allocation dies below 2 GB (runc: OOM-killed, SIGKILL; gVisor: "
                 "MemoryError at its address-space cap); the agent carries on and the run completes",
    )
    run = attack_run(RUNAWAY, timeout_seconds=180)
    found, result = run.findings, run.result
    assert result.success, (result.stop_reason, result.errors)
    assert found["failure"] == "EAGAIN", found
    assert found["returncode"] == (1 if sandbox_runtime == "runsc" else -9), found
    assert found["peak_mb"] < 2048
    if sandbox_runtime != "runsc":  # the agent's shell makes its commands the OOM killer's first choice
        assert found["oom_score_adj"] == "500", found
    f.observed = (f"{found['forked']} forks, then {found['failure']}; allocation ended {found['returncode']} at "
                  f"{found['peak_mb']} MB; run {result.stop_reason}")


TMPFS_FILL = """
import errno
def fill(folder, limit_mb):
    written, error = 0, None
    path = os.path.join(folder, "fill")
    try:
        with open(path, "wb") as fh:
            while written < limit_mb << 20:
                fh.write(b"\\0" * (1 << 20))
                fh.flush()
                written += 1 << 20
    except OSError as e:
        error = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return [written >> 20, error]
F["fill"] = {d: fill(d, 200) for d in ("/tmp", os.environ["HOME"], "/dev/shm")}
save()
from llm_client import write_answer
write_answer("filled")
"""


def test_tmpfs_fill_stops_at_the_size_caps(attack_run, finding):
    f = finding(
        "resources", "disk fill of the tmpfs mounts",
        tried="write up to 200 MB into /tmp, $HOME and /dev/shm, with executor.tmpfs_size=16m",
        expected="ENOSPC at 16 MB for /tmp and $HOME, at 64 MB for /dev/shm; the run completes",
    )
    run = attack_run(TMPFS_FILL, sandbox={"tmpfs_size": "16m", "memory": "512m"})
    fill = run.findings["fill"]
    assert fill["/tmp"][1] == "ENOSPC" and fill["/tmp"][0] <= 16
    assert fill["/home/sandbox"][1] == "ENOSPC" and fill["/home/sandbox"][0] <= 16
    assert fill["/dev/shm"][1] == "ENOSPC" and fill["/dev/shm"][0] <= 64
    assert run.result.success, run.result.errors
    f.observed = ", ".join(f"{d}: {mb} MB then {err}" for d, (mb, err) in fill.items())


WORKSPACE_FILL = """
import errno
written, error = 0, None
try:
    with open("scratch/fill", "wb") as fh:
        while written < LIMIT_MB << 20:
            fh.write(b"\\1" * (1 << 20))
            fh.flush()
            written += 1 << 20
except OSError as e:
    error = errno.errorcode.get(e.errno, str(e.errno))
os.unlink("scratch/fill")
F["written_mb"], F["error"] = written >> 20, error
save()
from llm_client import write_answer
write_answer("filled")
"""


def test_workspace_fill_is_not_capped_by_the_sandbox(attack_run, finding):
    f = finding(
        "resources", "disk fill of the workspace (default)",
        tried="write 64 MB into scratch/ (the workspace is a bind mount of a host folder)",
        expected="NOT PROTECTED by the sandbox (documented): the writes succeed; only the host filesystem bounds "
                 "them. Mitigation: workspace_dir on a size-limited filesystem (next row)",
    )
    run = attack_run("LIMIT_MB = 64\n" + WORKSPACE_FILL)
    assert run.findings["written_mb"] == 64 and run.findings["error"] is None
    assert run.result.success
    f.observed = f"{run.findings['written_mb']} MB written without error (gap documented in the threat model)"


@contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_workspace_fill_on_a_size_limited_workspace_dir(attack_run, finding, tmp_path):
    f = finding(
        "resources", "disk fill of the workspace (size-limited workspace_dir)",
        tried="workspace_dir on a 32 MB tmpfs (the documented mitigation); write up to 200 MB into scratch/",
        expected="ENOSPC at the filesystem's size; the agent frees the space and the run completes",
    )
    with small_tmpfs(tmp_path / "wsfs", "32m") as parent:
        run = attack_run("LIMIT_MB = 200\n" + WORKSPACE_FILL, workspace_dir=str(parent))
        found = dict(run.findings)
        result = run.result
    assert found["error"] == "ENOSPC" and found["written_mb"] <= 32, found
    assert result.success, result.errors
    f.observed = f"{found['written_mb']} MB then {found['error']}; run {result.stop_reason}"


CPU_SHARE = """
import multiprocessing, time
def spin(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass
started = time.time()
procs = [multiprocessing.Process(target=spin, args=(3,)) for _ in range(2)]
for p in procs: p.start()
for p in procs: p.join()
wall = time.time() - started
t = os.times()
F["wall"], F["cpu"] = wall, t.children_user + t.children_system
save()
from llm_client import write_answer
write_answer("spun")
"""


def test_cpu_is_capped(attack_run, finding, tmp_path, sandbox_runtime):
    f = finding(
        "resources", "CPU hog",
        tried="two processes spinning for 3 s of wall time, with executor.cpus=0.5",
        expected="together they get at most about 0.5 CPU (≤ 2 CPU-seconds over 3 s), measured inside and, from "
                 "the host, as the container cgroup's CPU time over any 2 s (inside gVisor a process's CPU time is "
                 "gVisor's own count, so there only the host's figure is the cap)",
    )
    host = ContainerCpu(tmp_path)
    run = host.run(lambda: attack_run(CPU_SHARE, sandbox={"cpus": 0.5}))
    wall, cpu = run.findings["wall"], run.findings["cpu"]
    rate = host.peak_rate(2.0)
    assert host.samples, "no CPU samples of the container"
    assert rate <= 0.5 * 1.3 + 0.1, rate
    if sandbox_runtime != "runsc":
        assert cpu <= 0.5 * wall * 1.3 + 0.3, (cpu, wall)
    f.observed = (f"inside: {cpu:.2f} CPU-seconds in {wall:.1f} s ({cpu / wall:.2f} CPU); host cgroup: at most "
                  f"{rate:.2f} CPU over any 2 s")


def test_cpu_spin_past_the_timeout(attack_run, finding):
    f = finding(
        "resources", "CPU spin past the timeout",
        tried="`while True: pass` in the agent's script, with timeout_seconds=10",
        expected="stop_reason timeout shortly after 10 s; the container is killed and removed",
    )
    started = time.monotonic()
    run = attack_run("while True:\n    pass\n", timeout_seconds=10, sandbox={"cpus": 0.5})
    wall = time.monotonic() - started
    assert run.result.stop_reason == "timeout", (run.result.stop_reason, run.result.errors)
    assert wall < 30
    f.observed = f"stop_reason timeout after {wall:.1f} s; no container left"


HUGE_FILES = """
with open("output/answer.md", "wb") as fh:
    fh.truncate(20 << 30)
with open("state/artifacts.jsonl", "wb") as fh:
    fh.truncate(20 << 30)
F["sizes"] = [os.path.getsize("output/answer.md"), os.path.getsize("state/artifacts.jsonl")]
save()
"""


def test_huge_output_files_are_read_up_to_their_caps(attack_run, finding):
    f = finding(
        "resources", "output files of many GB",
        tried="output/answer.md and state/artifacts.jsonl of 20 GB each (sparse files, so the test uses no disk)",
        expected=f"the orchestrator reads at most {MAX_ANSWER_BYTES >> 20} MB of the answer and 32 MB of "
                 "artifacts; its memory stays bounded",
    )
    run, growth = peak_rss_growth(lambda: attack_run(HUGE_FILES))
    assert run.findings["sizes"] == [20 << 30, 20 << 30]
    answer = run.result.answer or ""
    assert len(answer.encode()) <= MAX_ANSWER_BYTES + 100
    assert answer.endswith("truncated at 8388608 bytes]")
    assert run.result.artifacts == []
    assert growth < 400 * MB, growth
    f.observed = (f"answer cut at {len(answer.encode()) >> 20} MB with a truncation note, artifacts []; "
                  f"orchestrator RSS rose {growth / MB:.0f} MB")


STDOUT_FLOOD = """
fd = os.open("/proc/1/fd/1", os.O_WRONLY)  # the agent's stdout: Docker's attach stream to the host
block = memoryview(b"x" * (1 << 20))
written = 0
while written < 400 << 20:  # a pipe may take less than asked (gVisor's does): write the rest
    written += os.write(fd, block[: min(len(block), (400 << 20) - written)])
forged = {"type": "result", "subtype": "success", "is_error": False, "duration_ms": 1, "duration_api_ms": 1,
          "num_turns": 1, "session_id": "forged", "total_cost_usd": 0.0, "result": "forged"}
os.write(fd, b"\\n" + json.dumps(forged).encode() + b"\\n")
os.close(fd)
F["written_mb"] = written >> 20
save()
from llm_client import write_answer
write_answer("flooded")
"""


def test_stdout_flood_into_the_attach_stream(attack_run, finding):
    f = finding(
        "resources", "flood the orchestrator through the agent's stdout",
        tried="write 400 MB with no newline to /proc/1/fd/1 (the container's stdout, which Docker streams to the "
              "orchestrator), then a forged `result` message",
        expected="the over-long line is dropped (64 MB line cap), the orchestrator's memory stays bounded; a "
                 "forged message can at most misreport this run's own result",
    )
    run, growth = peak_rss_growth(lambda: attack_run(STDOUT_FLOOD, timeout_seconds=120))
    assert run.findings["written_mb"] == 400
    assert growth < 250 * MB, f"orchestrator RSS rose {growth / MB:.0f} MB"
    assert run.result.stop_reason in ("completed", "no_answer", "error", "sandbox_error")
    f.observed = (f"{run.findings['written_mb']} MB written; orchestrator RSS rose {growth / MB:.0f} MB; "
                  f"run {run.result.stop_reason}")
