"""How ``fsrlm run`` and ``fsrlm resume`` print a result and choose the exit code.

The answer and the errors hold text the agent wrote. On a terminal they lose their
control characters (``terminal.printable``); an answer piped elsewhere is written as
the agent wrote it (it is the run's output); ``--json`` escapes every control character.
"""

from __future__ import annotations

import json
import sys

import click

from fsrlm.cli.exit_codes import exit_code_for_stop
from fsrlm.cli.terminal import printable
from fsrlm.results import RLMResult


def result_json(result: RLMResult) -> str:
    return json.dumps(result.summary())


def print_result(result: RLMResult, as_json: bool, *, quiet: bool = False, budget: float | None = None) -> None:
    """The answer (or the JSON) on stdout; the summary (unless ``quiet``), errors and the run folder on stderr."""
    from fsrlm.cli.ending import print_ending

    if as_json:
        click.echo(result_json(result))
    else:
        if result.answer:
            click.echo(printable(result.answer) if sys.stdout.isatty() else result.answer)
        m = result.metrics
        if not quiet:
            click.echo(
                f"[{result.stop_reason}] {m.turns} turns, {m.subcalls} subcalls (+{m.subcalls_cached} cached, "
                f"{m.subcalls_refused} refused), ${m.total_cost_usd:.4f}, {m.wall_seconds:.1f}s"
                + (f", {result.sandbox.label()}" if result.sandbox else "")
                + (f", workspace {result.workspace_path}" if result.workspace_path and result.success else ""),
                err=True,
            )
    for error in result.errors:
        click.echo(f"error: {printable(error)}", err=True)
    print_ending(result, budget)
    sys.exit(exit_code_for_stop(result.stop_reason))
