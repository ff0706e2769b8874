"""The scorer against cases worked from the OOLONG authors' rules, for every answer type of both splits.

Each case gives the score the authors' ``synth_process_response`` /
``dnd_process_response`` give (``authors``) and the score with ``--lenient``
(``lenient``); where they differ the case names the departure responsible, and
every departure of :data:`LENIENT_DEPARTURES` has such a case.
"""

from __future__ import annotations

import datetime as dt

import pytest
from fsrlm.benchmarks.oolong_scoring import (
    LENIENT_DEPARTURES,
    extract_real_candidate,
    extract_synth_candidate,
    parse_real_answer,
    parse_synth_gold,
    score_answer,
    score_answer_detail,
)

LABEL = "ANSWER_TYPE.LABEL"
COMPARISON = "ANSWER_TYPE.COMPARISON"
NUMERIC = "ANSWER_TYPE.NUMERIC"
USER = "ANSWER_TYPE.USER"
DATE = "ANSWER_TYPE.DATE"
DATE_GOLD = "[datetime.date(2023, 1, 5)]"

# (output, gold, answer_type, authors' score, lenient score, departure where they differ)
SYNTH_CASES: list[tuple[str, str, str, float, float, str | None]] = [
    # LABEL: exact string match after the last colon, nothing else scores
    ("Label: location", "['location']", LABEL, 1, 1, None),
    ("location", "['location']", LABEL, 1, 1, None),
    ("location\n", "['location']", LABEL, 0, 1, "strip-short-output"),
    ("  location", "['location']", LABEL, 0, 1, "strip-short-output"),
    ("Label: **location**", "['location']", LABEL, 1, 1, None),
    ("Label: [location]", "['location']", LABEL, 1, 1, None),
    ("Label: ** location **", "['location']", LABEL, 0, 1, "strip-after-removal"),
    ("Label: Location", "['location']", LABEL, 0, 0, None),
    ("Label: human", "['human being']", LABEL, 0, 0, None),
    ("The most common label is location", "['location']", LABEL, 1, 1, None),
    ("The most common label is location.", "['location']", LABEL, 0, 0, None),
    ("**location**", "['location']", LABEL, 0, 0, None),
    ("Answer: entity", "['location']", LABEL, 0, 0, None),
    ("", "['location']", LABEL, 0, 0, None),
    ("line 1: skip\nAnswer: entity\n", "['entity']", LABEL, 1, 1, None),
    ("Label: location", "['location', 'entity']", LABEL, 1, 1, None),
    ("The answer is:", "['location']", LABEL, 0, 0, None),
    ("Label: description and abstract concept", "['description and abstract concept']", LABEL, 1, 1, None),
    # COMPARISON: long candidates become a phrase, a phrase scores when it occurs in the gold
    ("Answer: numeric value is more common than entity", "['more common than']", COMPARISON, 1, 1, None),
    ("Answer: numeric value is more common than entity", "['less common than']", COMPARISON, 0, 0, None),
    ("Answer: **entity is less common than abbreviation**", "['less common than']", COMPARISON, 1, 1, None),
    ("Answer: entity is same frequency as location", "['same frequency as']", COMPARISON, 1, 1, None),
    ("Answer: less common", "['less common than']", COMPARISON, 1, 1, None),
    ("Answer: more common", "['less common than']", COMPARISON, 0, 0, None),
    ("Answer: more common than", "['more common than']", COMPARISON, 1, 1, None),
    ("Answer: less common than", "['more common than']", COMPARISON, 0, 0, None),
    ("Answer: same frequency as", "['same frequency as']", COMPARISON, 1, 1, None),
    ("Answer: spam is more common before 2024-07-24", "['more common']", COMPARISON, 1, 1, None),
    ("numeric value is more common than entity", "['more common than']", COMPARISON, 0, 0, None),
    ("Answer: ** less common than x **", "['less common than']", COMPARISON, 1, 1, None),
    ("Answer: ** less common than **", "['less common than']", COMPARISON, 0, 1, "strip-after-removal"),
    # NUMERIC: 0.75 ** |error| for an integer candidate, 0 for anything int() refuses
    ("Answer: 47", "[47]", NUMERIC, 1, 1, None),
    ("47", "[47]", NUMERIC, 1, 1, None),
    ("47\n", "[47]", NUMERIC, 1, 1, None),  # int() ignores the newline the string match sees
    ("Answer: 48", "[47]", NUMERIC, 0.75, 0.75, None),
    ("Answer: 46", "[47]", NUMERIC, 0.75, 0.75, None),
    ("Answer: 45", "[47]", NUMERIC, 0.5625, 0.5625, None),
    ("Answer: 50", "[47]", NUMERIC, 0.421875, 0.421875, None),
    ("Answer: 37", "[47]", NUMERIC, 0.75 ** 10, 0.75 ** 10, None),
    ("Answer: -47", "[47]", NUMERIC, 0.75 ** 94, 0.75 ** 94, None),
    ("Answer: **47**", "[47]", NUMERIC, 1, 1, None),
    ("Answer: [47]", "[47]", NUMERIC, 1, 1, None),
    ("Answer: 4_7", "[47]", NUMERIC, 1, 1, None),  # Python's int() reads digit separators
    ("After counting every line I found 44", "[47]", NUMERIC, 0.421875, 0.421875, None),
    ("I found 44.", "[47]", NUMERIC, 0, 0, None),
    ("Answer: 47.0", "[47]", NUMERIC, 0, 0, None),
    ("Answer: about 47", "[47]", NUMERIC, 0, 0, None),
    ("Answer: forty-seven", "[47]", NUMERIC, 0, 0, None),
    ("Answer: 4 7", "[47]", NUMERIC, 0, 0, None),
    ("Answer:", "[47]", NUMERIC, 0, 0, None),
    ("Answer: 48", "[47]", "NUMERIC", 0, 0.75, "answer-type-spelling"),
    ("Answer: 48", "[47]", " ANSWER_TYPE.NUMERIC ", 0, 0.75, "answer-type-spelling"),
    ("Answer: 48", "[47]", LABEL, 0, 0, None),
    # USER: exact match only, no partial credit
    ("User: 94706", "[94706]", USER, 1, 1, None),
    ("User: [94706]", "[94706]", USER, 1, 1, None),
    ("User: **94706**", "[94706]", USER, 1, 1, None),
    ("94706", "[94706]", USER, 1, 1, None),
    ("User: 94707", "[94706]", USER, 0, 0, None),
    ("The user is 94706", "[94706]", USER, 0, 0, None),  # under 20 characters: compared whole
    ("The most frequent user is 94706", "[94706]", USER, 1, 1, None),
    # DATE: dateutil parses the candidate; equal to midnight of the gold day
    ("Date: 01/05/2023", DATE_GOLD, DATE, 1, 1, None),
    ("Date: 1/5/2023", DATE_GOLD, DATE, 1, 1, None),
    ("Date: 2023-01-05", DATE_GOLD, DATE, 1, 1, None),
    ("Date: January 5, 2023", DATE_GOLD, DATE, 1, 1, None),
    ("Date: Jan 05, 2023", DATE_GOLD, DATE, 1, 1, None),
    ("Date: **01/05/2023**", DATE_GOLD, DATE, 1, 1, None),
    ("Date: [01/05/2023]", DATE_GOLD, DATE, 1, 1, None),
    ("2023-01-05", DATE_GOLD, DATE, 1, 1, None),
    ("The date that appears most often is 01/05/2023", DATE_GOLD, DATE, 1, 1, None),
    ("Date: 05/01/2023", DATE_GOLD, DATE, 0, 0, None),  # month first: May 1
    ("Date: 01/06/2023", DATE_GOLD, DATE, 0, 0, None),
    ("Date: 2023-01-05 00:00:00", DATE_GOLD, DATE, 0, 0, None),  # the last ':' leaves "00"
    ("Date: not a date", DATE_GOLD, DATE, 0, 0, None),
    ("Date:", DATE_GOLD, DATE, 0, 0, None),
    ("Date: 2023-01-05", "[datetime.date(2023,1,5)]", DATE, "error", 1, "plain-gold"),
    # gold quirks
    ("Label: l", "'location'", LABEL, 1, 0, "plain-gold"),  # the first element of a quoted string: its first letter
    ("Label: location", "'location'", LABEL, 0, 1, "plain-gold"),
    ("Label: location", "location", LABEL, "error", 1, "plain-gold"),
    ("Answer: 47", "47", NUMERIC, "error", 1, "plain-gold"),
]

