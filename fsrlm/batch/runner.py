"""Fan many jobs out over a backend (this machine, or a Ray cluster) and yield outcomes as they finish.

This is the machinery every many-runs command shares (``fsrlm batch``, and the
OOLONG runner): ``fan_out(items, fn, backend)`` takes an iterable of items and
an async per-item callable, runs at most ``backend.slots`` at a time (plus a
short look-ahead queued at the backend), and yields an ``Outcome`` per item as
it finishes. It pulls items from the iterable only as slots free up, so an
iterable of 100,000 items is never held in memory.

``fn`` must be a module-level function (a Ray backend ships it by reference);
it should turn its own failures into a result rather than raise. An attempt
whose node died (``NodeLost``) is tried again, at most ``max_attempts`` times in
all; a ``Gate`` (the batch's total budget) decides whether each attempt may start.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from fsrlm.batch.results import NodeInfo

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
JobFn = Callable[[Any], Awaitable[Any]]


class NodeLost(Exception):
    """The node (or the worker process) running an attempt died; the attempt's outcome is unknown."""

    def __init__(self, message: str, node: NodeInfo | None = None) -> None:
        super().__init__(message)
        self.node = node


class Backend(abc.ABC):
    """Where attempts run. ``slots``: how many may run at once right now."""

    @property
    @abc.abstractmethod
    def slots(self) -> int: ...

    @property
    def lookahead(self) -> int:
        """Attempts queued at the backend beyond ``slots`` (so a freed slot never waits on the driver)."""
        return 0

    async def start(self) -> None:
        """Connect; raise an ``FsrlmError`` saying what to fix before any job starts."""

    async def stop(self) -> None:
        """Disconnect; idempotent."""

    @abc.abstractmethod
    async def run(self, fn: JobFn, item: Any, on_started: Callable[[NodeInfo], None]) -> Any:
        """Run ``fn(item)`` once; call ``on_started`` when it starts; raise ``NodeLost`` if its node died.

        Cancelling the call stops the attempt and waits (bounded) for it to clean up.
        """

    async def __aenter__(self) -> Backend:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Gate:
    """Admission of attempts (the default admits everything)."""

    def admit(self, item: Any) -> bool:
        """Reserve what an attempt of ``item`` may spend; False: not now."""
        return True

    def settle(self, item: Any, result: Any) -> None:
        """The attempt finished with ``result``: replace its reservation by what it cost."""

    def lost(self, item: Any) -> None:
        """The attempt's node died: what it spent is unknown (count the reservation as spent)."""


@dataclass
class Outcome(Generic[T, R]):
    item: T
    result: R | None = None
    error: str | None = None  # fn raised, or every attempt's node died (lost=True)
    lost: bool = False
    nodes: list[NodeInfo] = field(default_factory=list)  # one per attempt that started (or was lost)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def attempts(self) -> int:
        return max(1, len(self.nodes))


EventKind = Literal["started", "retrying", "finished", "waiting"]


@dataclass
class FanOutEvent:
    kind: EventKind
    item: Any = None
    node: NodeInfo | None = None
    detail: str = ""


class FanOut:
    """One fan-out; ``stopped`` says why it ended early ("gate": the gate admitted no more)."""

    def __init__(self, backend: Backend, *, gate: Gate | None = None, max_attempts: int = 3,
                 on_event: Callable[[FanOutEvent], None] | None = None) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.backend = backend
        self.gate = gate or Gate()
        self.max_attempts = max_attempts
        self.on_event = on_event or (lambda event: None)
        self.stopped: Literal["gate"] | None = None
        self.held: Any = None  # the item the gate refused last (not started)
        self.running = 0

    async def run(self, items: Iterable[T], fn: JobFn) -> AsyncIterator[Outcome[T, Any]]:
        iterator = iter(items)
        pending: set[asyncio.Task[Outcome[T, Any]]] = set()
        retry_queue: list[Outcome[T, Any]] = []
        next_item: list[T] = []
        exhausted = False
        try:
            while True:
                # Top up: retries first, then new items, while the backend has room and the gate admits.
                room = self.backend.slots + self.backend.lookahead - len(pending)
                while room > 0:
                    if retry_queue:
                        candidate: Any = retry_queue[0]
                        item = candidate.item
                    elif next_item or not exhausted:
                        if not next_item:
                            try:
                                next_item.append(next(iterator))
                            except StopIteration:
                                exhausted = True
                                break
                        candidate, item = None, next_item[0]
                    else:
                        break
                    if not self.gate.admit(item):
                        self.held = item
                        if not pending:
                            self.stopped = "gate"
                        break
                    self.held = None
                    if candidate is not None:
                        retry_queue.pop(0)
                        outcome = candidate
                    else:
                        next_item.pop()
                        outcome = Outcome(item=item)
                    pending.add(asyncio.create_task(self._attempt(outcome, fn)))
                    room -= 1
                if not pending:
                    return
                if self.held is not None:
                    self.on_event(FanOutEvent("waiting", self.held, detail="the total budget admits no more now"))
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    outcome = task.result()
                    if outcome.lost and outcome.error is None:  # lost, with attempts left
                        retry_queue.append(outcome)
                        continue
                    self.on_event(FanOutEvent("finished", outcome.item,
                                              outcome.nodes[-1] if outcome.nodes else None))
                    yield outcome
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _attempt(self, outcome: Outcome[T, Any], fn: JobFn) -> Outcome[T, Any]:
        """One attempt. Returns the outcome; ``lost`` with no error means: try again."""
        outcome.lost = False
        started: list[NodeInfo] = []

        def on_started(node: NodeInfo) -> None:
            started.append(node)
            outcome.nodes.append(node)
            if outcome.started_at is None:
                outcome.started_at = time.time()
            self.running += 1
            self.on_event(FanOutEvent("started", outcome.item, node))

        try:
            result = await self.backend.run(fn, outcome.item, on_started)
        except NodeLost as e:
            self.gate.lost(outcome.item)
            node = started[0] if started else e.node
            if not started:
                outcome.nodes.append(node or NodeInfo(name="unknown"))
            outcome.lost = True
            if len(outcome.nodes) >= self.max_attempts:
                outcome.error = (f"{e} (attempt {len(outcome.nodes)} of {self.max_attempts}; "
                                 "no attempts left)")
                outcome.finished_at = time.time()
            else:
                self.on_event(FanOutEvent("retrying", outcome.item, node, detail=str(e)))
            return outcome
        except asyncio.CancelledError:
            raise
        except Exception as e:  # fn raised: a failed outcome, never a stopped batch
            logger.warning("job failed: %s: %s", type(e).__name__, e)
            self.gate.settle(outcome.item, None)
            outcome.error = f"{type(e).__name__}: {e}"
            outcome.finished_at = time.time()
            return outcome
        finally:
            if started:
                self.running -= 1
        self.gate.settle(outcome.item, result)
        outcome.result = result
        outcome.finished_at = time.time()
        return outcome


async def fan_out(items: Iterable[T], fn: JobFn, backend: Backend, **options: Any) -> AsyncIterator[Outcome[T, Any]]:
    """``FanOut(backend, **options).run(items, fn)``, for callers that need no status afterwards."""
    async for outcome in FanOut(backend, **options).run(items, fn):
        yield outcome
