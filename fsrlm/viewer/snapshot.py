"""What the viewer shows: one run's snapshot, and the runs of a folder.

Everything comes from the run folder, read without following links, and all of
it is untrusted (the agent could have edited any file, the logs included): it
is parsed leniently (a broken line is skipped), capped in size, and shown as
text by the page.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from fsrlm.broker.audit import AUDIT_LOG, CallRecord
from fsrlm.broker.cache import CachedResponse
from fsrlm.events import EVENTS_LOG, RLMEvent
from fsrlm.results import RunMetrics
from fsrlm.safe_fs import read_text_beneath
from fsrlm.workspace import nested_folder
from fsrlm.viewer.files import MAX_LOG_BYTES, LineTail, list_names

JOB = "state/job.json"
INPUT_PREVIEW_BYTES = 4096
MAX_ANSWER_BYTES = 1024 * 1024
MAX_SCRIPTS = 100
MAX_SCRIPT_BYTES = 256 * 1024
MAX_MIRROR_BYTES = 256 * 1024
MAX_SUBCALL_ANSWER_CHARS = 50_000
MAX_ARTIFACTS = 2000
MAX_RESULT_ANSWER_CHARS = 2000
_CACHE_KEY = re.compile(r"[0-9a-f]{64}")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

RunStatus = str  # a StopReason of the last `result` event, "unfinished" or "not started"


class TimelineEvent(RLMEvent):
    seq: int  # line number in state/events.jsonl: the cursor of /api/events?after=N


class SubcallView(CallRecord):
    seq: int  # line number in state/subcalls.jsonl
    answer: str | None = None  # from the cache mirror cache/llm/<cache_key>.json, when there


class ScriptView(BaseModel):
    path: str
    text: str


class InputView(BaseModel):
    question: str | None = None
    system: str | None = None
    size_bytes: int | None = None
    preview: str | None = None  # the first INPUT_PREVIEW_BYTES of input/prompt.md
    from_messages: bool = False


class RunListItem(BaseModel):
    name: str  # the folder's name, used in /run/<name>/
    run_id: str
    question: str | None = None
    status: RunStatus
    cost_usd: float
    started: float | None = None


class RunSnapshot(BaseModel):
    """The whole of ``GET /api/run``."""

    run_id: str
    workspace_path: str  # the run folder on this machine (paths under it are shown relative)
    status: RunStatus
    success: bool | None = None
    job: dict[str, Any] = Field(default_factory=dict)
    input: InputView
    events: list[TimelineEvent]
    event_count: int  # lines read from state/events.jsonl: open /api/events?after=<event_count>
    scripts: list[ScriptView]
    subcalls: list[SubcallView]  # subcalls and nested runs (root calls are in the totals)
    artifacts: list[dict[str, Any]]
    artifact_count: int
    answer: str | None = None
    totals: RunMetrics
    totals_source: Literal["result", "audit"]  # the run's own result, or computed from the audit log (live)
    errors: list[str] = Field(default_factory=list)
    nested: list[RunListItem] = Field(default_factory=list)  # runs started by rlm_query (<run>.nested/)
    sandbox: dict[str, Any] | None = None  # which kernel the agent had (SandboxInfo), from the result or job.json


# -- reading ---------------------------------------------------------------------------


def is_run(path: Path) -> bool:
    return read_text_beneath(path, JOB, 1 << 20) is not None


def read_job(root: Path) -> dict[str, Any]:
    try:
        job = json.loads(read_text_beneath(root, JOB, 1 << 20) or "{}")
    except ValueError:
        return {}
    return job if isinstance(job, dict) else {}


def timeline_event(seq: int, line: bytes) -> TimelineEvent | None:
    """One line of state/events.jsonl as the page gets it; None for a broken line."""
    try:
        event = TimelineEvent.model_validate({**json.loads(line), "seq": seq})
    except (ValueError, TypeError, ValidationError):
        return None
    if event.kind == "result" and event.data and isinstance(event.data.get("answer"), str):
        answer = event.data["answer"]  # shown in full in the answer panel
        if len(answer) > MAX_RESULT_ANSWER_CHARS:
            event.data = {**event.data, "answer": answer[:MAX_RESULT_ANSWER_CHARS] + " …"}
    return event


def read_timeline(root: Path) -> tuple[list[TimelineEvent], int]:
    tail = LineTail(root, EVENTS_LOG)
    events = [e for seq, line in tail.read() if (e := timeline_event(seq, line)) is not None]
    return events, tail.count


def read_records(root: Path) -> list[tuple[int, CallRecord]]:
    text = read_text_beneath(root, AUDIT_LOG, MAX_LOG_BYTES) or ""
    records = []
    for seq, line in enumerate(text.splitlines()):
        try:
            records.append((seq, CallRecord.model_validate_json(line)))
        except ValueError:
            continue
    return records


def mirrored_answer(root: Path, key: str | None) -> str | None:
    if not key or not _CACHE_KEY.fullmatch(key):
        return None
    raw = read_text_beneath(root, f"cache/llm/{key}.json", MAX_MIRROR_BYTES)
    if raw is None:
        return None
    try:
        text = CachedResponse.model_validate_json(raw).text
    except ValueError:
        return None
    return text if len(text) <= MAX_SUBCALL_ANSWER_CHARS else text[:MAX_SUBCALL_ANSWER_CHARS] + " …"


def final_result(events: list[TimelineEvent]) -> tuple[RunStatus, dict[str, Any] | None]:
    """The run's status, and the data of its `result` event when the last attempt has ended."""
    last_start = max((i for i, e in enumerate(events) if e.kind == "run_started"), default=-1)
    last_result = max((i for i, e in enumerate(events) if e.kind == "result"), default=-1)
    if last_result > last_start and (data := events[last_result].data):
        return str(data.get("stop_reason") or "unknown"), data
    return ("unfinished" if events else "not started"), None


