"""Fixtures of the batch tests: jobs files of labelled logs, the scripted model's batch plan, CLI runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FAKE_UPSTREAM_KEY

from fsrlm.testing.plans import FinalStep, Plan, ToolStep, count_label_plan, first_user_text
from fsrlm.testing.scripted_model import ScriptedModelServer

FSRLM = str(Path(sys.executable).with_name("fsrlm"))
_JOB = re.compile(r"\(job (\S+?)\)")


def write_jobs(folder: Path, count: int, *, pause: set[int] = frozenset(), lines: int = 120) -> dict[str, str]:
    """``count`` jobs over logs with a different number of ERROR lines each; returns id -> right answer.

    A job in ``pause`` says PAUSE in its question: the scripted agent sleeps after its
    script ran (its subcalls are done and cached), a moment to kill its node.
    """
    answers = {}
    with (folder / "jobs.jsonl").open("w") as jobs:
        for i in range(count):
            job_id = f"job-{i:02d}"
            every = 2 + i % 9
            text = "".join(f"{job_id} line {n} {'ERROR' if n % every == 0 else 'INFO'} payload {'x' * 30}\n"
                           for n in range(lines))
            (folder / f"{job_id}.log").write_text(text)
            answers[job_id] = str(sum(1 for n in range(lines) if n % every == 0))
            question = f"How many lines contain ERROR? (job {job_id})" + (" PAUSE" if i in pause else "")
            jobs.write(json.dumps({"id": job_id, "input": f"{job_id}.log", "question": question}) + "\n")
    return answers


class BatchPlan:
    """The root agent's plan for batch tests: count ERROR lines with a script, pause if asked, finish.

    ``paused`` collects the job ids whose agent reached the pause (after its subcalls);
    ``on_pause`` is set the first time.
    """

    def __init__(self, pause_seconds: float = 6.0) -> None:
        self.pause_seconds = pause_seconds
        self.paused: list[str] = []
        self.on_pause = threading.Event()
        count = count_label_plan("ERROR", chunk_size=1500)
        self.plan = Plan([count.steps[0], count.steps[1], self._pause, FinalStep("counted")], name="batch")

    def _pause(self, body: dict) -> ToolStep:
        text = first_user_text(body)
        if "PAUSE" not in text:
            return ToolStep("Bash", {"command": "true", "description": "nothing to wait for"})
        match = _JOB.search(text)
        self.paused.append(match.group(1) if match else "?")
        self.on_pause.set()
        return ToolStep("Bash", {"command": f"sleep {self.pause_seconds:g}", "description": "pause"})


@pytest.fixture
def batch_plan(scripted: ScriptedModelServer) -> BatchPlan:
    plan = BatchPlan()
    scripted.plan = plan.plan
    return plan


@pytest.fixture
def batch_env(scripted: ScriptedModelServer, tmp_path: Path) -> dict[str, str]:
    """Environment of an ``fsrlm batch`` process that talks to the scripted model."""
    return {
        **os.environ,
        "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
        "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_ROOT_MODEL": "scripted-root",
        "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
        "FSRLM_WORKSPACE_DIR": str(tmp_path / "runs"), "FSRLM_TIMEOUT_SECONDS": "120",
    }


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_batch_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([FSRLM, "batch", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def popen_batch() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start ``fsrlm batch`` in the background; killed at the end of the test if still running."""
    started: list[subprocess.Popen] = []

    def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        proc = subprocess.Popen([FSRLM, "batch", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
