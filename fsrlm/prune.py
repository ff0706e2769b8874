"""Kept run folders: where they are, how big and how old, and removing old ones (``fsrlm gc --runs``).

Every kept run folder holds a full copy of its input, so they add up. A run is
found three ways: the host-side record the orchestrator keeps for each run
(``cache_dir/runs/<run id>.json``, written only by the host, so it says truly
where the folder is), the folders of a ``workspace_dir`` parent, and the temp
folders of runs without one (``<tmp>/fsrlm-<run id>-*/<run id>``). Only folders that
hold ``state/job.json`` count, none reached through a link, and only this
user's. A run that has not ended (its record has no stop reason) is never
removed while it showed activity within ``timeout_seconds``: it may still run.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from fsrlm.errors import ConfigError
from fsrlm.runstate import RunState
from fsrlm.workspace import Workspace, nested_folder

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TEMP_PREFIX = "fsrlm-"  # workspace.Workspace.create: a private tempfile.mkdtemp(prefix=f"fsrlm-{run_id}-") parent


def parse_age(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``; ConfigError otherwise."""
    match = _AGE.match(text)
    if not match:
        raise ConfigError(f"--older-than {text!r} is not an age; give e.g. 3600, 30m, 12h, 7d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


class KeptRun(BaseModel):
    run_id: str
    path: Path
    record: Path | None = None  # the host-side record, removed with the folder
    ended: bool = False  # the record says the run stopped (any way, Ctrl-C included)
    last_activity: float = 0.0  # newest modification time of the record and the run's logs
    size_bytes: int = 0


def _is_run_folder(path: Path) -> bool:
    try:
        st = path.lstat()
        job = (path / "state").lstat(), (path / "state" / "job.json").lstat()
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_ISDIR(job[0].st_mode)
            and stat.S_ISREG(job[1].st_mode))


def _own_folder(path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def _newest_mtime(paths: list[Path]) -> float:
    newest = 0.0
    for p in paths:
        try:
            newest = max(newest, p.lstat().st_mtime)
        except OSError:
            continue
    return newest


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path``, links not followed."""
    total = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def _records(cache_dir: Path) -> dict[Path, tuple[Path, RunState]]:
    found: dict[Path, tuple[Path, RunState]] = {}
    for record in sorted((cache_dir / "runs").glob("*.json")):
        try:
            state = RunState.model_validate_json(record.read_text())
        except (OSError, ValidationError, ValueError):
            continue
        found[Path(os.path.abspath(state.workspace))] = (record, state)
    return found


def find_runs(cache_dir: Path, parents: list[Path]) -> list[KeptRun]:
    """Kept top-level run folders: from the host records, the given parents and the temp folder."""
    records = _records(cache_dir)
    candidates: set[Path] = {path for path in records if _is_run_folder(path)}
    for parent in parents:
        try:
            children = list(parent.expanduser().iterdir())
        except OSError:
            continue
        candidates.update(Path(os.path.abspath(c)) for c in children if _is_run_folder(c))
    for folder in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*"):  # a temp run: its private parent
        if _own_folder(folder):
            candidates.update(Path(os.path.abspath(c)) for c in folder.iterdir() if _is_run_folder(c))
    # Nested runs live beside their parent (``<run>.nested/``) and go with it.
    nested = {nested_folder(c) for c in candidates}
    top = {c for c in candidates if not any(n in c.parents for n in nested)}
    runs = []
    for path in sorted(top):
        record, state = records.get(path, (None, None))
        logs = [path / "state" / "events.jsonl", path / "state" / "subcalls.jsonl", path / "state" / "job.json"]
        runs.append(KeptRun(
            run_id=state.run_id if state else path.name, path=path, record=record,
            ended=bool(state and state.stop_reason), last_activity=_newest_mtime(logs + ([record] if record else [])),
            size_bytes=folder_size(path),
        ))
    return runs


def orphan_records(cache_dir: Path, older_than: float, now: float | None = None) -> list[Path]:
    """Host records, older than ``older_than``, of runs whose folder is gone (nothing left to resume)."""
    now = time.time() if now is None else now
    return [record for path, (record, _) in _records(cache_dir).items()
            if not path.exists() and now - _newest_mtime([record]) >= older_than]


def nested_records(cache_dir: Path, folder: Path) -> list[Path]:
    """Host records of runs whose folder lies inside ``folder`` (its nested runs)."""
    inside = (folder, nested_folder(folder))
    return [record for path, (record, _) in _records(cache_dir).items() if any(f in path.parents for f in inside)]


def remove_run(run: KeptRun, cache_dir: Path) -> None:
    """Remove the run folder (links inside are removed, never followed) and its host-side records."""
    records = nested_records(cache_dir, run.path) + ([run.record] if run.record else [])
    if run.path.is_symlink() or not _is_run_folder(run.path):  # changed since it was found
        return
    temp_parent = run.path.parent.name.startswith(TEMP_PREFIX) and run.path.parent.parent == Path(tempfile.gettempdir())
    Workspace(run.path, run.run_id, owned=temp_parent).remove()  # nested runs too; never through a link
    for record in records:
        record.unlink(missing_ok=True)


def select_old(runs: list[KeptRun], older_than: float, still_going_within: float,
               now: float | None = None) -> tuple[list[KeptRun], list[KeptRun]]:
    """(to remove, to keep): runs idle longer than ``older_than``, never one that may still be going."""
    now = time.time() if now is None else now
    remove, keep = [], []
    for run in runs:
        idle = now - run.last_activity
        going = not run.ended and idle < still_going_within
        (remove if idle >= older_than and not going else keep).append(run)
    return remove, keep
