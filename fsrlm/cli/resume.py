"""``fsrlm resume``: continue an interrupted run."""

from __future__ import annotations

from pathlib import Path

import click

from fsrlm.cli.output import print_result
from fsrlm.cli.progress import make_progress
from fsrlm.config import load_config
from fsrlm.rlm import RLM


@click.command()
@click.argument("workspace", type=click.Path(exists=True, file_okay=False))
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default ./fsrlm.toml).")
@click.option("-e", "--executor", help="Where the agent runs (default: config).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def resume(workspace: str, config_path: str | None, executor: str | None, as_json: bool, quiet: bool) -> None:
    """Continue the interrupted run in WORKSPACE where it stopped.

    The agent's conversation continues from its saved session, every subcall it
    already made comes from the cache, and the limits count what was spent.
    Use the same cache_dir as the original run.
    """
    overrides = {"executor": {"type": executor}} if executor else {}
    config = load_config(config_path, overrides={**overrides, "preserve_workspace": True})
    progress = make_progress(quiet=quiet, as_json=as_json)
    if progress is None:
        result = RLM(config).resume(Path(workspace))
    else:
        with progress:
            result = RLM(config).resume(Path(workspace), on_event=progress)
    print_result(result, as_json)
