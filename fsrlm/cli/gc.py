"""``fsrlm gc``: remove what crashed runs left behind, and (``--runs``) old kept run folders."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import click

from fsrlm.errors import ConfigError, ExecutorUnavailable


@click.command()
@click.option("--older-than", "older_than_text", metavar="AGE",
              help="An age: 3600 (seconds), 30m, 12h, 7d, 2w. Leftovers of a crashed orchestrator go at once; "
                   "those whose orchestrator cannot be checked (another machine, older fsRLM) only when older "
                   "than this, and with an age above 0 also those of runs still going. With --runs: remove run "
                   "folders idle for longer than this (required).")
@click.option("--runs", is_flag=True, help="Remove kept run folders (each holds a copy of its input) and their "
              "host-side records, instead of sandbox leftovers. Runs that may still be going are kept.")
@click.option("-w", "--workspace", "parents", multiple=True, type=click.Path(file_okay=False),
              help="With --runs: also look for run folders in this parent folder (repeatable; the configured "
                   "workspace_dir, the temp folder and every run this machine recorded are always looked at).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML config (default ./fsrlm.toml): where the cache and workspace_dir are.")
@click.option("--dry-run", is_flag=True, help="With --runs: only list what would be removed.")
@click.option("--host", help="Clean this remote Docker host (ssh://… or tcp://…) instead of this machine.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def gc(older_than_text: str | None, runs: bool, parents: tuple[str, ...], config_path: str | None, dry_run: bool,
       host: str | None, as_json: bool) -> None:
    """Remove sandbox containers, volumes, agent processes and broker sockets left by crashed runs.

    With --runs, remove old kept run folders instead: fsrlm gc --runs --older-than 7d.
    """
    from fsrlm.prune import parse_age

    older_than = parse_age(older_than_text) if older_than_text is not None else None
    if runs:
        if older_than is None:
            raise ConfigError("fsrlm gc --runs needs --older-than AGE (e.g. 7d): run folders idle for longer "
                              "than that are removed, with what they hold")
        _gc_runs(older_than, [Path(p) for p in parents], config_path, dry_run, as_json)
        return
    if dry_run or parents:
        raise ConfigError("--dry-run and --workspace go with --runs")
    from fsrlm.broker.endpoint import remove_stale_socket_dirs
    from fsrlm.executors.configs import DockerExecutorConfig, LocalExecutorConfig, RemoteDockerExecutorConfig
    from fsrlm.executors.registry import create_executor  # backends load lazily: the docker SDK only for Docker

    configs = [RemoteDockerExecutorConfig(host=host)] if host else [LocalExecutorConfig(), DockerExecutorConfig()]
    removed: list[str] = []
    notes: list[str] = []
    for config in configs:
        try:
            removed += asyncio.run(create_executor(config).gc(older_than or 0.0))
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


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def _age(seconds: float) -> str:
    for unit, length in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} seconds"


def _gc_runs(older_than: float, parents: list[Path], config_path: str | None, dry_run: bool, as_json: bool) -> None:
    from fsrlm.config import load_config
    from fsrlm.prune import find_runs, orphan_records, remove_run, select_old

    config = load_config(config_path)
    if config.workspace_dir is not None:
        parents.append(config.workspace_dir)
    cache_dir = config.effective_cache_dir
    now = time.time()
    old, kept = select_old(find_runs(cache_dir, parents), older_than, config.timeout_seconds, now)
    orphans = orphan_records(cache_dir, max(older_than, config.timeout_seconds), now)
    if not dry_run:
        for run in old:
            remove_run(run, cache_dir)
        for record in orphans:
            record.unlink(missing_ok=True)
    freed = sum(r.size_bytes for r in old)
    if as_json:
        click.echo(json.dumps({
            "removed" if not dry_run else "would_remove": [
                {"run_id": r.run_id, "path": str(r.path), "size_bytes": r.size_bytes,
                 "idle_seconds": round(now - r.last_activity)} for r in old],
            "freed_bytes": 0 if dry_run else freed,
            "kept": [str(r.path) for r in kept],
            "records_of_removed_folders": len(orphans),
        }))
        return
    verb = "would remove" if dry_run else "removed"
    for r in old:
        click.echo(f"{verb} {r.path} ({_size(r.size_bytes)}, idle {_age(now - r.last_activity)})")
    click.echo(f"{verb} {len(old)} run folder{'s' if len(old) != 1 else ''} ({_size(freed)}); kept {len(kept)} "
               f"({_size(sum(r.size_bytes for r in kept))}) that were active in the last {_age(older_than)} "
               "or may still be going", err=True)
    if orphans:
        click.echo(f"{verb} {len(orphans)} host-side record{'s' if len(orphans) != 1 else ''} of runs whose folder "
                   f"is gone ({cache_dir / 'runs'})", err=True)
