"""The jobs file of ``fsrlm batch``: one JSON object a line, read as a stream.

A line is one job::

    {"id": "doc-17", "input": "docs/17.log", "question": "Which service failed first?"}
    {"id": "doc-18", "text": "...inline input...", "question": "...", "system": "...",
     "attachments": {"schema.sql": "schema.sql"}, "config": {"max_turns": 20}}

Exactly one of ``input`` (a file; relative paths are taken from the jobs file's
folder), ``text`` (inline) or ``messages`` (Anthropic messages). ``config``
holds per-job overrides of the batch's configuration (any ``RLMConfig`` field).

The file is read twice and never held whole: ``validate_jobs`` checks every
line first (so a malformed line, a duplicate id or a missing file stops the
batch before any job starts, with its line number), then ``iter_jobs`` yields
the jobs one by one as the runner asks for them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fsrlm.config import RLMConfig, build_config, merge_settings
from fsrlm.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

MAX_PROBLEMS = 20  # problems listed before validation stops counting
MAX_LINE_BYTES = 256 * 1024 * 1024  # a line longer than this is refused (inline text belongs in a file then)


class Job(BaseModel):
    """One line of the jobs file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    input: Path | None = Field(default=None, description="input file (relative: to the jobs file's folder)")
    text: str | None = Field(default=None, description="inline input")
    messages: list[dict[str, Any]] | None = None
    question: str | None = None
    system: str | None = None
    attachments: dict[str, Path] = Field(default_factory=dict, description="name -> file")
    config: dict[str, Any] = Field(default_factory=dict, description="overrides of the batch configuration")
    line: int = Field(default=0, exclude=True)  # where it came from, for messages

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        if any(c in value for c in "\n\r\t\0") or value != value.strip():
            raise ValueError("an id has no surrounding spaces, tabs, newlines or NUL characters")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> Job:
        given = [name for name in ("input", "text", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of input (a file), text (inline) or messages"
                             + (f"; got {', '.join(given)}" if given else ""))
        return self

    def resolved(self, base: Path) -> Job:
        """Relative file names taken from ``base`` (the jobs file's folder)."""
        update: dict[str, Any] = {}
        if self.input is not None:
            update["input"] = _absolute(self.input, base)
        if self.attachments:
            update["attachments"] = {name: _absolute(p, base) for name, p in self.attachments.items()}
        return self.model_copy(update=update) if update else self

    def files(self) -> list[tuple[str, Path]]:
        """(what, path) of every file the job reads."""
        out = [("input", self.input)] if self.input is not None else []
        return out + [(f"attachment {name!r}", p) for name, p in self.attachments.items()]


def _absolute(path: Path, base: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else base / path


class JobsFileError(InputError):
    """The jobs file has bad lines; nothing was started."""


def _parse(raw: bytes, number: int, base: Path) -> Job:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a job is a JSON object, not {type(data).__name__}")
    try:
        job = Job.model_validate({**data, "line": number})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "job"
        message = "unknown key (valid: id, input, text, messages, question, system, attachments, config)" \
            if first["type"] == "extra_forbidden" else first["msg"]
        raise ValueError(f"{where}: {message}") from None
    return job.resolved(base)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line, read in blocks."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise InputError(f"cannot read the jobs file {path}: {e.strerror}") from None
    with f:
        for number, raw in enumerate(f, start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise JobsFileError(f"{path}:{number}: line longer than {MAX_LINE_BYTES >> 20} MiB; put the "
                                    "input in a file and name it with \"input\"")
            if raw.strip():
                yield number, raw


def iter_jobs(path: Path, *, skip: Container[str] = ()) -> Iterator[Job]:
    """Yield the jobs of ``path`` in order, one at a time (run ``validate_jobs`` first)."""
    base = path.resolve().parent
    for number, raw in _lines(path):
        try:
            job = _parse(raw, number, base)
        except ValueError as e:  # the file changed since it was validated
            raise JobsFileError(f"{path}:{number}: {e}") from None
        if job.id not in skip:
            yield job


class JobsSummary(BaseModel):
    total: int  # jobs in the file
    to_run: int  # not already in the results file


class _ConfigCheck:
    """Validates per-job overrides over the batch configuration, remembering recent answers."""

    def __init__(self, base: RLMConfig, *, need_budget: bool, size: int = 256) -> None:
        self.base = base.model_dump()
        self.need_budget = need_budget
        self.seen: OrderedDict[str, str | None] = OrderedDict()
        self.size = size
        self.base_problem = self._budget_problem(base)

    def _budget_problem(self, config: RLMConfig) -> str | None:
        if self.need_budget and config.max_budget_usd is None:
            return ("max_budget_usd is none, but --max-total-usd needs a dollar cap on every job "
                    "(set max_budget_usd, or drop --max-total-usd)")
        return None

    def problem(self, overrides: dict[str, Any]) -> str | None:
        if not overrides:
            return self.base_problem
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key not in self.seen:
            try:
                self.seen[key] = self._budget_problem(build_config(merge_settings(self.base, overrides)))
            except ConfigError as e:
                self.seen[key] = " ".join(str(e).split())
            if len(self.seen) > self.size:
                self.seen.popitem(last=False)
        return self.seen[key]


def job_config(base: RLMConfig, job: Job) -> RLMConfig:
    """The configuration ``job`` runs with: the batch's, with the job's overrides laid over it."""
    if not job.config:
        return base
    return build_config(merge_settings(base.model_dump(), job.config))


def _digest(job_id: str) -> bytes:
    return hashlib.blake2b(job_id.encode(), digest_size=16).digest()


def validate_jobs(path: Path, base: RLMConfig, *, finished: Container[str] = (),
                  need_budget: bool = False) -> JobsSummary:
    """Check every line of ``path`` before anything runs; raise ``JobsFileError`` listing the problems.

    Checks: valid JSON objects with the known keys, exactly one input, unique ids,
    readable input and attachment files, and per-job ``config`` overrides that make
    a valid configuration (with a dollar cap when ``need_budget``). Memory: 16 bytes per job id, whatever the size of the lines.
    """
    problems: list[str] = []
    ids: dict[bytes, int] = {}
    config_check = _ConfigCheck(base, need_budget=need_budget)
    base_dir = path.resolve().parent
    total = to_run = 0
    extra = 0
    for number, raw in _lines(path):
        try:
            job = _parse(raw, number, base_dir)
        except ValueError as e:
            problem = str(e)
        else:
            problem = _job_problem(job, ids, config_check)
            total += 1
            to_run += job.id not in finished
        if problem:
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"  line {number}: {problem}")
            else:
                extra += 1
    if problems:
        more = f"\n  ... and {extra} more" if extra else ""
        raise JobsFileError(f"{path}: {len(problems) + extra} bad line(s); nothing was started. Fix them and "
                            f"run again:\n" + "\n".join(problems) + more)
    if total == 0:
        raise JobsFileError(f"{path} holds no jobs (one JSON object a line: "
                            '{"id": ..., "input": FILE or "text": ..., "question": ...})')
    return JobsSummary(total=total, to_run=to_run)


def _job_problem(job: Job, ids: dict[bytes, int], config_check: _ConfigCheck) -> str | None:
    key = _digest(job.id)
    if key in ids:
        return f"duplicate id {job.id!r} (first on line {ids[key]}); ids must be unique"
    ids[key] = job.line
    for what, file in job.files():
        if not file.is_file():
            state = "is not a file" if file.exists() else "does not exist"
            return f"{what} {file} {state}"
        if not os.access(file, os.R_OK):
            return f"{what} {file} cannot be read (permissions)"
    problem = config_check.problem(job.config)
    if problem:
        return f"config: {problem}" if job.config else problem
    return None
