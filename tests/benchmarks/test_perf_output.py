"""``make bench`` (fsrlm bench perf) prints each table as soon as it is measured."""

from __future__ import annotations

import pytest

from fsrlm.benchmarks import perf


def test_each_section_is_printed_as_it_is_measured(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen_before_chunking: list[str] = []
    real = perf.bench_chunking

    def chunking(sizes):  # the broker table must already be out when chunking starts
        seen_before_chunking.append(capsys.readouterr().out)
        return real(sizes)

    monkeypatch.setattr(perf, "bench_chunking", chunking)
    assert perf.main(["--only", "broker,chunking", "--quick", "--executors", "local"]) == 0
    first = seen_before_chunking[0]
    assert first.startswith("# fsRLM benchmarks — ")
    assert "## broker overhead" in first and "| broker overhead per subcall" in first
    rest = capsys.readouterr().out
    assert "## chunking throughput" in rest and "| 100 MB" in rest  # the chunking bench itself runs
    assert "DESIGN" not in first + rest


def test_no_benchmark_text_cites_a_file_the_repository_lacks() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in [root / "benchmarks" / "README.md", *sorted((root / "benchmarks").glob("*.py"))]:
        assert "DESIGN.md" not in path.read_text(), path


def test_the_runs_section_reports_progress_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert perf.main(["--only", "runs", "--quick", "--executors", "local"]) == 0
    captured = capsys.readouterr()
    assert "## per-run overhead" in captured.out and "| bare CLI (no fsRLM)" in captured.out
    assert "runs: local" in captured.err and "median of 3" in captured.err


def test_the_warm_start_targets_are_checked_against_the_same_run() -> None:
    results = {
        perf.RUNS: [{"executor": "bare CLI (no fsRLM)", "median_s": 0.5, "overhead_s": 0.0},
                    {"executor": "docker:runc", "median_s": 0.9, "overhead_s": 0.4},
                    {"executor": "docker-warm:runc", "median_s": 0.7, "overhead_s": 0.2}],
        perf.JOBS: [{"job": "1200 records, 30 chunks, 0 ms", "executor": "docker-warm:runc", "wall_s": 0.6},
                    {"job": "4000 records, 97 chunks, 200 ms", "executor": "docker-warm:runc", "wall_s": 2.5}],
        perf.PARALLEL: [{"executor": "docker-warm:runc", "concurrent_runs": 16, "failures": 0}],
    }
    rows = {(r["target"], r["executor"]): r["met"] for r in perf.warm_targets(results)}
    assert rows == {
        ("per-run overhead over the bare CLI, cold (s)", "docker:runc"): True,
        ("per-run overhead over the bare CLI, warm (s)", "docker-warm:runc"): False,
        ("J1 from a warm pool (s)", "docker-warm:runc"): True,
        ("J2 from a warm pool (s)", "docker-warm:runc"): False,
        ("16 concurrent warm runs: failures", "docker-warm:runc"): True,
    }  # gVisor rows only where gVisor was measured
