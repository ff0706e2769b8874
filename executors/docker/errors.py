"""Docker SDK errors become fsRLM errors here, and only here.

Every call into the docker SDK runs inside ``docker_errors(what, engine)``, a
context manager holding one table from the SDK's (and requests') exceptions to
``fsrlm.errors`` (httpx's ``map_httpcore_exceptions`` is the model). Messages are
whole sentences: what could not be done, which engine (naming ``DOCKER_HOST`` or
the context when that is where the address came from), the innermost reason
(``connection refused``, not ``Caused by NewConnectionError("HTTPConnection(host=...``)
and what to check.

    EngineRef.local()  "the Docker engine at unix:///var/run/docker.sock"   fix: start it / unset DOCKER_HOST
    with docker_errors("start the agent container", engine):
        api.start(container_id)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fsrlm.errors import (
    ExecutorUnavailable,
    FsrlmError,
    ImageError,
    SandboxError,
    root_cause,
)

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
START_LOCAL_ENGINE = "start it with `sudo systemctl start docker` (or the repository's scripts/ensure-docker.sh)"


@dataclass(frozen=True)
class EngineRef:
    """Which engine a message is about, and what to check when it cannot be reached."""

    label: str  # "the Docker engine at unix:///var/run/docker.sock", "the Docker host tcp://h:2376 (from DOCKER_HOST)"
    fix: str

    @classmethod
    def local(cls, environ: Mapping[str, str] | None = None) -> EngineRef:
        """This machine's engine, as ``docker.from_env`` finds it (``DOCKER_HOST`` wins when set)."""
        env = os.environ if environ is None else environ
        host = env.get("DOCKER_HOST")
        if host:
            return cls(label=f"the Docker engine at {host} (from DOCKER_HOST)",
                       fix=f"check that an engine listens there, or unset DOCKER_HOST to use this machine's "
                           f"({DEFAULT_SOCKET})")
        installed = shutil.which("dockerd") or shutil.which("docker") or os.path.exists(DEFAULT_SOCKET[7:])
        fix = START_LOCAL_ENGINE if installed else "Docker is not installed: install it (Debian: `apt-get install " \
                                                   "docker.io`) and " + START_LOCAL_ENGINE
        return cls(label=f"the Docker engine at {DEFAULT_SOCKET}", fix=fix)


def map_docker_error(e: BaseException, what: str, engine: EngineRef) -> FsrlmError:
    """The fsRLM error for ``e``, raised while trying to ``what`` on ``engine``."""
    import docker.errors
    import requests.exceptions

    if isinstance(e, FsrlmError):
        return e
    if isinstance(e, docker.errors.ImageNotFound):
        return ImageError(f"Cannot {what}: the image is not on {engine.label} ({root_cause(e)}); "
                          "`fsrlm image build` builds the default one.")
    if isinstance(e, docker.errors.NotFound):
        return SandboxError(f"Cannot {what}: {engine.label} no longer has it ({root_cause(e)}).")
    if isinstance(e, docker.errors.APIError):
        return SandboxError(f"Cannot {what}: {engine.label} answered {e.status_code}: {root_cause(e)}.")
    if isinstance(e, requests.exceptions.RequestException | docker.errors.DockerException | OSError):
        return ExecutorUnavailable(f"Cannot {what}: {engine.label} is not reachable ({root_cause(e)}); {engine.fix}.")
    return SandboxError(f"Cannot {what} on {engine.label}: {type(e).__name__}: {root_cause(e)}.")


@contextlib.contextmanager
def docker_errors(what: str, engine: EngineRef) -> Iterator[None]:
    """Run docker SDK calls; any error they raise comes out as one fsRLM error saying what to check."""
    try:
        yield
    except FsrlmError:
        raise
    except Exception as e:  # noqa: BLE001 - the table above decides; nothing escapes unmapped
        raise map_docker_error(e, what, engine) from e


def is_not_found(e: BaseException) -> bool:
    """The object (container, volume, image) is already gone: usually fine when removing it."""
    import docker.errors

    cause = e.__cause__ if isinstance(e, FsrlmError) else e
    return isinstance(cause, docker.errors.NotFound)
