"""How ``fsrlm run`` and ``fsrlm resume`` print a result and choose the exit code."""

from __future__ import annotations

import json
import sys

import click

from fsrlm.cli.exit_codes import exit_code_for_stop
from fsrlm.results import RLMResult


def print_result(result: RLMResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.summary()))
    else:
        if result.answer:
            click.echo(result.answer)
        m = result.metrics
        click.echo(
            f"[{result.stop_reason}] {m.turns} turns, {m.subcalls} subcalls (+{m.subcalls_cached} cached, "
            f"{m.subcalls_refused} refused), ${m.total_cost_usd:.4f}, {m.wall_seconds:.1f}s"
            + (f", {result.sandbox.label()}" if result.sandbox else "")
            + (f", workspace {result.workspace_path}" if result.workspace_path else ""),
            err=True,
        )
        for error in result.errors:
            click.echo(f"error: {error}", err=True)
    sys.exit(exit_code_for_stop(result.stop_reason))
