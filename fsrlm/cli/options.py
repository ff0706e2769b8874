"""Command-line options shared by the commands that start runs (``fsrlm run``, ``fsrlm batch``)."""

from __future__ import annotations

from collections.abc import Callable

import click


def model_options(command: Callable) -> Callable:
    """``--root-model``, ``--submodel``, ``--max-turns``, ``--max-budget-usd``, ``--timeout``: config overrides."""
    for option in reversed([
        click.option("--root-model", help="Model of the root agent."),
        click.option("--submodel", help="Model for subcalls from scripts."),
        click.option("--max-turns", type=int, help="Turns the root agent may take in each run (default 50)."),
        click.option("--max-budget-usd", type=float,
                     help="Dollar cap of each run: root agent, subcalls and nested runs (default 25; the README's "
                          "cost table shows what inputs cost)."),
        click.option("--timeout", "timeout_seconds", type=float, help="Wall-clock limit of each run in seconds."),
    ]):
        command = option(command)
    return command
