"""Running OOLONG rows: the results file, the record of a failed row, and the one loop that runs rows.

:func:`run_rows` is the only place rows are run, for the RLM (``benchmarks.oolong``),
the root model alone (``benchmarks.compare``) and the paper slice alike: it
takes the rows and a ``solve`` coroutine for one row, runs ``concurrency`` rows at
a time on this machine and appends each record to the results file as it
finishes. A batch runner (many machines) replaces this one function; everything
else — choosing rows, solving one row, scoring, the report — stays as it is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from fsrlm.benchmarks.oolong_data import OolongRow
from fsrlm.benchmarks.oolong_scoring import score_answer_detail, scoring_name
from fsrlm.benchmarks.results import Method, RowResult, json_safe, read_results

from fsrlm.cli.exit_codes import ExitCode, exit_code_for_error
from fsrlm.errors import FsrlmError, InputError

__all__ = [
    "HARNESS_GRACE_SECONDS",
    "ResultsFile",
    "RowRunner",
    "Solver",
    "failed_result",
    "now_iso",
    "row_fields",
    "row_key",
    "rows_to_run",
    "run_guarded",
    "run_rows",
    "score_row",
    "selected_records",
]

logger = logging.getLogger(__name__)

#: Extra seconds a row gets beyond ``timeout_seconds`` (sandbox start and clean-up)
#: before the harness itself gives up on it.
HARNESS_GRACE_SECONDS = 120.0

Solver = Callable[[OolongRow], Awaitable[RowResult]]


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


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def score_row(row: OolongRow, answer: str | None, success: bool, *,
              lenient: bool = False) -> tuple[float, Any, list[str]]:
    """Score, parsed candidate (JSON-safe) and any scoring problem; 0 unless ``success``."""
    if not success or not answer:
        return 0.0, None, []
    try:
        detail = score_answer_detail(answer, row.answer, row.answer_type, row.split, lenient=lenient)
    except ValueError as exc:
        return 0.0, None, [f"could not score the answer: {exc}"]
    return detail.score, json_safe(detail.candidate), []


def row_fields(row: OolongRow, *, lenient: bool = False) -> dict[str, Any]:
    """The fields a result record copies from its row (and the rules that score it)."""
    return {
        "id": row.id, "dataset": row.dataset, "context_len": row.context_len,
        "context_len_source": row.context_len_source, "task_group": row.task_group, "task": row.task,
        "answer_type": row.answer_type, "split": row.split, "synthetic": row.synthetic, "gold": row.answer,
        "scoring": scoring_name(lenient),
    }


def failed_result(row: OolongRow, stop_reason: str, errors: list[str], wall_seconds: float,
                  *, method: Method = "rlm", lenient: bool = False) -> RowResult:
    """The record of a row whose run crashed or was given up on: score 0."""
    return RowResult(
        **row_fields(row, lenient=lenient), method=method, answer=None, score=0.0, success=False,
        stop_reason=stop_reason, errors=errors, wall_seconds=round(wall_seconds, 3), finished_at=now_iso(),
    )


async def run_rows(
    rows: Sequence[OolongRow],
    solve: Solver,
    *,
    concurrency: int,
    results: ResultsFile,
    row_timeout: float | None,
    method: Method = "rlm",
    lenient: bool = False,
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
                    time.monotonic() - started, method=method, lenient=lenient)
            except Exception as exc:  # any crash of one row is that row's result, never the benchmark's
                logger.warning("row %s crashed", row.id, exc_info=True)
                result = failed_result(row, "error", [f"{type(exc).__name__}: {exc}"],
                                       time.monotonic() - started, method=method, lenient=lenient)
            results.append(result)
            finished += 1
            if progress is not None:
                cached = " (cached)" if result.cached_row else ""
                print(f"[{finished}/{len(rows)}] {row.dataset} {row.id}: score {result.score:.2f} "
                      f"{result.stop_reason} {result.wall_seconds:.1f}s ${result.total_cost_usd:.4f}{cached}",
                      file=progress, flush=True)
            return result

    return list(await asyncio.gather(*(one(row) for row in rows)))


#: The shape of :func:`run_rows`, for whatever replaces it.
RowRunner = Callable[..., Awaitable[list[RowResult]]]


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


def selected_records(results: ResultsFile, rows: Sequence[OolongRow]) -> list[RowResult]:
    """The records in ``results`` of the selected ``rows`` (from earlier runs too)."""
    wanted = {row_key(row) for row in rows}
    return [r for r in read_results(results.path) if r.key in wanted]


def run_guarded(name: str, results_path: Path, body: Callable[[], None], log: TextIO = sys.stderr) -> int:
    """Run a benchmark command's ``body``; turn user errors and Ctrl-C into one line and an exit code."""
    try:
        body()
    except FsrlmError as exc:
        print(f"{name}: {exc}", file=log)
        code = exit_code_for_error(exc)
        return int(code if code != ExitCode.NO_ANSWER else ExitCode.CONFIG_ERROR)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished rows are in {results_path}: rerun with --resume", file=log)
        return int(ExitCode.INTERRUPTED)
    return 0
