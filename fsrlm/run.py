"""One run, end to end: workspace, broker, sandbox, agent, results, clean-up.

The orchestrator never branches on the executor type; every backend goes
through ``executors.base``. Whatever happens — an error, a timeout, Ctrl-C —
the sandbox and the broker are stopped, and a failed run's workspace is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from claude_agent_sdk import (
    AssistantMessage,
    ResultMessage,
    SystemMessage,
    query,
)
from pydantic import BaseModel, ConfigDict, ValidationError

from fsrlm.agent import SandboxTransport, agent_options, run_argv
from fsrlm.broker import Broker, BrokerSettings, RunLimits, SharedLedger
from fsrlm.broker.server import LIMIT_STATUS
from fsrlm.broker.upstreams import check_credentials
from fsrlm.broker.upstreams.preflight import check_reachable
from fsrlm.config import RLMConfig
from fsrlm.errors import FsrlmError, InputError, SandboxError
from fsrlm.events import EventLog, Subscriber
from fsrlm.executors.base import Sandbox, SandboxSpec
from fsrlm.executors.contract import AgentContract
from fsrlm.executors.registry import create_executor
from fsrlm.prompts import InputSummary, first_message
from fsrlm.results import NestedRun, RLMResult, RunMetrics, StopReason
from fsrlm.resume import (
    RESUME_MESSAGE,
    ResumePlan,
    plan_resume,
    saved_settings,
    stored_result,
)
from fsrlm.runstate import RunState, RunStateStore
from fsrlm.session import drop_saved_system_prompts
from fsrlm.warm import WarmPool, WarmSlot
from fsrlm.workspace import INLINE_LIMIT, Workspace

logger = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 8 * 1024 * 1024


class RunInput(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    prompt: Any = None  # InputLike
    messages: list[Mapping[str, Any]] | None = None
    system: str | None = None
    question: str | None = None
    attachments: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, **fields: Any) -> RunInput:
        """Build from a caller's arguments; a value of the wrong type is an ``InputError``."""
        try:
            return cls(**fields)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"invalid {where}: {first['msg']}") from None

    def check(self) -> None:
        """What can be told before anything else is tried (the upstream, the engine); the rest is checked
        while the input is written (a stream's emptiness is known only then)."""
        if (self.prompt is None) == (self.messages is None):
            raise InputError("give exactly one of prompt=... or messages=[...]")
        if isinstance(self.prompt, str | bytes) and not self.prompt.strip():
            raise InputError("the prompt is empty (or only whitespace); give the text or file to work on")
        if isinstance(self.prompt, os.PathLike):
            try:
                size = os.stat(self.prompt).st_size
            except OSError as e:
                raise InputError(f"cannot read input file {os.fspath(self.prompt)}: {e.strerror}") from None
            if size == 0:
                raise InputError(f"the input file {os.fspath(self.prompt)} is empty; give the text or file to work on")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def limits_of(config: RLMConfig) -> RunLimits:
    return RunLimits(
        max_scripts=config.max_scripts,
        max_subcalls_per_script=config.max_subcalls_per_script,
        max_total_subcalls=config.max_total_subcalls,
        max_tokens_per_subcall=config.max_tokens_per_subcall,
        max_budget_usd=config.max_budget_usd,
        max_depth=config.max_depth,
        max_concurrent_nested=config.max_concurrent_nested,
        nested_wait_seconds=config.timeout_seconds,  # a waiting rlm_query never outlives its run
    )


def _prepare_workspace(config: RLMConfig, inp: RunInput, run_id: str, parent: Workspace | None,
                       ws: Workspace | None = None) -> tuple[Workspace, InputSummary]:
    """Write the input into the run folder (``ws``: one a warm slot made ahead of time; else a new one).

    A nested run's folder (``parent``: the run it is nested in) goes beside its parent's, where no
    sandbox can write (workspace.py).
    """
    if ws is None:
        ws = parent.create_nested(run_id) if parent is not None else Workspace.create(run_id, config.workspace_dir)
    try:
        question = inp.question
        if inp.messages is not None:
            last_user = ws.write_messages(list(inp.messages))
            question = question or last_user
            size = ws.input_bytes
        else:
            size = ws.write_prompt(inp.prompt)
        if size == 0:
            raise InputError("the input is empty; give the text or file to work on")
        head, tail = ws.input_preview(size)
        if size <= INLINE_LIMIT and not head.strip():  # a file or stream of only whitespace, as for a str
            raise InputError("the input is empty (only whitespace); give the text or file to work on")
        if question:
            ws.write_text("input/question.md", question)
        if inp.system:
            ws.write_text("input/system.md", inp.system)
        attachments = ws.write_attachments(inp.attachments) if inp.attachments else []
    except BaseException:
        ws.remove()
        raise
    return ws, InputSummary(size_bytes=size, head=head, tail=tail, question=question, attachments=attachments)


