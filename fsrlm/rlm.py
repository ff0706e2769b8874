"""The public entry point: ``RLM(config).invoke(...)``."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from fsrlm.config import RLMConfig, load_config
from fsrlm.results import RLMResult
from fsrlm.run import RunInput, run_rlm
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
        if config is None:
            config = load_config(overrides=overrides)
        elif overrides:
            config = RLMConfig.model_validate({**config.model_dump(), **overrides})
        self.config = config

    async def ainvoke(
        self,
        prompt: InputLike | None = None,
        *,
        messages: list[Mapping[str, Any]] | None = None,
        system: str | None = None,
        question: str | None = None,
        attachments: Mapping[str, InputLike] | None = None,
    ) -> RLMResult:
        """Run the RLM over ``prompt`` (text, bytes, a path or a file) or ``messages``."""
        inp = RunInput(prompt=prompt, messages=messages, system=system, question=question, attachments=attachments)
        return await run_rlm(self.config, inp)

    def invoke(
        self,
        prompt: InputLike | None = None,
        *,
        messages: list[Mapping[str, Any]] | None = None,
        system: str | None = None,
        question: str | None = None,
        attachments: Mapping[str, InputLike] | None = None,
    ) -> RLMResult:
        """Synchronous ``ainvoke``; works inside a running event loop too."""
        return run_sync(self.ainvoke(prompt, messages=messages, system=system, question=question,
                                     attachments=attachments))


def invoke(prompt: InputLike | None = None, *, config: RLMConfig | None = None, **kwargs: Any) -> RLMResult:
    """Shortcut: ``fsrlm.invoke("...", question="...")`` with the configuration from file and env."""
    return RLM(config).invoke(prompt, **kwargs)
