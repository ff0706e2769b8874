"""The container's remaining hardening: what its mounts reveal, core dumps, open files, executables in /tmp."""

from __future__ import annotations

import os
import pwd

import pytest

from fsrlm import RLM
from fsrlm.executors.docker.image import cli_binary
from fsrlm.testing.plans import FinalStep, Plan, ToolStep, last_tool_result

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome

PROBE = r"""
import errno, resource, shutil, subprocess
F["mountinfo"] = open("/proc/self/mountinfo").read()
F["core"] = resource.getrlimit(resource.RLIMIT_CORE)
F["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    F["raise_core"] = "raised"
except (ValueError, OSError) as e:
    F["raise_core"] = type(e).__name__
shutil.copy("/bin/true", "/tmp/dropped")
os.chmod("/tmp/dropped", 0o755)
try:
    subprocess.run(["/tmp/dropped"], check=True)
    F["exec_tmp"] = "ran"
except OSError as e:
    F["exec_tmp"] = errno.errorcode.get(e.errno, str(e.errno))
F["python_from_tmp"] = subprocess.run(["python3", "-c", "print('ok')"], capture_output=True, text=True,
                                      cwd="/tmp").stdout.strip()
save()
from llm_client import write_answer
write_answer("probed")
"""


def test_mounts_reveal_no_host_path_of_the_cli(attack_run, finding, sandbox_runtime):
    f = finding(
        "host filesystem", "host paths in the container's mount table",
        tried="read /proc/self/mountinfo, which shows the host path behind each bind mount",
        expected="the shared CLI comes from a fixed neutral path (not the orchestrator's virtualenv, home or "
                 "user name); the broker socket from a temp folder",
    )
    found = attack_run(PROBE).findings
    lines = found["mountinfo"].splitlines()
    cli_line = next(line for line in lines if line.split()[4] == "/usr/local/bin/claude")
    cli_root = cli_line.split()[3]
    venv = str(cli_binary().parent)
    user = pwd.getpwuid(os.getuid())
    leaks = [line for line in lines if venv in line or "site-packages" in line or user.pw_dir + "/" in line]
    f.observed = f"the CLI is mounted from {cli_root}; lines naming the virtualenv or home: {len(leaks)}"
    assert leaks == [], leaks
    if sandbox_runtime == "runsc":  # gVisor's mount table shows no host path at all: every root is "/"
        assert cli_root == "/", cli_root
    else:
        assert cli_root.startswith(("/var/lib/fsrlm/cli/", "/tmp/fsrlm-cli-")), cli_root


def test_no_core_dumps_a_fixed_open_file_cap_and_no_exec_in_tmp(attack_run, finding):
    f = finding(
        "resources", "core dumps, open files, programs dropped in /tmp",
        tried="read RLIMIT_CORE and RLIMIT_NOFILE and try to raise the core limit; copy /bin/true to /tmp and "
              "run it; the run itself uses the real CLI (Write, Bash) with /tmp as its temp folder",
        expected="core limit 0 (cannot be raised), an explicit open-file limit, /tmp mounted noexec (the copy "
                 "cannot run; python still runs from /tmp as its working folder); the run completes",
    )
    run = attack_run(PROBE)
    found = run.findings
    assert run.result.success, run.result.errors
    f.observed = (f"core {found['core']} (raising it: {found['raise_core']}), nofile {found['nofile']}, "
                  f"running a copy in /tmp: {found['exec_tmp']}, python in /tmp: {found['python_from_tmp']!r}")
    assert found["core"] == [0, 0] and found["raise_core"] == "ValueError"
    assert found["nofile"] == [8192, 8192]
    assert found["exec_tmp"] == "EACCES"
    assert found["python_from_tmp"] == "ok"


def test_every_tool_of_the_agent_works_with_noexec_tmp(scripted, make_config, finding):
    f = finding(
        "resources", "the agent's tools with /tmp noexec",
        tried="a run whose agent uses Grep (ripgrep), Glob, Read, Edit, Skill and Bash with CLAUDE_CODE_TMPDIR=/tmp "
              "mounted noexec",
        expected="every tool answers as with an executable /tmp (the CLI executes nothing it unpacks there)",
    )
    seen: list[str] = []

    def after(name: str, tool_input: dict):
        def step(body: dict) -> ToolStep:
            seen.append(last_tool_result(body))
            return ToolStep(name, tool_input)
        return step

    def final(body: dict) -> FinalStep:
        seen.append(last_tool_result(body))
        return FinalStep("done")

    scripted.plan = Plan([
        ToolStep("Grep", {"pattern": "def chunk_file", "path": "/workspace/tools", "output_mode": "content"}),
        after("Glob", {"pattern": "tools/*.py"}),
        after("Read", {"file_path": "/workspace/input/prompt.md"}),
        after("Edit", {"file_path": "/workspace/input/prompt.md", "old_string": "needle", "new_string": "pin"}),
        after("Skill", {"skill": "rlm"}),
        after("Bash", {"command": "cat input/prompt.md > output/answer.md", "description": "answer"}),
        final,
    ])
    result = RLM(make_config("docker")).invoke("a needle in a haystack", question="q")
    assert result.success, result.errors
    grep, glob, read, edit, skill, bash = seen
    f.observed = f"Grep: {grep.strip()[:60]!r}; Glob: {glob.split()}; answer {result.answer!r}"
    assert "def chunk_file" in grep
    assert "tools/chunking.py" in glob and "needle" in read and "rlm" in skill.lower()
    assert result.answer == "a pin in a haystack"
