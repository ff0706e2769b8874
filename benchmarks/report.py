"""Results of OOLONG runs: the JSONL record of one row, and the tables made from them.

Both ``benchmarks.oolong`` (the RLM) and ``benchmarks.compare`` (the root model
alone) write one :class:`RowResult` per finished row, as one JSON line. This
module reads those files back and builds:

- :func:`summarise`: one :class:`GroupSummary` per dataset × context length ×
  task group, plus an overall one: mean score, runs, failures, mean and median
  cost (root and subcalls apart), mean wall time, subcalls per run, cache hit
  rate;
- :func:`paired`: the RLM and the plain model side by side on the rows both
  answered;
- the paper's reference figures, always labelled as the paper's, never ours.

Tables go to a terminal through ``rich`` and anywhere else as plain text;
``--json`` prints :func:`report_json` instead.

Command line (re-print a report from files already written)::

    fsrlm bench report oolong-results.jsonl [--compare oolong-compare.jsonl] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fsrlm.errors import InputError

__all__ = [
    "PAPER_REFERENCE",
    "GroupSummary",
    "PairedSummary",
    "PaperFigure",
    "RowResult",
    "Table",
    "comparison_json",
    "comparison_table",
    "json_safe",
    "paired",
    "print_tables",
    "read_results",
    "report_json",
    "report_tables",
    "summarise",
]

Method = Literal["rlm", "root-only"]
GroupKey = tuple[str, int, str]
_ALL = "(all)"


class RowResult(BaseModel):
    """One finished OOLONG row: what was asked, what came back, what it cost.

    ``score`` is 0 whenever ``success`` is false (a crash, a timeout, a run that
    wrote no answer), whatever partial answer there was. ``cached`` counts the
    subcalls answered from the response cache (for the root model alone: 1 when
    its one call was). Costs are the broker's own figures in US dollars.
    """

    model_config = ConfigDict(extra="ignore")

    id: int | str
    method: Method = "rlm"
    dataset: str = ""
    context_len: int = 0
    task_group: str = ""
    task: str = ""
    answer_type: str = ""
    split: str = "synth"
    gold: str
    answer: str | None = None
    candidate: Any = None
    score: float = Field(ge=0, le=1)
    success: bool
    stop_reason: str
    errors: list[str] = Field(default_factory=list)
    root_cost_usd: float = 0.0
    subcall_cost_usd: float = 0.0
    total_cost_usd: float = 0.0
    wall_seconds: float = 0.0
    subcalls: int = 0
    cached: int = 0
    turns: int = 0
    truncated: bool = False
    model: str | None = None
    run_id: str | None = None
    workspace_path: str | None = None
    finished_at: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a row across files: its dataset and its id."""
        return (self.dataset, str(self.id))

    @property
    def group(self) -> GroupKey:
        return (self.dataset, self.context_len, self.task_group)


