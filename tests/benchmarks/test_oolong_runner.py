"""The OOLONG runner: the whole benchmark path offline, the harness, and the report."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fsrlm.benchmarks import oolong
from fsrlm.benchmarks.harness import ResultsFile, failed_result, run_rows
from fsrlm.benchmarks.oolong_data import OolongRow, row_from_record
from fsrlm.benchmarks.oolong_scoring import score_answer as scoring_score_answer
from fsrlm.benchmarks.oolong_synth_gen import generate_rows
from fsrlm.benchmarks.results import RowResult, read_results
from fsrlm.benchmarks.scripted_oolong import oolong_plan, oolong_responder
from support import FAKE_UPSTREAM_KEY, SCRIPTED_PRICES

from fsrlm.batch.fleet import FleetOptions, open_fleet
from fsrlm.config import RLMConfig
from fsrlm.errors import InputError
from fsrlm.testing.plans import FinalStep, Plan, first_user_text
from fsrlm.testing.scripted_model import ScriptedModelServer


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_fsrlm_toml(folder: Path, server: ScriptedModelServer) -> Path:
    """An fsRLM config whose upstream is the scripted model (what a user's fsrlm.toml would hold)."""
    path = folder / "fsrlm.toml"
    path.write_text(
        f'root_model = "scripted-root"\nsubmodel = "scripted-sub"\ntimeout_seconds = 60\n'
        f'cache_dir = "{folder / "cache"}"\nworkspace_dir = "{folder / "runs"}"\n\n'
        f'[upstream]\ntype = "compatible"\nbase_url = "{server.url}"\napi_key = "{FAKE_UPSTREAM_KEY}"\n\n'
        # Names no price table knows, priced as a gateway's would be (tests/support.py: SCRIPTED_PRICES).
        '[prices]\n' + "".join(f'"{name}" = {{ input_per_mtok = {p["input_per_mtok"]}, output_per_mtok = '
                                f'{p["output_per_mtok"]} }}\n' for name, p in SCRIPTED_PRICES.items()),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def bench(tmp_path: Path, scripted: ScriptedModelServer) -> dict[str, Path]:
    """Rows on disk, a config pointing at the scripted model, and where results go."""
    scripted.plan = oolong_plan()
    scripted.responder = oolong_responder
    return {
        "data": write_rows(tmp_path / "rows.jsonl", generate_rows(4, 2048, seed=11)),
        "config": write_fsrlm_toml(tmp_path, scripted),
        "out": tmp_path / "results.jsonl",
    }


def run_cli(bench: dict[str, Path], capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = oolong.main(["--data", str(bench["data"]), "--fsrlm-config", str(bench["config"]),
                        "--executor", "local", "--out", str(bench["out"]), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------- end to end


def test_whole_benchmark_offline_with_resume(bench, capsys, scripted):
    all_ids = [json.loads(line)["id"] for line in bench["data"].read_text().splitlines()]

    code, out, err = run_cli(bench, capsys, "--limit", "2", "--concurrency", "2")
    assert code == 0, err
    first = records(bench["out"])
    assert sorted(r["id"] for r in first) == sorted(all_ids[:2])
    for r in first:
        assert r["score"] == 1.0, r
        assert r["success"] and r["stop_reason"] == "completed"
        assert r["method"] == "rlm" and r["dataset"] == "synthetic-trec_coarse" and r["context_len"] == 2048
        assert r["synthetic"] is True and r["scoring"] == "authors"
        assert r["answer"] and r["candidate"] is not None and r["gold"].startswith("[")
        assert r["root_cost_usd"] > 0 and r["subcalls"] + r["cached"] >= 1 and r["run_id"]
    assert "OOLONG with fsRLM" in out and "scored with the OOLONG authors' rules" in out
    assert "The paper's figures (THEIRS, GPT-5)" in out
    assert "56.5" in out and "44.0" in out
    assert "SYNTHETIC rows" in out
    assert "│" not in out  # not a terminal: plain text, no rich box drawing

    # Interrupted after two rows: --resume runs only the other two.
    code, out, err = run_cli(bench, capsys, "--resume", "--concurrency", "4")
    assert code == 0, err
    assert "resuming: 2 of 4 rows already" in err and "running 2 rows" in err
    after = records(bench["out"])
    assert after[:2] == first
    assert sorted(r["id"] for r in after) == sorted(all_ids)
    assert all(r["score"] == 1.0 for r in after)
    # Same context window, same chunks: the resumed rows' subcalls all came from the cache.
    assert all(r["cached"] >= 1 and r["subcalls"] == 0 and r["subcall_cost_usd"] == 0 for r in after[2:])

    # Nothing left to run: --json prints the report of all four rows.
    root_requests = len(scripted.requests_of("root"))
    code, out, err = run_cli(bench, capsys, "--resume", "--json")
    assert code == 0, err
    assert len(scripted.requests_of("root")) == root_requests
    report = json.loads(out)
    assert report["overall"]["runs"] == 4 and report["overall"]["mean_score"] == 1.0
    assert report["overall"]["cache_hit_rate"] > 0
    assert {g["task_group"] for g in report["groups"]} <= {"counting", "user", "timeline"}
    figures = report["paper_reference"]["figures"]
    assert [f["score"] for f in figures] == [56.5, 44.0, 58.0, 0.1]
    assert all(f["ours_same_slice"] is None for f in figures)  # synthetic rows are never set beside them
    assert "THEIRS" in report["paper_reference"]["note"]

    # Without --resume an old results file is never appended to.
    code, _, err = run_cli(bench, capsys)
    assert code == 2 and "--resume" in err


def test_a_failing_row_scores_zero_and_the_rest_still_run(bench, capsys, scripted):
    rows = generate_rows(3, 2048, seed=5)
    write_rows(bench["data"], rows)
    doomed = rows[1]["question"]
    solving = oolong_plan()

    def first_step(body: dict):
        if doomed in first_user_text(body):
            return FinalStep("I give up without writing an answer.")
        return solving.step_for(body)

    scripted.plan = Plan([first_step, *solving.steps[1:]])
    code, out, err = run_cli(bench, capsys, "--concurrency", "3")

    assert code == 0, err
    by_id = {r["id"]: r for r in records(bench["out"])}
    assert len(by_id) == 3
    failed = by_id[rows[1]["id"]]
    assert failed["score"] == 0 and not failed["success"]
    assert failed["stop_reason"] == "no_answer" and failed["errors"]
    assert failed["workspace_path"] and Path(failed["workspace_path"]).is_dir()  # kept for inspection
    assert [by_id[r["id"]]["score"] for r in (rows[0], rows[2])] == [1.0, 1.0]
    (counting,) = [line for line in out.splitlines() if line.startswith("synthetic-trec_coarse")]
    assert counting.split()[3:8] == ["66.7", "±", "57.7", "3", "1"]  # score ± sd, runs, failed


def test_configuration_and_data_errors_are_one_message(tmp_path, capsys):
    code = oolong.main(["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "r.jsonl")])
    assert code == 2 and "no such file" in capsys.readouterr().err

    data = write_rows(tmp_path / "rows.jsonl", generate_rows(1, 1024, seed=0))
    code = oolong.main(["--data", str(data), "--out", str(tmp_path / "r.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "ANTHROPIC_API_KEY" in err and "Traceback" not in err
    assert not (tmp_path / "r.jsonl").exists()


def test_score_answer_is_importable_from_the_runner():
    assert oolong.score_answer is scoring_score_answer
    assert oolong.score_answer("Answer: 47", "[47]", "ANSWER_TYPE.NUMERIC") == 1.0


# -------------------------------------------------------------------- harness


def _rows(n: int) -> list[OolongRow]:
    return [row_from_record(r) for r in generate_rows(n, 1024, seed=2)]


async def test_harness_records_crashes_and_timeouts_and_bounds_concurrency(tmp_path):
    rows = _rows(5)
    in_flight = peak = 0

    async def solve(row: OolongRow) -> RowResult:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.05)
            if row is rows[1]:
                raise RuntimeError("the sandbox exploded")
            if row is rows[3]:
                await asyncio.sleep(30)
            result = failed_result(row, "completed", [], 0.05)
            return result.model_copy(update={"success": True, "score": 1.0, "answer": "Answer: 1"})
        finally:
            in_flight -= 1

    results = ResultsFile(tmp_path / "out.jsonl")
    progress = io.StringIO()
    async with open_fleet(FleetOptions(concurrency=2), RLMConfig(), {}) as fleet:
        run = await run_rows(rows, solve, fleet=fleet, results=results, row_timeout=0.5, progress=progress)
    done = run.results

    assert peak == 2
    assert [r.stop_reason for r in done] == ["completed", "error", "completed", "timeout", "completed"]
    assert [r.score for r in done] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert "RuntimeError: the sandbox exploded" in done[1].errors[0]
    assert "0.5 s" in done[3].errors[0]
    assert {r.key for r in read_results(results.path)} == {(row.dataset, str(row.id)) for row in rows}
    assert progress.getvalue().count("\n") == 5


def test_read_results_skips_a_torn_last_line_and_names_a_bad_one(tmp_path):
    row = _rows(1)[0]
    line = failed_result(row, "error", ["x"], 1.0).model_dump_json()
    path = tmp_path / "out.jsonl"
    path.write_text(line + "\n" + line[:40], encoding="utf-8")
    assert len(read_results(path)) == 1
    path.write_text("{}\n" + line + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"out\.jsonl:1"):
        read_results(path)
