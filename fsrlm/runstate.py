"""The host-side record of a run, kept outside the workspace, for ``fsrlm resume``.

The workspace is writable by the agent, so nothing in it can be trusted to say
how much a run already spent. The orchestrator keeps its own record under the
cache directory (``runs/<run_id>.json``), rewritten atomically after every
model call, so even a SIGKILL loses at most the call in flight.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fsrlm.broker.limits import RunLedger, SharedLedger
from fsrlm.errors import WorkspaceError
from fsrlm.executors.base import SandboxInfo


class RunState(BaseModel):
    """What the host knows of a run; the agent can read none of it and write none of it."""

    run_id: str
    workspace: Path
    session_id: str | None = None
    config: dict[str, Any] | None = None  # the run's settings (RLMConfig, without secrets): resume keeps them
    system: str | None = None  # the user's system prompt (the workspace copy is the agent's to change)
    result: dict[str, Any] | None = None  # the finished run's result (RLMResult, without artifacts)
    depth: int = 0
    subcalls: int = 0
    spent_usd: float = 0.0
    root_usd: float = 0.0
    subcall_usd: float = 0.0
    per_script: dict[str, int] = {}
    finished: bool = False
    stop_reason: str | None = None
    sandbox: SandboxInfo | None = None  # which kernel the agent had (the runtime the executor chose)

    @classmethod
    def of(cls, ledger: RunLedger, *, run_id: str, workspace: Path, session_id: str | None,
           **fields: Any) -> RunState:
        s = ledger.shared
        return cls(run_id=run_id, workspace=workspace, session_id=session_id, depth=ledger.depth,
                   subcalls=s.subcalls, spent_usd=s.spent_usd, root_usd=s.root_usd, subcall_usd=s.subcall_usd,
                   per_script=dict(ledger.per_script), **fields)

    def restore(self, ledger: RunLedger) -> None:
        """Make ``ledger`` count what this run already spent."""
        ledger.shared.subcalls = self.subcalls
        ledger.shared.spent_usd = self.spent_usd
        ledger.shared.root_usd = self.root_usd
        ledger.shared.subcall_usd = self.subcall_usd
        ledger.per_script.update(self.per_script)

    def shared_ledger(self) -> SharedLedger:
        return SharedLedger(subcalls=self.subcalls, spent_usd=self.spent_usd, root_usd=self.root_usd,
                            subcall_usd=self.subcall_usd)


class RunStateStore:
    def __init__(self, cache_dir: Path, *, sandbox: SandboxInfo | None = None) -> None:
        self.directory = cache_dir / "runs"
        self.sandbox = sandbox  # stamped on every record this store saves

    def path(self, run_id: str) -> Path:
        return self.directory / f"{run_id}.json"

    def save(self, state: RunState) -> None:
        tmp = None
        if state.sandbox is None:
            state.sandbox = self.sandbox
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "w") as f:
                f.write(state.model_dump_json())
            os.replace(tmp, self.path(state.run_id))
        except OSError:
            # Losing the resume record must never fail the run itself; a disk-full write leaves no temp file.
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def load(self, run_id: str) -> RunState:
        try:
            return RunState.model_validate_json(self.path(run_id).read_text())
        except FileNotFoundError:
            raise WorkspaceError(
                f"no host-side record of run {run_id} under {self.directory}; it cannot be resumed "
                "(was it started with another cache_dir?)"
            ) from None
        except (OSError, ValidationError, json.JSONDecodeError) as e:
            raise WorkspaceError(f"the record of run {run_id} is unreadable: {e}") from None
