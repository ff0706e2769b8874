"""Getting the sandbox image onto a remote Docker engine: no registry, no build there.

The remote engine gets exactly the image the local one has: ``ensure_image``
builds (or finds) it locally, then ``docker save`` is streamed straight into the
remote ``docker load`` — never written to disk, never held in memory. An image
on the remote whose ``fsrlm.image-hash`` label matches the current inputs is
reused as it is, and then no local engine is needed at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fsrlm.executors.docker.errors import EngineRef, docker_errors
from fsrlm.executors.docker.image import (
    LABEL_IMAGE_HASH,
    build_lock,
    default_tag,
    ensure_image,
    expected_hash,
    image_or_none,
    remove_image_quietly,
)

from fsrlm.errors import ExecutorUnavailable, ImageError

logger = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024


def _host_ref(host: str) -> EngineRef:
    return EngineRef(label=f"the Docker host {host}", fix="check that the host is up and has room for the image")


def ship(local, remote, tag: str, host: str = "the remote engine") -> None:
    """Stream image ``tag`` from the local engine into the remote one."""
    start = time.monotonic()
    with docker_errors(f"copy image {tag} to the Docker host {host}", _host_ref(host)):
        stream = local.api.get_image(tag, chunk_size=CHUNK)
        for line in remote.api.load_image(stream):
            if isinstance(line, dict) and line.get("error"):
                raise ImageError(f"Loading {tag} into the Docker host {host} failed: {line['error']}")
    logger.info("copied %s to the remote engine in %.1f s", tag, time.monotonic() - start)


def remote_image(remote, local_client: Callable[[], object], *, image: str | None, host: str) -> str:
    """Make sure the sandbox image is on ``remote``; return its name.

    ``image`` is ``executor.image`` (None: the default, fingerprinted image).
    ``local_client()`` connects to the local engine; called only when shipping.
    """
    if image is not None:
        if image_or_none(remote, image, _host_ref(host)) is not None:
            return image
        with build_lock(f"ship-{host}-{image}"):
            if image_or_none(remote, image, _host_ref(host)) is None:
                local = _local(local_client, image, host)
                try:
                    if image_or_none(local, image) is None:
                        raise ImageError(f"Image {image} (executor.image) is neither on the Docker host {host} "
                                         "nor on this machine; `docker load` or `docker pull` it on either.")
                    ship(local, remote, image, host)
                finally:
                    local.close()
        return image
    tag, digest = default_tag(), expected_hash()
    existing = image_or_none(remote, tag, _host_ref(host))
    if existing is not None and existing.labels.get(LABEL_IMAGE_HASH) == digest:
        return tag
    local = _local(local_client, tag, host)
    try:
        ensure_image(local, tag)  # takes the build lock itself: not inside ours
        with build_lock(f"ship-{host}-{tag}"):
            existing = image_or_none(remote, tag, _host_ref(host))  # another process may have shipped it meanwhile
            if existing is not None and existing.labels.get(LABEL_IMAGE_HASH) == digest:
                return tag
            logger.info("the Docker host %s %s %s; copying it there", host,
                        "has a stale" if existing is not None else "lacks", tag)
            ship(local, remote, tag, host)
            shipped = image_or_none(remote, tag, _host_ref(host))
            if shipped is None or shipped.labels.get(LABEL_IMAGE_HASH) != digest:
                raise ImageError(f"After copying {tag} to {host} the image there is missing or unlabelled; retry.")
            if existing is not None and existing.id != shipped.id:
                remove_image_quietly(remote, existing.id)
    finally:
        local.close()
    return tag


def _local(local_client: Callable[[], object], image: str, host: str):
    try:
        return local_client()
    except ExecutorUnavailable as e:
        raise ImageError(f"The Docker host {host} lacks the current {image} and it cannot be copied there "
                         f"without a local Docker engine: {e}") from None
