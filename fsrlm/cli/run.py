"""``fsrlm run``: answer a question about a file."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from fsrlm.cli.ending import RunTracker, exit_interrupted, folder_line
from fsrlm.cli.input_check import SNIFF_BYTES, budget_note, not_text
from fsrlm.cli.options import model_options
from fsrlm.cli.output import print_result
from fsrlm.cli.progress import make_progress
from fsrlm.config import load_config
from fsrlm.errors import FsrlmError, InputError
from fsrlm.executors.configs import EXECUTOR_TYPES

UPSTREAM_TYPES = ("anthropic", "bedrock", "compatible")


@click.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("-q", "--question", help="The question about INPUT (shown to the agent, saved to input/question.md).")
@click.option("-s", "--system", help="A system prompt for the task.")
@click.option("-e", "--executor", type=click.Choice(EXECUTOR_TYPES), help="Where the agent runs (default: config).")
@click.option("--isolation", type=click.Choice(["auto", "runc", "gvisor"]),
              help="The sandbox's kernel: gvisor, runc (the host's), or auto (gvisor when the engine has it).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default ./fsrlm.toml).")
@click.option("-w", "--workspace", type=click.Path(file_okay=False), help="Parent folder for run folders (kept).")
@click.option("--upstream", type=click.Choice(UPSTREAM_TYPES),
              help="Where the broker sends model calls (default: config, else anthropic). The key stays in the "
                   "environment: ANTHROPIC_API_KEY or FSRLM_UPSTREAM_API_KEY; AWS credentials for bedrock.")
@click.option("--upstream-url", "upstream_base_url", metavar="URL",
              help="Base URL of the upstream: an Anthropic-compatible gateway or server (then --upstream "
                   "compatible is implied, unless --upstream or the config names bedrock).")
@model_options
@click.option("--preserve-workspace/--no-preserve-workspace", default=None,
              help="Keep the run folder after success (failed runs are always kept).")
@click.option("--allow-binary", is_flag=True, help="Run on an INPUT that is not text (compressed, binary) as it is.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
@click.option("--quiet", is_flag=True, help="No progress and no summary on stderr (errors and warnings still).")
def run(input_path: str, question: str | None, system: str | None, executor: str | None, isolation: str | None,
        config_path: str | None, workspace: str | None, upstream: str | None, upstream_base_url: str | None,
        allow_binary: bool, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Run the RLM over INPUT (a file, or - for stdin) and print the answer.

    The file's bytes go to input/prompt.md unchanged. A failed or interrupted
    run keeps its folder and says where it is (continue it with fsrlm resume).

    Exit codes: 0 answer written; 1 no answer; 2 configuration, input or
    credentials error (nothing ran); 3 a limit, max_turns or the timeout
    stopped the run; 4 sandbox or infrastructure error; 5 model API error;
    130 interrupted (Ctrl-C).
    """
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if executor or isolation:
        overrides["executor"] = {k: v for k, v in (("type", executor), ("isolation", isolation)) if v}
    if workspace:
        overrides["workspace_dir"] = workspace
        overrides.setdefault("preserve_workspace", True)
    config = load_config(config_path, overrides=overrides)
    if upstream or upstream_base_url:
        # A URL alone means an Anthropic-compatible server, unless the configuration says Bedrock.
        kind = upstream or ("bedrock" if config.upstream.type == "bedrock" else "compatible")
        overrides["upstream"] = {"type": kind, **({"base_url": upstream_base_url} if upstream_base_url else {})}
        config = load_config(config_path, overrides=overrides)

    if input_path == "-":
        prompt: Any = sys.stdin.buffer
        peek = getattr(prompt, "peek", None)  # a pipe can be looked at without consuming it
        head, size, name = (peek(SNIFF_BYTES)[:SNIFF_BYTES] if peek else b""), None, None
    else:
        path = Path(input_path)
        if not path.is_file():
            raise InputError(f"input file {input_path} does not exist")
        prompt = path
        try:
            with path.open("rb") as f:
                head = f.read(SNIFF_BYTES)
        except OSError as e:
            raise InputError(f"cannot read input file {input_path}: {e.strerror}") from None
        size, name = path.stat().st_size, input_path
    if not allow_binary and (why := not_text(head, name)):
        raise InputError(f"{why}; or pass --allow-binary to run on the bytes as they are.")
    if size and (note := budget_note(size, config)):
        click.echo(f"fsrlm: note: {note}", err=True)

    from fsrlm.rlm import RLM  # the Agent SDK loads only now: a bad input or config fails before it, at once

    progress = make_progress(quiet=quiet, as_json=as_json)
    tracker = RunTracker(forward=progress)
    rlm = RLM(config)
    try:
        if progress is None:
            result = rlm.invoke(prompt, question=question, system=system, on_event=tracker)
        else:
            with progress:
                result = rlm.invoke(prompt, question=question, system=system, on_event=tracker)
    except KeyboardInterrupt:
        exit_interrupted(tracker, as_json=as_json, now=time.time())
    except FsrlmError:
        # An error after the run folder was made: say where it is, then the error itself (main.py).
        if tracker.workspace is not None and tracker.workspace.exists():
            click.echo(folder_line(tracker.workspace), err=True)
        raise

    print_result(result, as_json, quiet=quiet, budget=config.max_budget_usd)

