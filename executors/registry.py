"""Find an executor backend by name. Backends are imported lazily."""

from __future__ import annotations

import importlib

from fsrlm.executors.base import Executor
from fsrlm.executors.configs import EXECUTOR_TYPES

from fsrlm.errors import ConfigError

# name -> "module:Class"; modules load only when their backend is chosen, so
# ``import fsrlm`` never imports the docker SDK.
_BACKENDS: dict[str, str] = {
    "local": "fsrlm.executors.local:LocalExecutor",
    "docker": "fsrlm.executors.docker.executor:DockerExecutor",
    "remote-docker": "fsrlm.executors.docker.remote:RemoteDockerExecutor",
}
assert set(_BACKENDS) == set(EXECUTOR_TYPES)


def executor_names() -> list[str]:
    return list(_BACKENDS)


def create_executor(config) -> Executor:  # config: one of executors.configs.*
    """Build the executor for ``config`` (its ``type`` picks the backend)."""
    target = _BACKENDS.get(config.type)
    if target is None:
        raise ConfigError(f"Unknown executor {config.type!r}; valid executors: {', '.join(_BACKENDS)}.")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(config)
