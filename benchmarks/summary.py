"""Figures per slice of OOLONG results: mean and spread of score and cost, failures, cache.

A slice is one dataset × context length × task group (and the whole file as
``(all)``). Standard deviations are sample standard deviations (n − 1; 0 for
one row), like the ``±`` of the RLM paper's Table 1. Costs are per row, root
agent and subcalls apart; rows with a response-cache hit are counted
(``cached_rows``) and the mean cost of the rows without one is shown beside the
mean of all, because a cache hit costs $0 and makes a rerun look cheap.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from fsrlm.benchmarks.results import GroupKey, RowResult
from pydantic import BaseModel

__all__ = ["ALL", "GroupSummary", "PairedSummary", "grouped", "mean_sd", "paired", "summarise", "summary_of"]

ALL = "(all)"


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values, 0, 0 for none)."""
    if not values:
        return 0.0, 0.0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class GroupSummary(BaseModel):
    """Figures for one dataset × context length × task group (or ``(all)``)."""

    dataset: str
    context_len: int | None
    task_group: str
    runs: int
    failures: int
    synthetic: bool
    cached_rows: int
    mean_score: float
    score_sd: float
    cost_mean: float
    cost_sd: float
    root_cost_mean: float
    root_cost_sd: float
    subcall_cost_mean: float
    subcall_cost_sd: float
    uncached_cost_mean: float | None
    total_cost: float
    wall_seconds_mean: float
    subcalls_per_run: float
    cache_hit_rate: float
    truncated: int = 0
    scoring: list[str]


def summary_of(dataset: str, context_len: int | None, task_group: str, rows: Sequence[RowResult]) -> GroupSummary:
    """The figures of ``rows`` (at least one), labelled as the given slice."""
    score_mean, score_sd = mean_sd([r.score for r in rows])
    cost_mean, cost_sd = mean_sd([r.total_cost_usd for r in rows])
    root_mean, root_sd = mean_sd([r.root_cost_usd for r in rows])
    sub_mean, sub_sd = mean_sd([r.subcall_cost_usd for r in rows])
    uncached = [r.total_cost_usd for r in rows if not r.cached_row]
    answered = sum(r.subcalls + r.cached for r in rows)
    return GroupSummary(
        dataset=dataset, context_len=context_len, task_group=task_group, runs=len(rows),
        failures=sum(1 for r in rows if not r.success), synthetic=any(r.synthetic for r in rows),
        cached_rows=sum(1 for r in rows if r.cached_row),
        mean_score=score_mean, score_sd=score_sd, cost_mean=cost_mean, cost_sd=cost_sd,
        root_cost_mean=root_mean, root_cost_sd=root_sd, subcall_cost_mean=sub_mean, subcall_cost_sd=sub_sd,
        uncached_cost_mean=statistics.fmean(uncached) if uncached else None,
        total_cost=sum(r.total_cost_usd for r in rows),
        wall_seconds_mean=statistics.fmean(r.wall_seconds for r in rows),
        subcalls_per_run=answered / len(rows),
        cache_hit_rate=sum(r.cached for r in rows) / answered if answered else 0.0,
        truncated=sum(1 for r in rows if r.truncated),
        scoring=sorted({r.scoring for r in rows}),
    )


def grouped(results: Iterable[RowResult]) -> dict[GroupKey, list[RowResult]]:
    """Results by slice, slices sorted."""
    groups: dict[GroupKey, list[RowResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    return dict(sorted(groups.items()))


def summarise(results: Sequence[RowResult]) -> tuple[list[GroupSummary], GroupSummary | None]:
    """One summary per dataset × context length × task group, and one over everything."""
    groups = [summary_of(*key, rows) for key, rows in grouped(results).items()]
    overall = summary_of(ALL, None, ALL, results) if results else None
    return groups, overall


class PairedSummary(BaseModel):
    """The RLM and the root model alone on the same rows of one slice."""

    dataset: str
    context_len: int | None
    task_group: str
    rows: int
    synthetic: bool
    rlm_score: float
    rlm_score_sd: float
    plain_score: float
    plain_score_sd: float
    rlm_cost_mean: float
    rlm_cost_sd: float
    plain_cost_mean: float
    plain_cost_sd: float
    rlm_failures: int
    plain_failures: int
    rlm_cached_rows: int
    plain_cached_rows: int
    plain_truncated: int


def _pair_summary(dataset: str, context_len: int | None, task_group: str,
                  items: Sequence[tuple[RowResult, RowResult]]) -> PairedSummary:
    rlm_score, rlm_score_sd = mean_sd([a.score for a, _ in items])
    plain_score, plain_score_sd = mean_sd([b.score for _, b in items])
    rlm_cost, rlm_cost_sd = mean_sd([a.total_cost_usd for a, _ in items])
    plain_cost, plain_cost_sd = mean_sd([b.total_cost_usd for _, b in items])
    return PairedSummary(
        dataset=dataset, context_len=context_len, task_group=task_group, rows=len(items),
        synthetic=any(a.synthetic or b.synthetic for a, b in items),
        rlm_score=rlm_score, rlm_score_sd=rlm_score_sd, plain_score=plain_score, plain_score_sd=plain_score_sd,
        rlm_cost_mean=rlm_cost, rlm_cost_sd=rlm_cost_sd, plain_cost_mean=plain_cost, plain_cost_sd=plain_cost_sd,
        rlm_failures=sum(1 for a, _ in items if not a.success),
        plain_failures=sum(1 for _, b in items if not b.success),
        rlm_cached_rows=sum(1 for a, _ in items if a.cached_row),
        plain_cached_rows=sum(1 for _, b in items if b.cached_row),
        plain_truncated=sum(1 for _, b in items if b.truncated),
    )


def paired(rlm: Sequence[RowResult], plain: Sequence[RowResult]) -> tuple[list[PairedSummary], PairedSummary | None]:
    """Side-by-side figures over the rows present in both ``rlm`` and ``plain``."""
    by_key = {r.key: r for r in plain}
    pairs = [(r, by_key[r.key]) for r in rlm if r.key in by_key]
    groups: dict[GroupKey, list[tuple[RowResult, RowResult]]] = {}
    for pair in pairs:
        groups.setdefault(pair[0].group, []).append(pair)
    summaries = [_pair_summary(*key, items) for key, items in sorted(groups.items())]
    return summaries, (_pair_summary(ALL, None, ALL, pairs) if pairs else None)
