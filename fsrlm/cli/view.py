"""``fsrlm view``: watch a run (or a folder of runs) in the browser."""

from __future__ import annotations

import asyncio
import webbrowser
from pathlib import Path

import click

from fsrlm.errors import ConfigError


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback only, "
              "unless --allow-remote).")
@click.option("--allow-remote", is_flag=True, help="Allow a --host that is not loopback. The viewer has no "
              "login: anyone who can reach it can read the run.")
@click.option("--allow-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="With --allow-remote: also answer requests for this host name (repeatable). IP addresses and "
              "this machine's own names are always answered; other names are refused (DNS rebinding).")
@click.option("--no-browser", is_flag=True, help="Do not open a browser; just print the address.")
def view(path: str, port: int, host: str, allow_remote: bool, allowed_hosts: tuple[str, ...],
         no_browser: bool) -> None:
    """Show the run in PATH in a local web page, live while it runs.

    The page shows the question and input, the agent's turns and tool calls,
    the scripts it wrote, every subcall (prompt, answer, tokens, cost, latency,
    cache status), the artifacts, the answer and the totals. When PATH is a
    folder of runs (such as --workspace of fsrlm run), the page lists them.
    Stop with Ctrl-C.
    """
    from fsrlm.viewer.server import (  # aiohttp: only when serving
        ViewerSettings,
        create_app,
        is_loopback,
        serve,
    )

    if not is_loopback(host):
        if not allow_remote:
            raise ConfigError(f"--host {host} is not a loopback address; the viewer has no login, so it "
                              "listens on 127.0.0.1 only. Pass --allow-remote to serve it anyway.")
        click.echo(f"fsrlm view: warning: serving on {host} without any login; anyone who can reach "
                   f"port {port or '(chosen)'} can read this run, including its input", err=True)
    if allowed_hosts and not allow_remote:
        raise ConfigError("--allow-host only applies with --allow-remote")
    settings = ViewerSettings(path=Path(path), allow_remote=allow_remote, allowed_hosts=allowed_hosts)
    create_app(settings)  # a bad PATH fails here, with one message, before anything listens

    def ready(url: str) -> None:
        click.echo(f"fsrlm view: {Path(path).resolve()} at {url} (Ctrl-C to stop)")
        if not no_browser:
            webbrowser.open(url)

    try:
        asyncio.run(serve(settings, host, port, on_ready=ready))
    except KeyboardInterrupt:
        pass
