"""Rows fanned out through fsrlm batch's machinery, on this machine: once per row, the total budget, the flags.

On a Ray cluster: ``test_oolong_ray.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from fsrlm.benchmarks import compare, oolong
from fsrlm.benchmarks.harness import ResultsFile, attempt_cost, run_rows
from fsrlm.benchmarks.oolong_data import OolongRow, row_from_record
from fsrlm.benchmarks.oolong_synth_gen import generate_rows
from fsrlm.benchmarks.records import failed_result
from fsrlm.benchmarks.results import RowResult
from fsrlm.benchmarks.row_task import RowSolver
from test_oolong_runner import bench, records, run_cli  # noqa: F401 - bench: the fixture

from fsrlm.batch.budget import TotalBudget
from fsrlm.batch.fleet import FleetOptions, open_fleet
from fsrlm.config import RLMConfig
from fsrlm.testing.ray_cluster import free_port


def _rows(n: int) -> list[OolongRow]:
    return [row_from_record(r) for r in generate_rows(n, 1024, seed=4)]


class Scripted(RowSolver):
    """A solver that answers after ``seconds`` at ``cost`` dollars (never answers the rows in ``hang``)."""

    def __init__(self, *, cost: float = 0.0, seconds: float = 0.01, hang: frozenset[str] = frozenset(),
                 cap: float | None = 1.0) -> None:
        super().__init__(RLMConfig(max_budget_usd=cap))
        self.cost, self.seconds, self.hang = cost, seconds, hang
        self.asked: list[str] = []

    async def __call__(self, row: OolongRow) -> RowResult:
        self.asked.append(str(row.id))
        await asyncio.sleep(3600 if str(row.id) in self.hang else self.seconds)
        done = failed_result(row, "completed", [], self.seconds)
        return done.model_copy(update={"success": True, "score": 1.0, "answer": "Answer: 1",
                                       "total_cost_usd": self.cost})


async def _run(rows, solve, results, *, concurrency=4, gate=None, timeout=None, progress=None):
    async with open_fleet(FleetOptions(concurrency=concurrency), RLMConfig(), {}) as fleet:
        return await run_rows(rows, solve, fleet=fleet, results=results, row_timeout=timeout, gate=gate,
                              progress=progress)


async def test_a_row_is_run_and_written_once(tmp_path: Path) -> None:
    rows = _rows(4)
    results = ResultsFile(tmp_path / "out.jsonl")
    results.append(failed_result(rows[0], "error", ["an earlier sweep"], 1.0))
    solve = Scripted()
    run = await _run([*rows, rows[2], rows[3]], solve, results)  # two rows given twice, one already recorded
    assert sorted(solve.asked) == sorted(str(r.id) for r in rows[1:])
    assert [r.id for r in run.results] == [r.id for r in rows[1:]]  # in the order of the rows
    assert sorted(str(r["id"]) for r in records(results.path)) == sorted(str(r.id) for r in rows)
    assert run.stopped is None and run.not_started == 0 and run.nodes == {"local": 3}


async def test_the_total_budget_admits_a_row_only_when_its_cap_fits(tmp_path: Path) -> None:
    rows = _rows(5)
    results = ResultsFile(tmp_path / "out.jsonl")
    gate = TotalBudget(2.5, cost_of=attempt_cost)
    progress = io.StringIO()
    # Caps of $1: two rows at once ($2 reserved); after both ($0.9 each) $1.8 is spent and a third cap
    # would pass $2.5: the sweep stops, and three rows are left for --resume.
    run = await _run(rows, Scripted(cost=0.9), results, gate=gate, progress=progress)
    assert len(run.results) == 2 and run.not_started == 3 and run.stopped == "budget"
    assert gate.spent_usd == pytest.approx(1.8) and gate.reserved_usd == 0
    assert len(records(results.path)) == 2
    assert "waiting: the total budget (--max-total-usd) admits no more rows" in progress.getvalue()


async def test_a_row_whose_cost_is_unknown_counts_at_its_cap(tmp_path: Path) -> None:
    rows = _rows(2)
    gate = TotalBudget(10.0, cost_of=attempt_cost)
    run = await _run(rows, Scripted(cost=0.25, hang=frozenset({str(rows[0].id)})), ResultsFile(tmp_path / "o.jsonl"),
                     gate=gate, timeout=0.3)
    assert [r.stop_reason for r in run.results] == ["timeout", "completed"]
    assert gate.spent_usd == pytest.approx(1.0 + 0.25)  # the abandoned row may have spent its whole cap


# ------------------------------------------------------------------ the command line, locally


def _with_budget(config: Path, usd: str) -> None:
    config.write_text(f"max_budget_usd = {usd}\n" + config.read_text(), encoding="utf-8")


def test_the_total_budget_stops_the_sweep_and_resume_runs_the_rest(bench, capsys, scripted) -> None:
    _with_budget(bench["config"], "2.0")
    # $2 a row and $2 in all: one row runs; what it cost leaves no room for a second cap.
    code, out, err = run_cli(bench, capsys, "--max-total-usd", "2", "--json")
    assert code == 3, err
    assert len(records(bench["out"])) == 1
    assert "3 row(s) not run: the total budget (--max-total-usd 2) is spent; rerun with --resume" in err
    assert json.loads(out)["overall"]["runs"] == 1  # the report of what finished

    code, out, err = run_cli(bench, capsys, "--resume", "--max-total-usd", "20", "--concurrency", "4")
    assert code == 0, err
    assert len(records(bench["out"])) == 4 and all(r["score"] == 1.0 for r in records(bench["out"]))


def test_a_total_budget_needs_a_cap_on_every_row(bench, capsys, scripted) -> None:
    _with_budget(bench["config"], '"none"')
    code, _, err = run_cli(bench, capsys, "--max-total-usd", "5")
    assert code == 2 and "max_budget_usd is none, but --max-total-usd needs a dollar cap on every row" in err
    assert not bench["out"].exists() and not scripted.requests


@pytest.mark.parametrize(("flags", "message"), [
    (["--max-total-usd", "0"], "--max-total-usd: input should be greater than 0"),
    (["--max-attempts", "0"], "--max-attempts: input should be greater than or equal to 1"),
])
def test_fleet_flags_out_of_range_are_one_message(bench, capsys, scripted, flags, message) -> None:
    code, _, err = run_cli(bench, capsys, *flags)
    assert code == 2 and message in err and "Traceback" not in err
    assert not bench["out"].exists() and not scripted.requests


@pytest.mark.parametrize("command", ["oolong", "compare"])
def test_an_unreachable_ray_address_is_refused_before_any_row(bench, capsys, scripted, command) -> None:
    address = f"127.0.0.1:{free_port()}"
    if command == "oolong":
        code, _, err = run_cli(bench, capsys, "--ray", address)
    else:
        code = compare.main(["--data", str(bench["data"]), "--fsrlm-config", str(bench["config"]),
                             "--out", str(bench["out"]), "--max-output-tokens", "8192", "--ray", address])
        err = capsys.readouterr().err
    assert code == 4, err
    assert f"the Ray cluster at {address} cannot be reached" in err  # fsrlm batch's own message
    assert not bench["out"].exists() and not scripted.requests


def test_the_flags_are_those_of_fsrlm_batch(capsys) -> None:
    with pytest.raises(SystemExit):
        oolong.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--ray auto|ADDRESS", "--max-total-usd USD", "--max-attempts", "--forward-env NAME",
                 "--no-forward-credentials", "--concurrency"):
        assert flag in text


async def test_cancelling_a_sweep_records_only_the_rows_that_finished(tmp_path: Path) -> None:
    rows = _rows(3)
    results = ResultsFile(tmp_path / "out.jsonl")
    solve = Scripted(hang=frozenset({str(rows[1].id)}))
    sweep = asyncio.create_task(_run(rows, solve, results))
    async with asyncio.timeout(10):
        while len(solve.asked) < 3 or not results.has_records() or len(records(results.path)) < 2:
            await asyncio.sleep(0.01)
    sweep.cancel()  # what Ctrl-C does to asyncio.run
    with pytest.raises(asyncio.CancelledError):
        await sweep
    assert sorted(str(r["id"]) for r in records(results.path)) == sorted(str(r.id) for r in (rows[0], rows[2]))


def test_the_copy_a_ray_task_carries_holds_no_key_and_no_warm_pool() -> None:
    import pickle

    config = RLMConfig.model_validate({"upstream": {"api_key": "sk-ant-not-for-tasks"},
                                       "executor": {"type": "docker", "warm": 3}})
    solver = oolong.RlmSolver(config)
    sent = solver.for_nodes()
    assert sent.config.upstream.api_key is None and sent.config.executor.warm == 0
    assert solver.config.executor.warm == 3 and solver.config.upstream.api_key is not None  # the driver's own
    assert b"sk-ant-not-for-tasks" not in pickle.dumps(sent)
    alone = compare.RootModelAlone(config, compare.Budget(window_tokens=1000, max_output_tokens=100,
                                                          min_output_tokens=10)).for_nodes()
    assert alone.config.upstream.api_key is None and alone.model == config.effective_root_model