async def preflight(config: RLMConfig):
    """Everything that can fail before a run folder exists: credentials, the upstream, the executor."""
    check_credentials(config.upstream)
    if config.upstream.preflight:
        await check_reachable(config.upstream)  # seconds, not minutes of retries, for a wrong or dead URL
    executor = create_executor(config.executor)
    await executor.check()  # e.g. Docker down: fail before anything is written
    return executor


async def run_rlm(
    config: RLMConfig,
    inp: RunInput,
    *,
    depth: int = 0,
    shared: SharedLedger | None = None,
    parent: Workspace | None = None,
    on_event: Subscriber | None = None,
    pool: WarmPool | None = None,
) -> RLMResult:
    """Run the root agent over ``inp`` and return what it produced (in a warm sandbox from ``pool`` if one fits)."""
    inp.check()
    slot = await pool.take(inp.system) if pool is not None and depth == 0 else None
    if slot is None:
        executor, run_id, ws = await preflight(config), new_run_id(), None
    else:  # checked when the pool started; the slot is this run's executor, run id and run folder
        executor, run_id, ws = slot, slot.run_id, slot.workspace
    try:
        ws, summary = _prepare_workspace(config, inp, run_id, parent, ws)
    except BaseException:
        if slot is not None:
            await slot.discard()
        raise
    ws.write_job({
        "run_id": run_id, "depth": depth, "limits": limits_of(config).model_dump(),
        "root_model": config.effective_root_model, "submodel": config.effective_submodel,
        "executor": config.executor.type, "input_bytes": summary.size_bytes,
        "sandbox": executor.describe().model_dump(),  # which kernel (gVisor or the host's)
    })
    return await _execute(config, executor, ws, first_message(summary), system=inp.system, depth=depth,
                          shared=shared or SharedLedger(), on_event=on_event, slot=slot)


async def resume_rlm(config: RLMConfig, workspace, *, on_event: Subscriber | None = None,
                     plan: ResumePlan | None = None) -> RLMResult:
    """Continue a run in its own workspace with its own settings (``fsrlm/resume.py``): same conversation,
    spent limits kept; a completed run's result is returned as it was, without running anything."""
    plan = plan or plan_resume(config, workspace)
    if plan.action == "show_result":
        return stored_result(plan)
    executor = await preflight(plan.config)
    state = plan.state
    # The system prompt is the host's record (state.system); the CLI would rather take the copy it saved in
    # its transcript, which the agent could rewrite: remove that copy first (session.py).
    drop_saved_system_prompts(plan.workspace.root, state.session_id)
    return await _execute(plan.config, executor, plan.workspace, RESUME_MESSAGE, system=state.system,
                          depth=state.depth, shared=state.shared_ledger(), on_event=on_event, resume=state)


class _Outcome:
    """What the run's steps found out, gathered as they happen (the result is built from it at the end)."""

    def __init__(self, session_id: str | None) -> None:
        self.stop: StopReason = "error"
        self.errors: list[str] = []
        self.turns = 0
        self.session_id = session_id
        self.nested: list[NestedRun] = []  # runs started by rlm_query, in <run>.nested/

    def fail(self, stop: StopReason, message: str) -> None:
        self.stop = stop
        self.errors.append(message)


