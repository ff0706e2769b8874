"""One job of ``fsrlm batch``: an ordinary fsRLM run, where the backend put it.

``run_job`` is the per-job callable handed to ``runner.FanOut``. On a Ray node
it first makes the node ready (``node.prepare_node``: the sandbox image, no
leftovers of dead runs); then it runs ``RLM(config).ainvoke`` with the node's
own broker and executor, and turns whatever happened into a ``JobResult``.

Inputs: locally, and on Ray with ``shared_inputs`` (every node sees the same
files, e.g. network storage), the job's files are read where the job runs.
Otherwise the driver puts each file into Ray's object store in 4 MiB chunks
when the job is about to be submitted, and the node writes them back to a
temporary file before the run; the driver never holds a whole input in memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fsrlm.batch.jobs import Job
from fsrlm.batch.node import JOB_DIR_PREFIX, ImageOffer, prepare_node
from fsrlm.batch.results import JobResult
from fsrlm.config import RLMConfig
from fsrlm.errors import FsrlmError
from fsrlm.results import RLMResult

logger = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024


class JobPayload(BaseModel):
    """What a job's attempt needs, wherever it runs (pickled into the Ray task's arguments)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    job: Job
    config: RLMConfig  # on Ray: with no credentials in it (they travel in the runtime environment)
    batch_id: str
    on_ray: bool = False
    image: ImageOffer | None = None
    # "input" / "attachment:<name>" -> object refs of the file's chunks; None: read the paths where the job runs.
    chunks: dict[str, list[Any]] | None = None

    @property
    def budget(self) -> float | None:
        return self.config.max_budget_usd


def put_chunks(path: Path) -> list[Any]:
    """Copy ``path`` into Ray's object store, 4 MiB at a time."""
    import ray

    refs = []
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            refs.append(ray.put(block))
    return refs


def put_data(data: bytes) -> list[Any]:
    """Copy ``data`` (an input already in memory) into Ray's object store, 4 MiB at a time."""
    import ray

    return [ray.put(data[start:start + CHUNK]) for start in range(0, len(data), CHUNK)]


def read_chunks(refs: list[Any]) -> bytes:
    """The data of ``put_chunks`` or ``put_data``, on the node that runs the job."""
    import ray

    return b"".join(ray.get(ref) for ref in refs)


def with_chunks(job: Job) -> dict[str, list[Any]]:
    chunks: dict[str, list[Any]] = {}
    if job.input is not None:
        chunks["input"] = put_chunks(job.input)
    for name, path in job.attachments.items():
        chunks[f"attachment:{name}"] = put_chunks(path)
    return chunks


def _write_chunks(refs: list[Any], path: Path) -> Path:
    import ray

    with path.open("wb") as f:
        for ref in refs:
            f.write(ray.get(ref))
    return path


def _materialize(payload: JobPayload, folder: Path | None) -> tuple[Any, dict[str, Any]]:
    """The prompt and attachments to hand to ``ainvoke``: paths, inline text, or files written from chunks."""
    job = payload.job
    if payload.chunks is None or folder is None:
        prompt: Any = job.input
        attachments: dict[str, Any] = dict(job.attachments)
    else:
        prompt = _write_chunks(payload.chunks["input"], folder / "input") if job.input is not None else None
        attachments = {name: _write_chunks(payload.chunks[f"attachment:{name}"], folder / f"attachment-{i}")
                       for i, name in enumerate(job.attachments)}
    if job.text is not None:
        prompt = job.text
    return prompt, attachments


# The jobs a process runs share one RLM object per configuration: with ``executor.warm`` they then
# share its warm pool (each sandbox still serves one job). Closed by ``close_shared`` at the batch's end.
_SHARED: dict[str, Any] = {}


def _rlm_for(config: RLMConfig) -> Any:
    from fsrlm.rlm import RLM

    if not getattr(config.executor, "warm", 0):
        return RLM(config)
    key = config.model_dump_json()
    if key not in _SHARED:
        _SHARED[key] = RLM(config)
    return _SHARED[key]


def close_shared() -> None:
    """Remove the warm sandboxes no job took (a no-op without ``executor.warm``)."""
    while _SHARED:
        _SHARED.popitem()[1].close()


async def run_job(payload: JobPayload) -> JobResult:
    """Run one job; every failure becomes a result (stop_reason and errors), never an exception."""
    job = payload.job
    started = time.time()
    try:
        config = payload.config
        if payload.on_ray:
            config = await prepare_node(config, payload.image, payload.batch_id)
        # Named by this process: a sweep removes the folder of a worker killed mid-job (node.sweep).
        folder = Path(tempfile.mkdtemp(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-")) if payload.chunks else None
        try:
            prompt, attachments = await asyncio.to_thread(_materialize, payload, folder)
            result = await _rlm_for(config).ainvoke(prompt, messages=job.messages, system=job.system,
                                               question=job.question, attachments=attachments or None)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
    except FsrlmError as e:
        return JobResult(id=job.id, success=False, stop_reason="error", errors=[str(e)], line=job.line,
                         started_at=started, finished_at=time.time())
    return result_of(job, result, started)


def result_of(job: Job, result: RLMResult, started: float) -> JobResult:
    return JobResult(
        id=job.id, success=result.success, stop_reason=result.stop_reason, answer=result.answer,
        errors=result.errors, metrics=result.metrics, run_id=result.run_id,
        workspace_path=str(result.workspace_path) if result.workspace_path else None,
        line=job.line, started_at=started, finished_at=time.time(),
    )


def payloads(jobs: Iterator[Job], make: Any) -> Iterator[JobPayload]:
    """``make(job)`` for each job, lazily (the runner pulls one as a slot frees up)."""
    for job in jobs:
        yield make(job)