# (output, gold, authors' score, lenient score, departure where they differ)
REAL_CASES: list[tuple[str, str, float, float, str | None]] = [
    # ints: 0.75 ** |error| for a boxed integer
    ("So the total is \\boxed{7}.", "7", 1, 1, None),
    ("\\boxed{8}", "7", 0.75, 0.75, None),
    ("\\boxed{5}", "7", 0.5625, 0.5625, None),
    ("\\boxed{{7}}", "7", 1, 1, None),  # the authors' fallback reads any number of braces
    ("\\boxed{\\text{7}}", "7", 1, 1, None),
    ("\\boxed{ 12 }", "12", 1, 1, None),
    ("\\boxed{-3}", "-3", 1, 1, None),
    ("first \\boxed{3} then \\boxed{4}", "3", 1, 1, None),
    ("\\boxed{7.0}", "7", 0, 0, None),
    ("\\boxed{seven}", "7", 0, 0, None),
    ("7", "7", 0, 1, "parse-unboxed-real"),  # unboxed: raw text against an int gold
    ("  7 \n", "7", 0, 1, "parse-unboxed-real"),
    ("The answer is 7", "7", 0, 0, None),
    ("Answer: 7", "7", 0, 0, None),
    # strings: equal ignoring case and surrounding whitespace
    ("\\boxed{\\text{vex'ahlia}}", "Vex'ahlia", 1, 1, None),
    ("\\boxed{ VEX'AHLIA }", "Vex'ahlia", 1, 1, None),
    ("vex'ahlia", "Vex'ahlia", 1, 1, None),  # unboxed, but a string against a string
    ("\\boxed{Percy}", "Vex'ahlia", 0, 0, None),
    ("\\boxed{3}", "Vex'ahlia", 0, 0, None),
    # lists: |gold ∩ pred| / |gold|, items compared exactly
    ("\\boxed{Fireball, Shield}", "Fireball, Magic Missile, Shield", 2 / 3, 2 / 3, None),
    ("\\boxed{Shield, Fireball, Magic Missile}", "Fireball, Magic Missile, Shield", 1, 1, None),
    ("\\boxed{Fireball, Shield, Bless, Cure Wounds}", "Fireball, Magic Missile, Shield", 2 / 3, 2 / 3, None),
    ("\\boxed{\\text{Fireball, Shield}}", "Fireball, Shield", 1, 1, None),
    ("\\boxed{fireball, shield}", "Fireball, Magic Missile, Shield", 0, 0, None),
    ("\\boxed{Fireball}", "Fireball, Shield", 0, 0, None),
    ("\\boxed{3}", "Fireball, Shield", 0, 0, None),
    ("Fireball, Magic Missile, Shield", "Fireball, Magic Missile, Shield", 0, 1, "parse-unboxed-real"),
]


