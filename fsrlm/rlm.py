"""The public entry point: ``RLM(config).invoke(...)``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from fsrlm.config import RLMConfig, load_config
from fsrlm.events import RLMEvent
from fsrlm.results import RLMResult
from fsrlm.resume import plan_resume
from fsrlm.run import RunInput, resume_rlm, run_rlm
from fsrlm.warm import WarmPool, WarmRunner
from fsrlm.workspace import InputLike

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Inside a loop (Jupyter, an async app): run on a private loop in a worker thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsrlm") as pool:
        return pool.submit(asyncio.run, coro).result()


class RLM:
    """A Recursive Language Model runner.

    >>> rlm = RLM(RLMConfig(executor={"type": "docker"}))
    >>> result = rlm.invoke("…a huge log…", question="Which service failed first?")
    >>> print(result.answer)
    """

    def __init__(self, config: RLMConfig | None = None, **overrides: Any) -> None:
        """``RLM(**settings)`` is ``RLM(RLMConfig(**settings))``: defaults < fsrlm.toml < FSRLM_* < settings.

        With a ``config``, ``overrides`` replace its fields (and nothing more is read).
        """
        if config is None:
            config = load_config(overrides=overrides)
        elif overrides:
            config = RLMConfig.model_validate({**config.model_dump(), **overrides})
        self.config = config
        self._warm: WarmRunner | None = None  # started by the first run when executor.warm > 0

    async def _run(self, start: Callable[[WarmPool | None], Coroutine[Any, Any, T]]) -> T:
        """Run ``start(pool)``: in this loop, or on the warm pool's own loop when there is one."""
        size = getattr(self.config.executor, "warm", 0)
        if not size:
            return await start(None)
        if self._warm is None:
            self._warm = WarmRunner(self.config, size)
        return await self._warm.run(start)

    def close(self) -> None:
        """Remove the warm sandboxes no run took (a no-op without ``executor.warm``). Idempotent."""
        if self._warm is not None:
            self._warm.close()

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    async def ainvoke(
        self,
        prompt: InputLike | None = None,
        *,
        messages: list[Mapping[str, Any]] | None = None,
        system: str | None = None,
        question: str | None = None,
        attachments: Mapping[str, InputLike] | None = None,
        on_event: Callable[[RLMEvent], None] | None = None,
    ) -> RLMResult:
        """Run the RLM over ``prompt`` (text, bytes, a path or a file) or ``messages``.

        ``on_event`` is called with every ``RLMEvent`` as it happens (see ``astream``).
        """
        inp = RunInput.of(prompt=prompt, messages=messages, system=system, question=question, attachments=attachments)
        return await self._run(lambda pool: run_rlm(self.config, inp, on_event=on_event, pool=pool))

    def invoke(
        self,
        prompt: InputLike | None = None,
        *,
        messages: list[Mapping[str, Any]] | None = None,
        system: str | None = None,
        question: str | None = None,
        attachments: Mapping[str, InputLike] | None = None,
        on_event: Callable[[RLMEvent], None] | None = None,
    ) -> RLMResult:
        """Synchronous ``ainvoke``; works inside a running event loop too."""
        return run_sync(self.ainvoke(prompt, messages=messages, system=system, question=question,
                                     attachments=attachments, on_event=on_event))


    async def astream(
        self,
        prompt: InputLike | None = None,
        *,
        messages: list[Mapping[str, Any]] | None = None,
        system: str | None = None,
        question: str | None = None,
        attachments: Mapping[str, InputLike] | None = None,
    ) -> AsyncIterator[RLMEvent]:
        """Run like ``ainvoke`` and yield events as they happen; the last one is ``result``.

        Events of nested runs (``rlm_query``) are included, with their own ``run_id``.
        """
        inp = RunInput.of(prompt=prompt, messages=messages, system=system, question=question, attachments=attachments)
        async for event in _events_of(lambda sink: self._run(lambda pool: run_rlm(self.config, inp, on_event=sink,
                                                                                pool=pool))):
            yield event

    def stream(self, prompt: InputLike | None = None, **kwargs: Any) -> Iterator[RLMEvent]:
        """Synchronous ``astream`` (the run happens on a worker thread)."""
        return _iterate_in_thread(self.astream(prompt, **kwargs))

    async def aresume(self, workspace: str | Path, *, overrides: Mapping[str, Any] | None = None,
                      on_event: Callable[[RLMEvent], None] | None = None) -> RLMResult:
        """Continue a run in its workspace with the settings it was started with (see ``fsrlm resume``).

        This object's configuration says where the run's record is (``cache_dir``) and
        supplies credentials; ``overrides`` change the run's own settings explicitly.
        A run that already completed returns its result without running anything.
        """
        plan = plan_resume(self.config, Path(workspace), overrides)
        return await resume_rlm(self.config, Path(workspace), on_event=on_event, plan=plan)

    def resume(self, workspace: str | Path, *, overrides: Mapping[str, Any] | None = None,
               on_event: Callable[[RLMEvent], None] | None = None) -> RLMResult:
        return run_sync(self.aresume(workspace, overrides=overrides, on_event=on_event))


async def _events_of(start) -> AsyncIterator[RLMEvent]:
    events: asyncio.Queue[RLMEvent] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # Thread-safe: a warm pool's runs emit their events from the pool's own loop thread.
    task = asyncio.create_task(start(lambda event: loop.call_soon_threadsafe(events.put_nowait, event)))
    try:
        while not task.done() or not events.empty():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        task.result()  # re-raise a run that failed before it could report
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _iterate_in_thread(agen: AsyncIterator[RLMEvent]) -> Iterator[RLMEvent]:
    items: queue.Queue[tuple[str, Any]] = queue.Queue()

    async def pump() -> None:
        try:
            async for item in agen:
                items.put(("event", item))
        except BaseException as e:  # handed to the consumer thread
            items.put(("error", e))
        finally:
            items.put(("done", None))

    threading.Thread(target=asyncio.run, args=(pump(),), name="fsrlm-stream", daemon=True).start()
    while True:
        kind, value = items.get()
        if kind == "event":
            yield value
        elif kind == "error":
            raise value
        else:
            return


def invoke(prompt: InputLike | None = None, *, config: RLMConfig | None = None, **kwargs: Any) -> RLMResult:
    """Shortcut: ``fsrlm.invoke("...", question="...")`` with the configuration from file and env."""
    return RLM(config).invoke(prompt, **kwargs)
