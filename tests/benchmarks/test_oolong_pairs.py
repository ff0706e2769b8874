"""OOLONG-Pairs: the paper's queries, gold from labelled windows, the F1 scorer, the offline path."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from fsrlm.benchmarks import compare, oolong
from fsrlm.benchmarks.oolong_data import row_from_record
from fsrlm.benchmarks.oolong_pairs import (
    PAIRS_QUERIES,
    gold_pairs,
    main,
    pairs_f1,
    pairs_rows,
    parse_labelled_window,
    parse_pairs,
    score_pairs,
)
from fsrlm.benchmarks.oolong_scoring import score_answer
from fsrlm.benchmarks.oolong_synth_gen import generate_rows
from fsrlm.benchmarks.scripted_oolong import _label, label_names, oolong_plan, oolong_responder, parse_items
from fsrlm.benchmarks.scripted_pairs import answer_pairs_question, pairs_conditions
from test_oolong_runner import records, write_fsrlm_toml, write_rows

from fsrlm.testing.scripted_model import ScriptedModelServer

LABELS = ["description and abstract concept", "entity", "human being", "numeric value", "location", "abbreviation"]

# Four users, each line "Date || User || Instance || Label"; worked by hand below.
WINDOW = "\n".join([
    "The following lines contain 9 general-knowledge questions, one per line.",
    "",
    "Date: Jan 10, 2023 || User: 101 || Instance: How far is it ? || Label: numeric value",
    "Date: Feb 01, 2023 || User: 101 || Instance: Where is Vobaki ? || Label: location",
    "Date: Jan 01, 2023 || User: 102 || Instance: Who wrote it ? || Label: human being",
    "Date: Mar 03, 2023 || User: 102 || Instance: What is a kobo ? || Label: entity",
    "Date: Apr 04, 2023 || User: 103 || Instance: How many ? || Label: numeric value",
    "Date: Apr 05, 2023 || User: 103 || Instance: How old ? || Label: numeric value",
    "Date: Jun 01, 2023 || User: 103 || Instance: What does NASA stand for ? || Label: abbreviation",
    "Date: Mar 01, 2023 || User: 104 || Instance: What does CPU stand for ? || Label: abbreviation",
    "Date: Mar 02, 2023 || User: 104 || Instance: What is a bobo ? || Label: entity",
]) + "\n"


def query(number: int):
    return PAIRS_QUERIES[number - 1]


def test_the_papers_twenty_queries():
    assert [q.number for q in PAIRS_QUERIES] == list(range(1, 21))
    assert query(1).text == (
        "In the above data, list all pairs of user IDs (no duplicate pairs, list lower ID first) where both users "
        "have at least one instance with a numeric value or location. Each of the questions can be labelled as one "
        "of the labels (the data does not provide the labels, you need to figure out the label from the semantics "
        "of the question): description and abstract concept, entity, human being, numeric value, location, "
        "abbreviation. In your answer, list all pairs in the format (user_id_1, user_id_2), separated by newlines.")
    assert all(q.any_of for q in PAIRS_QUERIES[:10]) and all(q.one and q.other for q in PAIRS_QUERIES[10:])
    assert [q.number for q in PAIRS_QUERIES if q.date_rule] == [4, 5, 7, 9, 10]


def test_labelled_window_parsing():
    items = parse_labelled_window(WINDOW)
    assert len(items) == 9
    assert items[0].date == dt.date(2023, 1, 10) and items[0].user == 101 and items[0].label == "numeric value"
    with pytest.raises(ValueError, match="no 'Date"):
        parse_labelled_window("no labelled lines here\n")


@pytest.mark.parametrize(("number", "gold"), [
    (1, [(101, 103)]),  # numeric value or location: 101, 103
    (2, [(102, 104)]),  # entity or human being: 102, 104
    (4, []),  # human being or location, every human being after Jan 6: 101 only (102's is Jan 1)
    (10, [(101, 104)]),  # numeric value or abbreviation, every abbreviation before May 20: 103's is Jun 1
    (11, [(102, 104)]),  # one: entity and abbreviation (104); other: exactly one entity (102, 104); never itself
    (12, []),  # one: two numeric values (103); other: location and human being (nobody)
    (13, []),  # one: exactly one description (nobody)
])
def test_gold_worked_by_hand(number, gold):
    assert gold_pairs(parse_labelled_window(WINDOW), query(number)) == gold


def test_pairs_are_read_in_any_order_and_spacing():
    text = "Pairs:\n(1, 2)\n(3,4)\n( 2 , 1 )\n(5, 5)\nnot a pair (x, 9) (7 , 8)\n[9, 10]"
    assert parse_pairs(text) == {(1, 2), (3, 4), (7, 8)}


def test_f1_over_pairs():
    result = pairs_f1({(1, 2), (3, 4)}, {(1, 2), (5, 6), (7, 8)})
    assert (result.precision, result.recall, result.f1) == (0.5, pytest.approx(1 / 3), pytest.approx(0.4))
    assert pairs_f1(set(), set()).f1 == 1.0
    assert pairs_f1({(1, 2)}, set()).f1 == 0.0 and pairs_f1(set(), {(1, 2)}).f1 == 0.0
    assert pairs_f1({(3, 4)}, {(1, 2)}).f1 == 0.0
    scored = score_pairs("(1, 2)\n(3, 4)", "(1, 2)\n(5, 6)\n(7, 8)")
    assert scored.score == pytest.approx(0.4) and scored.candidate["correct"] == 1 and scored.gold == {"pairs": 3}
    assert score_answer("(2, 1)", "(1, 2)", "ANSWER_TYPE.PAIRS", split="pairs") == 1.0


@pytest.mark.parametrize(("context_len", "seed"), [(8192, 0), (8192, 1), (32768, 2)])
def test_each_querys_words_say_what_its_condition_encodes(context_len, seed):
    """A solver that reads only the question's text finds exactly the gold pairs, on every query."""
    window = generate_rows(1, context_len, seed)[0]
    items = parse_items(window["context_window_text"])
    names = label_names(window["context_window_text"])
    labels = [_label(instance, names) for _, _, instance in items]
    gold_items = parse_labelled_window(window["context_window_text_with_labels"])
    sizes = []
    for q in PAIRS_QUERIES:
        gold = gold_pairs(gold_items, q)
        assert parse_pairs(answer_pairs_question(q.text, items, labels, names)) == set(gold), q.number
        sizes.append(len(gold))
    assert sum(1 for size in sizes if size) >= 15  # the generated windows make most queries non-trivial


