"""What a run returns: ``RLMResult`` and its ``RunMetrics``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from fsrlm.broker.audit import CallRecord
from fsrlm.executors.base import SandboxInfo

StopReason = Literal[
    "completed",  # the agent finished and wrote output/answer.md
    "no_answer",  # the agent finished without writing an answer
    "max_turns",  # the agent ran out of turns
    "timeout",  # timeout_seconds expired; the sandbox was stopped
    "limit",  # a budget or call limit stopped the agent
    "upstream_error",  # the model API failed (e.g. rejected credentials)
    "sandbox_error",  # the executor failed
    "interrupted",  # Ctrl-C / cancellation
    "error",  # anything else; see errors
]


class RunMetrics(BaseModel):
    wall_seconds: float = 0.0
    turns: int = 0
    root_calls: int = 0
    root_input_tokens: int = 0
    root_output_tokens: int = 0
    root_cost_usd: float = 0.0
    subcalls: int = 0  # answered by the upstream
    subcalls_cached: int = 0
    subcalls_refused: int = 0
    subcalls_failed: int = 0
    subcall_input_tokens: int = 0
    subcall_output_tokens: int = 0
    subcall_cost_usd: float = 0.0
    nested_runs: int = 0
    scripts: int = 0
    total_cost_usd: float = 0.0  # this run and every run nested under it
    cache_hit_rate: float = 0.0

    @classmethod
    def from_records(cls, records: list[CallRecord], *, total_cost: float, **extra: Any) -> RunMetrics:
        m = cls(**extra)
        scripts: set[str] = set()
        for r in records:
            if r.kind == "root":
                m.root_calls += 1
                m.root_input_tokens += r.input_tokens
                m.root_output_tokens += r.output_tokens
                m.root_cost_usd += r.cost_usd
            elif r.kind == "rlm_query":
                m.nested_runs += r.status in ("ok", "error")
            else:
                scripts.add(r.script)
                if r.status == "ok":
                    m.subcalls += 1
                    m.subcall_input_tokens += r.input_tokens
                    m.subcall_output_tokens += r.output_tokens
                    m.subcall_cost_usd += r.cost_usd
                elif r.status == "cached":
                    m.subcalls_cached += 1
                elif r.status == "refused":
                    m.subcalls_refused += r.count  # a refusal summary stands for many (audit.py)
                else:
                    m.subcalls_failed += 1
        m.scripts = len(scripts)
        answered = m.subcalls + m.subcalls_cached
        m.cache_hit_rate = round(m.subcalls_cached / answered, 4) if answered else 0.0
        m.root_cost_usd = round(m.root_cost_usd, 6)
        m.subcall_cost_usd = round(m.subcall_cost_usd, 6)
        m.total_cost_usd = round(total_cost, 6)
        return m


class NestedRun(BaseModel):
    """A run started by ``rlm_query``; its folder is in ``<workspace_path>.nested/``."""

    run_id: str
    success: bool
    stop_reason: StopReason
    workspace_path: Path | None = None
    nested: list[NestedRun] = Field(default_factory=list)

    @classmethod
    def of(cls, result: RLMResult) -> NestedRun:
        return cls(run_id=result.run_id, success=result.success, stop_reason=result.stop_reason,
                   workspace_path=result.workspace_path, nested=result.nested)


class RLMResult(BaseModel):
    answer: str | None
    success: bool
    stop_reason: StopReason
    metrics: RunMetrics = Field(default_factory=RunMetrics)
    errors: list[str] = Field(default_factory=list)
    artifacts: list[dict[str, Any]] = Field(default_factory=list)
    workspace_path: Path | None = None
    run_id: str
    session_id: str | None = None
    sandbox: SandboxInfo | None = None  # which kernel the agent had: gVisor's or the host's (runc)
    nested: list[NestedRun] = Field(default_factory=list)  # runs started by rlm_query, in call order

    def forget_workspaces(self) -> None:
        """The run folder (and with it the nested ones) was removed: point to none of them."""
        self.workspace_path = None
        stack = list(self.nested)
        while stack:
            child = stack.pop()
            child.workspace_path = None
            stack.extend(child.nested)

    def summary(self) -> dict[str, Any]:
        """The stable ``--json`` shape of the command line."""
        return self.model_dump(mode="json", exclude={"artifacts"})
