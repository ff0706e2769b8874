"""``fsrlm gc``: remove what crashed runs left behind."""

from __future__ import annotations

import asyncio
import json

import click

from fsrlm.errors import ExecutorUnavailable


@click.command()
@click.option("--older-than", default=0.0, type=float, show_default=True,
              help="Leftovers of a crashed orchestrator go at once; those whose orchestrator cannot be checked "
                   "(another machine, older fsRLM) only when older than this many seconds, and with a value "
                   "above 0 also those of runs still going.")
@click.option("--host", help="Clean this remote Docker host (ssh://… or tcp://…) instead of this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def gc(older_than: float, host: str | None, as_json: bool) -> None:
    """Remove sandbox containers, volumes, agent processes and broker sockets left by crashed runs."""
    from fsrlm.broker.endpoint import remove_stale_socket_dirs
    from fsrlm.executors.configs import DockerExecutorConfig, LocalExecutorConfig, RemoteDockerExecutorConfig
    from fsrlm.executors.registry import create_executor  # backends load lazily: the docker SDK only for Docker

    configs = [RemoteDockerExecutorConfig(host=host)] if host else [LocalExecutorConfig(), DockerExecutorConfig()]
    removed: list[str] = []
    notes: list[str] = []
    for config in configs:
        try:
            removed += asyncio.run(create_executor(config).gc(older_than))
        except ExecutorUnavailable as e:
            if host:
                raise
            notes.append(f"skipped {config.type}: {e}")
    if not host:
        removed += [f"broker socket {folder}" for folder in remove_stale_socket_dirs()]
    if as_json:
        click.echo(json.dumps({"removed": removed, "notes": notes}))
    else:
        click.echo("\n".join(removed) if removed else "nothing to remove")
        for note in notes:
            click.echo(note, err=True)