def json_safe(value: Any) -> Any:
    """``value`` made JSON-able: dates as ISO text, tuples as lists, the rest as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return str(value)


def read_results(path: Path) -> list[RowResult]:
    """Read a results file; the last record of a row wins. A missing file reads as empty.

    Raises:
        InputError: a line is not a JSON object or not a result record (the
            message names the line). A last line cut short by a crash is skipped.
    """
    if not path.exists():
        return []
    by_key: dict[tuple[str, str], RowResult] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = RowResult.model_validate_json(line)
        except ValidationError as exc:
            if number == len(lines) and not line.rstrip().endswith("}"):
                continue  # an interrupted write; the row will simply run again
            raise InputError(f"{path}:{number}: not an OOLONG result record ({exc.errors()[0]['msg']})") from None
        by_key[record.key] = record
    return list(by_key.values())


# ----------------------------------------------------------------- aggregation


class GroupSummary(BaseModel):
    """Figures for one dataset × context length × task group (or ``(all)``)."""

    dataset: str
    context_len: int | None
    task_group: str
    runs: int
    failures: int
    mean_score: float
    root_cost_mean: float
    root_cost_median: float
    subcall_cost_mean: float
    subcall_cost_median: float
    total_cost: float
    wall_seconds_mean: float
    subcalls_per_run: float
    cache_hit_rate: float
    truncated: int = 0


def _summary(dataset: str, context_len: int | None, task_group: str, rows: Sequence[RowResult]) -> GroupSummary:
    root = [r.root_cost_usd for r in rows]
    sub = [r.subcall_cost_usd for r in rows]
    answered = sum(r.subcalls + r.cached for r in rows)
    return GroupSummary(
        dataset=dataset,
        context_len=context_len,
        task_group=task_group,
        runs=len(rows),
        failures=sum(1 for r in rows if not r.success),
        mean_score=statistics.fmean(r.score for r in rows),
        root_cost_mean=statistics.fmean(root),
        root_cost_median=statistics.median(root),
        subcall_cost_mean=statistics.fmean(sub),
        subcall_cost_median=statistics.median(sub),
        total_cost=sum(r.total_cost_usd for r in rows),
        wall_seconds_mean=statistics.fmean(r.wall_seconds for r in rows),
        subcalls_per_run=answered / len(rows),
        cache_hit_rate=sum(r.cached for r in rows) / answered if answered else 0.0,
        truncated=sum(1 for r in rows if r.truncated),
    )


def _grouped(results: Iterable[RowResult]) -> dict[GroupKey, list[RowResult]]:
    groups: dict[GroupKey, list[RowResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    return dict(sorted(groups.items()))


def summarise(results: Sequence[RowResult]) -> tuple[list[GroupSummary], GroupSummary | None]:
    """One summary per dataset × context length × task group, and one over everything."""
    groups = [_summary(*key, rows) for key, rows in _grouped(results).items()]
    overall = _summary(_ALL, None, _ALL, results) if results else None
    return groups, overall


class PairedSummary(BaseModel):
    """The RLM and the root model alone on the same rows of one group."""

    dataset: str
    context_len: int | None
    task_group: str
    rows: int
    rlm_score: float
    plain_score: float
    rlm_cost_mean: float
    plain_cost_mean: float
    rlm_failures: int
    plain_failures: int
    plain_truncated: int


def paired(rlm: Sequence[RowResult], plain: Sequence[RowResult]) -> tuple[list[PairedSummary], PairedSummary | None]:
    """Side-by-side figures over the rows present in both ``rlm`` and ``plain``."""
    by_key = {r.key: r for r in plain}
    pairs = [(r, by_key[r.key]) for r in rlm if r.key in by_key]

    def one(dataset: str, context_len: int | None, task_group: str,
            items: Sequence[tuple[RowResult, RowResult]]) -> PairedSummary:
        return PairedSummary(
            dataset=dataset, context_len=context_len, task_group=task_group, rows=len(items),
            rlm_score=statistics.fmean(a.score for a, _ in items),
            plain_score=statistics.fmean(b.score for _, b in items),
            rlm_cost_mean=statistics.fmean(a.total_cost_usd for a, _ in items),
            plain_cost_mean=statistics.fmean(b.total_cost_usd for _, b in items),
            rlm_failures=sum(1 for a, _ in items if not a.success),
            plain_failures=sum(1 for _, b in items if not b.success),
            plain_truncated=sum(1 for _, b in items if b.truncated),
        )

    groups: dict[GroupKey, list[tuple[RowResult, RowResult]]] = {}
    for pair in pairs:
        groups.setdefault(pair[0].group, []).append(pair)
    summaries = [one(*key, items) for key, items in sorted(groups.items())]
    return summaries, (one(_ALL, None, _ALL, pairs) if pairs else None)


# ------------------------------------------------------------ paper reference


class PaperFigure(BaseModel):
    """A published score, printed for orientation only; ``method`` is the kind of run it matches."""

    system: str
    method: Method
    dataset: str
    context_len: int
    score: float


#: Recursive Language Models (arXiv:2512.24601), OOLONG trec_coarse at 131K tokens.
PAPER_REFERENCE: tuple[PaperFigure, ...] = (
    PaperFigure(system="RLM with GPT-5", method="rlm", dataset="trec_coarse", context_len=131072, score=56.0),
    PaperFigure(system="GPT-5 alone", method="root-only", dataset="trec_coarse", context_len=131072, score=44.0),
)
PAPER_SOURCE = "Recursive Language Models, arXiv:2512.24601"
PAPER_NOTE = f"the paper's figures ({PAPER_SOURCE}), not measured here; other models and rows than ours"


def _ours_at(figure: PaperFigure, *result_sets: Sequence[RowResult] | None) -> float | None:
    """Our mean score on the figure's slice, from runs of the figure's kind (RLM or model alone)."""
    scores = [r.score for results in result_sets if results for r in results
              if r.method == figure.method and r.dataset == figure.dataset and r.context_len == figure.context_len]
    return statistics.fmean(scores) if scores else None


# --------------------------------------------------------------------- tables


class Table(BaseModel):
    """A titled table of text cells, rendered by ``rich`` or as plain text."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str | None = None


def _pct(score: float) -> str:
    return f"{score * 100:.1f}"


def _usd(value: float) -> str:
    return f"{value:.4f}"


def _ctx(context_len: int | None) -> str:
    return "" if context_len is None else str(context_len)


_GROUP_COLUMNS = ["dataset", "context", "task group", "score", "runs", "failed", "root $ mean",
                  "root $ median", "sub $ mean", "sub $ median", "wall s", "subcalls/run", "cache hit"]


def _group_row(g: GroupSummary) -> list[str]:
    return [g.dataset, _ctx(g.context_len), g.task_group, _pct(g.mean_score), str(g.runs), str(g.failures),
            _usd(g.root_cost_mean), _usd(g.root_cost_median), _usd(g.subcall_cost_mean),
            _usd(g.subcall_cost_median), f"{g.wall_seconds_mean:.1f}", f"{g.subcalls_per_run:.1f}",
            f"{g.cache_hit_rate * 100:.0f}%"]