def totals_of(events: list[TimelineEvent], records: list[CallRecord],
              result: dict[str, Any] | None) -> tuple[RunMetrics, Literal["result", "audit"]]:
    if result is not None:
        try:
            return RunMetrics.model_validate(result.get("metrics") or {}), "result"
        except ValidationError:
            pass
    metrics = RunMetrics.from_records(records, total_cost=sum(r.cost_usd for r in records))
    metrics.turns = metrics.root_calls  # one root call per assistant turn
    if events:
        metrics.wall_seconds = round(max(0.0, events[-1].ts - events[0].ts), 3)
    return metrics, "audit"


def read_scripts(root: Path) -> list[ScriptView]:
    scripts = []
    for name in list_names(root, "scratch/scripts", ".py", MAX_SCRIPTS):
        text = read_text_beneath(root, f"scratch/scripts/{name}", MAX_SCRIPT_BYTES)
        if text is not None:
            scripts.append(ScriptView(path=f"scratch/scripts/{name}", text=text))
    return scripts


def read_artifacts(root: Path) -> tuple[list[dict[str, Any]], int]:
    text = read_text_beneath(root, "state/artifacts.jsonl", MAX_LOG_BYTES) or ""
    items: list[dict[str, Any]] = []
    count = 0
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        count += 1
        if len(items) < MAX_ARTIFACTS:
            items.append(value if isinstance(value, dict) else {"value": value})
    return items, count


def read_input(root: Path, job: dict[str, Any]) -> InputView:
    size = job.get("input_bytes")
    return InputView(
        question=read_text_beneath(root, "input/question.md", 64 * 1024),
        system=read_text_beneath(root, "input/system.md", 64 * 1024),
        size_bytes=size if isinstance(size, int) else None,
        preview=read_text_beneath(root, "input/prompt.md", INPUT_PREVIEW_BYTES),
        from_messages=read_text_beneath(root, "input/messages.json", 0) is not None,
    )


def snapshot(root: Path) -> RunSnapshot:
    """Everything the page shows about the run in ``root``."""
    job = read_job(root)
    events, count = read_timeline(root)
    records = read_records(root)
    status, result = final_result(events)
    totals, source = totals_of(events, [r for _, r in records], result)
    subcalls = [
        SubcallView(**r.model_dump(), seq=seq, answer=mirrored_answer(root, r.cache_key))
        for seq, r in records if r.kind != "root"
    ]
    artifacts, artifact_count = read_artifacts(root)
    errors = result.get("errors") if result else None
    run_id = job.get("run_id")
    return RunSnapshot(
        run_id=run_id if isinstance(run_id, str) else root.name,
        workspace_path=str(root),
        status=status,
        success=bool(result.get("success")) if result else None,
        job=job,
        input=read_input(root, job),
        events=events,
        event_count=count,
        scripts=read_scripts(root),
        subcalls=subcalls,
        artifacts=artifacts,
        artifact_count=artifact_count,
        answer=read_text_beneath(root, "output/answer.md", MAX_ANSWER_BYTES),
        totals=totals,
        totals_source=source,
        errors=[str(e) for e in errors] if isinstance(errors, list) else [],
        nested=list_runs(nested_folder(root), oldest_first=True) if _real_dir(nested_folder(root)) else [],
        sandbox=_sandbox_of(result, job),
    )


def _sandbox_of(result: dict[str, Any] | None, job: dict[str, Any]) -> dict[str, Any] | None:
    """The run's ``SandboxInfo``: the result's (written by the host at the end), else job.json's (at the start)."""
    for source in (result or {}, job):
        value = source.get("sandbox")
        if isinstance(value, dict):
            return value
    return None


# -- a folder of runs ---------------------------------------------------------------------


def _real_dir(path: Path) -> bool:
    try:
        return os.path.isdir(path) and not os.path.islink(path)
    except OSError:
        return False


def nested_run_dir(run: Path, name: str) -> Path | None:
    """The run ``name`` nested in the run folder ``run`` (in ``<run>.nested/``, never through a link)."""
    folder = nested_folder(run)
    return run_dir(folder, name) if _real_dir(folder) else None


def run_dir(folder: Path, name: str) -> Path | None:
    """The run folder ``folder/name``, if ``name`` is a plain child folder (not a link) holding a run."""
    if not _RUN_NAME.fullmatch(name):
        return None
    path = folder / name
    try:
        if not os.path.isdir(path) or os.path.islink(path):
            return None
    except OSError:
        return None
    return path if is_run(path) else None


def list_runs(folder: Path, limit: int = 1000, *, oldest_first: bool = False) -> list[RunListItem]:
    """The runs directly inside ``folder``, newest first (or oldest first)."""
    try:
        with os.scandir(folder) as entries:
            names = sorted((e.name for e in entries if e.is_dir(follow_symlinks=False)), reverse=not oldest_first)
    except OSError:
        return []
    items = []
    for name in names:
        path = run_dir(folder, name)
        if path is None:
            continue
        job = read_job(path)
        events, _ = read_timeline(path)
        status, result = final_result(events)
        records = [r for _, r in read_records(path)]
        totals, _ = totals_of(events, records, result)
        question = read_text_beneath(path, "input/question.md", 400)
        run_id = job.get("run_id")
        started = job.get("written_at")
        items.append(RunListItem(
            name=name, run_id=run_id if isinstance(run_id, str) else name,
            question=question.strip()[:300] if question else None, status=status,
            cost_usd=totals.total_cost_usd,
            started=started if isinstance(started, int | float) else (events[0].ts if events else None),
        ))
        if len(items) >= limit:
            break
    return items
