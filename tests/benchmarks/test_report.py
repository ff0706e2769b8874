"""The report: mean and spread per slice, cached rows flagged, synthetic rows kept away from the paper."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fsrlm.benchmarks import report
from fsrlm.benchmarks.paper import PAPER_REFERENCE
from fsrlm.benchmarks.report import report_json, report_tables, rescore
from fsrlm.benchmarks.results import RowResult
from fsrlm.benchmarks.summary import paired, summarise
from fsrlm.benchmarks.tables import print_tables


def _result(id_: int, *, score: float, root: float, sub: float, subcalls: int = 1, cached: int = 0,
            context_len: int = 131072, success: bool = True, task_group: str = "counting",
            dataset: str = "trec_coarse", method: str = "rlm", **extra) -> RowResult:
    return RowResult(id=id_, dataset=dataset, context_len=context_len, task_group=task_group, gold="[1]",
                     score=score, success=success, stop_reason="completed" if success else "timeout",
                     root_cost_usd=root, subcall_cost_usd=sub, total_cost_usd=root + sub, wall_seconds=10.0,
                     subcalls=subcalls, cached=cached, method=method, synthetic=dataset.startswith("synthetic-"),
                     **extra)


def test_slice_figures_mean_sd_failures_and_cached_rows():
    results = [
        _result(1, score=1.0, root=0.10, sub=0.02, subcalls=8),
        _result(2, score=0.5, root=0.30, sub=0.04, subcalls=4, cached=4),
        _result(3, score=0.0, root=0.20, sub=0.00, subcalls=0, success=False),
        _result(4, score=1.0, root=0.50, sub=0.10, subcalls=2, cached=2, task_group="user", context_len=1024),
    ]
    groups, overall = summarise(results)
    counting = next(g for g in groups if g.task_group == "counting")
    assert (counting.runs, counting.failures, counting.cached_rows) == (3, 1, 1)
    assert counting.mean_score == pytest.approx(0.5) and counting.score_sd == pytest.approx(0.5)
    assert counting.root_cost_mean == pytest.approx(0.2) and counting.root_cost_sd == pytest.approx(0.1)
    assert counting.subcall_cost_mean == pytest.approx(0.02) and counting.subcall_cost_sd == pytest.approx(0.02)
    assert counting.cost_mean == pytest.approx(0.22)
    assert counting.uncached_cost_mean == pytest.approx((0.12 + 0.20) / 2)  # row 2 had cache hits
    assert counting.subcalls_per_run == pytest.approx(16 / 3) and counting.cache_hit_rate == pytest.approx(4 / 16)
    user = next(g for g in groups if g.task_group == "user")
    assert user.score_sd == 0.0 and user.uncached_cost_mean is None
    assert overall is not None and overall.runs == 4 and overall.cache_hit_rate == pytest.approx(6 / 20)

    text = io.StringIO()
    print_tables(report_tables(results), text)
    out = text.getvalue()
    assert "50.0 ± 50.0" in out and "0.2000 ± 0.1000" in out  # score and root cost of the counting slice
    assert "2 rows had response-cache hits, charged $0" in out


def test_paper_figures_sit_beside_real_rows_of_the_same_kind_only():
    rlm = [_result(i, score=s, root=0.3, sub=0.1) for i, s in enumerate([1.0, 0.5])]
    other_length = [_result(9, score=0.0, root=0.1, sub=0.0, context_len=1024)]
    data = report_json(rlm + other_length)
    figures = data["paper_reference"]["figures"]
    assert [f["system"] for f in figures] == [f.system for f in PAPER_REFERENCE]
    assert figures[0]["ours_same_slice"]["mean_score"] == pytest.approx(0.75)  # only the 131072 rows
    assert figures[0]["ours_same_slice"]["runs"] == 2
    assert figures[1]["ours_same_slice"] is None  # the base model's figure takes root-only rows only
    alone = [r.model_copy(update={"method": "root-only", "score": 0.25}) for r in rlm]
    both = report_json(rlm, plain=alone)["paper_reference"]["figures"]
    assert both[1]["ours_same_slice"]["mean_score"] == 0.25

    synthetic = [_result(i, score=1.0, root=0.1, sub=0.0, dataset="synthetic-trec_coarse") for i in range(3)]
    figures = report_json(synthetic)["paper_reference"]["figures"]
    assert figures[0]["ours_same_slice"] is None and figures[0]["synthetic_rows_withheld"] == 3
    text = io.StringIO()
    print_tables(report_tables(synthetic), text)
    out = text.getvalue()
    assert "withheld: synthetic rows" in out and "SYNTHETIC rows" in out
    paper_lines = out[out.index("The paper's figures (THEIRS"):].splitlines()
    assert not any("100.0" in line for line in paper_lines)  # our 100 never stands beside their 56.5


def test_pairs_figures_match_pairs_rows():
    pairs = [_result(i, score=0.6, root=0.2, sub=0.1, dataset="oolong-pairs", context_len=32768,
                     task_group="pairs") for i in range(4)]
    figures = report_json(pairs)["paper_reference"]["figures"]
    assert figures[2]["slice"]["task"] == "OOLONG-Pairs" and figures[2]["ours_same_slice"]["runs"] == 4
    assert figures[0]["ours_same_slice"] is None


def test_paired_summary_counts_cached_rows_and_spread():
    rlm = [_result(i, score=s, root=0.2, sub=0.1, cached=c) for i, (s, c) in enumerate([(1.0, 0), (0.0, 3)])]
    alone = [r.model_copy(update={"method": "root-only", "score": 0.5, "cached": 0, "truncated": True})
             for r in rlm]
    groups, overall = paired(rlm, alone)
    (g,) = groups
    assert (g.rows, g.rlm_cached_rows, g.plain_cached_rows, g.plain_truncated) == (2, 1, 0, 2)
    assert g.rlm_score_sd == pytest.approx(0.7071, abs=1e-4) and g.plain_score_sd == 0.0


def test_rescore_applies_the_lenient_departures_and_names_them(tmp_path: Path, capsys):
    row = _result(1, score=0.0, root=0.1, sub=0.0, answer_type="ANSWER_TYPE.LABEL")
    row = row.model_copy(update={"gold": "['location']", "answer": "Label: ** location **"})
    failed = row.model_copy(update={"id": 2, "success": False, "score": 0.0})
    assert [r.score for r in rescore([row, failed], lenient=False)] == [0.0, 0.0]
    lenient = rescore([row, failed], lenient=True)
    assert [r.score for r in lenient] == [1.0, 0.0] and {r.scoring for r in lenient} == {"lenient"}

    path = tmp_path / "r.jsonl"
    path.write_text(row.model_dump_json() + "\n", encoding="utf-8")
    assert report.main([str(path), "--rescore", "--lenient", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["overall"]["mean_score"] == 1.0 and data["groups"][0]["scoring"] == ["lenient"]
    assert "strip-after-removal" in data["scoring"] and "parse-unboxed-real" in data["scoring"]
    assert report.main([str(path), "--lenient"]) == 2
    assert "--rescore" in capsys.readouterr().err
    assert report.main([str(tmp_path / "missing.jsonl")]) == 2


def test_report_prints_plain_text_off_a_terminal_and_rich_on_one():
    results = [_result(1, score=1.0, root=0.1, sub=0.0)]
    plain = io.StringIO()
    print_tables(report_tables(results), plain)
    text = plain.getvalue()
    assert "100.0 ± 0.0" in text and "│" not in text
    assert "The paper's figures (THEIRS, GPT-5)" in text

    fancy = io.StringIO()
    print_tables(report_tables(results), fancy, rich=True)
    assert "OOLONG with fsRLM" in fancy.getvalue() and "┃" in fancy.getvalue()
