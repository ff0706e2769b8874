"""The jobs file: every line checked before anything starts, read as a stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fsrlm.batch.jobs import JobsFileError, iter_jobs, job_config, validate_jobs
from fsrlm.config import RLMConfig


def _write(path: Path, *lines: object) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_good_file_is_counted_and_paths_are_taken_from_its_folder(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text("x\n")
    (tmp_path / "schema.sql").write_text("create table t;\n")
    jobs = _write(tmp_path / "jobs.jsonl",
                  {"id": "a", "input": "a.log", "question": "q", "attachments": {"schema.sql": "schema.sql"}},
                  "",
                  {"id": "b", "text": "inline", "config": {"max_turns": 7}},
                  {"id": "c", "messages": [{"role": "user", "content": "hi"}]})
    summary = validate_jobs(jobs, RLMConfig(), finished={"c"})
    assert (summary.total, summary.to_run) == (3, 2)
    listed = list(iter_jobs(jobs, skip={"c"}))
    assert [j.id for j in listed] == ["a", "b"]
    assert listed[0].input == tmp_path / "a.log" and listed[0].line == 1
    assert listed[0].attachments == {"schema.sql": tmp_path / "schema.sql"}
    assert listed[1].line == 3
    assert job_config(RLMConfig(), listed[1]).max_turns == 7


def test_every_problem_is_listed_with_its_line_number(tmp_path: Path) -> None:
    (tmp_path / "ok.log").write_text("x\n")
    jobs = _write(tmp_path / "jobs.jsonl",
                  {"id": "a", "input": "ok.log"},
                  "{not json",
                  {"id": "a", "text": "again"},
                  {"id": "m", "input": "missing.log"},
                  {"id": "two", "text": "t", "input": "ok.log"},
                  {"id": "none"},
                  {"id": "cfg", "text": "t", "config": {"max_turns": -1}},
                  {"id": "key", "text": "t", "prompt": "p"},
                  ["a", "list"],
                  {"id": " padded", "text": "t"})
    with pytest.raises(JobsFileError) as err:
        validate_jobs(jobs, RLMConfig())
    message = str(err.value)
    assert "9 bad line(s); nothing was started" in message
    for line, words in [(2, "not valid JSON"), (3, "duplicate id 'a' (first on line 1)"),
                        (4, "missing.log does not exist"), (5, "exactly one of input"), (6, "exactly one of input"),
                        (7, "config: Invalid fsRLM configuration"), (8, "unknown key"), (9, "JSON object"),
                        (10, "surrounding spaces")]:
        assert f"line {line}: " in message and words in message, (line, words, message)


def test_an_empty_file_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(JobsFileError, match="holds no jobs"):
        validate_jobs(_write(tmp_path / "empty.jsonl", ""), RLMConfig())
    with pytest.raises(Exception, match="cannot read the jobs file"):
        validate_jobs(tmp_path / "nope.jsonl", RLMConfig())


def test_a_total_budget_needs_a_cap_on_every_job(tmp_path: Path) -> None:
    jobs = _write(tmp_path / "jobs.jsonl", {"id": "a", "text": "t"},
                  {"id": "b", "text": "t", "config": {"max_budget_usd": "none"}})
    validate_jobs(jobs, RLMConfig())  # fine without --max-total-usd
    with pytest.raises(JobsFileError, match=r"line 2: config: max_budget_usd is none, but --max-total-usd"):
        validate_jobs(jobs, RLMConfig(), need_budget=True)


MEMORY_PROBE = r"""
import asyncio, json, sys
from pathlib import Path
from fsrlm.batch.jobs import iter_jobs, validate_jobs
from fsrlm.batch.local import LocalBackend
from fsrlm.batch.results import JobResult, ResultsWriter
from fsrlm.batch.runner import FanOut
from fsrlm.config import RLMConfig

async def answer(job):
    return JobResult(id=job.id, success=True, stop_reason="completed", answer=str(len(job.text)))

async def main(path, out):
    summary = validate_jobs(path, RLMConfig())
    done = 0
    with ResultsWriter(out, resume=False, durable=False) as writer:
        async for outcome in FanOut(LocalBackend(64)).run(iter_jobs(path), answer):
            writer.append(outcome.result)
            done += 1
    return summary.total, done

total, done = asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec, so a
# large pytest process would count here.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"total": total, "done": done, "peak_rss_kb": peak}))
"""


@pytest.mark.slow
def test_100k_jobs_with_large_inline_inputs_never_sit_in_memory(tmp_path: Path) -> None:
    """100,000 jobs of 4 KiB each (400 MB of jobs file): checked, run and written within 150 MB of memory."""
    path = tmp_path / "jobs.jsonl"
    body = "x" * 4096
    with path.open("w") as f:
        for i in range(100_000):
            f.write(json.dumps({"id": f"job-{i}", "text": body, "question": "how long?"}) + "\n")
    assert path.stat().st_size > 400_000_000
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path), str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["total"] == figures["done"] == 100_000
    assert figures["peak_rss_kb"] < 150 * 1024, figures
    with (tmp_path / "out.jsonl").open() as f:
        assert sum(1 for _ in f) == 100_000