def _synth_params():
    return [pytest.param(*case, id=f"{case[2].split('.')[-1].strip().lower()}-{i}")
            for i, case in enumerate(SYNTH_CASES)]


@pytest.mark.parametrize(("output", "gold", "answer_type", "authors", "lenient", "departure"), _synth_params())
def test_synth_cases(output, gold, answer_type, authors, lenient, departure):
    if authors == "error":
        with pytest.raises(ValueError):
            score_answer(output, gold, answer_type)
    else:
        assert score_answer(output, gold, answer_type) == pytest.approx(authors)
    assert score_answer(output, gold, answer_type, lenient=True) == pytest.approx(lenient)


@pytest.mark.parametrize(("output", "gold", "authors", "lenient", "departure"),
                         [pytest.param(*case, id=f"real-{i}") for i, case in enumerate(REAL_CASES)])
def test_real_cases(output, gold, authors, lenient, departure):
    assert score_answer(output, gold, "", split="real") == pytest.approx(authors)
    assert score_answer(output, gold, "", split="real", lenient=True) == pytest.approx(lenient)


def test_every_difference_is_a_named_departure_and_every_departure_is_exercised():
    named = {d.name for d in LENIENT_DEPARTURES}
    used = set()
    for case in SYNTH_CASES:
        _, _, _, authors, lenient, departure = case
        assert (authors != lenient) == (departure is not None), case
        if departure is not None:
            assert departure in named, case
            used.add(departure)
    for case in REAL_CASES:
        _, _, authors, lenient, departure = case
        assert (authors != lenient) == (departure is not None), case
        if departure is not None:
            assert departure in named
            used.add(departure)
    assert used == named
    # lenient never lowers a score the authors' rules give, but for a quoted-string gold
    lowered = [c for c in SYNTH_CASES if c[3] != "error" and c[4] < c[3]]
    assert [c[0] for c in lowered] == ["Label: l"]


