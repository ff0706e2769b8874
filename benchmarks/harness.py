"""Running OOLONG rows: the results file, and the one loop that runs rows.

:func:`run_rows` is the only place rows are run, for the RLM (``benchmarks.oolong``),
the root model alone (``benchmarks.compare``) and the paper slice alike. It takes the
rows, a solver for one row and an open fleet (``fsrlm.batch.fleet``: this machine,
``--concurrency`` at a time, or a Ray cluster with ``--ray``), fans the rows out through
``fsrlm.batch.runner.FanOut`` — the machinery of ``fsrlm batch`` — and appends each
row's record to the results file as it finishes, exactly once per row. A failed row is
recorded and never stops the sweep; a row whose node died is tried again on another
(at most ``--max-attempts`` in all); ``--max-total-usd`` admits a row only when its cap
fits in what is left. Choosing rows, solving one row (:mod:`benchmarks.row_task`),
scoring and the report do not depend on where the rows ran.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from fsrlm.batch.budget import TotalBudget
from fsrlm.batch.fleet import Fleet
from fsrlm.batch.runner import FanOutEvent, Outcome
from fsrlm.benchmarks.oolong_data import OolongRow
from fsrlm.benchmarks.records import failed_result, now_iso, row_fields, score_row
from fsrlm.benchmarks.results import Method, RowResult, read_results
from fsrlm.benchmarks.row_task import ContextShipper, RowAttempt, RowSolver, RowTask, run_row
from fsrlm.cli.exit_codes import ExitCode, exit_code_for_error
from fsrlm.errors import FsrlmError, InputError

__all__ = [
    "HARNESS_GRACE_SECONDS",
    "ResultsFile",
    "RowsRun",
    "attempt_cost",
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


def attempt_cost(attempt: Any) -> float | None:
    """What an attempt cost, for ``--max-total-usd`` (None: unknown, so it counts at its cap)."""
    return attempt.cost_usd if isinstance(attempt, RowAttempt) else None


@dataclass
class RowsRun:
    """What one :func:`run_rows` did."""

    results: list[RowResult] = field(default_factory=list)  # recorded now, in the order of the rows
    not_started: int = 0  # left for --resume: the total budget admitted no more
    stopped: Literal["budget"] | None = None
    retried: int = 0  # rows whose node died once or more
    nodes: Counter[str] = field(default_factory=Counter)  # recorded rows per node


class _Progress:
    """One line per finished row (and, on Ray, per start and per retry) on ``stream``."""

    def __init__(self, stream: TextIO | None, total: int, on_ray: bool) -> None:
        self.stream, self.total, self.on_ray = stream, total, on_ray
        self.finished = 0
        self.waiting = False

    def _print(self, text: str) -> None:
        if self.stream is not None:  # one write a line: Ray's driver thread prints notices to the same pipe
            self.stream.write(text + "\n")
            self.stream.flush()

    def event(self, event: FanOutEvent) -> None:
        row = event.item.row if isinstance(event.item, RowTask) else None
        name = f"{row.dataset} {row.id}" if row is not None else "a row"
        if event.kind == "started":
            self.waiting = False
            if self.on_ray and event.node is not None:
                self._print(f"started {name} on {event.node.name}")
        elif event.kind == "retrying":
            self._print(f"{name}: {event.detail}; trying again")
        elif event.kind == "waiting" and not self.waiting:
            self.waiting = True
            self._print("waiting: the total budget (--max-total-usd) admits no more rows until a running one ends")

    def row(self, result: RowResult, outcome: Outcome[RowTask, Any]) -> None:
        self.finished += 1
        cached = " (cached)" if result.cached_row else ""
        where = ""
        if self.on_ray and outcome.nodes:
            where = f" on {outcome.nodes[-1].name}"
            if outcome.attempts > 1:
                where += f" (attempt {outcome.attempts}; {' then '.join(n.name for n in outcome.nodes)})"
        self._print(f"[{self.finished}/{self.total}] {result.dataset} {result.id}: score {result.score:.2f} "
                    f"{result.stop_reason} {result.wall_seconds:.1f}s ${result.total_cost_usd:.4f}{cached}{where}")


def _record(outcome: Outcome[RowTask, Any]) -> RowResult:
    """The row's record: what the attempt returned, or a failure when no attempt returned."""
    if isinstance(outcome.result, RowAttempt):
        return outcome.result.result
    task = outcome.item
    now = time.time()
    wall = (outcome.finished_at or now) - (outcome.started_at or now)
    return failed_result(task.row, "node_lost" if outcome.lost else "error",
                         [outcome.error or "the row failed"], wall, method=task.method, lenient=task.lenient)


