"""Remove what runs left behind, found by label.

Every container and volume a run creates carries ``fsrlm=1``,
``fsrlm.run-id=<run id>``, ``fsrlm.created=<unix time>`` and
``fsrlm.orchestrator`` (``hardening.run_labels``). ``remove_run`` removes one
run's leftovers at the end of that run; ``gc`` removes those of runs whose
orchestrator crashed: at once when the label shows the orchestrator is gone,
by age (``older_than``) when that cannot be told (a label from another machine,
or none), and those of a running orchestrator only past an explicit age.

Functions here are blocking (docker SDK calls); run them in a thread from async code.
"""

from __future__ import annotations

import logging
import time

import docker.errors
from fsrlm.executors.base import (
    LABEL_APP,
    LABEL_CREATED,
    LABEL_ORCHESTRATOR,
    LABEL_RUN_ID,
)
from fsrlm.executors.liveness import orchestrator_alive

from fsrlm.errors import SandboxError

logger = logging.getLogger(__name__)


def _created(labels: dict[str, str], fallback: float) -> float:
    try:
        return float(labels.get(LABEL_CREATED, ""))
    except ValueError:
        return fallback


def _keep(labels: dict[str, str], older_than: float | None, now: float) -> bool:
    """gc's rule (``older_than`` None: remove_run, which removes its own run's objects unconditionally)."""
    if older_than is None:
        return False
    young = now - _created(labels, now) < older_than
    alive = orchestrator_alive(labels.get(LABEL_ORCHESTRATOR, ""))
    if alive is None:
        return young
    return alive and (young or older_than <= 0)


def _remove_containers(client, filters: dict, older_than: float | None, now: float) -> list[str]:
    removed = []
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        labels = container.labels or {}
        if _keep(labels, older_than, now):
            continue
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass  # went away meanwhile
        removed.append(container.name)
    return removed


def _remove_volumes(client, filters: dict, older_than: float | None, now: float) -> list[str]:
    removed = []
    for volume in client.volumes.list(filters=filters):
        labels = volume.attrs.get("Labels") or {}
        if _keep(labels, older_than, now):
            continue
        try:
            volume.remove(force=True)
        except docker.errors.NotFound:
            pass
        removed.append(volume.name)
    return removed


def remove_run(client, run_id: str) -> list[str]:
    """Remove every container and volume labelled with ``run_id``; return their names."""
    filters = {"label": [f"{LABEL_APP}=1", f"{LABEL_RUN_ID}={run_id}"]}
    try:
        now = time.time()
        return _remove_containers(client, filters, None, now) + _remove_volumes(client, filters, None, now)
    except docker.errors.DockerException as e:
        raise SandboxError(
            f"Could not remove the containers of run {run_id}: {e}. Remove them later with `fsrlm gc`."
        ) from e


def gc(client, older_than_seconds: float = 0.0) -> list[str]:
    """Remove fsRLM containers and volumes left by runs whose orchestrator is gone.

    Objects whose orchestrator label shows it gone are removed whatever their age.
    Objects whose orchestrator cannot be checked (made on another machine, or
    unlabelled) are removed when created more than ``older_than_seconds`` ago.
    Objects of an orchestrator still running on this machine are kept, unless a
    positive ``older_than_seconds`` is given and they are older: so a plain
    ``fsrlm gc`` never kills a live run.
    """
    filters = {"label": f"{LABEL_APP}=1"}
    try:
        now = time.time()
        removed = _remove_containers(client, filters, older_than_seconds, now)
        removed += _remove_volumes(client, filters, older_than_seconds, now)
    except docker.errors.DockerException as e:
        raise SandboxError(f"Could not list or remove fsRLM containers: {e}") from e
    if removed:
        logger.info("removed %d leftover(s): %s", len(removed), ", ".join(removed))
    return removed
