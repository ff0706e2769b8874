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
