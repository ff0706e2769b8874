"""Where a benchmark's rows run: this machine, or a Ray cluster, with the options of ``fsrlm batch``.

:func:`add_fleet_arguments` gives ``fsrlm bench oolong``, ``compare`` and ``--paper`` the
flags of ``fsrlm batch`` (``--ray``, ``--max-total-usd``, ``--max-attempts``,
``--forward-env``, ``--no-forward-credentials``; ``--concurrency`` is a row option already);
:func:`fleet_options` checks them into ``fsrlm.batch.fleet.FleetOptions``, the options
``fsrlm batch`` runs on, so an unreachable address, a missing Ray or a cluster that advertises
no sandboxes is refused with ``fsrlm batch``'s messages before any row starts.
:func:`sweep` opens one fleet for a command's parts (one results file each; ``--paper`` has
four), runs them one after the other through :func:`benchmarks.harness.run_rows` under one
total budget, and on Ray sweeps the nodes at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO

from pydantic import ValidationError

from fsrlm.batch.fleet import FleetOptions, open_fleet, total_budget
from fsrlm.benchmarks.harness import ResultsFile, attempt_cost, run_rows
from fsrlm.benchmarks.oolong_data import OolongRow
from fsrlm.benchmarks.row_task import RowSolver
from fsrlm.broker.upstreams import check_credentials
from fsrlm.cli.exit_codes import ExitCode
from fsrlm.config import RLMConfig
from fsrlm.errors import InputError
from fsrlm.executors.registry import create_executor

__all__ = ["Part", "SweepSummary", "add_fleet_arguments", "fleet_options", "preflight", "sweep", "where"]

logger = logging.getLogger(__name__)


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fsrlm batch`` that say where rows run and what bounds the whole sweep."""
    group = parser.add_argument_group("where the rows run (as for fsrlm batch)")
    group.add_argument("--ray", metavar="auto|ADDRESS",
                       help="run each row as a Ray task on a cluster: auto (the cluster this machine belongs "
                            "to) or the head's host:port (default: this machine, --concurrency at a time)")
    group.add_argument("--max-total-usd", type=float, metavar="USD",
                       help="dollar cap for the whole sweep (each row also keeps its own max_budget_usd); "
                            "rows that do not fit are not run: --resume runs them")
    group.add_argument("--max-attempts", type=int, default=3,
                       help="attempts per row when its node dies (Ray; default 3)")
    group.add_argument("--forward-env", action="append", default=[], metavar="NAME",
                       help="Ray: pass this variable of the driver's environment to the workers (repeatable)")
    group.add_argument("--no-forward-credentials", action="store_true",
                       help="Ray: do not pass the upstream's credentials; the nodes have their own "
                            "(e.g. an instance role)")


def fleet_options(args: argparse.Namespace) -> FleetOptions:
    """The fleet the options ask for; a value out of range is one message naming the flag."""
    try:
        return FleetOptions(concurrency=args.concurrency, ray=args.ray, max_total_usd=args.max_total_usd,
                            max_attempts=args.max_attempts, forward_env=args.forward_env,
                            forward_credentials=not args.no_forward_credentials)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        message = first["msg"]
        raise InputError(f"{flag}: {message[:1].lower()}{message[1:]}") from None


def where(options: FleetOptions) -> str:
    """Where the rows run, for the line a command prints before it starts."""
    if options.ray is None:
        return f"{options.concurrency} at a time"
    return f"as Ray tasks on the cluster at {options.ray}"


@dataclass
class Part:
    """One results file's rows and what answers them (``--paper`` has four parts)."""

    rows: Sequence[OolongRow]
    solve: RowSolver
    results: ResultsFile
    row_timeout: float | None
    title: str | None = None  # printed before the part runs


@dataclass
class SweepSummary:
    finished: int = 0  # rows recorded by this sweep
    not_started: int = 0  # left for --resume
    retried: int = 0  # rows whose node died once or more
    nodes: Counter[str] = field(default_factory=Counter)
    stopped: Literal["budget"] | None = None
    wall_seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """3 when the total budget stopped the sweep (as ``fsrlm batch``), else 0 whatever the scores."""
        return int(ExitCode.LIMIT_REACHED) if self.stopped == "budget" else 0


async def preflight(config: RLMConfig, options: FleetOptions, *, sandboxes: bool) -> None:
    """Fail once, before any row runs, on what would fail every row.

    On Ray the driver checks only the credentials it forwards: each node's executor (and,
    with ``--no-forward-credentials``, its credentials) are the node's own.
    """
    on_ray = options.ray is not None
    if not on_ray or options.forward_credentials:
        check_credentials(config.upstream)
    if sandboxes and not on_ray:
        await create_executor(config.executor).check()


def _check_budget(parts: Sequence[Part], options: FleetOptions) -> None:
    if options.max_total_usd is not None and any(part.solve.budget is None for part in parts if part.rows):
        raise InputError("max_budget_usd is none, but --max-total-usd needs a dollar cap on every row "
                         "(set max_budget_usd, or drop --max-total-usd)")


async def sweep(parts: Sequence[Part], options: FleetOptions, config: RLMConfig, *, environ: dict[str, str],
                log: TextIO) -> SweepSummary:
    """Run every part's rows on one fleet, one part after the other; see the module docstring."""
    sandboxes = any(part.solve.sandboxes for part in parts if part.rows)
    _check_budget(parts, options)
    await preflight(config, options, sandboxes=sandboxes)
    gate = total_budget(options, cost_of=attempt_cost)
    summary = SweepSummary()
    started = time.monotonic()
    if options.ray is not None:
        from fsrlm.batch.ray_backend import notices_to_stderr

        quiet_stdout: contextlib.AbstractContextManager[None] = notices_to_stderr()
    else:
        quiet_stdout = contextlib.nullcontext()
    with quiet_stdout:
        async with open_fleet(options, config, environ, sandboxes=sandboxes) as fleet:
            if fleet.on_ray:
                print(f"connected to the Ray cluster at {options.ray}: {fleet.backend.slots} sandbox slot(s)",
                      file=log, flush=True)
            for part in parts:
                if summary.stopped is not None:
                    summary.not_started += len(part.rows)
                    continue
                if part.title:
                    print(part.title, file=log, flush=True)
                try:
                    run = await run_rows(part.rows, part.solve, fleet=fleet, results=part.results,
                                         row_timeout=part.row_timeout, gate=gate, progress=log)
                finally:
                    await asyncio.to_thread(part.solve.close)
                summary.finished += len(run.results)
                summary.not_started += run.not_started
                summary.retried += run.retried
                summary.nodes.update(run.nodes)
                summary.stopped = summary.stopped or run.stopped
    summary.wall_seconds = round(time.monotonic() - started, 3)
    if options.ray is not None and summary.finished:
        nodes = ", ".join(f"{name} {count}" for name, count in sorted(summary.nodes.items()))
        print(f"{summary.finished} row(s) in {summary.wall_seconds:.1f}s on the cluster ({summary.retried} retried); "
              f"nodes: {nodes}", file=log)
    if summary.stopped == "budget":
        print(f"{summary.not_started} row(s) not run: the total budget (--max-total-usd {options.max_total_usd:g}) "
              "is spent; rerun with --resume (and a larger --max-total-usd) to run them", file=log)
    return summary
