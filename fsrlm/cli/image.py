"""``fsrlm image build``: build the sandbox image (offline when no registry is reachable)."""

from __future__ import annotations

import json

import click


@click.group()
def image() -> None:
    """Manage the sandbox image."""


@image.command()
@click.option("--base-image", help="Base image with Python 3 (default python:3.11-slim-bookworm, else built locally).")
@click.option("--force", is_flag=True, help="Rebuild even when an up-to-date image exists.")
@click.option("--json", "as_json", is_flag=True)
def build(base_image: str | None, force: bool, as_json: bool) -> None:
    """Build (or reuse) the sandbox image for this fsRLM version."""
    from fsrlm.executors.docker.image import build_image_cli

    tag = build_image_cli(base_image=base_image, force=force)
    click.echo(json.dumps({"image": tag}) if as_json else tag)
