"""How a run that did not succeed ends on the command line: where its folder is, and why it stopped.

Every failed or interrupted run keeps its folder; the user is told where it is and
how to continue (``fsrlm resume``) or look (``fsrlm view``). A run stopped by its
dollar budget says so in the first words of the last line. Ctrl-C happens while
the run is going, before there is a result, so :class:`RunTracker` follows the
run's events to know its folder and what it spent so far.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

import click

from fsrlm.broker.audit import CallRecord
from fsrlm.cli.exit_codes import ExitCode
from fsrlm.events import RLMEvent
from fsrlm.results import RLMResult, RunMetrics

_BUDGET_SPENT = re.compile(r"budget of \$[0-9.,]+ is spent")


class RunTracker:
    """An ``on_event`` subscriber: remembers the top-level run's folder, its records and the spend so far."""

    def __init__(self, forward: Callable[[RLMEvent], None] | None = None) -> None:
        self.forward = forward
        self.run_id: str | None = None
        self.workspace: Path | None = None
        self.records: list[CallRecord] = []
        self.spent_usd = 0.0
        self.started: float | None = None

    def __call__(self, event: RLMEvent) -> None:
        if event.kind == "run_started" and self.run_id is None:  # the first run is the top-level one
            self.run_id = event.run_id
            self.started = event.ts
            folder = (event.data or {}).get("workspace")
            self.workspace = Path(folder) if folder else None
        if event.kind == "subcall" and event.totals:
            self.spent_usd = float(event.totals.get("spent_usd", self.spent_usd))
        if event.kind == "subcall" and event.record is not None and event.run_id == self.run_id:
            self.records.append(event.record)
        if self.forward is not None:
            self.forward(event)

    def interrupted(self, now: float) -> RLMResult | None:
        """The result of a run cut short by Ctrl-C (None if it never started)."""
        if self.run_id is None:
            return None
        metrics = RunMetrics.from_records(self.records, total_cost=self.spent_usd,
                                          wall_seconds=round(now - (self.started or now), 3))
        return RLMResult(answer=None, success=False, stop_reason="interrupted", metrics=metrics,
                         errors=["the run was interrupted (Ctrl-C)"], workspace_path=self.workspace,
                         run_id=self.run_id)


def stopped_by_budget(result: RLMResult, budget: float | None) -> bool:
    """Did the dollar budget end this run (whatever the CLI made of the refusal)?"""
    if result.success or budget is None:
        return False
    if any(_BUDGET_SPENT.search(error) or "max_budget_usd" in error for error in result.errors):
        return True
    return result.metrics.total_cost_usd >= budget * 0.999


def budget_line(result: RLMResult, budget: float) -> str:
    folder = f"; then `fsrlm resume {result.workspace_path}` continues it" if result.workspace_path else ""
    spent = result.metrics.total_cost_usd
    # Calls hold their worst case before they go: a budget can end a run before it is spent.
    what = (f"budget of ${budget:.2f} spent (${spent:.2f})" if spent >= budget * 0.999 else
            f"budget of ${budget:.2f} could not hold the next call's worst case (${spent:.2f} spent)")
    return (f"fsrlm: {what}, so the run stopped "
            f"before its answer. Raise it with --max-budget-usd (or FSRLM_MAX_BUDGET_USD, max_budget_usd){folder}; "
            "calls already made are answered from the cache. The README's cost table shows what inputs cost.")


def folder_line(path: Path) -> str:
    return (f"fsrlm: the run folder is kept: {path}\n"
            f"       continue it: fsrlm resume {path}    look at it: fsrlm view {path}")


def print_ending(result: RLMResult, budget: float | None) -> None:
    """On stderr, after the errors: where the run folder is, and, for a budget stop, the budget last."""
    if result.success:
        return
    if result.workspace_path is not None:
        click.echo(folder_line(result.workspace_path), err=True)
    if stopped_by_budget(result, budget):
        click.echo(budget_line(result, budget), err=True)  # type: ignore[arg-type]


def exit_interrupted(tracker: RunTracker, *, as_json: bool, now: float) -> None:
    """Ctrl-C: say where the run folder is (and print the partial result with --json), exit 130."""
    from fsrlm.cli.output import result_json

    result = tracker.interrupted(now)
    if as_json and result is not None:
        click.echo(result_json(result))
    where = f"; the run folder is kept: {result.workspace_path}" if result and result.workspace_path else ""
    click.echo(f"fsrlm: interrupted{where}", err=True)
    if result is not None and result.workspace_path:
        click.echo(f"       continue it: fsrlm resume {result.workspace_path}", err=True)
    sys.exit(ExitCode.INTERRUPTED)
