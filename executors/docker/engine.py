"""The Docker engine a sandbox lives on: its client, how messages name it, how to tell it is still there.

``connect_local`` reaches this machine's engine (as ``docker.from_env`` does,
``DOCKER_HOST`` included); the remote executor builds an ``Engine`` from
``endpoint.connect``. A sandbox holds an ``Engine`` and never asks which kind it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fsrlm.executors.docker.errors import EngineRef, docker_errors

from fsrlm.errors import ExecutorUnavailable

logger = logging.getLogger(__name__)


@dataclass
class Engine:
    client: object  # docker.DockerClient
    ref: EngineRef
    #: Streams cross a network: when the agent's stream breaks, the agent is cut off and is stopped.
    remote: bool = False
    #: Failed attempts to reach the engine before a running agent counts as lost.
    lost_after: int = 10
    gc_command: str = "fsrlm gc"
    #: Blocking check that the engine answers (raises when it does not); default: ``client.ping()``.
    probe: Callable[[], object] | None = field(default=None, repr=False)

    @property
    def api(self):
        return self.client.api  # type: ignore[attr-defined]

    async def reachable(self) -> bool:
        """Whether the engine answers now (a remote host may have gone away mid-run)."""
        probe = self.probe or self.client.ping  # type: ignore[attr-defined]
        try:
            await asyncio.to_thread(probe)
            return True
        except Exception as e:  # noqa: BLE001 - any failure means "not reachable now"
            logger.warning("%s is unreachable: %s", self.ref.label, e)
            return False


def connect_local(*, timeout: float = 120.0, environment: Mapping[str, str] | None = None) -> Engine:
    """This machine's engine, after it answered a ping; or ``ExecutorUnavailable`` saying how to fix it."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover - docker is a dependency
        raise ExecutorUnavailable("The docker Python package is missing; `pip install docker`.") from e
    ref = EngineRef.local(environment)
    with docker_errors("use the docker executor", ref):
        client = docker.from_env(timeout=timeout, environment=dict(environment) if environment is not None else None)
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
    return Engine(client=client, ref=ref)
