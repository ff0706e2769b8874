"""The report of OOLONG results: tables per slice, the RLM beside the model alone, the paper's figures.

Made from the JSONL files of :class:`~benchmarks.results.RowResult` records
that ``benchmarks.oolong`` and ``benchmarks.compare`` write:

- per dataset × context length × task group: score mean ± sd (× 100; F1 for
  OOLONG-Pairs), rows, failures, cost per row mean ± sd with root agent and
  subcalls apart, rows with response-cache hits (their cost is understated;
  the mean of the others is shown too), wall time, subcalls per run;
- the RLM and the root model alone side by side on the rows both answered;
- the paper's figures, labelled as theirs (:mod:`benchmarks.paper`).

Synthetic (generated) rows are marked in every table and never set beside the
paper's figures. Each table says which scoring rules scored its rows.

Command line (re-print a report from files already written)::

    fsrlm bench report oolong-results.jsonl [--compare oolong-compare.jsonl] [--json]
    fsrlm bench report oolong-results.jsonl --rescore [--lenient]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsrlm.benchmarks.oolong_scoring import (
    LENIENT_DEPARTURES,
    SCORING_LENIENT,
    score_answer_detail,
    scoring_name,
)
from fsrlm.benchmarks.paper import paper_json, paper_table
from fsrlm.benchmarks.results import RowResult, json_safe, read_results
from fsrlm.benchmarks.summary import GroupSummary, paired, summarise
from fsrlm.benchmarks.tables import Table, pct_sd, print_tables, usd, usd_sd

from fsrlm.errors import InputError

__all__ = [
    "comparison_json",
    "comparison_table",
    "main",
    "report_json",
    "report_tables",
    "rescore",
    "scoring_note",
]

_GROUP_COLUMNS = ["dataset", "context", "task group", "score ± sd", "runs", "failed", "cached rows",
                  "$/row ± sd", "root $ ± sd", "sub $ ± sd", "$/row uncached", "wall s", "subcalls/run",
                  "cache hit"]


def _ctx(context_len: int | None) -> str:
    return "" if context_len is None else str(context_len)


def _name(dataset: str, synthetic: bool) -> str:
    return dataset if not synthetic or dataset.startswith("synthetic-") else f"{dataset} (synthetic)"


def _group_row(g: GroupSummary) -> list[str]:
    uncached = "—" if g.uncached_cost_mean is None else usd(g.uncached_cost_mean)
    return [_name(g.dataset, g.synthetic), _ctx(g.context_len), g.task_group, pct_sd(g.mean_score, g.score_sd),
            str(g.runs), str(g.failures), str(g.cached_rows), usd_sd(g.cost_mean, g.cost_sd),
            usd_sd(g.root_cost_mean, g.root_cost_sd), usd_sd(g.subcall_cost_mean, g.subcall_cost_sd), uncached,
            f"{g.wall_seconds_mean:.1f}", f"{g.subcalls_per_run:.1f}", f"{g.cache_hit_rate * 100:.0f}%"]


def scoring_note(results: Sequence[RowResult]) -> str:
    """Which rules scored these rows, naming every departure when ``--lenient`` did."""
    kinds = {r.scoring for r in results}
    if SCORING_LENIENT not in kinds:
        return "scored with the OOLONG authors' rules"
    names = ", ".join(d.name for d in LENIENT_DEPARTURES)
    which = "all rows" if kinds == {SCORING_LENIENT} else "some rows"
    return f"{which} scored --lenient, departing from the authors' rules: {names}"


def _notes(results: Sequence[RowResult], groups: Sequence[GroupSummary]) -> str:
    parts = ["score: mean × 100 ± sample sd (F1 for OOLONG-Pairs); failed rows score 0; costs in US dollars per row",
             scoring_note(results)]
    cached = sum(g.cached_rows for g in groups)
    if cached:
        parts.append(f"{cached} rows had response-cache hits, charged $0: their cost is understated "
                     "('$/row uncached' leaves them out)")
    truncated = sum(g.truncated for g in groups)
    if truncated:
        parts.append(f"{truncated} rows had their context truncated to the model's window")
    if any(g.synthetic for g in groups):
        parts.append("SYNTHETIC rows (generated offline) say the pipeline works, nothing about a model")
    return "; ".join(parts)


def report_tables(
    results: Sequence[RowResult],
    *,
    title: str = "OOLONG with fsRLM",
    plain: Sequence[RowResult] | None = None,
) -> list[Table]:
    """The report as tables: per slice, (with ``plain``) RLM vs. the model alone, the paper's figures."""
    groups, overall = summarise(results)
    rows = [_group_row(g) for g in groups] + ([_group_row(overall)] if overall and len(groups) > 1 else [])
    tables = [Table(title=title, columns=_GROUP_COLUMNS, rows=rows, note=_notes(results, groups))]
    if plain is not None:
        tables.append(comparison_table(results, plain))
    tables.append(paper_table(results, plain))
    return tables


