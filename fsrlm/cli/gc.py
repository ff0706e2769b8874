"""``fsrlm gc``: remove what crashed runs left behind."""

from __future__ import annotations

import asyncio
import json

import click

from executors.registry import create_executor


@click.command()
@click.option("--older-than", default=0.0, type=float, show_default=True,
              help="Only remove leftovers older than this many seconds.")
@click.option("--host", help="A remote Docker host (ssh://… or tcp://…) to clean instead of the local engine.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def gc(older_than: float, host: str | None, as_json: bool) -> None:
    """Remove sandbox containers and volumes left by crashed runs (found by label)."""
    from executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig

    config = RemoteDockerExecutorConfig(host=host) if host else DockerExecutorConfig()
    executor = create_executor(config)
    removed = asyncio.run(executor.gc(older_than))
    if as_json:
        click.echo(json.dumps({"removed": removed}))
    else:
        click.echo("\n".join(removed) if removed else "nothing to remove")
