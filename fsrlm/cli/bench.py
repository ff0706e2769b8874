"""``fsrlm bench ...``: the benchmarks, as commands of the one command line.

Each subcommand hands its arguments to the benchmark module's own parser, so
``fsrlm bench oolong --help`` shows that module's options. The modules load
only when their command runs (``fsrlm --help`` stays fast).
"""

from __future__ import annotations

import importlib
import sys

import click

# command -> (module under fsrlm.benchmarks, one line of help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "perf": ("perf", "Performance tables: per-run overhead, broker overhead, the reference jobs."),
    "oolong": ("oolong", "Run fsRLM over OOLONG rows and score them as the OOLONG authors do (--paper: the "
                         "RLM paper's slice, RLM and baseline side by side)."),
    "compare": ("compare", "The baseline: the root model alone over the same OOLONG rows."),
    "report": ("report", "Print the report of OOLONG results already written."),
    "synth": ("oolong_synth_gen", "Generate OOLONG-shaped rows offline (marked synthetic)."),
    "pairs": ("oolong_pairs", "Make the 20 OOLONG-Pairs rows over one labelled window (or a generated one)."),
    "scripted-oolong": ("scripted_oolong", "The offline OOLONG demo: generated rows, a scripted model, the real CLI."),
    "batch": ("batch_ray", "fsrlm batch on 1 vs 3 Ray nodes of this machine, and Ray's per-job overhead."),
    "remote": ("remote", "Remote-docker transfer benchmark (needs a second Docker engine)."),
}


@click.group()
def bench() -> None:
    """Benchmarks: performance tables and the OOLONG runner (see benchmarks/README.md)."""


def _make(name: str, module: str, summary: str) -> click.Command:
    @click.command(name=name, help=summary + " Options: `fsrlm bench " + name + " --help`.",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                     "help_option_names": []}, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        main = importlib.import_module(f"fsrlm.benchmarks.{module}").main
        sys.exit(main(list(args)))

    return command


for _name, (_module, _summary) in BENCHMARKS.items():
    bench.add_command(_make(_name, _module, _summary))