def comparison_table(rlm: Sequence[RowResult], plain: Sequence[RowResult]) -> Table:
    """The RLM and the root model alone side by side, per slice, on the rows both answered."""
    pairs, overall = paired(rlm, plain)
    rows = [
        [_name(p.dataset, p.synthetic), _ctx(p.context_len), p.task_group, str(p.rows),
         pct_sd(p.rlm_score, p.rlm_score_sd), pct_sd(p.plain_score, p.plain_score_sd),
         f"{(p.rlm_score - p.plain_score) * 100:+.1f}", usd_sd(p.rlm_cost_mean, p.rlm_cost_sd),
         usd_sd(p.plain_cost_mean, p.plain_cost_sd), f"{p.rlm_failures}/{p.plain_failures}",
         f"{p.rlm_cached_rows}/{p.plain_cached_rows}", str(p.plain_truncated)]
        for p in pairs + ([overall] if overall and len(pairs) > 1 else [])
    ]
    return Table(
        title="RLM vs. root model alone (same rows)",
        columns=["dataset", "context", "task group", "rows", "RLM score ± sd", "alone score ± sd", "Δ",
                 "RLM $/row ± sd", "alone $/row ± sd", "failed RLM/alone", "cached RLM/alone", "truncated"],
        rows=rows,
        note="only rows answered by both are compared; scores × 100; costs are whole-row totals in US dollars; "
             + scoring_note([*rlm, *plain]),
    )


def comparison_json(rlm: Sequence[RowResult], plain: Sequence[RowResult]) -> dict[str, Any]:
    """:func:`comparison_table` as a JSON-able object."""
    pairs, overall = paired(rlm, plain)
    return {"groups": [p.model_dump() for p in pairs], "overall": overall.model_dump() if overall else None}


def report_json(
    results: Sequence[RowResult], *, plain: Sequence[RowResult] | None = None, source: str | None = None
) -> dict[str, Any]:
    """The report as one JSON-able object."""
    groups, overall = summarise(results)
    data: dict[str, Any] = {
        "source": source,
        "scoring": scoring_note(results),
        "groups": [g.model_dump() for g in groups],
        "overall": overall.model_dump() if overall else None,
        "paper_reference": paper_json(results, plain),
    }
    if plain is not None:
        data["comparison"] = comparison_json(results, plain)
    return data


def rescore(results: Sequence[RowResult], *, lenient: bool) -> list[RowResult]:
    """The rows scored again from their stored answers (a failed run still scores 0)."""
    rescored = []
    for r in results:
        if not r.success or not r.answer:
            rescored.append(r.model_copy(update={"score": 0.0, "scoring": scoring_name(lenient)}))
            continue
        try:
            detail = score_answer_detail(r.answer, r.gold, r.answer_type, r.split, lenient=lenient)
        except ValueError as exc:
            rescored.append(r.model_copy(update={"score": 0.0, "scoring": scoring_name(lenient),
                                                 "errors": [*r.errors, f"could not score the answer: {exc}"]}))
            continue
        rescored.append(r.model_copy(update={"score": detail.score, "candidate": json_safe(detail.candidate),
                                             "scoring": scoring_name(lenient)}))
    return rescored


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report of OOLONG results already written by ``benchmarks.oolong``."""
    parser = argparse.ArgumentParser(prog="fsrlm bench report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="results JSONL of benchmarks.oolong")
    parser.add_argument("--compare", type=Path, help="results JSONL of benchmarks.compare, shown side by side")
    parser.add_argument("--rescore", action="store_true",
                        help="score every row again from its stored answer (the authors' rules, or --lenient)")
    parser.add_argument("--lenient", action="store_true",
                        help="with --rescore: apply the named departures from the authors' rules")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    try:
        if args.lenient and not args.rescore:
            raise InputError("--lenient re-scores stored answers: pass it with --rescore")
        if not args.results.is_file():
            raise InputError(f"{args.results}: no such results file")
        results = read_results(args.results)
        if args.compare is not None and not args.compare.is_file():
            raise InputError(f"--compare {args.compare}: no such results file")
        plain = read_results(args.compare) if args.compare else None
    except InputError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.rescore:
        results = rescore(results, lenient=args.lenient)
        plain = rescore(plain, lenient=args.lenient) if plain is not None else None
    if args.json:
        print(json.dumps(report_json(results, plain=plain, source=str(args.results)), indent=2))
    else:
        print_tables(report_tables(results, plain=plain))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
