"""``fsrlm resume``: continue an interrupted run, with its own settings."""

from __future__ import annotations

import time
from pathlib import Path

import click

from fsrlm.cli.ending import RunTracker, exit_interrupted
from fsrlm.cli.output import print_result
from fsrlm.cli.progress import make_progress
from fsrlm.config import load_config
from fsrlm.resume import plan_resume
from fsrlm.rlm import RLM


@click.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config: where the run's record is (its cache_dir) and the upstream's credentials.")
@click.option("-e", "--executor", help="Resume on another executor than the run's own.")
@click.option("--max-budget-usd", type=float, help="Raise (or lower) the run's own budget in dollars.")
@click.option("--max-turns", type=int, help="Change the run's own max_turns.")
@click.option("--timeout", "timeout_seconds", type=float, help="Change the run's own wall-clock limit, in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def resume(workspace: str, config_path: str | None, executor: str | None, max_budget_usd: float | None,
           max_turns: int | None, timeout_seconds: float | None, as_json: bool, quiet: bool) -> None:
    """Continue the run in WORKSPACE where it stopped, with the settings it was started with.

    The run's settings, system prompt and spending come from the host-side record
    (under cache_dir/runs/), never from the run folder; the options above change
    them explicitly. A run that already completed is not run again: its result is
    printed and nothing is spent. Otherwise the agent's conversation continues from
    its saved session and every subcall it already made comes from the cache. Use
    the same cache_dir as the original run.
    """
    overrides: dict = {"max_budget_usd": max_budget_usd, "max_turns": max_turns, "timeout_seconds": timeout_seconds}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if executor:
        overrides["executor"] = {"type": executor}
    config = load_config(config_path)
    plan = plan_resume(config, workspace, overrides)
    click.echo(f"fsrlm: {plan.describe()}", err=True)
    progress = None if plan.action == "show_result" else make_progress(quiet=quiet, as_json=as_json)
    tracker = RunTracker(forward=progress)
    rlm = RLM(config)
    try:
        if progress is None:
            result = rlm.resume(Path(workspace), overrides=overrides, on_event=tracker)
        else:
            with progress:
                result = rlm.resume(Path(workspace), overrides=overrides, on_event=tracker)
    except KeyboardInterrupt:
        exit_interrupted(tracker, as_json=as_json, now=time.time())
    print_result(result, as_json, quiet=quiet, budget=plan.config.max_budget_usd)