async def _execute(
    config: RLMConfig,
    executor,
    ws: Workspace,
    prompt: str,
    *,
    system: str | None,
    depth: int,
    shared: SharedLedger,
    on_event: Subscriber | None,
    resume: RunState | None = None,
    slot: WarmSlot | None = None,
) -> RLMResult:
    """The run's steps: broker, sandbox, agent, collect — each part's clean-up beside its start."""
    started = time.monotonic()
    limits = limits_of(config)
    token = slot.token if slot is not None else secrets.token_urlsafe(32)  # a warm CLI already holds its token
    outcome = _Outcome(resume.session_id if resume else None)
    events = EventLog(ws.root, ws.run_id, [on_event] if on_event else [])
    sandbox_info = executor.describe()  # which kernel the agent gets: in the result, the record, the events
    store = RunStateStore(config.effective_cache_dir, sandbox=sandbox_info)

    settings = saved_settings(config)

    def record_state(**fields: Any) -> None:
        store.save(RunState.of(broker.ledger, run_id=ws.run_id, workspace=ws.root, session_id=outcome.session_id,
                               config=settings, system=system, **fields))

    async def nested(prompt: str, context: str) -> dict[str, Any]:
        child = await run_rlm(
            config, RunInput(prompt=context or prompt, question=prompt),
            depth=depth + 1, shared=shared, parent=ws, on_event=on_event,
        )
        outcome.nested.append(NestedRun.of(child))
        return {"answer": child.answer or "", "success": child.success, "run_id": child.run_id,
                "stop_reason": child.stop_reason}

    def on_record(record) -> None:
        record_state()
        events.call_record(record, broker.ledger.snapshot())

    broker = Broker(
        BrokerSettings(
            run_id=ws.run_id, token=token, workspace=ws.root, submodel=config.effective_submodel,
            root_model=config.effective_root_model, policy=config.policy,
            limits=limits, upstream=config.upstream,
            cache_dir=(config.effective_cache_dir / "llm") if config.cache_responses else None,
            subcall_concurrency=config.subcall_concurrency,
            socket=slot.socket if slot is not None else None,  # mounted in the warm sandbox already
            prices=config.prices, unknown_model_price=config.unknown_model_price,
        ),
        depth=depth, shared=shared, nested_runner=nested, on_record=on_record, on_retry=events.upstream_retry,
    )
    if resume is not None:
        resume.restore(broker.ledger)
    events.emit("run_started", data={"depth": depth, "executor": config.executor.type, "workspace": str(ws.root),
                                     "root_model": config.effective_root_model, "resumed": resume is not None,
                                     "warm": slot is not None, "sandbox": sandbox_info.model_dump()})
    argv = run_argv(config, limits.model_dump(), system, resume=resume.session_id if resume else None)
    agent = AgentContract(run_id=ws.run_id, token=token, depth=depth, subcall_concurrency=config.subcall_concurrency,
                          api="bedrock" if config.upstream.type == "bedrock" else "anthropic")

    async with contextlib.AsyncExitStack() as stack:
        # Unwound in reverse: close the sandbox, stop the broker, then write the host-side record.
        stack.callback(lambda: record_state(stop_reason=outcome.stop,
                                            finished=outcome.stop not in ("interrupted", "timeout")))
        try:
            endpoint = await broker.start()
            stack.push_async_callback(broker.stop)
            spec = SandboxSpec(workspace=ws.root, workspace_id=ws.identity, broker=endpoint, agent=agent,
                               timeout_seconds=config.timeout_seconds)
            sandbox = await stack.enter_async_context(_opened(executor, spec, outcome))
            await _drive_agent(sandbox, argv, prompt, config.timeout_seconds, events, outcome, record_state)
            await sandbox.collect()
        except asyncio.CancelledError:
            outcome.fail("interrupted", "the run was interrupted")
            raise
        except FsrlmError as e:
            outcome.fail("sandbox_error" if isinstance(e, SandboxError) else "error", str(e))
        except Exception as e:  # the SDK raises its own errors when the CLI dies
            logger.exception("run %s failed", ws.run_id)
            outcome.fail("error", f"{type(e).__name__}: {e}")

    result = _result(config, ws, broker, events, shared, outcome, started=started, depth=depth,
                     sandbox_info=sandbox_info)
    record_state(stop_reason=result.stop_reason, finished=result.stop_reason not in ("interrupted", "timeout"),
                 result=result.model_dump(mode="json", exclude={"artifacts"}))
    return result


@contextlib.asynccontextmanager
async def _opened(executor, spec: SandboxSpec, outcome: _Outcome) -> AsyncIterator[Sandbox]:
    """The run's sandbox, closed whatever happens; a failed clean-up is reported, not raised."""
    sandbox = await executor.prepare(spec)
    try:
        yield sandbox
    finally:
        try:
            await sandbox.close()
        except SandboxError as e:  # e.g. a remote Docker host gone: the run still gets a result
            logger.warning("run %s: %s", spec.run_id, e)
            outcome.errors.append(str(e))
            if outcome.stop == "completed":
                outcome.stop = "sandbox_error"


async def _drive_agent(sandbox: Sandbox, argv: list[str], prompt: str, timeout: float, events: EventLog,
                       outcome: _Outcome, record_state: Callable[..., None]) -> None:
    """Run the root agent to its end (or the timeout), streaming its messages into the event log."""
    transport = SandboxTransport(sandbox, argv)
    result_msg: ResultMessage | None = None
    poller = asyncio.create_task(_poll_artifacts(events))
    try:
        async with asyncio.timeout(timeout):
            async for message in query(prompt=prompt, options=agent_options(), transport=transport):
                if isinstance(message, SystemMessage) and message.subtype == "init":
                    outcome.session_id = message.data.get("session_id") or outcome.session_id
                    record_state()
                elif isinstance(message, AssistantMessage) and message.parent_tool_use_id is None:
                    outcome.turns += 1
                elif isinstance(message, ResultMessage):
                    result_msg = message
                    outcome.session_id = message.session_id
                events.agent_message(message)
        outcome.stop = _stop_reason(result_msg, transport, outcome.errors)
    except TimeoutError:
        outcome.fail("timeout", f"the run exceeded timeout_seconds={timeout:g} and was stopped; "
                                "what the workspace held so far is kept")
    finally:
        poller.cancel()


