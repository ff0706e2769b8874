"""What a Ray node needs before it runs fsRLM jobs: the sandbox image, and no leftovers of dead runs.

The driver's machine holds the sandbox image (it builds it, as ``fsrlm run``
does). A node whose Docker engine lacks that image gets it streamed from the
driver's engine through Ray (``docker save`` there, ``docker load`` here, in
4 MiB chunks through the object store; no registry, no build on the node),
once: the first job on the node takes a per-node file lock, later ones find the
image and go on. A node that built the same image itself (``fsrlm image build``)
uses its own copy.

Each worker also removes, when it takes its first job of a batch (and each node at the end), the containers,
volumes and broker sockets of runs whose orchestrator died on that machine (a worker process killed
with its node), and with the local executor the agent processes such runs left running: ``fsrlm gc``'s rule, restricted to
orchestrators proven dead, so nothing of a live run is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fsrlm.config import RLMConfig
from fsrlm.errors import ImageError

logger = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
# gc's older_than: only leftovers whose orchestrator is proven dead on this machine go, never one
# of a live run, nor one whose orchestrator cannot be checked (made from another machine).
ONLY_PROVEN_DEAD = 100 * 365 * 86400.0
JOB_DIR_PREFIX = "fsrlm-job-"  # + <pid of the worker>-: a job's copied inputs (task.py)


class ImageOffer(BaseModel):
    """The driver's sandbox image, and where a node can fetch it (an ``ImageSource`` actor)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    tag: str
    digest: str
    source: Any = None  # ray actor handle of ImageSource; None: nodes must have the image themselves


class ImageSource:
    """A Ray actor on the driver's node that streams its Docker engine's copy of the image."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def chunks(self) -> Iterator[bytes]:
        import docker

        client = docker.from_env()
        try:
            yield from client.api.get_image(self.tag, chunk_size=CHUNK)
        finally:
            client.close()


@contextlib.contextmanager
def node_lock(name: str) -> Iterator[None]:
    """An exclusive lock shared by every process of this machine (and so of this Ray node)."""
    safe = "".join(c if c.isalnum() else "_" for c in name)[:120]
    path = Path(tempfile.gettempdir()) / f"fsrlm-node-{os.getuid()}-{safe}.lock"
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _engine_key() -> str:
    return os.environ.get("DOCKER_HOST") or "local"


def _has(client, tag: str, digest: str) -> bool:
    import docker.errors

    from fsrlm.executors.docker.image import LABEL_IMAGE_HASH

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return (image.labels or {}).get(LABEL_IMAGE_HASH) == digest


def _load(client, offer: ImageOffer) -> None:
    """Stream the image from the driver's engine into this node's."""
    import ray

    def data() -> Iterator[bytes]:
        for ref in offer.source.chunks.options(num_returns="streaming").remote():
            yield ray.get(ref)

    logger.info("this node's Docker engine lacks %s; loading it from the driver", offer.tag)
    for line in client.api.load_image(data()):
        if isinstance(line, dict) and line.get("error"):
            raise ImageError(f"loading {offer.tag} into this node's Docker engine failed: {line['error']}")
    if not _has(client, offer.tag, offer.digest):
        raise ImageError(f"after loading {offer.tag} the image on this node is missing or unlabelled")


def node_image(offer: ImageOffer) -> str | None:
    """Make sure this node's engine has the sandbox image; return the ``executor.image`` to use.

    None: this node's own default image is the driver's (same fsRLM, built here): use it as any run does.
    """
    import docker

    from fsrlm.executors.docker.image import default_tag

    try:
        if default_tag() == offer.tag:
            return None
    except ImageError:
        pass  # this node cannot fingerprint its own copy: use the driver's image
    client = docker.from_env()
    try:
        if _has(client, offer.tag, offer.digest):
            return offer.tag
        if offer.source is None:
            raise ImageError(f"this node's Docker engine lacks {offer.tag} and the driver offered no copy; "
                             "run `fsrlm image build` on the node")
        with node_lock(f"ship-{_engine_key()}-{offer.tag}"):
            if not _has(client, offer.tag, offer.digest):  # another job on this node may have loaded it
                _load(client, offer)
        return offer.tag
    finally:
        client.close()


async def sweep(config: RLMConfig) -> list[str]:
    """Remove what runs of dead orchestrators left on this machine; return what went."""
    from fsrlm.broker.endpoint import remove_stale_socket_dirs
    from fsrlm.executors.registry import create_executor

    removed: list[str] = []
    try:
        if config.executor.type == "docker":
            removed += await create_executor(config.executor).gc(ONLY_PROVEN_DEAD)
        elif config.executor.type == "local":  # its gc reaps only runs whose orchestrator is dead, at any age
            removed += await create_executor(config.executor).gc(0.0)
    except Exception as e:  # noqa: BLE001 - e.g. no Docker engine on a node that ran no sandbox: go on
        logger.warning("removing the sandboxes of dead runs failed: %s", e)
    removed += [f"broker socket {folder}" for folder in remove_stale_socket_dirs()]
    removed += [f"job folder {folder}" for folder in _remove_dead_job_dirs()]
    if removed:
        logger.info("removed leftovers of dead runs: %s", ", ".join(removed))
    return removed


def _remove_dead_job_dirs() -> list[str]:
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(JOB_DIR_PREFIX + "*"):
        pid = folder.name.removeprefix(JOB_DIR_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its worker still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed


_prepared: dict[str, RLMConfig] = {}  # batch id + config -> the config to run with, per worker process


async def prepare_node(config: RLMConfig, offer: ImageOffer | None, batch_id: str) -> RLMConfig:
    """The configuration a job runs with on this node (``executor.image`` set when the image was shipped).

    Once per batch in each worker process it also sweeps leftovers of dead runs.
    """
    import asyncio

    if config.executor.type != "docker" or config.executor.image is not None:
        return config
    key = f"{batch_id}:{config.executor.model_dump_json()}"
    if key not in _prepared:
        if offer is not None:
            image = await asyncio.to_thread(node_image, offer)
            if image is not None:
                config = config.model_copy(update={"executor": config.executor.model_copy(update={"image": image})})
        await sweep(config)  # once per worker process and batch: a list call when nothing is left
        _prepared[key] = config
    return _prepared[key]
