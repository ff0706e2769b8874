"""Load OOLONG rows from a local JSONL/Parquet file or from the Hugging Face hub.

Both OOLONG datasets land in one model, :class:`OolongRow`:

- ``oolongbench/oolong-synth`` rows keep their own fields (``split="synth"``);
- ``oolongbench/oolong-real`` rows (config ``dnd``) carry ``id``,
  ``context_window_id``, ``context_window_text``, ``question``, ``answer``,
  ``question_type``, ``episodes`` and ``campaign``; they become
  ``split="real"``, ``dataset="dnd"``, ``task`` and ``task_group`` set to the
  ``question_type``, and — as the dataset has no ``context_len`` — a
  ``context_len`` estimated as characters / 4 (``context_len_source``
  ``estimate:chars/4``); :mod:`benchmarks.oolong_lengths` measures it the way
  the authors do (the model's own token count) when rows are chosen by length;
- OOLONG-Pairs rows (:mod:`benchmarks.oolong_pairs`) are ``split="pairs"``.

Rows made offline by :mod:`benchmarks.oolong_synth_gen` carry ``synthetic: true``
and a dataset name starting ``synthetic-``; any row whose dataset name starts
so is synthetic, whatever its ``synthetic`` field says.

A local file (``--data PATH``) is read whole: ``.parquet``/``.pq`` with pyarrow,
anything else as JSON Lines. Without one, rows come from the hub through the
``datasets`` library, imported only then; if it is missing or the hub cannot
be reached, :class:`OolongDataError` says to pass ``--data``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from fsrlm.errors import InputError

__all__ = [
    "DEFAULT_DATASET",
    "ESTIMATED_LENGTH",
    "LengthFilter",
    "OolongDataError",
    "OolongRow",
    "SYNTHETIC_PREFIX",
    "load_rows",
    "is_real_source",
    "load_windows",
    "row_from_record",
]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "oolongbench/oolong-synth"

#: Characters per token used to estimate ``context_len`` for oolong-real rows.
_CHARS_PER_TOKEN = 4
#: ``context_len_source`` of a length estimated from the characters.
ESTIMATED_LENGTH = f"estimate:chars/{_CHARS_PER_TOKEN}"
#: Dataset names of generated rows start with this.
SYNTHETIC_PREFIX = "synthetic-"
#: Rows read from a Parquet file at a time.
_PARQUET_BATCH_ROWS = 64
#: Columns of the hub datasets we never need (they double the memory used).
_UNUSED_COLUMNS = ("context_window_text_with_labels",)


class OolongDataError(InputError):
    """OOLONG rows could not be loaded; the message says what to do."""


class OolongRow(BaseModel):
    """One OOLONG question: a context window, a question about it, the gold answer.

    Unknown fields are ignored, so files with extra columns load unchanged.
    ``split`` says which scoring rules apply: ``"synth"`` or ``"real"``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int | str
    context_window_id: int | str
    context_window_text: str
    question: str
    answer: str
    answer_type: str = ""
    dataset: str = ""
    context_len: int = 0
    task_group: str = ""
    task: str = ""
    input_subset: str = ""
    num_labels: int | None = None
    split: Literal["synth", "real", "pairs"] = "synth"
    synthetic: bool = False
    context_len_source: str = "dataset"

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_as_text(cls, value: Any) -> Any:
        # oolong-real answers may arrive as ints or lists; the scorer reads text.
        if isinstance(value, (list, tuple)):
            return ", ".join(str(item) for item in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("synthetic", mode="before")
    @classmethod
    def _synthetic_as_bool(cls, value: Any) -> Any:
        return value.strip().lower() == "true" if isinstance(value, str) else value

    @model_validator(mode="after")
    def _synthetic_by_name(self) -> OolongRow:
        # A generated row cannot lose its mark by a file that drops the field.
        if self.dataset.startswith(SYNTHETIC_PREFIX) and not self.synthetic:
            object.__setattr__(self, "synthetic", True)
        return self

    @field_validator("input_subset", mode="before")
    @classmethod
    def _input_subset_as_text(cls, value: Any) -> Any:
        # the hub stores "True"/"False"; JSONL written by hand may hold booleans.
        return str(value) if isinstance(value, bool) else value


def _is_real(record: dict[str, Any], hint_real: bool) -> bool:
    split = str(record.get("split", "")).strip().lower()
    if split == "pairs":
        return False
    if split in {"real", "dnd", "toy_dnd"}:
        return True
    if split == "synth":
        return False
    if hint_real:
        return True
    return "answer_type" not in record and ("question_type" in record or "campaign" in record)


def row_from_record(record: dict[str, Any], *, real: bool | None = None) -> OolongRow:
    """Turn one raw record (a hub row or a JSON line) into an :class:`OolongRow`.

    ``real=None`` decides from the record itself: a ``split`` field, or the
    oolong-real fields (``question_type``/``campaign`` with no ``answer_type``).

    Raises:
        OolongDataError: a required field is missing or has the wrong type.
    """
    is_real = False if real is False else _is_real(record, bool(real))
    data = dict(record)
    if is_real:
        question_type = str(data.get("question_type") or data.get("task") or "")
        data.setdefault("dataset", "dnd")
        data.setdefault("task", question_type)
        data.setdefault("task_group", question_type)
        if data.get("context_len") in (None, ""):
            text = data.get("context_window_text")
            if isinstance(text, str):
                data["context_len"] = len(text) // _CHARS_PER_TOKEN
                data["context_len_source"] = ESTIMATED_LENGTH
        data["split"] = "real"
    elif str(data.get("split", "")).strip().lower() == "pairs":
        data["split"] = "pairs"
    else:
        data["split"] = "synth"
    for key in ("answer_type", "dataset", "task_group", "task", "input_subset"):
        if data.get(key) is None:
            data.pop(key, None)
    if data.get("context_len") is None:
        data.pop("context_len", None)
    try:
        return OolongRow.model_validate(data)
    except ValueError as exc:
        ident = record.get("id", "?")
        raise OolongDataError(f"OOLONG row {ident!r} is not usable: {exc}") from exc


@dataclass(frozen=True)
class LengthFilter:
    """Which context lengths to keep: exactly ``exact``, and/or ``minimum < len <= maximum``.

    The range is the OOLONG authors' (their harness keeps ``min_context_len <
    context_len <= max_context_len``, by default 1024 and 131072).
    """

    exact: int | None = None
    minimum: int | None = None
    maximum: int | None = None

    @property
    def active(self) -> bool:
        return self.exact is not None or self.minimum is not None or self.maximum is not None

    def keeps(self, context_len: int) -> bool:
        if self.exact is not None and context_len != self.exact:
            return False
        if self.minimum is not None and context_len <= self.minimum:
            return False
        return self.maximum is None or context_len <= self.maximum


_ANY_LENGTH = LengthFilter()


def _matches(row: OolongRow, datasets_filter: list[str] | None, lengths: LengthFilter,
             task_group: str | None) -> bool:
    if datasets_filter and row.dataset not in datasets_filter:
        return False
    if not lengths.keeps(row.context_len):
        return False
    return task_group is None or row.task_group == task_group


def _record_matches(record: dict[str, Any], datasets_filter: list[str] | None, lengths: LengthFilter,
                    task_group: str | None) -> bool:
    """Cheap pre-filter on raw fields, before a row is validated.

    Only rejects records whose own fields disagree; records without a field
    (oolong-real rows have no ``context_len``) are left to :func:`_matches`.
    """
    if datasets_filter and "dataset" in record and record["dataset"] not in datasets_filter:
        return False
    length = record.get("context_len")
    if isinstance(length, int) and not lengths.keeps(length):
        return False
    if task_group is not None and "task_group" in record and record["task_group"] != task_group:
        return False
    return True


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OolongDataError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise OolongDataError(f"{path}:{number}: expected a JSON object per line")
            yield record


def _iter_parquet(path: Path, keep_labels: bool = False) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the benchmarks
        raise OolongDataError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid and OSError
        raise OolongDataError(f"{path}: not a readable Parquet file ({exc})") from exc
    unused = () if keep_labels else _UNUSED_COLUMNS
    columns = [name for name in parquet.schema_arrow.names if name not in unused]
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        yield from batch.to_pylist()


def _iter_file(path: Path, keep_labels: bool = False) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise OolongDataError(f"--data {path}: no such file")
    if path.suffix.lower() in {".parquet", ".pq"}:
        return _iter_parquet(path, keep_labels)
    return _iter_jsonl(path)


def _iter_hub(dataset_name: str, split: str, config: str | None,
              keep_labels: bool = False) -> Iterator[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise OolongDataError(
            f"loading {dataset_name} from the Hugging Face hub needs the `datasets` package "
            "(pip install datasets); or pass --data PATH with a local JSONL or Parquet file "
            "of the rows"
        ) from exc
    try:
        table = datasets.load_dataset(dataset_name, config, split=split)
    except Exception as exc:  # network, auth, unknown split: all end the same way
        where = f"{dataset_name}" + (f" (config {config})" if config else "") + f", split {split}"
        raise OolongDataError(
            f"could not load {where} from the Hugging Face hub: {exc}. "
            "On a machine without hub access, pass --data PATH with a local JSONL or Parquet "
            "file of the rows"
        ) from exc
    unused = [] if keep_labels else [name for name in _UNUSED_COLUMNS if name in table.column_names]
    if unused:
        table = table.remove_columns(unused)
    return iter(table)


def _take(
    records: Iterable[dict[str, Any]],
    *,
    real: bool | None,
    datasets_filter: list[str] | None,
    lengths: LengthFilter,
    task_group: str | None,
    limit: int | None,
    defer_estimated: bool = False,
) -> list[OolongRow]:
    rows: list[OolongRow] = []
    if limit is not None and limit <= 0:
        return rows
    for record in records:
        if not _record_matches(record, datasets_filter, lengths, task_group):
            continue
        row = row_from_record(record, real=real)
        deferred = defer_estimated and row.context_len_source != "dataset"
        if not _matches(row, datasets_filter, _ANY_LENGTH if deferred else lengths, task_group):
            continue
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _records(data: Path | None, dataset_name: str, split: str, config: str | None,
             keep_labels: bool = False) -> tuple[Iterator[dict[str, Any]], str]:
    if data is not None:
        return _iter_file(Path(data), keep_labels), str(data)
    return _iter_hub(dataset_name, split, config, keep_labels), f"{dataset_name}:{split}"


def is_real_source(dataset_name: str, config: str | None) -> bool:
    """Whether rows from this hub dataset / configuration are oolong-real ones."""
    return dataset_name.rstrip("/").endswith("oolong-real") or (config or "") in {"dnd", "toy_dnd"}


def load_rows(
    *,
    data: Path | None = None,
    dataset_name: str = DEFAULT_DATASET,
    split: str = "validation",
    config: str | None = None,
    datasets_filter: list[str] | None = None,
    context_len: int | None = None,
    min_context_len: int | None = None,
    max_context_len: int | None = None,
    task_group: str | None = None,
    limit: int | None = None,
    defer_estimated: bool = False,
) -> list[OolongRow]:
    """Load OOLONG rows, filtered, in file (or hub) order.

    Args:
        data: a local JSONL or Parquet file of rows; when given, the hub is not
            used and ``split`` is ignored (the file is one split already).
        dataset_name: the hub dataset, ``oolongbench/oolong-synth`` or
            ``oolongbench/oolong-real``; rows from the latter (or any with
            ``config`` ``dnd``/``toy_dnd``) are scored with the real-split rules.
        split: the hub split, ``validation`` or ``test``.
        config: the hub configuration (``dnd`` for oolong-real).
        datasets_filter: keep rows whose ``dataset`` is one of these
            (``trec_coarse``, ``spam``, … or ``dnd``).
        context_len: keep rows with exactly this ``context_len`` (oolong-synth
            uses powers of two: 1024 … 4194304).
        min_context_len, max_context_len: keep rows with ``min < context_len <=
            max`` (the authors' range). oolong-real rows carry an estimate here;
            :func:`benchmarks.oolong_lengths.measure_lengths` measures them first.
        task_group: keep rows of this task group (``counting``, ``user``,
            ``timeline`` in oolong-synth; the question type in oolong-real).
        limit: keep at most this many rows (after filtering).
        defer_estimated: keep rows whose length is only an estimate whatever
            the length filter says (they are measured and filtered afterwards).

    Raises:
        OolongDataError: the file is missing or malformed, a row lacks a required
            field, or the hub cannot be used (the message says to pass ``--data``).
    """
    real: bool | None = True if is_real_source(dataset_name, config) else None
    records, source = _records(data, dataset_name, split, config)
    rows = _take(
        records,
        real=real,
        datasets_filter=datasets_filter,
        lengths=LengthFilter(context_len, min_context_len, max_context_len),
        task_group=task_group,
        limit=limit,
        defer_estimated=defer_estimated,
    )
    logger.info("loaded %d OOLONG rows from %s", len(rows), source)
    return rows


def load_windows(
    *,
    data: Path | None = None,
    dataset_name: str = DEFAULT_DATASET,
    split: str = "validation",
    dataset: str | None = None,
    context_len: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Distinct context windows with their labelled text (the raw records), in data order.

    A generated (``synthetic-…``) window is kept when ``dataset`` names the
    dataset it imitates (``trec_coarse`` matches ``synthetic-trec_coarse``);
    its record then says ``synthetic: true``.

    Raises:
        OolongDataError: as :func:`load_rows`.
    """
    records, source = _records(data, dataset_name, split, None, keep_labels=True)
    seen: set[Any] = set()
    windows: list[dict[str, Any]] = []
    for record in records:
        name = str(record.get("dataset", ""))
        if dataset is not None and name not in (dataset, SYNTHETIC_PREFIX + dataset):
            continue
        if context_len is not None and record.get("context_len") != context_len:
            continue
        window_id = record.get("context_window_id")
        if window_id in seen:
            continue
        seen.add(window_id)
        windows.append(dict(record, synthetic=bool(record.get("synthetic")) or name.startswith(SYNTHETIC_PREFIX)))
        if limit is not None and len(windows) >= limit:
            break
    logger.info("loaded %d OOLONG windows from %s", len(windows), source)
    return windows
