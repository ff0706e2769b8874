"""``fsrlm batch``: many runs from a jobs file, on this machine or a Ray cluster; ``fsrlm capacity``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from fsrlm.cli.exit_codes import ExitCode
from fsrlm.cli.options import model_options
from fsrlm.executors.configs import EXECUTOR_TYPES


@click.command()
@click.argument("jobs", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Results file (JSON lines); appended to as jobs finish, never overwritten.")
@click.option("--resume", is_flag=True, help="Continue the batch in --out: ids already there are skipped.")
@click.option("-j", "--concurrency", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Jobs at once on this machine (without --ray).")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS",
              help="Run each job as a Ray task on a cluster: auto (the cluster this machine belongs to) or the "
                   "head's host:port.")
@click.option("--max-total-usd", type=click.FloatRange(min=0, min_open=True),
              help="Dollar cap for the whole batch (each job also keeps its own max_budget_usd).")
@click.option("--max-attempts", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Attempts per job when its node dies (Ray).")
@click.option("--shared-inputs", is_flag=True,
              help="Ray: every node reads the job files at the same paths (network storage); otherwise the "
                   "driver sends each input through Ray's object store.")
@click.option("--forward-env", "forward_env", multiple=True, metavar="NAME",
              help="Ray: pass this variable of the driver's environment to the workers (repeatable).")
@click.option("--no-forward-credentials", is_flag=True,
              help="Ray: do not pass the upstream's credentials; the nodes have their own (e.g. an instance role).")
@click.option("-e", "--executor", type=click.Choice(EXECUTOR_TYPES), help="Where each agent runs (default: config).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default ./fsrlm.toml).")
@click.option("-w", "--workspace", type=click.Path(file_okay=False), help="Parent folder of the run folders (on each node).")
@model_options
@click.option("--check", "check_only", is_flag=True, help="Only check the jobs file (and --out); run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout at the end.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def batch(jobs: Path, out: Path, resume: bool, concurrency: int, ray_address: str | None,
          max_total_usd: float | None, max_attempts: int, shared_inputs: bool, forward_env: tuple[str, ...],
          no_forward_credentials: bool, executor: str | None, config_path: str | None, workspace: str | None,
          check_only: bool, as_json: bool, quiet: bool, **flags: Any) -> None:
    """Run every job of JOBS (one JSON object a line) and append one result line per job to --out.

    A job: {"id": ..., "input": FILE | "text": ... | "messages": [...], "question": ...,
    "system": ..., "attachments": {NAME: FILE}, "config": {...overrides...}}. Relative
    file names are taken from the jobs file's folder. Every line is checked before any
    job starts. A failed job is recorded and the batch goes on; Ctrl-C keeps what
    finished, and --resume runs the rest. Exit codes: 0 every job answered, 1 some
    failed, 2 bad jobs file or configuration, 3 the total budget stopped the batch,
    4 the cluster cannot be used, 130 interrupted.
    """
    from fsrlm.batch.driver import BatchOptions, BatchRun
    from fsrlm.batch.progress import make_batch_progress
    from fsrlm.config import load_config

    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if executor:
        overrides["executor"] = {"type": executor}
    if workspace:
        overrides["workspace_dir"] = workspace
    config = load_config(config_path, overrides=overrides)
    options = BatchOptions(jobs=jobs, out=out, resume=resume, concurrency=concurrency, ray=ray_address,
                           max_total_usd=max_total_usd, max_attempts=max_attempts, shared_inputs=shared_inputs,
                           forward_env=list(forward_env), forward_credentials=not no_forward_credentials,
                           check_only=check_only)
    progress = None if check_only else make_batch_progress(quiet=quiet, as_json=as_json)
    summary_out = _private_stdout() if ray_address else sys.stdout
    run = BatchRun(options, config, environ=dict(os.environ), progress=progress)
    interrupted = False
    try:
        summary = asyncio.run(run.run())
    except KeyboardInterrupt:
        interrupted = True
        summary = run.summary
        if summary is None:
            raise
        summary.stopped = "interrupted"
    _print_summary(summary, as_json, summary_out)
    if interrupted:
        sys.exit(ExitCode.INTERRUPTED)
    if summary.stopped == "budget":
        sys.exit(ExitCode.LIMIT_REACHED)
    sys.exit(ExitCode.NO_ANSWER if summary.failed else ExitCode.SUCCESS)


def _private_stdout():
    """Keep stdout for the summary alone: Ray's driver prints notices (a node died...) on fd 1."""
    sys.stdout.flush()
    saved = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return saved


def _print_summary(summary, as_json: bool, stdout) -> None:
    if as_json:
        click.echo(json.dumps(summary.model_dump(mode="json")), file=stdout)
        return
    if summary.finished == 0 and summary.not_started == 0:
        click.echo(f"{summary.jobs} job(s) in the file, {summary.skipped} already in {summary.out}: nothing to run",
                   err=True)
        return
    nodes = ", ".join(f"{name} {count}" for name, count in sorted(summary.nodes.items()))
    click.echo(
        f"{summary.finished} job(s) finished ({summary.succeeded} answered, {summary.failed} failed, "
        f"{summary.retried} retried) in {summary.wall_seconds:.1f}s ({summary.jobs_per_minute:g}/min), "
        f"${summary.spent_usd:.4f}" + (f"; nodes: {nodes}" if nodes else "") + f"; results in {summary.out}",
        err=True,
    )
    if summary.not_started:
        why = {"budget": "the total budget (--max-total-usd) is spent",
               "interrupted": "the batch was interrupted"}.get(summary.stopped or "", "the batch stopped")
        click.echo(f"{summary.not_started} job(s) not run: {why}; `fsrlm batch ... --resume` runs them", err=True)


@click.command()
@click.option("-e", "--executor", type=click.Choice(EXECUTOR_TYPES), help="Executor whose limits count (default: config).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default ./fsrlm.toml).")
@click.option("--ray-resources", is_flag=True, help="Print the JSON for `ray start --resources`.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def capacity(executor: str | None, config_path: str | None, ray_resources: bool, as_json: bool) -> None:
    """How many sandboxes this machine can hold at once (from its memory, CPUs and the executor's limits).

    On each Ray node: ray start ... --resources "$(fsrlm capacity --ray-resources)"
    """
    from fsrlm.batch.capacity import machine_capacity
    from fsrlm.batch.ray_backend import RESOURCE
    from fsrlm.config import load_config

    config = load_config(config_path, overrides={"executor": {"type": executor}} if executor else {})
    figures = machine_capacity(config.executor)
    if ray_resources:
        click.echo(json.dumps({RESOURCE: figures.sandboxes}))
    elif as_json:
        click.echo(figures.model_dump_json())
    else:
        click.echo(f"{figures.sandboxes} sandbox(es): {figures.reason}")
