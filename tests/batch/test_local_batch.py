"""``fsrlm batch`` on this machine: the real CLI, the real broker and agent, the scripted model."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from conftest import read_results, run_batch_cli, write_jobs

pytestmark = pytest.mark.slow


def test_a_batch_answers_every_job_once_and_records_a_failure(tmp_path: Path, batch_plan, batch_env) -> None:
    answers = write_jobs(tmp_path, 5)
    with (tmp_path / "jobs.jsonl").open("a") as f:  # one job that cannot finish: one turn only
        f.write(json.dumps({"id": "short", "text": "ERROR\n", "question": "How many ERROR?",
                            "config": {"max_turns": 1}}) + "\n")
    out = tmp_path / "results.jsonl"
    proc = run_batch_cli(["jobs.jsonl", "--out", str(out), "-e", "local", "-j", "3", "--json"], batch_env, tmp_path)
    assert proc.returncode == 1, proc.stderr  # one job failed: exit 1, the others answered
    summary = json.loads(proc.stdout)
    assert summary["finished"] == 6 and summary["succeeded"] == 5 and summary["failed"] == 1
    assert summary["nodes"] == {"local": 6}
    results = {r["id"]: r for r in read_results(out)}
    assert len(read_results(out)) == 6
    for job_id, answer in answers.items():
        assert results[job_id]["success"] and results[job_id]["answer"] == answer
        assert results[job_id]["node"] == "local" and results[job_id]["metrics"]["subcalls"] >= 1
    assert results["short"]["stop_reason"] == "max_turns" and results["short"]["errors"]
    assert results["short"]["workspace_path"]  # a failed run's folder is kept

    again = run_batch_cli(["jobs.jsonl", "--out", str(out), "-e", "local"], batch_env, tmp_path)
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert len(read_results(out)) == 6


def test_bad_lines_stop_the_batch_before_any_job_starts(tmp_path: Path, scripted, batch_env) -> None:
    write_jobs(tmp_path, 3)
    with (tmp_path / "jobs.jsonl").open("a") as f:
        f.write('{"id": "job-01", "text": "dup"}\n{"id": "x", "input": "gone.log"}\n')
    out = tmp_path / "results.jsonl"
    proc = run_batch_cli(["jobs.jsonl", "--out", str(out), "-e", "local"], batch_env, tmp_path)
    assert proc.returncode == 2
    assert "line 4: duplicate id 'job-01' (first on line 2)" in proc.stderr
    assert "line 5: input" in proc.stderr and "gone.log does not exist" in proc.stderr
    assert not scripted.requests and not out.exists()


def test_an_unreachable_ray_address_is_reported_before_any_job(tmp_path: Path, scripted, batch_env) -> None:
    from fsrlm.testing.ray_cluster import free_port

    write_jobs(tmp_path, 2)
    out = tmp_path / "results.jsonl"
    proc = run_batch_cli(["jobs.jsonl", "--out", str(out), "--ray", f"127.0.0.1:{free_port()}"], batch_env,
                         tmp_path, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "cannot be reached" in proc.stderr and not scripted.requests


def test_ctrl_c_keeps_what_finished_and_resume_runs_the_rest(tmp_path: Path, batch_plan, batch_env,
                                                            popen_batch) -> None:
    answers = write_jobs(tmp_path, 8, pause={3})
    out = tmp_path / "results.jsonl"
    proc = popen_batch(["jobs.jsonl", "--out", str(out), "-e", "local", "-j", "2"], batch_env, tmp_path)
    assert batch_plan.on_pause.wait(120), proc.stderr.read() if proc.poll() is not None else "no pause"
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - started < 30
    assert "not run: the batch was interrupted" in stderr
    first = read_results(out)
    assert "job-03" not in {r["id"] for r in first}  # an interrupted job is not recorded: resume runs it
    assert all(r["success"] for r in first)

    batch_plan.pause_seconds = 0.1
    proc = popen_batch(["jobs.jsonl", "--out", str(out), "-e", "local", "-j", "3", "--resume", "--json"],
                       batch_env, tmp_path)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["skipped"] == len(first) and summary["finished"] == 8 - len(first)
    results = read_results(out)
    assert sorted(r["id"] for r in results) == sorted(answers)  # every id exactly once
    assert {r["id"]: r["answer"] for r in results} == answers


@pytest.mark.docker
def test_jobs_share_one_warm_pool(tmp_path: Path, batch_plan, batch_env, docker_image) -> None:
    """With executor.warm, a batch's jobs take sandboxes started ahead of time; none is left after the batch."""
    from fsrlm.events import read_events

    answers = write_jobs(tmp_path, 4)
    env = {**batch_env, "FSRLM_EXECUTOR": json.dumps({"type": "docker", "warm": 2}),
           "FSRLM_PRESERVE_WORKSPACE": "true"}
    out = tmp_path / "results.jsonl"
    proc = run_batch_cli(["jobs.jsonl", "--out", str(out), "-j", "2", "--json"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert {r["id"]: r["answer"] for r in results} == answers
    warm = [read_events(Path(r["workspace_path"]))[0].data["warm"] for r in results]
    assert warm.count(True) >= 3, warm  # the first wave may start while the pool fills; the rest take slots
    import docker

    client = docker.from_env()
    try:
        left = client.containers.list(all=True, filters={"label": "fsrlm=1"})
        ours = [c.name for c in left if c.labels.get("fsrlm.run-id") in {r["run_id"] for r in results}
                or str(tmp_path) in json.dumps(c.attrs.get("Mounts"))]
    finally:
        client.close()
    assert ours == []  # each job's sandbox gone, and the slots no job took removed at the end
