"""The local backend: jobs run on this machine, ``concurrency`` at a time, in the driver's event loop."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from fsrlm.batch.results import NodeInfo
from fsrlm.batch.runner import Backend, JobFn
from fsrlm.errors import ConfigError


def local_node() -> NodeInfo:
    return NodeInfo(name="local", hostname=socket.gethostname(), pid=os.getpid())


class LocalBackend(Backend):
    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency
        self._node = local_node()

    @property
    def slots(self) -> int:
        return self.concurrency

    async def run(self, fn: JobFn, item: Any, on_started: Callable[[NodeInfo], None]) -> Any:
        # Cancelling this coroutine cancels fn's run, whose own clean-up stops its sandbox and broker.
        on_started(self._node)
        return await fn(item)
