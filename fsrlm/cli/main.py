"""``fsrlm``: run a Recursive Language Model over a huge input, in a sandbox.

Commands are verbs on nouns: ``fsrlm run``, ``fsrlm gc``, ``fsrlm image build``.
User mistakes print one clear message and exit non-zero, never a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from fsrlm.cli.exit_codes import ExitCode, exit_code_for_error
from fsrlm.cli.terminal import printable
from fsrlm.errors import FsrlmError

# name -> (module under fsrlm.cli, attribute, one line of help). A command's module loads only when
# the command runs, so `fsrlm --help` imports neither the Agent SDK nor the docker SDK.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("run", "run", "Run the RLM over INPUT (a file, or - for stdin) and print the answer."),
    "resume": ("resume", "resume", "Continue the run in WORKSPACE where it stopped, with its own settings."),
    "batch": ("batch", "batch", "Run one fsRLM job per line of JOBS (locally or on a Ray cluster)."),
    "view": ("view", "view", "Serve a page showing a run folder (or a folder of runs) in the browser."),
    "gc": ("gc", "gc", "Remove what crashed runs left behind (containers, volumes, local agents)."),
    "image": ("image", "image", "Build the sandbox image."),
    "bench": ("bench", "bench", "Benchmarks: performance tables and the OOLONG runner."),
    "capacity": ("batch", "capacity", "How many sandboxes this machine can hold at once."),
    "doctor": ("doctor", "doctor", "What the Docker engine offers the sandbox (gVisor, limits, image) and what to do."),
}


class UserLogHandler(logging.Handler):
    """Log lines a user can read: ``fsrlm: warning: ...``; with -v also the level and the module.

    It writes through ``click.echo`` to whatever ``sys.stderr`` is at the time, so the live
    progress panel (which redirects stderr) stays intact.
    """

    def __init__(self, *, detailed: bool) -> None:
        super().__init__()
        fmt = "%(levelname)s %(name)s: %(message)s" if detailed else "fsrlm: %(levelname)s: %(message)s"
        self.setFormatter(_LowerLevelFormatter(fmt) if not detailed else logging.Formatter(fmt))

    def emit(self, record: logging.LogRecord) -> None:
        try:  # log lines quote names and text from the agent's workspace: no control characters
            click.echo(printable(self.format(record)), err=True)
        except Exception:
            self.handleError(record)


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


class FsrlmGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            module, attribute, _ = COMMANDS[name]
            self.add_command(getattr(importlib.import_module(f"fsrlm.cli.{module}"), attribute), name)
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx) if name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FsrlmError as e:
            click.echo(f"fsrlm: {printable(str(e))}", err=True)
            sys.exit(exit_code_for_error(e))
        except KeyboardInterrupt:
            click.echo("fsrlm: interrupted", err=True)
            sys.exit(ExitCode.INTERRUPTED)


@click.group(cls=FsrlmGroup)
@click.version_option(package_name="fsrlm")
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """Run a Recursive Language Model over inputs far larger than a context window.

    The root agent runs in a sandbox with no network and no credentials; a
    host-side broker owns the keys, enforces the limits and caches answers.
    """
    level = logging.WARNING - 10 * verbose
    handler = UserLogHandler(detailed=verbose > 0)
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[handler], force=True)


def main() -> None:
    cli(prog_name="fsrlm")


if __name__ == "__main__":
    main()
