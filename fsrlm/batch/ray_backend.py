"""The Ray backend: each attempt is one Ray task on a node of the cluster.

A task asks for one ``fsrlm_sandbox`` (the custom resource each node advertises:
how many sandboxes it can hold, see ``fsrlm.batch.capacity``) and no CPU, so Ray
never places more runs on a node than it can hold. The task is a streaming
generator: it first yields where it started (so the driver knows what runs
where), then the job's result.

Ray's own retries are off (``max_retries=0``): when a node dies, the driver
tries the job again (``runner.FanOut``), so that every attempt passes the
batch's total budget and every result is written once. Credentials reach the
workers in the job's runtime environment (``env_vars``), never in task
arguments; each node's broker reads them there and no sandbox sees them.

``ray`` is imported only here, and only when a batch runs with ``--ray``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from fsrlm.batch.results import NodeInfo
from fsrlm.batch.runner import Backend, JobFn, NodeLost
from fsrlm.errors import ConfigError, ExecutorUnavailable

logger = logging.getLogger(__name__)

RESOURCE = "fsrlm_sandbox"
NAMESPACE = "fsrlm"
CONNECT_TIMEOUT = 5.0


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: `pip install 'fsrlm[ray]'` on the driver and on every node") from None
    return ray


def this_node() -> NodeInfo:
    """The node the calling Ray worker runs on."""
    ray = import_ray()
    return NodeInfo(name=ray.util.get_node_ip_address(), node_id=ray.get_runtime_context().get_node_id(),
                    hostname=socket.gethostname(), pid=os.getpid())


def _task(fn: JobFn, item: Any) -> Iterator[Any]:
    """The Ray task: say where it runs, then run ``fn(item)`` in a fresh event loop on this worker.

    ``ray.cancel`` raises KeyboardInterrupt here; ``asyncio.run`` turns it into a cancellation of
    the run, whose clean-up stops its sandbox and broker before the task ends.
    """
    yield this_node()
    yield asyncio.run(fn(item))


def check_reachable(address: str) -> None:
    """Fail fast, before any job starts, when ``host:port`` does not answer."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host:
        raise ConfigError(f"--ray {address}: give auto, or the head node's host:port (e.g. 127.0.0.1:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except (OSError, ValueError) as e:
        raise ExecutorUnavailable(f"the Ray cluster at {address} cannot be reached ({e}); is the head node up "
                                  "(`ray start --head`) and is the address host:port of its GCS "
                                  "(default port 6379)?") from None


@contextlib.contextmanager
def notices_to_stderr() -> Iterator[None]:
    """While inside, file descriptor 1 is stderr: a Ray driver prints its notices (a node died, ...)
    there, and a command whose stdout is its report (``--json``) keeps stdout for the report alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class RayBackend(Backend):
    """Run attempts as Ray tasks on a cluster (``address``: ``auto``, ``host:port`` or ``ray://host:port``)."""

    def __init__(self, address: str, *, env_vars: dict[str, str] | None = None, cancel_grace: float = 60.0) -> None:
        self.address = address
        self.env_vars = dict(env_vars or {})
        self.cancel_grace = cancel_grace
        self._remote = None
        self._ray = None
        self._slots = 0
        self._slots_at = 0.0
        self._connected = False

    async def start(self) -> None:
        ray = import_ray()
        check_reachable(self.address)
        try:
            ray.init(address=self.address, namespace=NAMESPACE, runtime_env={"env_vars": self.env_vars},
                     logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ExecutorUnavailable(f"cannot connect to the Ray cluster at {self.address}: {e}") from None
        self._ray = ray
        self._connected = True
        if self._read_slots() == 0:
            raise ConfigError(
                f"no node of the Ray cluster at {self.address} advertises the {RESOURCE} resource, so no job "
                "could be placed; start each node with "
                f"`ray start ... --resources \"$(fsrlm capacity --ray-resources)\"`"
            )
        self._remote = ray.remote(_task).options(num_returns="streaming", max_retries=0, num_cpus=0,
                                                 resources={RESOURCE: 1}, name="fsrlm-job")

    async def stop(self) -> None:
        if self._connected and self._ray is not None:
            self._connected = False
            self._ray.shutdown()

    def _read_slots(self) -> int:
        assert self._ray is not None
        self._slots = int(self._ray.cluster_resources().get(RESOURCE, 0))
        self._slots_at = time.monotonic()
        return self._slots

    @property
    def slots(self) -> int:
        # Nodes come and go (a node died, an autoscaler added one): look again every few seconds.
        if time.monotonic() - self._slots_at > 5.0:
            self._read_slots()
        return self._slots

    @property
    def lookahead(self) -> int:
        return max(1, self._slots // 4)

    @property
    def ray(self):
        return self._ray

    async def run(self, fn: JobFn, item: Any, on_started: Callable[[NodeInfo], None]) -> Any:
        ray = self._ray
        assert ray is not None and self._remote is not None
        generator = self._remote.remote(fn, item)
        node: NodeInfo | None = None
        try:
            node = await (await generator.__anext__())
            on_started(node)
            return await (await generator.__anext__())
        except asyncio.CancelledError:
            await self._cancel(generator)
            raise
        except ray.exceptions.RayTaskError as e:  # fn raised on the worker
            raise RuntimeError(str(e.cause) if e.cause else str(e)) from None
        except ray.exceptions.TaskCancelledError:
            raise asyncio.CancelledError from None
        except ray.exceptions.RayError as e:  # the worker or its node died, the result object was lost
            where = f"node {node.name}" if node else "its node"
            raise NodeLost(f"{where} was lost while running the job ({type(e).__name__})", node) from None

    async def _cancel(self, generator) -> None:
        """Stop the attempt and give its run time to clean up (its sandbox, its broker)."""
        ray = self._ray
        try:
            ray.cancel(generator)
        except Exception as e:  # noqa: BLE001 - a task already finished or a node already gone
            logger.debug("cancel: %s", e)
            return
        try:
            async with asyncio.timeout(self.cancel_grace):
                async for ref in generator:
                    try:
                        await ref
                    except Exception:  # noqa: BLE001 - TaskCancelledError: what we asked for
                        break
        except (TimeoutError, Exception) as e:  # noqa: BLE001
            if isinstance(e, TimeoutError):
                logger.warning("a cancelled job did not stop in %.0f s; forcing it", self.cancel_grace)
                try:
                    ray.cancel(generator, force=True)
                except Exception:  # noqa: BLE001
                    pass
