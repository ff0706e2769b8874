"""The record of one finished OOLONG row, and reading a results file back.

``benchmarks.oolong`` (the RLM), ``benchmarks.compare`` (the root model alone)
and the paper-slice command write one :class:`RowResult` per finished row, as
one JSON line. The report (:mod:`benchmarks.report`) is made from these files.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field

from fsrlm.errors import InputError

__all__ = ["GroupKey", "Method", "RowResult", "json_safe", "read_results"]

Method = Literal["rlm", "root-only"]
GroupKey = tuple[str, int, str]


class RowResult(BaseModel):
    """One finished OOLONG row: what was asked, what came back, what it cost.

    ``score`` is 0 whenever ``success`` is false (a crash, a timeout, a run that
    wrote no answer), whatever partial answer there was. ``cached`` counts the
    subcalls answered from the response cache (for the root model alone: 1 when
    its one call was); such a row's cost is understated (a cache hit costs $0),
    which :attr:`cached_row` flags. Costs are the broker's own figures in US
    dollars. ``scoring`` names the rules that scored the row (``authors`` or
    ``lenient``); ``synthetic`` rows were generated offline and are never set
    beside a published figure.
    """

    model_config = ConfigDict(extra="ignore")

    id: int | str
    method: Method = "rlm"
    dataset: str = ""
    context_len: int = 0
    context_len_source: str = "dataset"
    task_group: str = ""
    task: str = ""
    answer_type: str = ""
    split: str = "synth"
    synthetic: bool = False
    gold: str
    answer: str | None = None
    candidate: Any = None
    score: float = Field(ge=0, le=1)
    scoring: str = "authors"
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
    max_output_tokens: int | None = None
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

    @computed_field  # written to every record, so a results file flags its cached rows itself
    @property
    def cached_row(self) -> bool:
        """Some of this row's calls came from the response cache, so its cost is understated."""
        return self.cached > 0


def json_safe(value: Any) -> Any:
    """``value`` made JSON-able: dates as ISO text, tuples as lists, dicts kept, the rest as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
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