def report_tables(
    results: Sequence[RowResult],
    *,
    title: str = "OOLONG with fsRLM",
    plain: Sequence[RowResult] | None = None,
) -> list[Table]:
    """The report as tables: per group, the paper's reference, and (with ``plain``) RLM vs. plain model."""
    groups, overall = summarise(results)
    rows = [_group_row(g) for g in groups] + ([_group_row(overall)] if overall and len(groups) > 1 else [])
    truncated = sum(g.truncated for g in groups)
    note = "score: mean OOLONG score × 100; failed rows score 0; costs in US dollars per row"
    if truncated:
        note += f"; {truncated} rows had their context truncated to the model's window"
    tables = [Table(title=title, columns=_GROUP_COLUMNS, rows=rows, note=note)]

    reference_rows = []
    for figure in PAPER_REFERENCE:
        ours = _ours_at(figure, results, plain)
        reference_rows.append([figure.system, figure.dataset, str(figure.context_len), f"{figure.score:.1f}",
                               "—" if ours is None else _pct(ours)])
    tables.append(Table(
        title="Paper's reference figures (NOT ours)",
        columns=["system (paper)", "dataset", "context", "paper score", "ours, same slice and kind"],
        rows=reference_rows,
        note=PAPER_NOTE,
    ))

    if plain is not None:
        tables.append(comparison_table(results, plain))
    return tables


def comparison_table(rlm: Sequence[RowResult], plain: Sequence[RowResult]) -> Table:
    """The RLM and the root model alone side by side, per group, on the rows both answered."""
    pairs, overall = paired(rlm, plain)
    rows = [
        [p.dataset, _ctx(p.context_len), p.task_group, str(p.rows), _pct(p.rlm_score), _pct(p.plain_score),
         f"{(p.rlm_score - p.plain_score) * 100:+.1f}", _usd(p.rlm_cost_mean), _usd(p.plain_cost_mean),
         f"{p.rlm_failures}/{p.plain_failures}", str(p.plain_truncated)]
        for p in pairs + ([overall] if overall and len(pairs) > 1 else [])
    ]
    return Table(
        title="RLM vs. root model alone (same rows)",
        columns=["dataset", "context", "task group", "rows", "RLM score", "model alone", "Δ",
                 "RLM $ mean", "alone $ mean", "failed RLM/alone", "truncated"],
        rows=rows,
        note="only rows answered by both are compared; scores × 100; costs are whole-row totals in US dollars",
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
        "groups": [g.model_dump() for g in groups],
        "overall": overall.model_dump() if overall else None,
        "paper_reference": {
            "note": PAPER_NOTE,
            "figures": [f.model_dump() | {"ours_same_slice": _ours_at(f, results, plain)}
                        for f in PAPER_REFERENCE],
        },
    }
    if plain is not None:
        data["comparison"] = comparison_json(results, plain)
    return data


def _render_plain(table: Table, out: TextIO) -> None:
    widths = [max(len(c), *(len(row[i]) for row in table.rows)) if table.rows else len(c)
              for i, c in enumerate(table.columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) if i < 3 else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out.write(f"{table.title}\n{line(table.columns)}\n{line(['-' * w for w in widths])}\n")
    for row in table.rows:
        out.write(line(row) + "\n")
    if not table.rows:
        out.write("(no rows)\n")
    if table.note:
        out.write(f"({table.note})\n")
    out.write("\n")


def _render_rich(tables: Sequence[Table], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(file=out)
    for table in tables:
        rich_table = RichTable(title=table.title, caption=table.note)
        for i, column in enumerate(table.columns):
            rich_table.add_column(column, justify="left" if i < 3 else "right")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)


def print_tables(tables: Sequence[Table], out: TextIO | None = None, *, rich: bool | None = None) -> None:
    """Print ``tables``: with ``rich`` on a terminal (or when ``rich=True``), else as plain text."""
    out = out if out is not None else sys.stdout
    use_rich = out.isatty() if rich is None else rich
    if use_rich:
        _render_rich(tables, out)
    else:
        for table in tables:
            _render_plain(table, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report of OOLONG results already written by ``benchmarks.oolong``."""
    parser = argparse.ArgumentParser(prog="fsrlm bench report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="results JSONL of benchmarks.oolong")
    parser.add_argument("--compare", type=Path, help="results JSONL of benchmarks.compare, shown side by side")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)
    try:
        if not args.results.is_file():
            raise InputError(f"{args.results}: no such results file")
        results = read_results(args.results)
        plain = read_results(args.compare) if args.compare else None
    except InputError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report_json(results, plain=plain, source=str(args.results)), indent=2))
    else:
        print_tables(report_tables(results, plain=plain))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