async def run_rows(
    rows: Sequence[OolongRow],
    solve: RowSolver | Callable[[OolongRow], Any],
    *,
    fleet: Fleet,
    results: ResultsFile,
    row_timeout: float | None,
    method: Method | None = None,
    lenient: bool | None = None,
    gate: TotalBudget | None = None,
    progress: TextIO | None = None,
) -> RowsRun:
    """Solve ``rows`` on ``fleet``, recording each row once, as soon as it finishes.

    ``solve``: a :class:`~benchmarks.row_task.RowSolver` (any coroutine function of a row
    on this machine). A row whose ``solve`` raises is recorded with ``stop_reason="error"``;
    one that takes longer than ``row_timeout`` seconds with ``"timeout"``; one whose every
    attempt's node died with ``"node_lost"``: all score 0. A row already in ``results``, or
    given twice, is run and written once. Cancellation (Ctrl-C) records nothing for
    unfinished rows.
    """
    method = method or getattr(solve, "method", "rlm")
    lenient = bool(getattr(solve, "lenient", False) if lenient is None else lenient)
    done = results.done_keys()
    todo: list[OolongRow] = []
    for row in rows:
        if row_key(row) not in done:
            done.add(row_key(row))
            todo.append(row)
    if len(todo) < len(rows):
        logger.info("%d of %d rows are already recorded (or given twice): run once", len(rows) - len(todo), len(rows))
    sent: Any = solve
    shipper: ContextShipper | None = None
    if fleet.on_ray:
        if not isinstance(solve, RowSolver):
            raise TypeError("rows run on Ray need a RowSolver (it is pickled into each task)")
        sent = solve.for_nodes()
        shipper = ContextShipper()

    def task(index: int, row: OolongRow) -> RowTask:
        context = None
        if shipper is not None:
            context, row = shipper.refs(row.context_window_text), row.model_copy(update={"context_window_text": ""})
        return RowTask(index=index, row=row, solver=sent, timeout=row_timeout, method=method, lenient=lenient,
                       context=context, on_ray=fleet.on_ray, batch_id=fleet.batch_id, image=fleet.image)

    shown = _Progress(progress, len(todo), fleet.on_ray)
    fan = fleet.fan_out(gate=gate, on_event=shown.event)
    run = RowsRun()
    by_index: dict[int, RowResult] = {}
    async for outcome in fan.run((task(i, row) for i, row in enumerate(todo)), run_row):
        result = _record(outcome)
        by_index[outcome.item.index] = result
        results.append(result)
        run.retried += outcome.attempts > 1
        if outcome.nodes:
            run.nodes[outcome.nodes[-1].name] += 1
        shown.row(result, outcome)
    run.results = [by_index[i] for i in sorted(by_index)]
    run.not_started = len(todo) - len(by_index)
    run.stopped = "budget" if fan.stopped == "gate" else None
    return run


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


def run_guarded(name: str, results_path: Path, body: Callable[[], int | None], log: TextIO = sys.stderr) -> int:
    """Run a benchmark command's ``body``; turn user errors and Ctrl-C into one line and an exit code.

    ``body`` returns its own exit code, or None for 0.
    """
    try:
        code = body()
    except FsrlmError as exc:
        print(f"{name}: {exc}", file=log)
        code = exit_code_for_error(exc)
        return int(code if code != ExitCode.NO_ANSWER else ExitCode.CONFIG_ERROR)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished rows are in {results_path}: rerun with --resume", file=log)
        return int(ExitCode.INTERRUPTED)
    return int(code or 0)
