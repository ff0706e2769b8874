"""The RLM paper's published figures for the slices fsRLM reproduces, always labelled as theirs.

From Table 1 of Recursive Language Models (Zhang, Kraska, Khattab,
arXiv:2512.24601v2): GPT-5 as the root model with GPT-5-mini sub-calls, and
GPT-5 alone, on OOLONG ``trec_coarse`` at 131K tokens (50 rows) and on
OOLONG-Pairs at 32K tokens (20 queries); scores × 100 (F1 for Pairs), cost per
row in US dollars, mean ± standard deviation.

Our figures are set beside a published one only for rows of the same kind
(RLM runs beside the RLM figure, the root model alone beside the base model's)
on the same slice, and never for synthetic rows: a generated row says nothing
about a model, so its column reads "withheld (synthetic rows)". Even then the
models differ (Claude, not GPT-5): the table orients, it does not compare.
"""

from __future__ import annotations

from collections.abc import Sequence

from fsrlm.benchmarks.results import Method, RowResult
from fsrlm.benchmarks.summary import GroupSummary, summary_of
from fsrlm.benchmarks.tables import Table, pct_sd, usd_sd
from pydantic import BaseModel

__all__ = [
    "OOLONG_SLICE",
    "PAIRS_SLICE",
    "PAPER_NOTE",
    "PAPER_REFERENCE",
    "PAPER_SOURCE",
    "PaperFigure",
    "PaperSlice",
    "ours_on",
    "paper_json",
    "paper_table",
]

PAPER_SOURCE = "Recursive Language Models (Zhang, Kraska, Khattab), arXiv:2512.24601v2, Table 1"
PAPER_NOTE = (f"the paper's figures ({PAPER_SOURCE}) are THEIRS, measured with GPT-5, not here; ours sit beside "
              "them only for real (not synthetic) rows of the same slice and kind, with other models")


class PaperSlice(BaseModel):
    """Which rows a published figure is about."""

    task: str
    dataset: str
    context_len: int
    rows: int


OOLONG_SLICE = PaperSlice(task="OOLONG", dataset="trec_coarse", context_len=131072, rows=50)
PAIRS_SLICE = PaperSlice(task="OOLONG-Pairs", dataset="oolong-pairs", context_len=32768, rows=20)


class PaperFigure(BaseModel):
    """A published score (× 100) and cost per row (mean ± sd) for one kind of run on one slice."""

    system: str
    method: Method
    slice: PaperSlice
    score: float
    cost_mean: float
    cost_sd: float


_RLM = "RLM(GPT-5), GPT-5-mini sub-calls"
_BASE = "GPT-5 alone (base model)"

#: Table 1 of the paper, GPT-5 rows, for the two slices.
PAPER_REFERENCE: tuple[PaperFigure, ...] = (
    PaperFigure(system=_RLM, method="rlm", slice=OOLONG_SLICE, score=56.5, cost_mean=0.43, cost_sd=0.85),
    PaperFigure(system=_BASE, method="root-only", slice=OOLONG_SLICE, score=44.0, cost_mean=0.14, cost_sd=0.02),
    PaperFigure(system=_RLM, method="rlm", slice=PAIRS_SLICE, score=58.0, cost_mean=0.33, cost_sd=0.20),
    PaperFigure(system=_BASE, method="root-only", slice=PAIRS_SLICE, score=0.1, cost_mean=0.16, cost_sd=0.10),
)


def _on_slice(figure: PaperFigure, results: Sequence[RowResult], *, synthetic: bool) -> list[RowResult]:
    s = figure.slice
    wanted = {s.dataset, "synthetic-" + s.dataset} if synthetic else {s.dataset}
    return [r for r in results if r.method == figure.method and r.context_len == s.context_len
            and r.dataset in wanted and r.synthetic == synthetic]


def ours_on(figure: PaperFigure, *result_sets: Sequence[RowResult] | None) -> tuple[GroupSummary | None, int]:
    """Our figures on ``figure``'s slice from runs of its kind (real rows only), and the synthetic rows held back."""
    results = [r for rows in result_sets if rows for r in rows]
    real = _on_slice(figure, results, synthetic=False)
    synthetic = _on_slice(figure, results, synthetic=True)
    s = figure.slice
    return (summary_of(s.dataset, s.context_len, "(all)", real) if real else None), len(synthetic)


def paper_table(*result_sets: Sequence[RowResult] | None) -> Table:
    """The paper's figures (labelled as theirs) with ours on the same slice beside them where allowed."""
    rows = []
    for figure in PAPER_REFERENCE:
        ours, withheld = ours_on(figure, *result_sets)
        if ours is not None:
            ours_cells = [pct_sd(ours.mean_score, ours.score_sd), usd_sd(ours.cost_mean, ours.cost_sd),
                          f"{ours.runs}/{figure.slice.rows}", str(ours.failures), str(ours.cached_rows)]
        elif withheld:
            ours_cells = ["withheld: synthetic rows", "", f"({withheld})", "", ""]
        else:
            ours_cells = ["—", "", "0", "", ""]
        s = figure.slice
        rows.append([f"{s.task} {s.dataset} {s.context_len}", figure.system, "rlm" if figure.method == "rlm"
                     else "model alone", f"{figure.score:.1f}", f"{figure.cost_mean:.2f} ± {figure.cost_sd:.2f}",
                     *ours_cells])
    return Table(
        title="The paper's figures (THEIRS, GPT-5) and ours on the same slice",
        columns=["slice", "paper: system", "kind", "paper score", "paper $/row", "ours: score ± sd",
                 "ours: $/row ± sd", "ours: rows", "failed", "cached"],
        rows=rows, note=PAPER_NOTE, left=3,
    )


def paper_json(*result_sets: Sequence[RowResult] | None) -> dict:
    """:func:`paper_table` as a JSON-able object."""
    figures = []
    for figure in PAPER_REFERENCE:
        ours, withheld = ours_on(figure, *result_sets)
        figures.append(figure.model_dump() | {"ours_same_slice": ours.model_dump() if ours else None,
                                              "synthetic_rows_withheld": withheld})
    return {"source": PAPER_SOURCE, "note": PAPER_NOTE, "figures": figures}
