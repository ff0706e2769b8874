"""``fsrlm doctor``: what the Docker engine offers the sandbox (runtimes, gVisor, limits, image) and what to do."""

from __future__ import annotations

import sys
from typing import Any

import click

from fsrlm.cli.exit_codes import ExitCode
from fsrlm.config import load_config
from fsrlm.executors.configs import DockerExecutorConfig, RemoteDockerExecutorConfig

_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "info": "info"}
_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "info": "cyan"}


@click.command()
@click.option("-e", "--executor", type=click.Choice(["docker", "remote-docker"]),
              help="Which executor's engine to examine (default: the configured one; docker when it is local).")
@click.option("--host", help="Examine this remote Docker host (ssh://… or tcp://…); implies remote-docker.")
@click.option("--isolation", type=click.Choice(["auto", "runc", "gvisor"]),
              help="Check this executor.isolation instead of the configured one.")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config (default ./fsrlm.toml).")
@click.option("--probe", is_flag=True, help="Also start one tiny hardened container per kernel (runc, gVisor) and time it.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def doctor(executor: str | None, host: str | None, isolation: str | None, config_path: str | None, probe: bool,
           as_json: bool) -> None:
    """Show what the Docker engine offers the sandbox and what to do for more.

    Runtimes (gVisor or the host's kernel), what executor.isolation picks, seccomp,
    user-namespace remapping, cgroup limits, the storage driver and whether the
    sandbox image is current. Exit code 0 when the configured executor can run as
    configured, 4 when it cannot.
    """
    from fsrlm.executors.docker.doctor import diagnose

    config = load_config(config_path)
    data: dict[str, Any] = {}
    current = config.executor
    if isinstance(current, DockerExecutorConfig | RemoteDockerExecutorConfig):
        data = current.model_dump(exclude={"type"})
        kind = current.type
    else:
        kind = "docker"
    if host:
        kind, data = "remote-docker", {**data, "host": host, "context": None}
    kind = executor or kind
    if kind == "docker":
        data = {k: v for k, v in data.items() if k in DockerExecutorConfig.model_fields}
    else:
        data = {k: v for k, v in data.items() if k in RemoteDockerExecutorConfig.model_fields}
    if isolation:
        data["isolation"] = isolation
    target = (DockerExecutorConfig if kind == "docker" else RemoteDockerExecutorConfig).model_validate(data)

    report = diagnose(target, run_probes=probe)
    if as_json:
        click.echo(report.model_dump_json())
    else:
        _print(report)
    sys.exit(ExitCode.SUCCESS if report.ok else ExitCode.SANDBOX_ERROR)


def _print(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False)
    console.print(f"[bold]fsrlm doctor[/bold]: executor {report.executor}, engine {report.engine}")
    checks = Table(show_lines=False, expand=False)
    for column in ("check", "", "what the engine offers", "to do"):
        checks.add_column(column, overflow="fold")
    for c in report.checks:
        checks.add_row(c.name, f"[{_STYLE[c.status]}]{_MARK[c.status]}[/]", c.value, c.fix)
    console.print(checks)
    if report.runtimes:
        runtimes = Table(title="runtimes", expand=False)
        for column in ("name", "kernel", "path and arguments", "usable"):
            runtimes.add_column(column, overflow="fold")
        for r in report.runtimes:
            kernel = r.kernel + (f" ({r.platform})" if r.platform else "")
            usable = "yes" if r.usable else ("lacks " + " ".join(r.missing) if r.missing else "no")
            runtimes.add_row(r.name, kernel, " ".join([r.path, *r.args]), usable)
        console.print(runtimes)
    if report.probes:
        probes = Table(title="probes (one hardened container each)", expand=False)
        for column in ("runtime", "", "seconds", "kernel seen", "detail"):
            probes.add_column(column, overflow="fold")
        for p in report.probes:
            probes.add_row(p.runtime, "[green]ok[/]" if p.ok else "[bold red]FAIL[/]", f"{p.seconds:.2f}", p.kernel,
                           p.detail)
        console.print(probes)
    verdict = "[green]ready[/green]" if report.ok else "[bold red]not ready[/bold red]: see FAIL above"
    console.print(f"{report.executor}: {verdict}" + (f"; runs get {report.isolation.label()}" if report.isolation
                                                       and report.ok else ""))

