"""Run OOLONG through fsRLM: one RLM run per row, scored exactly as the OOLONG authors score.

Each row is one run: the row's context window text is the input, its question
is the question. Rows run on this machine up to ``--concurrency`` at a time, or
with ``--ray auto|ADDRESS`` as Ray tasks on a cluster, through the fan-out of
``fsrlm batch`` (:mod:`benchmarks.sweep`), each with its own workspace, broker
and sandbox (whichever executor is configured). A row that crashes, times out,
ends without an answer or loses its node on every attempt scores 0 and is
recorded; it never stops the benchmark. Every finished row is appended at once
as one JSON line to ``--out``, exactly once, so an interrupted benchmark picks
up where it stopped with ``--resume``. At the end a report is printed (``--json``
for JSON).

Usage::

    fsrlm bench oolong --data rows.jsonl --dataset trec_coarse --context-len 131072 \\
        --limit 50 --concurrency 4 --out results.jsonl [--resume] [--json]
    fsrlm bench oolong --dataset-name oolongbench/oolong-real --config dnd --split test
    fsrlm bench oolong --data rows.jsonl --ray auto --max-total-usd 200 --out results.jsonl

Model, upstream, limits and executor come from the fsRLM configuration
(``--fsrlm-config``, ``./fsrlm.toml``, ``FSRLM_*``), as for ``fsrlm run``.

Rows are chosen by dataset, task group and length: ``--context-len`` (exact)
or ``--min-context-len``/``--max-context-len`` (``min < length <= max``, as
the authors' harness). oolong-real rows chosen by length are counted with the
root model's tokenizer first (``--real-lengths count``, the authors' way).
Answers are scored exactly as the OOLONG authors score them unless
``--lenient`` is given; each record and report says which.

``--paper`` runs the RLM paper's slice instead (:mod:`benchmarks.paper_run`).

Exit codes: 0 the benchmark finished (whatever the scores); 2 bad arguments,
configuration, data or credentials (nothing ran); 3 ``--max-total-usd`` stopped
the sweep (the rows left run with ``--resume``); 4 the executor or the Ray
cluster is not usable; 130 interrupted (finished rows are kept: rerun with
``--resume``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsrlm.benchmarks.harness import (
    HARNESS_GRACE_SECONDS,
    ResultsFile,
    failed_result,
    now_iso,
    row_fields,
    rows_to_run,
    run_guarded,
    score_row,
    selected_records,
)
from fsrlm.benchmarks.oolong_data import DEFAULT_DATASET, LengthFilter, OolongRow, load_rows
from fsrlm.benchmarks.oolong_scoring import score_answer
from fsrlm.benchmarks.report import report_json, report_tables
from fsrlm.benchmarks.results import RowResult
from fsrlm.benchmarks.row_task import RowSolver
from fsrlm.benchmarks.sweep import Part, add_fleet_arguments, fleet_options, sweep, where
from fsrlm.benchmarks.tables import print_tables
from fsrlm.broker.upstreams import check_credentials
from fsrlm.config import RLMConfig, load_config
from fsrlm.errors import InputError
from fsrlm.executors.configs import EXECUTOR_TYPES
from fsrlm.results import RLMResult
from fsrlm.rlm import RLM

__all__ = [
    "RlmSolver",
    "add_row_arguments",
    "build_config",
    "check_arguments",
    "failed_result",
    "load_selected_rows",
    "main",
    "result_from_rlm",
    "rlm_part",
    "score_answer",
]

logger = logging.getLogger(__name__)


def result_from_rlm(row: OolongRow, result: RLMResult, model: str | None = None, *,
                    lenient: bool = False) -> RowResult:
    """The record of one finished RLM run, scored (the answer as the run returned it)."""
    score, candidate, problems = score_row(row, result.answer, result.success, lenient=lenient)
    m = result.metrics
    return RowResult(
        **row_fields(row, lenient=lenient), method="rlm", answer=result.answer, candidate=candidate, score=score,
        success=result.success, stop_reason=result.stop_reason, errors=[*result.errors, *problems],
        root_cost_usd=m.root_cost_usd, subcall_cost_usd=m.subcall_cost_usd, total_cost_usd=m.total_cost_usd,
        wall_seconds=m.wall_seconds, subcalls=m.subcalls, cached=m.subcalls_cached, turns=m.turns,
        model=model, run_id=result.run_id,
        workspace_path=str(result.workspace_path) if result.workspace_path else None, finished_at=now_iso(),
    )


class RlmSolver(RowSolver):
    """One RLM run per row: the row's context window is the input, its question the question.

    The rows a solver answers in one process share one ``RLM`` object, and so its warm pool
    (``executor.warm``), which ``close`` removes; a copy sent to a Ray node starts without one.
    """

    def __init__(self, config: RLMConfig, *, lenient: bool = False) -> None:
        super().__init__(config, lenient=lenient)
        self._rlm: RLM | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rlm": None}

    def with_config(self, config: RLMConfig) -> RlmSolver:
        clone = super().with_config(config)
        clone._rlm = None
        return clone

    async def __call__(self, row: OolongRow) -> RowResult:
        if self._rlm is None:
            self._rlm = RLM(self.config)
        result = await self._rlm.ainvoke(row.context_window_text, question=row.question)
        return result_from_rlm(row, result, model=self.config.effective_root_model, lenient=self.lenient)

    def close(self) -> None:
        if self._rlm is not None:
            self._rlm.close()
            self._rlm = None


def rlm_part(rows: Sequence[OolongRow], config: RLMConfig, results: ResultsFile, *, lenient: bool,
             title: str | None = None) -> Part:
    """Rows answered by RLM runs, recorded in ``results`` (a run gets its timeout plus the harness's grace)."""
    return Part(rows=rows, solve=RlmSolver(config, lenient=lenient), results=results,
                row_timeout=config.timeout_seconds + HARNESS_GRACE_SECONDS, title=title)


def add_row_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose rows and score them, shared with ``benchmarks.compare``."""
    group = parser.add_argument_group("rows")
    group.add_argument("--data", type=Path, help="local JSONL or Parquet file of rows (no hub access needed)")
    group.add_argument("--dataset-name", default=DEFAULT_DATASET,
                       help="hub dataset: oolongbench/oolong-synth (default) or oolongbench/oolong-real")
    group.add_argument("--config", dest="hub_config", metavar="CONFIG",
                       help="hub configuration (dnd for oolong-real)")
    group.add_argument("--split", default="validation", help="hub split: validation (default) or test")
    group.add_argument("--dataset", action="append", dest="datasets", metavar="NAME",
                       help="keep rows of this dataset (trec_coarse, spam, …); repeatable")
    group.add_argument("--context-len", type=int, help="keep rows of exactly this context length (e.g. 131072)")
    group.add_argument("--min-context-len", type=int, metavar="N",
                       help="keep rows longer than N tokens (the authors' harness: N < length)")
    group.add_argument("--max-context-len", type=int, metavar="N",
                       help="keep rows of at most N tokens (the authors' harness: length <= N)")
    group.add_argument("--real-lengths", choices=["count", "estimate"], default="count",
                       help="oolong-real rows chosen by length: count their tokens with the root model's "
                            "tokenizer as the authors do (default; no model is called) or estimate chars / 4")
    group.add_argument("--task-group", help="keep rows of this task group (counting, user, timeline, pairs)")
    group.add_argument("--limit", type=int, help="keep at most this many rows")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--lenient", action="store_true",
                         help="score with the named departures from the authors' rules (see the report); "
                              "default: exactly the authors' rules")
    run = parser.add_argument_group("running")
    run.add_argument("--concurrency", type=int, default=4, help="rows run at once (default 4)")
    run.add_argument("--resume", action="store_true", help="skip rows already recorded in --out")
    run.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    run.add_argument("--fsrlm-config", type=Path, help="fsRLM TOML config (default ./fsrlm.toml, FSRLM_*)")


def _lengths(args: argparse.Namespace) -> LengthFilter:
    return LengthFilter(args.context_len, args.min_context_len, args.max_context_len)


def load_selected_rows(args: argparse.Namespace, config: RLMConfig) -> list[OolongRow]:
    """The rows the options choose; oolong-real rows chosen by length are measured first (``--real-lengths``)."""
    lengths = _lengths(args)
    common = {"data": args.data, "dataset_name": args.dataset_name, "split": args.split, "config": args.hub_config,
              "datasets_filter": args.datasets, "task_group": args.task_group, "context_len": lengths.exact,
              "min_context_len": lengths.minimum, "max_context_len": lengths.maximum}
    if not (lengths.active and args.real_lengths == "count"):
        return load_rows(**common, limit=args.limit)
    # Rows whose length is an estimate (oolong-real) are measured, then filtered and limited.
    rows = load_rows(**common, defer_estimated=True)
    if any(row.context_len_source != "dataset" for row in rows):
        from fsrlm.benchmarks.oolong_lengths import measure_lengths

        check_credentials(config.upstream)
        rows = [row for row in measure_lengths(rows, config) if lengths.keeps(row.context_len)]
    return rows[: args.limit] if args.limit is not None else rows


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse option values argparse lets through."""
    if args.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    if args.limit is not None and args.limit < 0:
        raise InputError("--limit must not be negative")
    low, high = args.min_context_len, args.max_context_len
    if low is not None and high is not None and low >= high:
        raise InputError(f"--min-context-len {low} must be below --max-context-len {high} "
                         "(rows are kept when min < length <= max)")


def build_config(args: argparse.Namespace) -> RLMConfig:
    """The fsRLM configuration of the runs: the config file and environment, with the command's overrides."""
    overrides: dict[str, Any] = {}
    if getattr(args, "executor", None):
        overrides["executor"] = {"type": args.executor}
    if getattr(args, "timeout", None) is not None:
        overrides["timeout_seconds"] = args.timeout
    if getattr(args, "workspace", None):
        overrides["workspace_dir"] = str(args.workspace)
    return load_config(args.fsrlm_config, overrides=overrides)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how long each RLM run goes (as for ``fsrlm run``)."""
    parser.add_argument("--executor", choices=EXECUTOR_TYPES, help="where each run's agent runs (default: config)")
    parser.add_argument("--timeout", type=float, help="seconds per row (timeout_seconds; default: config)")
    parser.add_argument("--workspace", type=Path, help="parent folder of the run folders (failed runs are kept)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsrlm bench oolong",
        description="Run OOLONG rows through fsRLM (one sandboxed RLM run per row) and report the scores. "
                    "With --paper: the RLM paper's slice, RLM and baseline side by side (see --paper --help).",
    )
    add_row_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("oolong-results.jsonl"),
                        help="results JSONL, one line per finished row (default oolong-results.jsonl)")
    add_run_arguments(parser)
    add_fleet_arguments(parser)
    return parser


def setup_logging(verbose: int) -> None:
    logging.basicConfig(level=max(logging.DEBUG, logging.WARNING - 10 * verbose),
                        format="%(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--paper" in argv:
        from fsrlm.benchmarks.paper_run import main as paper_main

        return paper_main([a for a in argv if a != "--paper"])
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    log = sys.stderr
    results = ResultsFile(args.out)

    def body() -> int:
        check_arguments(args)
        options = fleet_options(args)
        config = build_config(args)
        rows = load_selected_rows(args, config)
        todo = rows_to_run(rows, results, args.resume, log)
        code = 0
        if todo:
            print(f"running {len(todo)} rows, {where(options)}, executor {config.executor.type}; "
                  f"results go to {results.path}", file=log)
            part = rlm_part(todo, config, results, lenient=args.lenient)
            code = asyncio.run(sweep([part], options, config, environ=dict(os.environ), log=log)).exit_code
        records = selected_records(results, rows)
        if args.json:
            print(json.dumps(report_json(records, source=str(results.path)), indent=2))
        else:
            print_tables(report_tables(records, title="OOLONG with fsRLM"))
        return code

    return run_guarded("oolong", results.path, body, log)


if __name__ == "__main__":
    raise SystemExit(main())
