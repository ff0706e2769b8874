"""Run OOLONG through fsRLM: one RLM run per row, scored with the authors' rules.

Each row is one run: the row's context window text is the input, its question
is the question. Rows run in parallel up to ``--concurrency``, each with its
own workspace, broker and sandbox (whichever executor is configured). A row
that crashes, times out or ends without an answer scores 0 and is recorded;
it never stops the benchmark. Every finished row is appended at once as one
JSON line to ``--out``, so an interrupted benchmark picks up where it stopped
with ``--resume``. At the end a report is printed (``--json`` for JSON).

Usage::

    fsrlm bench oolong --data rows.jsonl --dataset trec_coarse --context-len 131072 \\
        --limit 50 --concurrency 4 --out results.jsonl [--resume] [--json]
    fsrlm bench oolong --dataset-name oolongbench/oolong-real --config dnd --split test

Model, upstream, limits and executor come from the fsRLM configuration
(``--fsrlm-config``, ``./fsrlm.toml``, ``FSRLM_*``), as for ``fsrlm run``.

Exit codes: 0 the benchmark finished (whatever the scores); 2 bad arguments,
configuration, data or credentials (nothing ran); 4 the executor is not usable;
130 interrupted (finished rows are kept: rerun with ``--resume``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from fsrlm.benchmarks.oolong_data import DEFAULT_DATASET, OolongRow, load_rows
from fsrlm.benchmarks.oolong_scoring import score_answer, score_answer_detail
from fsrlm.benchmarks.report import (
    RowResult,
    json_safe,
    print_tables,
    read_results,
    report_json,
    report_tables,
)
from fsrlm.executors.configs import EXECUTOR_TYPES
from fsrlm.executors.registry import create_executor

from fsrlm.broker.upstreams import check_credentials
from fsrlm.cli.exit_codes import ExitCode, exit_code_for_error
from fsrlm.config import RLMConfig, load_config
from fsrlm.errors import FsrlmError, InputError
from fsrlm.results import RLMResult
from fsrlm.rlm import RLM

__all__ = [
    "HARNESS_GRACE_SECONDS",
    "ResultsFile",
    "add_row_arguments",
    "check_arguments",
    "failed_result",
    "load_selected_rows",
    "main",
    "now_iso",
    "preflight",
    "result_from_rlm",
    "row_fields",
    "row_key",
    "rows_to_run",
    "run_rows",
    "score_answer",
    "score_row",
    "selected_records",
]

logger = logging.getLogger(__name__)

#: Extra seconds a row gets beyond ``timeout_seconds`` (sandbox start and clean-up)
#: before the harness itself gives up on it.
HARNESS_GRACE_SECONDS = 120.0

Solver = Callable[[OolongRow], Awaitable[RowResult]]


# ---------------------------------------------------------------- results file


class ResultsFile:
    """The JSONL file finished rows are appended to, one line each, as they finish."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def done_keys(self) -> set[tuple[str, str]]:
        """``(dataset, id)`` of every row already recorded."""
        return {r.key for r in read_results(self.path)}

    def has_records(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def append(self, result: RowResult) -> None:
        """Write one record and flush it, so a crash loses no finished row."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(result.model_dump_json() + "\n")
            handle.flush()


def row_key(row: OolongRow) -> tuple[str, str]:
    """What identifies a row in a results file (``RowResult.key``): its dataset and id."""
    return (row.dataset, str(row.id))


# ------------------------------------------------------------------- scoring


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def score_row(row: OolongRow, answer: str | None, success: bool) -> tuple[float, Any, list[str]]:
    """Score, parsed candidate (JSON-safe) and any scoring problem; 0 unless ``success``."""
    if not success or not answer:
        return 0.0, None, []
    try:
        detail = score_answer_detail(answer, row.answer, row.answer_type, row.split)
    except ValueError as exc:
        return 0.0, None, [f"could not score the answer: {exc}"]
    return detail.score, json_safe(detail.candidate), []


def row_fields(row: OolongRow) -> dict[str, Any]:
    """The fields a result record copies from its row."""
    return {
        "id": row.id, "dataset": row.dataset, "context_len": row.context_len, "task_group": row.task_group,
        "task": row.task, "answer_type": row.answer_type, "split": row.split, "gold": row.answer,
    }


def failed_result(row: OolongRow, stop_reason: str, errors: list[str], wall_seconds: float,
                  *, method: str = "rlm") -> RowResult:
    """The record of a row whose run crashed or was given up on: score 0."""
    return RowResult(
        **row_fields(row), method=method, answer=None, score=0.0, success=False, stop_reason=stop_reason,
        errors=errors, wall_seconds=round(wall_seconds, 3), finished_at=now_iso(),
    )


def result_from_rlm(row: OolongRow, result: RLMResult, model: str | None = None) -> RowResult:
    """The record of one finished RLM run, scored."""
    score, candidate, problems = score_row(row, result.answer, result.success)
    m = result.metrics
    return RowResult(
        **row_fields(row), method="rlm", answer=result.answer, candidate=candidate, score=score,
        success=result.success, stop_reason=result.stop_reason, errors=[*result.errors, *problems],
        root_cost_usd=m.root_cost_usd, subcall_cost_usd=m.subcall_cost_usd, total_cost_usd=m.total_cost_usd,
        wall_seconds=m.wall_seconds, subcalls=m.subcalls, cached=m.subcalls_cached, turns=m.turns,
        model=model, run_id=result.run_id,
        workspace_path=str(result.workspace_path) if result.workspace_path else None, finished_at=now_iso(),
    )


# -------------------------------------------------------------------- harness


async def run_rows(
    rows: Sequence[OolongRow],
    solve: Solver,
    *,
    concurrency: int,
    results: ResultsFile,
    row_timeout: float | None,
    method: str = "rlm",
    progress: TextIO | None = None,
) -> list[RowResult]:
    """Solve ``rows``, ``concurrency`` at a time, recording each as soon as it finishes.

    A row whose ``solve`` raises is recorded with ``stop_reason="error"``; one
    that takes longer than ``row_timeout`` seconds with ``"timeout"``; both
    score 0. Cancellation (Ctrl-C) records nothing for unfinished rows.
    """
    slots = asyncio.Semaphore(concurrency)
    finished = 0

    async def one(row: OolongRow) -> RowResult:
        nonlocal finished
        async with slots:
            started = time.monotonic()
            try:
                async with asyncio.timeout(row_timeout):
                    result = await solve(row)
            except TimeoutError:
                result = failed_result(
                    row, "timeout", [f"the row did not finish within {row_timeout:g} s and was abandoned"],
                    time.monotonic() - started, method=method)
            except Exception as exc:  # any crash of one row is that row's result, never the benchmark's
                logger.warning("row %s crashed", row.id, exc_info=True)
                result = failed_result(row, "error", [f"{type(exc).__name__}: {exc}"],
                                       time.monotonic() - started, method=method)
            results.append(result)
            finished += 1
            if progress is not None:
                print(f"[{finished}/{len(rows)}] {row.dataset} {row.id}: score {result.score:.2f} "
                      f"{result.stop_reason} {result.wall_seconds:.1f}s ${result.total_cost_usd:.4f}",
                      file=progress, flush=True)
            return result

    return list(await asyncio.gather(*(one(row) for row in rows)))


# --------------------------------------------------------------- command line


def add_row_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose rows, shared with ``benchmarks.compare``."""
    group = parser.add_argument_group("rows")
    group.add_argument("--data", type=Path, help="local JSONL or Parquet file of rows (no hub access needed)")
    group.add_argument("--dataset-name", default=DEFAULT_DATASET,
                       help="hub dataset: oolongbench/oolong-synth (default) or oolongbench/oolong-real")
    group.add_argument("--config", dest="hub_config", metavar="CONFIG",
                       help="hub configuration (dnd for oolong-real)")
    group.add_argument("--split", default="validation", help="hub split: validation (default) or test")
    group.add_argument("--dataset", action="append", dest="datasets", metavar="NAME",
                       help="keep rows of this dataset (trec_coarse, spam, …); repeatable")
    group.add_argument("--context-len", type=int, help="keep rows of this context length in tokens (e.g. 131072)")
    group.add_argument("--task-group", help="keep rows of this task group (counting, user, timeline)")
    group.add_argument("--limit", type=int, help="keep at most this many rows")
    run = parser.add_argument_group("running")
    run.add_argument("--concurrency", type=int, default=4, help="rows run at once (default 4)")
    run.add_argument("--resume", action="store_true", help="skip rows already recorded in --out")
    run.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    run.add_argument("--fsrlm-config", type=Path, help="fsRLM TOML config (default ./fsrlm.toml, FSRLM_*)")


def load_selected_rows(args: argparse.Namespace) -> list[OolongRow]:
    return load_rows(
        data=args.data, dataset_name=args.dataset_name, split=args.split, config=args.hub_config,
        datasets_filter=args.datasets, context_len=args.context_len, task_group=args.task_group,
        limit=args.limit,
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse option values argparse lets through."""
    if args.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    if args.limit is not None and args.limit < 0:
        raise InputError("--limit must not be negative")


def rows_to_run(rows: Sequence[OolongRow], results: ResultsFile, resume: bool,
                log: TextIO) -> list[OolongRow]:
    """The rows still to run; refuses to mix a new benchmark into an old results file."""
    if not resume:
        if results.has_records():
            raise InputError(f"{results.path} already holds results: pass --resume to continue that "
                             "benchmark, or choose another --out")
        return list(rows)
    done = results.done_keys()
    todo = [row for row in rows if row_key(row) not in done]
    skipped = len(rows) - len(todo)
    if skipped:
        print(f"resuming: {skipped} of {len(rows)} rows already in {results.path}", file=log)
    return todo


async def preflight(config: RLMConfig) -> None:
    """Fail once, before any row runs, on what would fail every row."""
    check_credentials(config.upstream)
    await create_executor(config.executor).check()


def selected_records(results: ResultsFile, rows: Sequence[OolongRow]) -> list[RowResult]:
    """The records in ``results`` of the selected ``rows`` (from earlier runs too)."""
    wanted = {row_key(row) for row in rows}
    return [r for r in read_results(results.path) if r.key in wanted]


def _build_config(args: argparse.Namespace) -> RLMConfig:
    overrides: dict[str, Any] = {}
    if args.executor:
        overrides["executor"] = {"type": args.executor}
    if args.timeout is not None:
        overrides["timeout_seconds"] = args.timeout
    if args.workspace:
        overrides["workspace_dir"] = str(args.workspace)
    return load_config(args.fsrlm_config, overrides=overrides)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsrlm bench oolong",
        description="Run OOLONG rows through fsRLM (one sandboxed RLM run per row) and report the scores.",
    )
    add_row_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("oolong-results.jsonl"),
                        help="results JSONL, one line per finished row (default oolong-results.jsonl)")
    parser.add_argument("--executor", choices=EXECUTOR_TYPES, help="where each run's agent runs (default: config)")
    parser.add_argument("--timeout", type=float, help="seconds per row (timeout_seconds; default: config)")
    parser.add_argument("--workspace", type=Path, help="parent folder of the run folders (failed runs are kept)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    return parser


def run_guarded(name: str, results: ResultsFile, body: Callable[[], None], log=sys.stderr) -> int:
    """Run a benchmark command's ``body``; turn user errors and Ctrl-C into one line and an exit code."""
    try:
        body()
    except FsrlmError as exc:
        print(f"{name}: {exc}", file=log)
        code = exit_code_for_error(exc)
        return int(code if code != ExitCode.NO_ANSWER else ExitCode.CONFIG_ERROR)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished rows are in {results.path}: rerun with --resume", file=log)
        return int(ExitCode.INTERRUPTED)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit code (see the module docstring)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * args.verbose),
                        format="%(levelname)s %(name)s: %(message)s")
    log = sys.stderr
    results = ResultsFile(args.out)

    def body() -> None:
        check_arguments(args)
        config = _build_config(args)
        rows = load_selected_rows(args)
        todo = rows_to_run(rows, results, args.resume, log)
        if todo:
            asyncio.run(preflight(config))
            rlm = RLM(config)

            async def solve(row: OolongRow) -> RowResult:
                result = await rlm.ainvoke(row.context_window_text, question=row.question)
                return result_from_rlm(row, result, model=config.effective_root_model)

            print(f"running {len(todo)} rows, {args.concurrency} at a time, executor {config.executor.type}; "
                  f"results go to {results.path}", file=log)
            asyncio.run(run_rows(todo, solve, concurrency=args.concurrency, results=results,
                                 row_timeout=config.timeout_seconds + HARNESS_GRACE_SECONDS, progress=log))
        records = selected_records(results, rows)
        if args.json:
            print(json.dumps(report_json(records, source=str(results.path)), indent=2))
        else:
            print_tables(report_tables(records, title="OOLONG with fsRLM"))

    return run_guarded("oolong", results, body, log)


if __name__ == "__main__":
    raise SystemExit(main())
