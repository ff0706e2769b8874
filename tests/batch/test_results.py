"""The results file: appended, never truncated, one line per id, resumable after a crash."""

from __future__ import annotations

import pytest

from fsrlm.batch.results import JobResult, ResultsWriter, iter_results, read_finished
from fsrlm.errors import InputError


def _result(job_id: str) -> JobResult:
    return JobResult(id=job_id, success=True, stop_reason="completed", answer="42")


def test_an_existing_file_is_never_truncated_and_resume_skips_its_ids(tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out, resume=False) as writer:
        assert writer.append(_result("a"))
        assert not writer.append(_result("a"))  # a second line for an id is refused
    before = out.read_bytes()
    with pytest.raises(InputError, match="never overwritten; pass --resume"):
        ResultsWriter(out, resume=False).open()
    assert out.read_bytes() == before
    with ResultsWriter(out, resume=True) as writer:
        assert writer.finished == {"a"}
        assert not writer.append(_result("a"))
        assert writer.append(_result("b"))
    assert [r.id for r in iter_results(out)] == ["a", "b"]


def test_a_line_cut_short_by_a_crash_is_ignored_and_the_job_runs_again(tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(_result("a").model_dump_json() + "\n" + _result("b").model_dump_json()[:40])
    assert read_finished(out) == ({"a"}, 1)
    with ResultsWriter(out, resume=True) as writer:
        assert writer.finished == {"a"} and writer.unusable == 1
        writer.append(_result("b"))
    assert [r.id for r in iter_results(out)] == ["a", "b"]
    assert out.read_text().endswith("\n")


def test_two_batches_cannot_write_one_file(tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    with ResultsWriter(out, resume=False):
        with pytest.raises(InputError, match="another fsrlm batch is writing"):
            ResultsWriter(out, resume=True).open()
    with pytest.raises(InputError, match="is a folder"):
        ResultsWriter(tmp_path, resume=True).open()
