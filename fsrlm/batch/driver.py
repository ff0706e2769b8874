"""``run_batch``: the jobs file in, the results file out, on this machine or a Ray cluster.

Order of work, so that nothing starts before everything was checked:

1. open the results file (refused if it holds results and ``resume`` is off; the
   ids it holds are skipped when it is on), and lock it;
2. check every line of the jobs file (streamed, line numbers in every message);
3. connect to the backend (an unreachable Ray address, or a cluster with no
   node advertising sandboxes, stops here);
4. fan the jobs out, appending each result as it arrives;
5. on Ray, sweep every node for leftovers of runs whose worker died.

Ctrl-C cancels the running jobs (each run's clean-up stops its sandbox), keeps
every result already written, and ``--resume`` runs the rest.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from fsrlm.batch.fleet import FleetOptions, open_fleet, total_budget
from fsrlm.batch.jobs import Job, iter_jobs, job_config, validate_jobs
from fsrlm.batch.results import JobResult, ResultsWriter
from fsrlm.batch.runner import FanOut, FanOutEvent, Outcome
from fsrlm.batch.task import JobPayload, close_shared, run_job, with_chunks
from fsrlm.config import RLMConfig

logger = logging.getLogger(__name__)


class BatchOptions(FleetOptions):
    jobs: Path
    out: Path
    resume: bool = False
    shared_inputs: bool = False  # on Ray: every node reads the job files itself (network storage)
    check_only: bool = False


class BatchSummary(BaseModel):
    jobs: int  # in the jobs file
    skipped: int  # already in the results file (--resume)
    finished: int = 0  # written by this batch
    succeeded: int = 0
    failed: int = 0
    not_started: int = 0  # left for --resume (budget reached, interrupted)
    retried: int = 0  # jobs whose node died once or more
    spent_usd: float = 0.0
    wall_seconds: float = 0.0
    jobs_per_minute: float = 0.0
    nodes: dict[str, int] = Field(default_factory=dict)  # finished jobs per node
    stopped: Literal["budget", "interrupted"] | None = None
    out: str
    backend: str  # "local" or the Ray address


class BatchProgressSink:
    """What the progress display is told (``fsrlm.batch.progress`` implements it)."""

    def start(self, total: int, slots: int) -> None: ...
    def event(self, event: FanOutEvent) -> None: ...
    def finished(self, result: JobResult) -> None: ...
    def stop(self) -> None: ...


def result_of_outcome(outcome: Outcome[JobPayload, JobResult]) -> JobResult:
    job = outcome.item.job
    names = [n.name for n in outcome.nodes]
    if outcome.result is not None:
        result = outcome.result
    else:
        result = JobResult(id=job.id, success=False, stop_reason="node_lost" if outcome.lost else "error",
                           errors=[outcome.error or "the job failed"], line=job.line,
                           started_at=outcome.started_at, finished_at=outcome.finished_at)
    return result.model_copy(update={"node": names[-1] if names else None, "nodes": names,
                                     "attempts": outcome.attempts})


class BatchRun:
    """One batch. ``summary`` is up to date at every moment, also after Ctrl-C ended ``run``."""

    def __init__(self, options: BatchOptions, config: RLMConfig, *, environ: dict[str, str],
                 progress: BatchProgressSink | None = None,
                 on_result: Callable[[JobResult], None] | None = None) -> None:
        self.options = options
        self.config = config
        self.environ = environ
        self.progress = progress or BatchProgressSink()
        self.on_result = on_result
        self.summary: BatchSummary | None = None

    async def run(self) -> BatchSummary:
        """Run every job of ``options.jobs`` not yet in ``options.out``; see the module docstring."""
        try:
            return await _run(self)
        except asyncio.CancelledError:
            if self.summary is not None:
                self.summary.stopped = "interrupted"
            raise


async def run_batch(options: BatchOptions, config: RLMConfig, **kwargs) -> BatchSummary:
    return await BatchRun(options, config, **kwargs).run()


async def _run(run: BatchRun) -> BatchSummary:
    options, config, progress, on_result = run.options, run.config, run.progress, run.on_result
    environ = run.environ
    started = time.monotonic()
    batch_id = secrets.token_hex(6)
    writer = ResultsWriter(options.out, resume=options.resume)
    writer.check()  # creates nothing: a batch refused for a bad line leaves no results file behind
    checked = validate_jobs(options.jobs, config, finished=writer.finished,
                            need_budget=options.max_total_usd is not None)
    summary = run.summary = BatchSummary(jobs=checked.total, skipped=checked.total - checked.to_run,
                                         out=str(options.out), backend=options.where)
    if options.check_only or checked.to_run == 0:
        return summary
    with writer:
        gate = total_budget(options)
        fan: FanOut | None = None
        nodes: Counter[str] = Counter()
        try:
            async with open_fleet(options, config, environ, batch_id=batch_id) as fleet:
                fan = fleet.fan_out(gate=gate, on_event=progress.event)

                def make(job: Job) -> JobPayload:
                    chunks = with_chunks(job) if fleet.on_ray and not options.shared_inputs else None
                    return JobPayload(job=job, config=job_config(fleet.config, job), batch_id=batch_id,
                                      on_ray=fleet.on_ray, image=fleet.image, chunks=chunks)

                payloads = (make(job) for job in iter_jobs(options.jobs, skip=writer.finished))
                progress.start(checked.to_run, fleet.backend.slots)
                try:
                    async for outcome in fan.run(payloads, run_job):
                        result = result_of_outcome(outcome)
                        if not writer.append(result):
                            continue
                        summary.finished += 1
                        summary.succeeded += result.success
                        summary.failed += not result.success
                        summary.retried += result.attempts > 1
                        summary.spent_usd += result.metrics.total_cost_usd
                        if result.node:
                            nodes[result.node] += 1
                        progress.finished(result)
                        if on_result:
                            on_result(result)
                except asyncio.CancelledError:
                    summary.stopped = "interrupted"
                    raise
                finally:
                    progress.stop()
                    await asyncio.to_thread(close_shared)
        finally:
            summary.nodes = dict(nodes)
            summary.not_started = checked.to_run - summary.finished
            if summary.stopped is None and fan is not None and fan.stopped == "gate":
                summary.stopped = "budget"
            summary.spent_usd = round(gate.spent_usd if gate else summary.spent_usd, 6)
            summary.wall_seconds = round(time.monotonic() - started, 3)
            minutes = summary.wall_seconds / 60
            summary.jobs_per_minute = round(summary.finished / minutes, 2) if minutes > 0 else 0.0
    return summary

