"""Kept run folders: where they are, how big and how old, and removing old ones (``fsrlm gc --runs``).

Every kept run folder holds a full copy of its input, so they add up. A run is
found three ways: the host-side record the orchestrator keeps for each run
(``cache_dir/runs/<run id>.json``, written only by the host, so it says truly
where the folder is), the folders of a ``workspace_dir`` parent, and the temp
folders of runs without one (``<tmp>/fsrlm-<run id>-*``). Only folders that
hold ``state/job.json`` count, none reached through a link, and only this
user's. A run that has not ended (its record has no stop reason) is never
removed while it showed activity within ``timeout_seconds``: it may still run.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from fsrlm.errors import ConfigError
from fsrlm.runstate import RunState

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TEMP_PREFIX = "fsrlm-"  # workspace.Workspace.create: tempfile.mkdtemp(prefix=f"fsrlm-{run_id}-")


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
    temp = Path(tempfile.gettempdir())
    candidates.update(Path(os.path.abspath(c)) for c in temp.glob(TEMP_PREFIX + "*") if _is_run_folder(c))
    # Nested runs live inside their parent's folder and go with it.
    top = {c for c in candidates if not any(other != c and other in c.parents for other in candidates)}
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
    return [record for path, (record, _) in _records(cache_dir).items() if folder in path.parents]


def _make_writable_and_retry(func, path, exc) -> None:
    # The agent may have left read-only folders behind (chmod 500): make the parent writable, try again.
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        os.chmod(os.path.dirname(path), 0o700)
        func(path)
    else:
        raise exc


def _rmtree(path: Path) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_make_writable_and_retry)
    else:
        shutil.rmtree(path, onerror=lambda func, p, info: _make_writable_and_retry(func, p, info[1]))


def remove_run(run: KeptRun, cache_dir: Path) -> None:
    """Remove the run folder (links inside are removed, never followed) and its host-side records."""
    records = nested_records(cache_dir, run.path) + ([run.record] if run.record else [])
    if run.path.is_symlink() or not _is_run_folder(run.path):  # changed since it was found
        return
    _rmtree(run.path)
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
