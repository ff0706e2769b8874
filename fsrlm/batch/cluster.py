"""fsRLM's side of a Ray batch on the driver: offer the sandbox image to the nodes, sweep them at the end."""

from __future__ import annotations

import asyncio
import logging

from fsrlm.batch.node import ImageOffer, ImageSource, sweep
from fsrlm.batch.ray_backend import NAMESPACE, RayBackend
from fsrlm.config import RLMConfig
from fsrlm.errors import FsrlmError

logger = logging.getLogger(__name__)

SWEEP_TIMEOUT = 60.0


def offer_image(backend: RayBackend) -> ImageOffer | None:
    """Build (or find) the sandbox image on the driver's engine and serve it to nodes that lack it.

    None when this machine has no Docker engine: every node then needs its own copy
    (``fsrlm image build`` there), as any run on it would.
    """
    import docker

    from fsrlm.executors.docker.image import LABEL_IMAGE_HASH, ensure_image

    ray = backend.ray
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - no engine here: nodes use their own image
        logger.info("no Docker engine on the driver's machine (%s); nodes must hold the sandbox image", e)
        return None
    try:
        tag = ensure_image(client)
        digest = client.images.get(tag).labels[LABEL_IMAGE_HASH]
    except (FsrlmError, KeyError) as e:
        logger.warning("cannot offer the sandbox image to the nodes: %s", e)
        return None
    finally:
        client.close()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    source = ray.remote(ImageSource).options(
        num_cpus=0, max_concurrency=8, namespace=NAMESPACE, lifetime=None,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(tag)
    return ImageOffer(tag=tag, digest=digest, source=source)


def _sweep_task(config: RLMConfig) -> list[str]:
    return asyncio.run(sweep(config))


async def sweep_nodes(backend: RayBackend, config: RLMConfig) -> list[str]:
    """On every live node, remove the leftovers of runs whose orchestrator died (a worker killed mid-run)."""
    ray = backend.ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(_sweep_task)
    refs = [remote.options(num_cpus=0, max_retries=0,
                           scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False))
            .remote(config) for node in ray.nodes() if node.get("Alive")]
    removed: list[str] = []
    async with asyncio.timeout(SWEEP_TIMEOUT):
        for ref in refs:
            try:
                removed += await ref
            except ray.exceptions.RayError as e:  # a node that died meanwhile
                logger.info("sweep: %s", e)
    return removed
