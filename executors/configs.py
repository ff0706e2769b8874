"""Configuration of each executor backend, discriminated on ``type``.

Kept apart from the backends themselves so that loading a configuration never
imports the docker SDK.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Isolation = Literal["auto", "runc", "gvisor"]


class _ExecutorConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalExecutorConfig(_ExecutorConfigBase):
    """Run the agent as a host process. Isolates nothing: trusted input only."""

    type: Literal["local"] = "local"
    cli_path: str | None = Field(
        default=None, description="Claude Code CLI to run; default: the one bundled in claude-agent-sdk"
    )


class _ContainerLimits(_ExecutorConfigBase):
    image: str | None = Field(default=None, description="sandbox image; default: fsrlm-sandbox:<version>")
    memory: str = Field(default="2g", description="memory limit (swap included)")
    cpus: float = Field(default=1.0, gt=0, description="CPU limit")
    pids_limit: int = Field(default=256, ge=32)
    tmpfs_size: str = Field(default="256m", description="size cap of each tmpfs (/tmp, home, CLI dirs)")
    isolation: Isolation = Field(
        default="auto",
        description="the sandbox's kernel: 'gvisor' (gVisor's user-space kernel, runsc: the agent never talks to "
        "the host's kernel), 'runc' (containers share the host's kernel), or 'auto': gvisor when the Docker engine "
        "has a gVisor runtime registered with the arguments fsRLM needs (`fsrlm doctor`), else runc",
    )
    runtime: str | None = Field(
        default=None,
        description="the engine's name of the OCI runtime to use, when it is not the one isolation picks (e.g. a "
        "gVisor runtime registered as 'gvisor', or crun); it must be a gVisor runtime for isolation='gvisor' and "
        "must not be one for isolation='runc'",
    )
    max_result_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="cap on any file read back")




class DockerExecutorConfig(_ContainerLimits):
    """Run the agent in a locked-down container on the local Docker engine."""

    type: Literal["docker"] = "docker"
    warm: int = Field(
        default=0, ge=0, le=64,
        description="sandboxes an RLM object (or fsrlm batch, or a benchmark sweep) starts ahead of time, the CLI "
        "already waiting inside; each serves exactly one run and is then destroyed. 0: every run starts cold",
    )
    share_cli: bool = Field(
        default=True,
        description="with the default image, mount this machine's copy of the CLI read-only over the image's "
        "identical copy (the image's fingerprint proves they match); spares reading 400 MB through slow "
        "storage drivers such as fuse-overlayfs on every run",
    )


class RemoteDockerExecutorConfig(_ContainerLimits):
    """Run the agent in the same container on a Docker engine reached over the network."""

    type: Literal["remote-docker"] = "remote-docker"
    host: str | None = Field(
        default=None, description="ssh://user@host or tcp://host:2376; default: DOCKER_HOST, then the Docker context"
    )
    context: str | None = Field(default=None, description="Docker context to take the host from; default: DOCKER_CONTEXT")
    tls_verify: bool | None = Field(default=None, description="verify the host's TLS certificate; default: DOCKER_TLS_VERIFY")
    cert_path: str | None = Field(
        default=None, description="folder with ca.pem, cert.pem, key.pem; default: DOCKER_CERT_PATH, then ~/.docker"
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="seconds to wait for the host to answer a ping")
    max_collect_bytes: int = Field(
        default=16 * 1024**3, gt=0, description="cap on the file data copied back from the workspace"
    )
    max_collect_files: int = Field(default=200_000, gt=0, description="cap on the entries copied back")


ExecutorConfig = Annotated[
    Union[LocalExecutorConfig, DockerExecutorConfig, RemoteDockerExecutorConfig],
    Field(discriminator="type"),
]

EXECUTOR_TYPES = ("local", "docker", "remote-docker")