def test_answer_types_covered():
    assert {c[2] for c in SYNTH_CASES} >= {LABEL, COMPARISON, NUMERIC, USER, DATE}
    kinds = {type(parse_real_answer(gold)) for _, gold, *_ in REAL_CASES}
    assert kinds == {int, str, list}


# ------------------------------------------------------------------ the parts


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("['location']", "location"),
        ("[47]", 47),
        ("['entity', 'location']", "entity"),
        ("[datetime.date(2023, 1, 5)]", dt.datetime(2023, 1, 5)),
        ("[datetime.date(2024, 12, 31)]", dt.datetime(2024, 12, 31)),
    ],
)
def test_parse_synth_gold(answer, gold):
    assert parse_synth_gold(answer) == gold
    assert parse_synth_gold(answer, lenient=True) == gold


@pytest.mark.parametrize("answer", ["[]", "[datetime.date(2023, 13, 5)]", "[datetime.datetime(2023, 1, 5, 10, 0)]",
                                    "location", "47"])
def test_parse_synth_gold_rejects_what_the_authors_cannot_read(answer):
    with pytest.raises(ValueError):
        parse_synth_gold(answer)


def test_date_gold_is_parsed_without_eval():
    for lenient in (False, True):
        with pytest.raises(ValueError):
            parse_synth_gold("[datetime.date(2023, 1, 5)] + [__import__('os').getcwd()]", lenient=lenient)


def test_20_character_boundary_counts_surrounding_whitespace():
    assert extract_synth_candidate("the location" + "\n" * 8) == "location"
    assert extract_synth_candidate("the location" + "\n" * 7) == "the location" + "\n" * 7
    assert extract_synth_candidate("the location" + "\n" * 7, lenient=True) == "the location"
    assert extract_synth_candidate(" " * 25) == ""  # the authors' code raises here; we score 0


def test_real_candidate_without_a_box_is_the_raw_text():
    assert extract_real_candidate("  7 \n") == "  7 \n"
    assert extract_real_candidate("  7 \n", lenient=True) == 7
    assert extract_real_candidate("\\boxed{{Fireball, Shield}}") == ["Fireball", "Shield"]


def test_detail_reports_candidate_and_gold():
    detail = score_answer_detail("Answer: **45**", "[47]", NUMERIC)
    assert (detail.score, detail.candidate, detail.gold) == (pytest.approx(0.5625), 45, 47)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown OOLONG split"):
        score_answer("x", "['x']", LABEL, split="validation")


def test_dnd_is_an_alias_for_real():
    assert score_answer("\\boxed{8}", "7", "", split="dnd") == 0.75
    assert score_answer("\\boxed{8}", "7", "", split="REAL") == 0.75