def _result(config: RLMConfig, ws: Workspace, broker: Broker, events: EventLog, shared: SharedLedger,
            outcome: _Outcome, *, started: float, depth: int, sandbox_info=None) -> RLMResult:
    """What the run produced, read from the workspace and the broker's own records."""
    events.poll_artifacts()
    errors = outcome.errors
    stop = outcome.stop
    errors.extend(broker.fatal_errors)
    if broker.fatal_errors:
        stop = "upstream_error"
    errors.extend(_record_errors(broker.records, stop, seen=set(errors)))
    answer = ws.read("output/answer.md", MAX_ANSWER_BYTES)
    if stop == "completed" and not (answer and answer.strip()):
        refused = sorted({r.limit for r in broker.records if r.status == "refused" and r.limit})
        if refused:  # the agent gave up because a limit refused its calls: the limit stopped the run
            stop = "limit"
            errors.append(f"the run ended without an answer after {', '.join(refused)} refused its calls; "
                          "raise the limit (see the errors above) or narrow the question")
        else:
            stop = "no_answer"
            errors.append("the agent finished without writing output/answer.md")
    success = stop == "completed"
    metrics = RunMetrics.from_records(
        broker.records, total_cost=shared.spent_usd,
        wall_seconds=round(time.monotonic() - started, 3), turns=outcome.turns,
    )
    result = RLMResult(
        answer=answer.strip() if answer else None, success=success, stop_reason=stop, metrics=metrics,
        errors=errors, artifacts=ws.artifacts(), workspace_path=ws.root, run_id=ws.run_id,
        session_id=outcome.session_id, nested=outcome.nested, sandbox=sandbox_info,
    )
    events.emit("result", data=result.summary())
    if success and not config.preserve_workspace and depth == 0:
        ws.remove()  # and the runs nested under it
        result.forget_workspaces()
    return result


MAX_RECORD_ERRORS = 50  # distinct call errors copied into result.errors; the rest are counted


def _record_errors(records, stop: StopReason, *, seen: set[str]) -> list[str]:
    """The distinct errors of refused and failed calls, in order, once each (a set: linear in the records)."""
    out: list[str] = []
    more = 0
    for record in records:
        failed = record.status == "refused" or (record.status == "error" and stop != "completed")
        if not (failed and record.error):
            continue
        line = f"{record.script}: {record.error}"
        if line in seen:
            continue
        seen.add(line)
        if len(out) < MAX_RECORD_ERRORS:
            out.append(line)
        else:
            more += 1
    if more:
        out.append(f"... and {more} more distinct call errors (state/subcalls.jsonl)")
    return out


async def _poll_artifacts(events: EventLog, interval: float = 0.5) -> None:
    while True:
        await asyncio.sleep(interval)
        events.poll_artifacts()


def _stop_reason(result: ResultMessage | None, transport: SandboxTransport, errors: list[str]) -> StopReason:
    if result is None:
        tail = transport.exit.stderr_tail if transport.exit else ""
        code = transport.exit.exit_code if transport.exit else None
        oom = ""
        if transport.exit and transport.exit.oom_killed:
            oom = ", killed for lack of memory: raise executor.memory"
        errors.append(f"the agent process ended without a result (exit code {code}{oom}). {tail}".strip())
        return "sandbox_error"
    if result.subtype == "error_max_turns" or result.terminal_reason == "max_turns":
        errors.append(f"the agent used all {result.num_turns} turns (max_turns) before finishing")
        return "max_turns"
    if result.is_error:
        detail = "; ".join(result.errors or []) or (result.result or "")
        if result.api_error_status == LIMIT_STATUS:  # the broker's refusal, not the model API's failure
            detail = detail.removeprefix(f"API Error: {LIMIT_STATUS} ").strip()
            errors.append(f"a run limit refused the root agent's call: {detail}")
            return "limit"
        if result.api_error_status:
            errors.append(f"the model API failed (HTTP {result.api_error_status}): {detail}".strip())
            return "upstream_error"
        errors.append(f"the agent stopped with an error ({result.subtype}): {detail}".strip())
        return "error"
    return "completed"
