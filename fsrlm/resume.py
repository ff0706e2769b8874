"""Resuming a run: with its own settings, from the host's record, saying first what will happen.

Everything comes from the host-side record (``fsrlm/runstate.py``, under
``cache_dir/runs/``), never from the agent-writable run folder: the run's settings
(its budget, models, limits, executor), its system prompt, what it spent, and —
for a run that already completed — its result. ``plan_resume`` reads the record
and says what ``resume_rlm`` is about to do:

* ``show_result``: the run completed; its result is returned as it was, nothing runs
  and nothing is spent;
* ``continue``: the agent continues its saved session (calls already made come from
  the cache), counting what was already spent against the run's own limits.

Explicit ``overrides`` (``fsrlm resume --max-budget-usd 30``) change those settings;
nothing else does.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fsrlm.config import RLMConfig, build_config, merge_settings
from fsrlm.errors import WorkspaceError
from fsrlm.results import RLMResult
from fsrlm.runstate import RunState, RunStateStore
from fsrlm.workspace import Workspace

RESUME_MESSAGE = (
    "This run was interrupted and is now resumed. The workspace is as you left it; model calls you "
    "already made are answered from the cache for free. Continue where you stopped and write "
    "output/answer.md."
)


def saved_settings(config: RLMConfig) -> dict[str, Any]:
    """The run's settings as the record keeps them: everything but secrets."""
    return config.model_dump(mode="json", exclude={"upstream": {"api_key"}})


class ResumePlan(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    action: Literal["show_result", "continue"]
    workspace: Workspace
    state: RunState
    config: RLMConfig  # the settings the resumed run uses

    def describe(self) -> str:
        """One line for the user, said before anything happens."""
        s = self.state
        budget = self.config.max_budget_usd
        spent = f"${s.spent_usd:.2f} spent" + (f" of ${budget:.2f}" if budget is not None else "")
        if self.action == "show_result":
            return (f"run {s.run_id} already completed ({spent}); showing its result — nothing runs, "
                    "nothing is spent")
        stopped = s.stop_reason or "stopped without a record of why (killed?)"
        return (f"resuming run {s.run_id} (it stopped: {stopped}; {spent}): the agent continues its session, "
                "calls already made come from the cache")


def plan_resume(config: RLMConfig, workspace: str | Path, overrides: Mapping[str, Any] | None = None) -> ResumePlan:
    """Read the host-side record of the run in ``workspace`` and decide what resuming it means.

    ``config`` says where the record is (its ``cache_dir``) and supplies the upstream's
    credentials; the run's own settings come from the record, then ``overrides``.
    """
    ws = Workspace.open(Path(workspace))
    state = RunStateStore(config.effective_cache_dir).load(ws.run_id)
    if state.workspace.resolve() != ws.root:  # the run id came from the agent-writable job.json
        raise WorkspaceError(f"the host-side record of run {ws.run_id} belongs to {state.workspace}, not to "
                             f"{ws.root}; resume that folder instead")
    settings = state.config if state.config is not None else saved_settings(config)  # older records
    settings = merge_settings(settings, {**(overrides or {}), "preserve_workspace": True})
    resumed = build_config(settings)
    if resumed.upstream.api_key is None and config.upstream.api_key is not None:
        resumed.upstream = resumed.upstream.model_copy(update={"api_key": config.upstream.api_key})
    if state.result is not None and state.stop_reason == "completed":
        return ResumePlan(action="show_result", workspace=ws, state=state, config=resumed)
    if state.session_id is None:
        raise WorkspaceError(f"run {ws.run_id} stopped before the agent started; start it again instead")
    return ResumePlan(action="continue", workspace=ws, state=state, config=resumed)


def stored_result(plan: ResumePlan) -> RLMResult:
    """The completed run's result, as it was recorded (artifacts read again from its folder)."""
    assert plan.state.result is not None
    result = RLMResult.model_validate(plan.state.result)
    return result.model_copy(update={"artifacts": plan.workspace.artifacts(), "workspace_path": plan.workspace.root})
