"""The results file of ``fsrlm batch``: one JSON line per finished job, appended as jobs finish.

The file is only ever appended to: an existing file is refused unless the
batch resumes it (``--resume``), and then the ids already in it are skipped.
Each line is written whole with one ``write`` on a file opened for appending
and flushed to disk, and the writer refuses a second line for an id, so a job's
result is there exactly once. A line cut short by a crash (no newline at the
end) is ignored when resuming, and the job runs again.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from fsrlm.errors import InputError
from fsrlm.results import RunMetrics

logger = logging.getLogger(__name__)

# What stopped a job: a run's own stop reason (see fsrlm.results.StopReason), or
# "node_lost" when every attempt's node died, or "error" when no run could start (bad input at run time).
JobStop = Literal["completed", "no_answer", "max_turns", "timeout", "limit", "upstream_error", "sandbox_error",
                  "interrupted", "error", "node_lost"]


class NodeInfo(BaseModel):
    """Where an attempt ran: this machine (``local``) or a Ray node."""

    name: str  # "local", or the node's IP address as Ray knows it
    node_id: str | None = None  # Ray's node id
    hostname: str | None = None
    pid: int | None = None


class JobResult(BaseModel):
    """One line of the results file."""

    id: str
    success: bool
    stop_reason: JobStop
    answer: str | None = None
    errors: list[str] = Field(default_factory=list)
    metrics: RunMetrics = Field(default_factory=RunMetrics)
    node: str | None = None  # where the final attempt ran (NodeInfo.name)
    nodes: list[str] = Field(default_factory=list)  # every attempt, in order (a node that died included)
    attempts: int = 1
    run_id: str | None = None
    workspace_path: str | None = None  # the run folder, on that node (kept for failed runs)
    line: int | None = None  # of the jobs file
    started_at: float | None = None  # unix time
    finished_at: float | None = None


def read_finished(path: Path) -> tuple[set[str], int]:
    """Ids already in the results file, and how many lines were unusable (cut short or not a result)."""
    finished: set[str] = set()
    bad = 0
    for record in _records(path):
        if record is None:
            bad += 1
        else:
            finished.add(record.id)
    return finished, bad


def _records(path: Path) -> Iterator[JobResult | None]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as e:
        raise InputError(f"cannot read the results file {path}: {e.strerror}") from None
    with f:
        for raw in f:
            if not raw.strip():
                continue
            if not raw.endswith(b"\n"):  # the last line, cut short by a crash
                yield None
                continue
            try:
                yield JobResult.model_validate_json(raw)
            except ValidationError:
                yield None


def iter_results(path: Path) -> Iterator[JobResult]:
    """The results in ``path`` (unusable lines skipped)."""
    for record in _records(path):
        if record is not None:
            yield record


class ResultsWriter:
    """Appends results to ``path``; holds an exclusive lock on it while open.

    Raises ``InputError`` when the file exists and is not empty and ``resume`` is
    false (it is never truncated), and when another batch holds it.
    """

    def __init__(self, path: Path, *, resume: bool, durable: bool = True) -> None:
        self.path = path
        self.resume = resume
        self.durable = durable  # fsync after each line (a job takes seconds; a crash loses no result)
        self.written: set[str] = set()
        self.finished: set[str] = set()
        self.unusable = 0
        self._fd: int | None = None

    def __enter__(self) -> ResultsWriter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self) -> bool:
        """Refuse a results file that may not be written; read the ids it holds. Creates nothing."""
        if self.path.is_dir():
            raise InputError(f"--out {self.path} is a folder; name a file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not self.resume:
            raise InputError(f"{self.path} already holds results and is never overwritten; pass --resume to "
                             "continue that batch (finished ids are skipped), or choose another --out")
        if exists:
            self.finished, self.unusable = read_finished(self.path)
        return exists

    def open(self) -> None:
        """Check, create if needed, and lock the file for appending."""
        exists = self.check()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise InputError(f"cannot open the results file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"another fsrlm batch is writing {self.path}; wait for it or choose another --out") \
                from None
        self._fd = fd
        if exists:
            self.finished, self.unusable = read_finished(self.path)  # again, now that the file is ours
            if self.unusable:
                logger.warning("%s: %d unusable line(s) (cut short by a crash?); those jobs run again",
                               self.path, self.unusable)
            if not _ends_with_newline(self.path):
                os.write(fd, b"\n")  # close the line a crash cut short; the next record starts clean

    def append(self, result: JobResult) -> bool:
        """Write ``result``; False (and nothing written) when its id already has a line."""
        if self._fd is None:
            raise RuntimeError("ResultsWriter is not open")
        if result.id in self.written or result.id in self.finished:
            logger.warning("job %s already has a result in %s; not writing a second one", result.id, self.path)
            return False
        line = (result.model_dump_json() + "\n").encode()
        view = memoryview(line)
        while view:  # one write for a line under the pipe size; the loop covers a short write
            n = os.write(self._fd, view)
            view = view[n:]
        if self.durable:
            os.fsync(self._fd)
        self.written.add(result.id)
        return True

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # drops the lock


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"

