"""The RLM paper's slice in one command: ``fsrlm bench oolong --paper``.

Runs what Table 1 of the Recursive Language Models paper (arXiv:2512.24601v2)
reports for OOLONG and OOLONG-Pairs, with fsRLM's models:

- OOLONG: the 50 ``trec_coarse`` rows at 131,072 tokens of the oolong-synth
  validation split;
- OOLONG-Pairs: the paper's 20 queries over the first ``trec_coarse`` window at
  32,768 tokens, gold from its labelled text (:mod:`benchmarks.oolong_pairs`);

each row once as an RLM run (``benchmarks.oolong``) and once by the root model
alone (``benchmarks.compare``), and prints them side by side with the paper's
GPT-5 figures beside ours, labelled as theirs (never beside synthetic rows).

Usage::

    fsrlm bench oolong --paper [--data validation.parquet] [--out-dir paper-run] [--only oolong|pairs]
        [--limit N] [--resume] [--json] [--lenient] [--concurrency N | --ray auto|ADDRESS]
        [--max-total-usd USD] [--fsrlm-config fsrlm.toml]

Without ``--data`` the rows come from the Hugging Face hub (``datasets``
needed). Results go to four JSONL files in ``--out-dir`` (``oolong-rlm``,
``oolong-alone``, ``pairs-rlm``, ``pairs-alone``); ``--resume`` continues an
interrupted run. ``--limit N`` runs the first N rows of each slice (a trial:
the report says the slice is partial). The four parts run one after the other on one
fleet (this machine, or the Ray cluster of ``--ray``), under one ``--max-total-usd``.
Exit codes as ``benchmarks.oolong``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from fsrlm.benchmarks.compare import add_budget_arguments, baseline_part, check_budget_arguments, solver_for
from fsrlm.benchmarks.harness import ResultsFile, rows_to_run, run_guarded, selected_records
from fsrlm.benchmarks.oolong import add_run_arguments, build_config, rlm_part, setup_logging
from fsrlm.benchmarks.oolong_data import DEFAULT_DATASET, SYNTHETIC_PREFIX, OolongRow, load_rows, load_windows
from fsrlm.benchmarks.oolong_pairs import pairs_rows
from fsrlm.benchmarks.paper import OOLONG_SLICE, PAIRS_SLICE, PaperSlice, paper_json, paper_table
from fsrlm.benchmarks.report import comparison_json, comparison_table, report_json, report_tables
from fsrlm.benchmarks.results import RowResult
from fsrlm.benchmarks.sweep import Part, add_fleet_arguments, fleet_options, sweep, where
from fsrlm.benchmarks.tables import print_tables
from fsrlm.errors import InputError

__all__ = ["PART_FILES", "main", "paper_rows"]

#: Results file of each part of the run, in ``--out-dir``.
PART_FILES = {("oolong", "rlm"): "oolong-rlm.jsonl", ("oolong", "alone"): "oolong-alone.jsonl",
              ("pairs", "rlm"): "pairs-rlm.jsonl", ("pairs", "alone"): "pairs-alone.jsonl"}


def _oolong_rows(args: argparse.Namespace, s: PaperSlice) -> list[OolongRow]:
    return load_rows(data=args.data, dataset_name=args.dataset_name, split=args.split,
                     datasets_filter=[s.dataset, SYNTHETIC_PREFIX + s.dataset], context_len=s.context_len,
                     limit=args.limit if args.limit is not None else s.rows)


def _pairs_rows(args: argparse.Namespace, s: PaperSlice) -> list[OolongRow]:
    from fsrlm.benchmarks.oolong_data import row_from_record

    windows = load_windows(data=args.data, dataset_name=args.dataset_name, split=args.split,
                           dataset=OOLONG_SLICE.dataset, context_len=s.context_len, limit=1)
    if not windows:
        return []
    try:
        rows = pairs_rows(windows[0])
    except ValueError as exc:
        raise InputError(f"OOLONG-Pairs: {exc}") from exc
    limit = args.limit if args.limit is not None else s.rows
    return [row_from_record(row) for row in rows[:limit]]


def paper_rows(args: argparse.Namespace, log: TextIO) -> dict[str, list[OolongRow]]:
    """The rows of each part of the slice (``oolong``, ``pairs``), with a warning when one is not the paper's."""
    parts: dict[str, list[OolongRow]] = {}
    for part, s, load in (("oolong", OOLONG_SLICE, _oolong_rows), ("pairs", PAIRS_SLICE, _pairs_rows)):
        if args.only not in (None, part):
            continue
        rows = load(args, s)
        if not rows:
            raise InputError(f"no rows for the {s.task} slice ({OOLONG_SLICE.dataset} at {s.context_len} tokens) "
                             "in the data: the paper's slice needs the oolong-synth validation split")
        if len(rows) < s.rows:
            why = f"--limit {args.limit}" if args.limit is not None else "the data holds fewer"
            print(f"paper: {s.task}: {len(rows)} of the paper's {s.rows} rows ({why}): a partial slice",
                  file=log)
        if all(row.synthetic for row in rows):
            print(f"paper: {s.task}: the rows are SYNTHETIC (generated offline): the paper's figures are shown "
                  "alone, never beside these", file=log)
        parts[part] = rows
    return parts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsrlm bench oolong --paper",
        description="The RLM paper's OOLONG and OOLONG-Pairs slices: RLM and the root model alone, side by "
                    "side, with the paper's figures (theirs) beside ours.",
    )
    rows = parser.add_argument_group("rows")
    rows.add_argument("--data", type=Path, help="local JSONL/Parquet of the oolong-synth validation split")
    rows.add_argument("--dataset-name", default=DEFAULT_DATASET, help=argparse.SUPPRESS)
    rows.add_argument("--split", default="validation", help="hub split (default validation, the paper's)")
    rows.add_argument("--only", choices=["oolong", "pairs"], help="run one of the two slices")
    rows.add_argument("--limit", type=int, help="the first N rows of each slice (a partial slice, for a trial)")
    parser.add_argument("--lenient", action="store_true", help="score with the named departures from the "
                        "authors' rules (default: exactly theirs)")
    parser.add_argument("--concurrency", type=int, default=4, help="rows run at once (default 4)")
    parser.add_argument("--out-dir", type=Path, default=Path("oolong-paper"),
                        help="folder of the four results files (default oolong-paper)")
    parser.add_argument("--resume", action="store_true", help="skip rows already recorded in --out-dir")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--fsrlm-config", type=Path, help="fsRLM TOML config (default ./fsrlm.toml, FSRLM_*)")
    add_budget_arguments(parser)
    add_run_arguments(parser)
    add_fleet_arguments(parser)
    return parser


