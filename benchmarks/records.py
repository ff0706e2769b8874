"""Making the record of one row: the fields it copies from its row, its score, a failed row's record.

Used where a row is solved (:mod:`benchmarks.oolong`, :mod:`benchmarks.compare`, on whatever
node the row ran) and by the harness; the record itself is :class:`benchmarks.results.RowResult`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fsrlm.benchmarks.oolong_data import OolongRow
from fsrlm.benchmarks.oolong_scoring import score_answer_detail, scoring_name
from fsrlm.benchmarks.results import Method, RowResult, json_safe

__all__ = ["failed_result", "now_iso", "row_fields", "score_row"]


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def score_row(row: OolongRow, answer: str | None, success: bool, *,
              lenient: bool = False) -> tuple[float, Any, list[str]]:
    """Score, parsed candidate (JSON-safe) and any scoring problem; 0 unless ``success``."""
    if not success or not answer:
        return 0.0, None, []
    try:
        detail = score_answer_detail(answer, row.answer, row.answer_type, row.split, lenient=lenient)
    except ValueError as exc:
        return 0.0, None, [f"could not score the answer: {exc}"]
    return detail.score, json_safe(detail.candidate), []


def row_fields(row: OolongRow, *, lenient: bool = False) -> dict[str, Any]:
    """The fields a result record copies from its row (and the rules that score it)."""
    return {
        "id": row.id, "dataset": row.dataset, "context_len": row.context_len,
        "context_len_source": row.context_len_source, "task_group": row.task_group, "task": row.task,
        "answer_type": row.answer_type, "split": row.split, "synthetic": row.synthetic, "gold": row.answer,
        "scoring": scoring_name(lenient),
    }


def failed_result(row: OolongRow, stop_reason: str, errors: list[str], wall_seconds: float,
                  *, method: Method = "rlm", lenient: bool = False) -> RowResult:
    """The record of a row whose run crashed, was given up on or lost with its node: score 0."""
    return RowResult(
        **row_fields(row, lenient=lenient), method=method, answer=None, score=0.0, success=False,
        stop_reason=stop_reason, errors=errors, wall_seconds=round(wall_seconds, 3), finished_at=now_iso(),
    )
