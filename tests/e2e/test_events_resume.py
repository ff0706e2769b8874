"""Live events, and resuming a run whose orchestrator was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from support import FAKE_UPSTREAM_KEY, log_lines

from fsrlm import RLM
from fsrlm.config import DEFAULT_BUDGET_USD
from fsrlm.events import read_events
from fsrlm.testing.plans import (
    FinalStep,
    Plan,
    ToolStep,
    count_label_plan,
    last_user_text,
    working_directory,
)


def test_stream_yields_typed_events_in_order(scripted, make_config):
    text, expected = log_lines(300)
    scripted.plan = count_label_plan(chunk_size=4000)
    events = list(RLM(make_config("local")).stream(text, question="How many lines contain ERROR?"))

    kinds = [e.kind for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "result"
    for kind in ("tool_use", "script_started", "subcall", "artifact", "script_finished", "agent_text"):
        assert kind in kinds, kind
    assert kinds.index("script_started") < kinds.index("script_finished")
    assert events[-1].data["answer"] == str(expected)
    subcalls = [e for e in events if e.kind == "subcall" and e.record.kind == "subcall"]
    assert subcalls and all(e.totals["subcalls_used"] >= 1 for e in subcalls)
    scripts = [e.detail for e in events if e.kind == "script_started"]
    assert scripts and scripts[0].endswith("count.py")
    # The same events are on disk, for the viewer and for later inspection.
    on_disk = read_events(Path(events[-1].data["workspace_path"]))
    assert [e.kind for e in on_disk] == kinds


RESUMABLE_SCRIPT = textwrap.dedent("""
    import os, time
    from llm_client import llm_batch, write_answer
    answers = llm_batch([f"ECHO: part {i}" for i in range(8)])
    if not os.path.exists("scratch/was-interrupted"):
        open("scratch/was-interrupted", "w").write("x")
        time.sleep(600)          # killed here, after the subcalls, before the answer
    write_answer(" ".join(a.split()[-1] for a in answers))
""")


def resumable_plan() -> Plan:
    def step(body: dict):
        cwd = working_directory(body) or "."
        assistants = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if assistants == 0:
            return ToolStep("Write", {"file_path": f"{cwd}/scratch/scripts/job.py", "content": RESUMABLE_SCRIPT})
        if "resumed" in last_user_text(body) or assistants == 1:
            return ToolStep("Bash", {"command": "python3 scratch/scripts/job.py", "description": "run job"})
        return FinalStep("done")

    return Plan([step] * 6, name="resumable")


def test_killed_run_resumes_without_paying_twice(scripted, tmp_path):
    scripted.plan = resumable_plan()
    runs = tmp_path / "runs"
    cache = tmp_path / "cache"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "ANTHROPIC_"))},
        "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
        "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(cache),
        "FSRLM_ROOT_MODEL": "scripted-root", "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_EXECUTOR": "local",
    }
    (tmp_path / "in.txt").write_text("some input\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsrlm.cli.main", "run", str(tmp_path / "in.txt"), "-q", "q",
         "--workspace", str(runs), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(runs.glob("*/scratch/was-interrupted")):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    paid_before = len(scripted.requests_of("subcall"))
    assert paid_before == 8

    gc = subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "gc", "--json"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert any("local run" in r for r in json.loads(gc.stdout)["removed"]), gc.stdout + gc.stderr

    workspace = next(runs.iterdir())
    resumed = subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "resume", str(workspace), "--json"],
                             env=env, capture_output=True, text=True, timeout=120)
    result = json.loads(resumed.stdout)
    assert resumed.returncode == 0, resumed.stderr
    assert result["answer"] == " ".join(str(i) for i in range(8))
    assert len(scripted.requests_of("subcall")) == paid_before  # no subcall paid twice
    assert result["metrics"]["subcalls_cached"] == 8
    # The resumed agent continued the same conversation.
    resumed_requests = [r for r in scripted.requests_of("root") if "resumed" in last_user_text(r.body)]
    assert result["session_id"] and resumed_requests
    assert len(resumed_requests[0].body["messages"]) > 3  # the earlier turns came along


def _cli_env(scripted, tmp_path: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "ANTHROPIC_"))},
        "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
        "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
        "FSRLM_ROOT_MODEL": "scripted-root", "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_EXECUTOR": "local",
    }


def _fsrlm(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsrlm.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_resume_keeps_the_runs_own_settings_and_system_prompt(scripted, tmp_path):
    """A budget, max_turns and system prompt given to `fsrlm run` survive a kill; the run folder cannot change them."""
    scripted.plan = resumable_plan()
    runs, env = tmp_path / "runs", _cli_env(scripted, tmp_path)
    (tmp_path / "in.txt").write_text("some input\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsrlm.cli.main", "run", str(tmp_path / "in.txt"), "-q", "q", "--workspace", str(runs),
         "--max-budget-usd", "20", "--max-turns", "7", "--system", "ORIGINAL SYSTEM PROMPT", "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(runs.glob("*/scratch/was-interrupted")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    workspace = next(runs.iterdir())
    (workspace / "input" / "system.md").write_text("INJECTED BY THE AGENT")  # the agent may write its workspace
    scripted.reset()

    resumed = _fsrlm("resume", str(workspace), "--json", env=env)
    assert resumed.returncode == 0, resumed.stderr
    said = resumed.stderr.splitlines()[0]
    assert said.startswith(f"fsrlm: resuming run {workspace.name} (it stopped:") and "of $20.00" in said
    roots = scripted.requests_of("root")
    systems = json.dumps([r.body.get("system") for r in roots])
    assert "ORIGINAL SYSTEM PROMPT" in systems and "INJECTED BY THE AGENT" not in systems
    assert all(r.body.get("max_tokens") for r in roots)
    from fsrlm.config import load_config
    from fsrlm.resume import plan_resume

    plan = plan_resume(load_config(env=env), workspace)
    assert (plan.config.max_budget_usd, plan.config.max_turns) == (20.0, 7)  # not the defaults ($5, 50)
    assert plan_resume(load_config(env=env), workspace, {"max_budget_usd": 30}).config.max_budget_usd == 30


def test_resuming_a_completed_run_returns_its_result_and_spends_nothing(scripted, tmp_path):
    text, expected = log_lines(300)
    scripted.plan = count_label_plan(chunk_size=4000)
    env = _cli_env(scripted, tmp_path)
    (tmp_path / "log.txt").write_text(text)
    first = _fsrlm("run", str(tmp_path / "log.txt"), "-q", "How many lines contain ERROR?", "--workspace",
                   str(tmp_path / "runs"), "--preserve-workspace", "--json", env=env)
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    asked = len(scripted.requests)

    again = _fsrlm("resume", done["workspace_path"], "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[0] == (f"fsrlm: run {done['run_id']} already completed "
                                            f"(${done['metrics']['total_cost_usd']:.2f} spent of ${DEFAULT_BUDGET_USD:.2f}); showing its "
                                            "result — nothing runs, nothing is spent")
    assert len(scripted.requests) == asked  # no model call at all
    shown = json.loads(again.stdout)
    assert shown["answer"] == done["answer"] == str(expected)
    assert shown["metrics"] == done["metrics"] and shown["stop_reason"] == "completed"
