"""``fsrlm``: run a Recursive Language Model over a huge input, in a sandbox.

Commands are verbs on nouns: ``fsrlm run``, ``fsrlm gc``, ``fsrlm image build``.
User mistakes print one clear message and exit non-zero, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import click

from fsrlm.cli.exit_codes import ExitCode, exit_code_for_error
from fsrlm.errors import FsrlmError


class FsrlmGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FsrlmError as e:
            click.echo(f"fsrlm: {e}", err=True)
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
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from fsrlm.cli.batch import batch, capacity
    from fsrlm.cli.bench import bench
    from fsrlm.cli.gc import gc
    from fsrlm.cli.image import image
    from fsrlm.cli.resume import resume
    from fsrlm.cli.run import run
    from fsrlm.cli.view import view

    cli.add_command(run)
    cli.add_command(gc)
    cli.add_command(resume)
    cli.add_command(image)
    cli.add_command(view)
    cli.add_command(bench)
    cli.add_command(batch)
    cli.add_command(capacity)


_register()


def main() -> None:
    cli(prog_name="fsrlm")


if __name__ == "__main__":
    main()
