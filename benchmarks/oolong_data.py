"""Load OOLONG rows from a local JSONL/Parquet file or from the Hugging Face hub.

Both OOLONG datasets land in one model, :class:`OolongRow`:

- ``oolongbench/oolong-synth`` rows keep their own fields (``split="synth"``);
- ``oolongbench/oolong-real`` rows (config ``dnd``) carry ``id``,
  ``context_window_id``, ``context_window_text``, ``question``, ``answer``,
  ``question_type``, ``episodes`` and ``campaign``; they become
  ``split="real"``, ``dataset="dnd"``, ``task`` and ``task_group`` set to the
  ``question_type``, and — as the dataset has no ``context_len`` — a
  ``context_len`` estimated as characters / 4.

A local file (``--data PATH``) is read whole: ``.parquet``/``.pq`` with pyarrow,
anything else as JSON Lines. Without one, rows come from the hub through the
``datasets`` library, imported only then; if it is missing or the hub cannot
be reached, :class:`OolongDataError` says to pass ``--data``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from fsrlm.errors import InputError

__all__ = [
    "DEFAULT_DATASET",
    "OolongDataError",
    "OolongRow",
    "load_rows",
    "row_from_record",
]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "oolongbench/oolong-synth"

#: Characters per token used to estimate ``context_len`` for oolong-real rows.
_CHARS_PER_TOKEN = 4
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
    split: Literal["synth", "real"] = "synth"

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_as_text(cls, value: Any) -> Any:
        # oolong-real answers may arrive as ints or lists; the scorer reads text.
        if isinstance(value, (list, tuple)):
            return ", ".join(str(item) for item in value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("input_subset", mode="before")
    @classmethod
    def _input_subset_as_text(cls, value: Any) -> Any:
        # the hub stores "True"/"False"; JSONL written by hand may hold booleans.
        return str(value) if isinstance(value, bool) else value


def _is_real(record: dict[str, Any], hint_real: bool) -> bool:
    split = str(record.get("split", "")).strip().lower()
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
        data["split"] = "real"
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


def _matches(
    row: OolongRow,
    datasets_filter: list[str] | None,
    context_len: int | None,
    task_group: str | None,
) -> bool:
    if datasets_filter and row.dataset not in datasets_filter:
        return False
    if context_len is not None and row.context_len != context_len:
        return False
    if task_group is not None and row.task_group != task_group:
        return False
    return True


def _record_matches(
    record: dict[str, Any],
    datasets_filter: list[str] | None,
    context_len: int | None,
    task_group: str | None,
) -> bool:
    """Cheap pre-filter on raw fields, before a row is validated.

    Only rejects records whose own fields disagree; records without a field
    (oolong-real rows have no ``context_len``) are left to :func:`_matches`.
    """
    if datasets_filter and "dataset" in record and record["dataset"] not in datasets_filter:
        return False
    if context_len is not None and record.get("context_len") not in (None, context_len):
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


def _iter_parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the benchmarks
        raise OolongDataError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid and OSError
        raise OolongDataError(f"{path}: not a readable Parquet file ({exc})") from exc
    columns = [name for name in parquet.schema_arrow.names if name not in _UNUSED_COLUMNS]
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        yield from batch.to_pylist()


def _iter_file(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        raise OolongDataError(f"--data {path}: no such file")
    if path.suffix.lower() in {".parquet", ".pq"}:
        return _iter_parquet(path)
    return _iter_jsonl(path)


def _iter_hub(dataset_name: str, split: str, config: str | None) -> Iterator[dict[str, Any]]:
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
    unused = [name for name in _UNUSED_COLUMNS if name in table.column_names]
    if unused:
        table = table.remove_columns(unused)
    return iter(table)


def _take(
    records: Iterable[dict[str, Any]],
    *,
    real: bool | None,
    datasets_filter: list[str] | None,
    context_len: int | None,
    task_group: str | None,
    limit: int | None,
) -> list[OolongRow]:
    rows: list[OolongRow] = []
    if limit is not None and limit <= 0:
        return rows
    for record in records:
        if not _record_matches(record, datasets_filter, context_len, task_group):
            continue
        row = row_from_record(record, real=real)
        if not _matches(row, datasets_filter, context_len, task_group):
            continue
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def load_rows(
    *,
    data: Path | None = None,
    dataset_name: str = DEFAULT_DATASET,
    split: str = "validation",
    config: str | None = None,
    datasets_filter: list[str] | None = None,
    context_len: int | None = None,
    task_group: str | None = None,
    limit: int | None = None,
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
            uses powers of two: 1024 … 4194304; oolong-real rows carry an
            estimate, so the filter is meant for synth rows).
        task_group: keep rows of this task group (``counting``, ``user``,
            ``timeline`` in oolong-synth; the question type in oolong-real).
        limit: keep at most this many rows (after filtering).

    Raises:
        OolongDataError: the file is missing or malformed, a row lacks a required
            field, or the hub cannot be used (the message says to pass ``--data``).
    """
    hint = dataset_name.rstrip("/").endswith("oolong-real") or (config or "") in {"dnd", "toy_dnd"}
    real: bool | None = True if hint else None
    if data is not None:
        records = _iter_file(Path(data))
        source = str(data)
    else:
        records = _iter_hub(dataset_name, split, config)
        source = f"{dataset_name}:{split}"
    rows = _take(
        records,
        real=real,
        datasets_filter=datasets_filter,
        context_len=context_len,
        task_group=task_group,
        limit=limit,
    )
    logger.info("loaded %d OOLONG rows from %s", len(rows), source)
    return rows
