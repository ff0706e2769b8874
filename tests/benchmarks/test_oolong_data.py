"""Loading OOLONG rows, and the offline OOLONG-style row generator."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsrlm.benchmarks.oolong_data import (
    LengthFilter,
    OolongDataError,
    OolongRow,
    load_rows,
    load_windows,
    row_from_record,
)
from fsrlm.benchmarks.oolong_scoring import parse_synth_gold, score_answer
from fsrlm.benchmarks.oolong_synth_gen import (
    DATASETS,
    generate_rows,
    main,
    parse_context_line,
    recover_label,
)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _mixed_rows() -> list[dict[str, Any]]:
    return (
        generate_rows(6, 1024, seed=1)
        + generate_rows(4, 2048, seed=1)
        + generate_rows(3, 1024, seed=2, dataset="spam")
    )


@pytest.fixture(scope="module")
def mixed_rows() -> list[dict[str, Any]]:
    return _mixed_rows()


# ---------------------------------------------------------------------- loading


def test_load_jsonl(tmp_path: Path, mixed_rows: list[dict[str, Any]]) -> None:
    rows = load_rows(data=_write_jsonl(tmp_path / "rows.jsonl", mixed_rows))
    assert [row.id for row in rows] == [row["id"] for row in mixed_rows]
    first = rows[0]
    assert isinstance(first, OolongRow)
    assert first.split == "synth"
    assert first.dataset == "synthetic-trec_coarse" and first.synthetic
    assert first.context_len == 1024
    assert first.answer == mixed_rows[0]["answer"]
    assert first.context_window_text == mixed_rows[0]["context_window_text"]
    assert first.num_labels == 6


def test_load_parquet(tmp_path: Path, mixed_rows: list[dict[str, Any]]) -> None:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(mixed_rows), path)
    from_parquet = load_rows(data=path)
    from_jsonl = load_rows(data=_write_jsonl(tmp_path / "rows.jsonl", mixed_rows))
    assert from_parquet == from_jsonl


def test_filters(tmp_path: Path, mixed_rows: list[dict[str, Any]]) -> None:
    path = _write_jsonl(tmp_path / "rows.jsonl", mixed_rows)
    spam, trec = "synthetic-spam", "synthetic-trec_coarse"
    assert {r.dataset for r in load_rows(data=path, datasets_filter=[spam])} == {spam}
    assert len(load_rows(data=path, datasets_filter=[spam])) == 3
    assert len(load_rows(data=path, datasets_filter=[spam, trec])) == 13
    by_len = load_rows(data=path, context_len=2048)
    assert len(by_len) == 4 and {r.context_len for r in by_len} == {2048}
    users = load_rows(data=path, task_group="user")
    assert users and {r.task_group for r in users} == {"user"}
    combined = load_rows(
        data=path, datasets_filter=[trec], context_len=1024, task_group="counting"
    )
    expected = [
        r["id"] for r in mixed_rows
        if r["dataset"] == trec and r["context_len"] == 1024 and r["task_group"] == "counting"
    ]
    assert [r.id for r in combined] == expected
    assert [r.id for r in load_rows(data=path, limit=2)] == [r["id"] for r in mixed_rows[:2]]
    assert load_rows(data=path, limit=0) == []
    assert load_rows(data=path, context_len=999) == []


def test_length_range_is_the_authors_min_exclusive_max_inclusive(tmp_path: Path, mixed_rows) -> None:
    path = _write_jsonl(tmp_path / "rows.jsonl", mixed_rows)
    assert {r.context_len for r in load_rows(data=path, min_context_len=1024)} == {2048}
    assert {r.context_len for r in load_rows(data=path, max_context_len=1024)} == {1024}
    assert len(load_rows(data=path, min_context_len=1023, max_context_len=2048)) == 13
    assert load_rows(data=path, min_context_len=2048) == []
    assert len(load_rows(data=path, context_len=1024, max_context_len=4096)) == 9
    assert LengthFilter(None, 1024, 131072).keeps(131072) and not LengthFilter(None, 1024, 131072).keeps(1024)


def test_synthetic_mark_survives_a_file_that_drops_it(tmp_path: Path) -> None:
    row = generate_rows(1, 1024, seed=3)[0]
    del row["synthetic"]
    (loaded,) = load_rows(data=_write_jsonl(tmp_path / "rows.jsonl", [row]))
    assert loaded.synthetic and loaded.dataset == "synthetic-trec_coarse"
    real_name = dict(row, dataset="trec_coarse", synthetic="true")
    (marked,) = load_rows(data=_write_jsonl(tmp_path / "marked.jsonl", [real_name]))
    assert marked.synthetic


def test_load_windows_keeps_the_labelled_text_once_per_window(tmp_path: Path, mixed_rows) -> None:
    path = _write_jsonl(tmp_path / "rows.jsonl", mixed_rows)
    windows = load_windows(data=path, dataset="trec_coarse", context_len=1024)
    assert [w["context_window_id"] for w in windows] == sorted({r["context_window_id"] for r in mixed_rows
                                                                 if r["dataset"] == "synthetic-trec_coarse"
                                                                 and r["context_len"] == 1024})
    assert all(w["synthetic"] and "|| Label: " in w["context_window_text_with_labels"] for w in windows)
    assert len(load_windows(data=path, dataset="trec_coarse", limit=1)) == 1
    assert load_windows(data=path, dataset="imdb") == []
    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(mixed_rows), parquet)
    assert load_windows(data=parquet, dataset="spam")[0]["context_window_text_with_labels"]


def test_extra_fields_are_tolerated(tmp_path: Path) -> None:
    row = generate_rows(1, 1024, seed=3)[0] | {"something_new": [1, 2], "input_subset": False}
    (loaded,) = load_rows(data=_write_jsonl(tmp_path / "rows.jsonl", [row]))
    assert loaded.input_subset == "False"
    assert not hasattr(loaded, "something_new")


def _dnd_record(**changes: Any) -> dict[str, Any]:
    record = {
        "id": "dnd-17",
        "context_window_id": 3,
        "context_window_text": "Episode 1\nMATT: Roll for initiative.\n" * 10,
        "question": "How many times did Vex roll a natural 20?",
        "answer": 7,
        "question_type": "rolls",
        "episodes": [1, 2],
        "campaign": "campaign1",
    }
    record.update(changes)
    return record


def test_real_rows_map_into_the_same_model(tmp_path: Path) -> None:
    records = [_dnd_record(), _dnd_record(id="dnd-18", answer=["Fireball", "Shield"])]
    rows = load_rows(data=_write_jsonl(tmp_path / "dnd.jsonl", records))
    assert [r.split for r in rows] == ["real", "real"]
    first = rows[0]
    assert first.dataset == "dnd"
    assert first.answer == "7"
    assert first.task == first.task_group == "rolls"
    assert first.context_len == len(records[0]["context_window_text"]) // 4
    assert rows[1].answer == "Fireball, Shield"
    assert score_answer("\\boxed{7}", first.answer, first.answer_type, first.split) == 1.0


def test_real_hint_from_the_dataset_name(tmp_path: Path) -> None:
    # a real row that carries an answer_type would look synthetic without the hint
    path = _write_jsonl(tmp_path / "dnd.jsonl", [_dnd_record(answer_type="x")])
    assert load_rows(data=path)[0].split == "synth"
    assert load_rows(data=path, dataset_name="oolongbench/oolong-real")[0].split == "real"
    assert load_rows(data=path, config="dnd")[0].split == "real"


def test_row_from_record_accepts_an_explicit_split() -> None:
    assert row_from_record(_dnd_record(split="real", answer_type="x")).split == "real"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(OolongDataError, match="no such file"):
        load_rows(data=tmp_path / "nope.jsonl")


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(generate_rows(1, 1024, seed=0)[0]) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(OolongDataError, match=r"rows\.jsonl:2"):
        load_rows(data=path)


def test_missing_required_field(tmp_path: Path) -> None:
    row = generate_rows(1, 1024, seed=0)[0]
    del row["question"]
    with pytest.raises(OolongDataError, match="question"):
        load_rows(data=_write_jsonl(tmp_path / "rows.jsonl", [row]))


def test_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    path.write_text("not parquet", encoding="utf-8")
    with pytest.raises(OolongDataError, match="Parquet"):
        load_rows(data=path)


def test_hub_without_datasets_package_says_pass_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(OolongDataError, match="--data"):
        load_rows()


def test_hub_unreachable_says_pass_data(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("hub unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(OolongDataError, match="--data") as info:
        load_rows(split="test")
    assert "hub unreachable" in str(info.value)


class _FakeHubTable:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.column_names = list(rows[0])

    def remove_columns(self, names: list[str]) -> _FakeHubTable:
        return _FakeHubTable([{k: v for k, v in r.items() if k not in names} for r in self.rows])

    def __iter__(self) -> Any:
        return iter(self.rows)


def test_hub_rows_are_loaded_and_filtered(
    monkeypatch: pytest.MonkeyPatch, mixed_rows: list[dict[str, Any]]
) -> None:
    calls = []

    def load_dataset(name: str, config: str | None, *, split: str) -> _FakeHubTable:
        calls.append((name, config, split))
        return _FakeHubTable(mixed_rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rows = load_rows(split="validation", datasets_filter=["spam"], limit=2)
    assert calls == [("oolongbench/oolong-synth", None, "validation")]
    assert [r.id for r in rows] == [r["id"] for r in mixed_rows if r["dataset"] == "spam"][:2]

    calls.clear()
    real = load_rows(dataset_name="oolongbench/oolong-real", config="dnd", split="test", limit=1)
    assert calls == [("oolongbench/oolong-real", "dnd", "test")]
    assert real[0].split == "real"


# -------------------------------------------------------------------- generator

_LINE = re.compile(r"^Date: (\w{3}) (\d{2}), (\d{4}) \|\| User: (\d+) \|\| Instance: (.+)$")
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _recount(row: dict[str, Any]) -> list[tuple[dt.date, int, str]]:
    """Parse the context with a regex of our own; labels by the documented rule."""
    items = []
    for line in row["context_window_text"].splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        mon, day, year, user, instance = match.groups()
        date = dt.date(int(year), _MONTHS.index(mon) + 1, int(day))
        labels = [
            label for label in DATASETS[row["dataset"].removeprefix("synthetic-")].labels
            if re.search(rf"(?<![\w-]){re.escape(label)}(?![\w-])", instance)
        ]
        assert len(labels) == 1, line
        items.append((date, int(user), labels[0]))
    return items


def _expected_gold(row: dict[str, Any]) -> Any:
    items = _recount(row)
    question = row["question"]
    labels = Counter(label for _, _, label in items)
    dates = Counter(date for date, _, _ in items)
    if m := re.search(r"classified as label '([^']+)'", question):
        return labels[m.group(1)]
    if m := re.search(r"which of the labels is the (most|least) common", question):
        ranked = labels.most_common()
        return ranked[0][0] if m.group(1) == "most" else ranked[-1][0]
    if m := re.search(r"is label '([^']+)' more common.*as label '([^']+)'\?", question):
        a, b = labels[m.group(1)], labels[m.group(2)]
        return "more common than" if a > b else "less common than" if a < b else "same frequency as"
    if m := re.search(r"which user has the most instances with the label (.+?)\?", question):
        return Counter(u for _, u, lab in items if lab == m.group(1)).most_common(1)[0][0]
    if "which user is represented most often" in question:
        return Counter(u for _, u, _ in items).most_common(1)[0][0]
    if "which date is represented the second most often" in question:
        return dt.datetime.combine(dates.most_common(2)[1][0], dt.time())
    if "which date is represented most often" in question:
        return dt.datetime.combine(dates.most_common(1)[0][0], dt.time())
    if m := re.search(r"how many dates are represented exactly (\d+) times", question):
        return sum(1 for count in dates.values() if count == int(m.group(1)))
    raise AssertionError(f"unknown question: {question}")


def _assert_unique_answer(row: dict[str, Any]) -> None:
    """Questions about a maximum must not have a tie at the top."""
    items = _recount(row)
    question = row["question"]
    if m := re.search(r"which user has the most instances with the label (.+?)\?", question):
        counts = Counter(u for _, u, lab in items if lab == m.group(1)).most_common(2)
    elif "which user is represented" in question:
        counts = Counter(u for _, u, _ in items).most_common(2)
    elif "which date is represented most often" in question:
        counts = Counter(d for d, _, _ in items).most_common(2)
    elif "which of the labels" in question:
        counts = sorted(Counter(lab for _, _, lab in items).values())
        assert len(set(counts)) == len(counts)
        return
    else:
        return
    assert len(counts) == 1 or counts[0][1] > counts[1][1], question


_GOLD_FORMATS = {
    "ANSWER_TYPE.NUMERIC": r"\[\d+\]",
    "ANSWER_TYPE.USER": r"\[\d{5}\]",
    "ANSWER_TYPE.LABEL": r"\['[a-z ]+'\]",
    "ANSWER_TYPE.COMPARISON": r"\['(more common than|less common than|same frequency as)'\]",
    "ANSWER_TYPE.DATE": r"\[datetime\.date\(\d{4}, \d{1,2}, \d{1,2}\)\]",
}


@pytest.mark.parametrize(
    ("dataset", "context_len", "seed"),
    [("trec_coarse", 512, 0), ("trec_coarse", 4096, 1), ("trec_coarse", 16384, 7), ("spam", 2048, 3)],
)
def test_gold_agrees_with_a_recount_of_the_context(dataset: str, context_len: int, seed: int) -> None:
    rows = generate_rows(60, context_len, seed, dataset, questions_per_window=15)
    assert len(rows) == 60
    for row in rows:
        assert re.fullmatch(_GOLD_FORMATS[row["answer_type"]], row["answer"]), row["answer"]
        assert parse_synth_gold(row["answer"]) == _expected_gold(row), row["question"]
        _assert_unique_answer(row)
    tasks = {row["task"] for row in rows}
    assert {
        "TASK_TYPE.NUMERIC_ONE_CLASS", "TASK_TYPE.MOST_FREQ", "TASK_TYPE.LEAST_FREQ",
        "TASK_TYPE.RELATIVE_FREQ", "TASK_TYPE.REPRESENTED_N_TIMES",
    } <= tasks


def test_five_questions_cover_every_kind() -> None:
    rows = generate_rows(5, 2048, seed=11)
    assert {r["answer_type"] for r in rows} == set(_GOLD_FORMATS)
    assert {r["task_group"] for r in rows} == {"counting", "user", "timeline"}
    assert len({r["context_window_id"] for r in rows}) == 1


def test_rows_are_grouped_in_windows() -> None:
    rows = generate_rows(12, 1024, seed=5, questions_per_window=5)
    windows = Counter(r["context_window_id"] for r in rows)
    assert sorted(windows.values()) == [2, 5, 5]
    assert len({r["id"] for r in rows}) == 12
    for window in windows:
        texts = {r["context_window_text"] for r in rows if r["context_window_id"] == window}
        assert len(texts) == 1


def test_generation_is_deterministic() -> None:
    assert generate_rows(7, 2048, seed=42) == generate_rows(7, 2048, seed=42)
    assert generate_rows(7, 2048, seed=42) != generate_rows(7, 2048, seed=43)


def test_perfect_answers_score_one() -> None:
    for row in generate_rows(30, 2048, seed=9, questions_per_window=10):
        gold = parse_synth_gold(row["answer"])
        if row["answer_type"] == "ANSWER_TYPE.DATE":
            output = f"Date: {gold:%m/%d/%Y}"
        elif row["answer_type"] == "ANSWER_TYPE.USER":
            output = f"User: {gold}"
        elif row["answer_type"] == "ANSWER_TYPE.LABEL":
            output = f"Label: {gold}"
        elif row["answer_type"] == "ANSWER_TYPE.COMPARISON":
            a, b = re.findall(r"label '([^']+)'", row["question"])
            output = f"Answer: {a} is {gold} {b}"
        else:
            output = f"Answer: {gold}"
        assert score_answer(output, row["answer"], row["answer_type"]) == 1.0, (output, row["answer"])


@pytest.mark.parametrize("context_len", [2048, 8192, 32768])
def test_context_size_is_near_the_target(context_len: int) -> None:
    row = generate_rows(1, context_len, seed=0)[0]
    estimated_tokens = len(row["context_window_text"]) / 4
    assert 0.85 * context_len <= estimated_tokens <= 1.1 * context_len
    assert row["context_len"] == context_len


def test_every_line_hides_exactly_one_recoverable_label() -> None:
    row = generate_rows(1, 4096, seed=4)[0]
    lines = row["context_window_text"].splitlines()
    labelled = row["context_window_text_with_labels"].splitlines()
    parsed = [(line, parse_context_line(line)) for line in lines]
    items = [(line, p) for line, p in parsed if p is not None]
    assert len(items) > 50
    truth = [line.rsplit(" || Label: ", 1)[1] for line in labelled if " || Label: " in line]
    assert [recover_label(p.instance) for _, p in items] == truth
    for line, _ in items:
        assert "Label" not in line


def test_parse_context_line() -> None:
    line = "Date: Mar 07, 2023 || User: 48213 || Instance: Which location is home to Vobaki ?"
    parsed = parse_context_line(line)
    assert parsed is not None
    assert (parsed.date, parsed.user) == (dt.date(2023, 3, 7), 48213)
    assert parsed.instance == "Which location is home to Vobaki ?"
    assert parse_context_line(line + " || Label: location") == parsed
    assert parse_context_line("The following lines contain 3 questions") is None
    assert recover_label(parsed.instance) == "location"
    assert recover_label("What is the capital of Peru ?") is None


def test_unknown_dataset_is_refused() -> None:
    with pytest.raises(ValueError, match="trec_coarse"):
        generate_rows(1, 1024, seed=0, dataset="imdb")


def test_generated_rows_load_through_load_rows(tmp_path: Path) -> None:
    rows = generate_rows(10, 2048, seed=6)
    loaded = load_rows(data=_write_jsonl(tmp_path / "rows.jsonl", rows))
    assert [r.model_dump(exclude={"split", "context_len_source"}) for r in loaded] == [
        {k: v for k, v in row.items() if k != "context_window_text_with_labels"} for row in rows
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_cli_writes_loadable_rows(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / f"rows{suffix}"
    assert main(["--rows", "7", "--context-len", "1024", "--out", str(out), "--seed", "5"]) == 0
    assert "wrote 7 rows" in capsys.readouterr().err
    loaded = load_rows(data=out)
    assert [r.id for r in loaded] == [r["id"] for r in generate_rows(7, 1024, seed=5)]


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--rows", "3", "--context-len", "0", "--out", str(tmp_path / "x.jsonl")])
    assert info.value.code == 2
