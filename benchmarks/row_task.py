"""One OOLONG row's attempt, wherever the fan-out put it: this process, or a node of a Ray cluster.

:func:`run_row` is the per-item function :func:`benchmarks.harness.run_rows` hands to
``fsrlm.batch.runner.FanOut`` for every row of ``fsrlm bench oolong``, ``compare`` and
``--paper``. It asks the row's solver — :class:`benchmarks.oolong.RlmSolver` (one RLM run)
or :class:`benchmarks.compare.RootModelAlone` (one call of the root model through a broker)
— within the row's time limit, and turns every failure into the row's record (score 0): it
never raises, so a failed row never stops the sweep.

On Ray a :class:`RowTask` is pickled into the task's arguments. It carries the solver, whose
configuration has ``upstream.api_key`` removed (credentials travel in the Ray job's runtime
environment, where the node's broker reads them), and the row without its context window:
the window goes through Ray's object store in 4 MiB chunks, as ``fsrlm batch`` ships a job's
input files, put once for all the rows that ask about it (:class:`ContextShipper`), and is read
back on the node. A solver that runs sandboxes (the RLM) first makes its node ready as
``fsrlm batch`` does: the driver's sandbox image loaded where it is missing, leftovers of
dead runs removed.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel, ConfigDict

from fsrlm.batch.fleet import without_secrets
from fsrlm.batch.node import ImageOffer, prepare_node
from fsrlm.batch.task import put_data, read_chunks
from fsrlm.benchmarks.records import failed_result
from fsrlm.benchmarks.oolong_data import OolongRow
from fsrlm.benchmarks.results import Method, RowResult
from fsrlm.config import RLMConfig

__all__ = ["ContextShipper", "RowAttempt", "RowSolver", "RowTask", "run_row"]

logger = logging.getLogger(__name__)


class RowSolver:
    """Answers one row. Holds only data (a configuration, options), so that a Ray task can carry it.

    ``sandboxes``: its runs use the executor's sandbox (the node needs the sandbox image).
    """

    method: Method = "rlm"
    sandboxes: bool = True

    def __init__(self, config: RLMConfig, *, lenient: bool = False) -> None:
        self.config = config
        self.lenient = lenient

    async def __call__(self, row: OolongRow) -> RowResult:
        raise NotImplementedError

    def with_config(self, config: RLMConfig) -> RowSolver:
        """The same solver with another configuration (a node's, or one without secrets)."""
        clone = copy.copy(self)
        clone.config = config
        return clone

    def close(self) -> None:
        """Release what the solver holds in this process (an RLM's warm pool); idempotent."""

    def for_nodes(self) -> RowSolver:
        """The copy a Ray task carries: no ``upstream.api_key`` (credentials travel in the runtime
        environment), and no warm pool (a pool lives in one process, and Ray's worker processes
        outlive the sweep, so its idle sandboxes would too): rows on a cluster start cold."""
        config = without_secrets(self.config)
        if getattr(config.executor, "warm", 0):
            config = config.model_copy(update={"executor": config.executor.model_copy(update={"warm": 0})})
        return self.with_config(config)

    @property
    def budget(self) -> float | None:
        """The most one row may spend (``max_budget_usd``; its broker enforces it)."""
        return self.config.max_budget_usd


class RowTask(BaseModel):
    """What one attempt of a row needs, wherever it runs."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    index: int  # the row's place in the sweep
    row: OolongRow  # on Ray: without its context_window_text, which is in ``context``
    solver: Any  # a RowSolver (any coroutine function of a row on this machine)
    timeout: float | None
    method: Method = "rlm"
    lenient: bool = False
    context: list[Any] | None = None  # object refs of the context window's chunks (Ray)
    on_ray: bool = False
    batch_id: str = ""
    image: ImageOffer | None = None

    @property
    def budget(self) -> float | None:
        return getattr(self.solver, "budget", None)


class RowAttempt(BaseModel):
    """What an attempt returns: the row's record, and what it cost (None: unknown, charged its cap)."""

    result: RowResult
    cost_usd: float | None


async def run_row(task: RowTask) -> RowAttempt:
    """Solve one row; a crash or a timeout becomes the row's record (score 0), never an exception."""
    started = time.monotonic()
    row = task.row
    try:
        solve = task.solver
        if task.context is not None:
            text = (await asyncio.to_thread(read_chunks, task.context)).decode("utf-8")
            row = row.model_copy(update={"context_window_text": text})
        if task.on_ray and getattr(solve, "sandboxes", False):
            solve = solve.with_config(await prepare_node(solve.config, task.image, task.batch_id))
        async with asyncio.timeout(task.timeout):
            result = await solve(row)
        return RowAttempt(result=result, cost_usd=result.total_cost_usd)
    except TimeoutError:
        errors = [f"the row did not finish within {task.timeout:g} s and was abandoned"]
        stop_reason = "timeout"
    except Exception as exc:  # any crash of one row is that row's result, never the benchmark's
        logger.warning("row %s crashed", row.id, exc_info=True)
        errors, stop_reason = [f"{type(exc).__name__}: {exc}"], "error"
    result = failed_result(row, stop_reason, errors, time.monotonic() - started, method=task.method,
                           lenient=task.lenient)
    return RowAttempt(result=result, cost_usd=None)


class ContextShipper:
    """Puts each context window into Ray's object store once for all its rows (the last ``keep`` windows).

    OOLONG asks many questions of one window (25 per ``trec_coarse`` window), and rows come
    grouped by window, so a sweep ships each window about once. A window no longer kept is
    freed by Ray when the last task that holds it ends.
    """

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._refs: OrderedDict[str, list[Any]] = OrderedDict()
        self.shipped_bytes = 0

    def refs(self, text: str) -> list[Any]:
        data = text.encode("utf-8")
        key = hashlib.sha256(data).hexdigest()
        if key in self._refs:
            self._refs.move_to_end(key)
            return self._refs[key]
        refs = self._refs[key] = put_data(data)
        self.shipped_bytes += len(data)
        while len(self._refs) > self.keep:
            self._refs.popitem(last=False)
        return refs
