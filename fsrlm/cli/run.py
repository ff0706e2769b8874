"""``fsrlm run``: answer a question about a file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from fsrlm.cli.options import model_options
from fsrlm.cli.output import print_result
from fsrlm.cli.progress import make_progress
from fsrlm.config import load_config
from fsrlm.errors import InputError
from fsrlm.executors.configs import EXECUTOR_TYPES
from fsrlm.rlm import RLM


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-q", "--question", help="The question about INPUT (shown to the agent, saved to input/question.md).")
@click.option("-s", "--system", help="A system prompt for the task.")
@click.option("-e", "--executor", type=click.Choice(EXECUTOR_TYPES), help="Where the agent runs (default: config).")
@click.option("--isolation", type=click.Choice(["auto", "runc", "gvisor"]),
              help="The sandbox's kernel: gvisor, runc (the host's), or auto (gvisor when the engine has it).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default ./fsrlm.toml).")
@click.option("-w", "--workspace", type=click.Path(file_okay=False), help="Parent folder for run folders (kept).")
@model_options
@click.option("--preserve-workspace/--no-preserve-workspace", default=None, help="Keep the run folder after success.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def run(input_path: str, question: str | None, system: str | None, executor: str | None, isolation: str | None,
        config_path: str | None, workspace: str | None, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Run the RLM over INPUT (a file, or - for stdin) and print the answer.

    The file's bytes go to input/prompt.md unchanged. Exit codes: 0 answer,
    1 no answer, 2 configuration/input error, 3 limit or timeout reached,
    4 sandbox error, 5 model API error.
    """
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if executor or isolation:
        overrides["executor"] = {k: v for k, v in (("type", executor), ("isolation", isolation)) if v}
    if workspace:
        overrides["workspace_dir"] = workspace
        overrides.setdefault("preserve_workspace", True)
    config = load_config(config_path, overrides=overrides)

    if input_path == "-":
        prompt: Any = sys.stdin.buffer
    else:
        path = Path(input_path)
        if not path.is_file():
            raise InputError(f"input file {input_path} does not exist")
        prompt = path
    progress = make_progress(quiet=quiet, as_json=as_json)
    if progress is None:
        result = RLM(config).invoke(prompt, question=question, system=system)
    else:
        with progress:
            result = RLM(config).invoke(prompt, question=question, system=system, on_event=progress)

    print_result(result, as_json)