def _check(args: argparse.Namespace) -> None:
    if args.concurrency < 1:
        raise InputError("--concurrency must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    check_budget_arguments(args)


def _report(records: dict[tuple[str, str], list[RowResult]], as_json: bool) -> None:
    rlm = [r for (_, kind), rows in records.items() if kind == "rlm" for r in rows]
    alone = [r for (_, kind), rows in records.items() if kind == "alone" for r in rows]
    if as_json:
        data: dict[str, Any] = {"rlm": report_json(rlm), "root_only": report_json(alone),
                                "comparison": comparison_json(rlm, alone), "paper_reference": paper_json(rlm, alone)}
        print(json.dumps(data, indent=2))
        return
    tables = report_tables(rlm, title="The paper's slice: RLM (fsRLM)")[:1]
    tables += report_tables(alone, title="The paper's slice: root model alone")[:1]
    tables.append(comparison_table(rlm, alone))
    tables.append(paper_table(rlm, alone))
    print_tables(tables)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the paper's slice; return the exit code (as ``benchmarks.oolong``)."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    log = sys.stderr

    def body() -> int:
        _check(args)
        options = fleet_options(args)
        config = build_config(args)
        baseline = solver_for(config, args)
        parts = paper_rows(args, log)
        files = {key: ResultsFile(args.out_dir / name) for key, name in PART_FILES.items() if key[0] in parts}
        todo = {key: rows_to_run(parts[key[0]], results, args.resume, log) for key, results in files.items()}
        runs: list[Part] = []
        for (part, kind), rows in todo.items():
            if not rows:
                continue
            title = f"paper: {part}, {'RLM' if kind == 'rlm' else 'root model alone'}: {len(rows)} rows, {where(options)}"
            if kind == "rlm":
                runs.append(rlm_part(rows, config, files[(part, kind)], lenient=args.lenient, title=title))
            else:
                runs.append(baseline_part(rows, baseline, files[(part, kind)], title=title))
        code = asyncio.run(sweep(runs, options, config, environ=dict(os.environ), log=log)).exit_code if runs else 0
        _report({key: selected_records(results, parts[key[0]]) for key, results in files.items()}, args.json)
        return code

    return run_guarded("paper", args.out_dir, body, log)


if __name__ == "__main__":
    raise SystemExit(main())
