"""The host-side run record, and what ``resume`` trusts of a (hostile) run folder."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from fsrlm.config import RLMConfig
from fsrlm.errors import WorkspaceError
from fsrlm.run import resume_rlm
from fsrlm.runstate import RunState, RunStateStore
from fsrlm.workspace import Workspace

RUN_A, RUN_B = "20260101-000000-aaaaaa", "20260101-000000-bbbbbb"


def test_a_failed_save_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStateStore(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    store.save(RunState(run_id=RUN_A, workspace=tmp_path))  # never raises
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("run_id", ["../../outside/victim", "a/b", "..", ".hidden", 42, ["x"]])
def test_open_refuses_a_run_id_that_could_name_another_file(tmp_path: Path, run_id) -> None:
    ws = Workspace.create(RUN_A, tmp_path)
    (ws.root / "state" / "job.json").write_text(json.dumps({"run_id": run_id}))
    with pytest.raises(WorkspaceError, match="no valid run id"):
        Workspace.open(ws.root)


def test_open_never_reads_job_json_through_a_link(tmp_path: Path) -> None:
    ws = Workspace.create(RUN_A, tmp_path)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"run_id": RUN_B}))
    job = ws.root / "state" / "job.json"
    job.unlink(missing_ok=True)
    job.symlink_to(outside)
    with pytest.raises(WorkspaceError, match="not an fsRLM run folder"):
        Workspace.open(ws.root)


def test_resume_refuses_another_runs_record(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    a, b = Workspace.create(RUN_A, tmp_path / "runs"), Workspace.create(RUN_B, tmp_path / "runs")
    RunStateStore(cache).save(RunState(run_id=RUN_B, workspace=b.root, session_id="s", spent_usd=0.0))
    a.write_job({"run_id": RUN_B})  # the agent of run A points at run B's record
    with pytest.raises(WorkspaceError, match="belongs to"):
        asyncio.run(resume_rlm(RLMConfig(cache_dir=cache), a.root))