def test_text_conditions_match_the_encoded_ones():
    for q in PAIRS_QUERIES:
        kind, first, second = pairs_conditions(q.text, LABELS)
        if q.any_of:
            assert kind == "both" and first == list(q.any_of)
            rule = q.date_rule
            assert second == (None if rule is None else (rule.label, rule.side, rule.date))
        else:
            assert kind == "split"
            assert first == [(c.label, c.op, c.n) for c in q.one]
            assert second == [(c.label, c.op, c.n) for c in q.other]


def test_pairs_rows_have_the_oolong_fields():
    window = generate_rows(1, 4096, seed=4)[0]
    rows = pairs_rows(window)
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    row = row_from_record(rows[0])
    assert (row.split, row.task_group, row.task, row.dataset) == ("pairs", "pairs", "PAIRS_1", "synthetic-oolong-pairs")
    assert row.synthetic and row.context_len == 4096 and row.question == query(1).text
    assert row.context_window_text == window["context_window_text"]
    assert parse_pairs(row.answer) == set(gold_pairs(parse_labelled_window(window["context_window_text_with_labels"]),
                                                     query(1)))
    real = dict(window, dataset="trec_coarse", synthetic=False)
    assert pairs_rows(real)[0]["dataset"] == "oolong-pairs"
    with pytest.raises(ValueError, match="context_window_text_with_labels"):
        pairs_rows({k: v for k, v in window.items() if k != "context_window_text_with_labels"})


def test_cli_makes_rows_from_data_or_generates_them(tmp_path: Path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["--generate", "--context-len", "4096", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 20 and "gold pairs per query" in capsys.readouterr().err
    data = write_rows(tmp_path / "rows.jsonl", generate_rows(2, 2048, seed=1) + generate_rows(2, 4096, seed=1))
    assert main(["--data", str(data), "--context-len", "4096", "--out", str(out)]) == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["context_len"] == 4096 and first["synthetic"] is True
    assert main(["--data", str(data), "--context-len", "8192", "--out", str(out)]) == 2
    assert "no trec_coarse window of context_len 8192" in capsys.readouterr().err


def test_pairs_offline_through_the_runner_and_the_baseline(tmp_path: Path, capsys, scripted: ScriptedModelServer):
    """The whole path on Pairs rows: real CLI and broker, scripted agent and sub-model, F1 scorer, report."""
    scripted.plan = oolong_plan()
    scripted.responder = oolong_responder
    data = write_rows(tmp_path / "pairs.jsonl", pairs_rows(generate_rows(1, 4096, seed=8)[0])[10:13])
    config = write_fsrlm_toml(tmp_path, scripted)
    code = oolong.main(["--data", str(data), "--fsrlm-config", str(config), "--executor", "local",
                        "--out", str(tmp_path / "rlm.jsonl")])
    out = capsys.readouterr().out
    assert code == 0
    rlm = records(tmp_path / "rlm.jsonl")
    assert [r["score"] for r in rlm] == [1.0, 1.0, 1.0]
    assert all(r["split"] == "pairs" and r["candidate"]["precision"] == 1.0 for r in rlm)
    assert "synthetic-oolong-pairs" in out and "F1 for OOLONG-Pairs" in out

    # The model alone with a third of the window finds only some of the pairs.
    code = compare.main(["--data", str(data), "--fsrlm-config", str(config), "--out", str(tmp_path / "alone.jsonl"),
                         "--max-output-tokens", "2000", "--min-output-tokens", "2000",
                         "--context-window-tokens", "3000", "--rlm-results", str(tmp_path / "rlm.jsonl")])
    assert code == 0, capsys.readouterr().err
    alone = records(tmp_path / "alone.jsonl")
    assert all(r["truncated"] and r["success"] for r in alone)
    assert all(r["candidate"]["recall"] < 1.0 for r in alone if r["gold"])
    assert sum(r["score"] for r in alone) < 3.0
