"""score_answer against hand-worked cases of every OOLONG scoring rule."""

from __future__ import annotations

import datetime as dt

import pytest
from fsrlm.benchmarks.oolong_scoring import (
    extract_real_candidate,
    extract_synth_candidate,
    parse_real_answer,
    parse_synth_gold,
    score_answer,
    score_answer_detail,
)

NUMERIC = "ANSWER_TYPE.NUMERIC"
LABEL = "ANSWER_TYPE.LABEL"
DATE = "ANSWER_TYPE.DATE"
COMPARISON = "ANSWER_TYPE.COMPARISON"
USER = "ANSWER_TYPE.USER"


# ------------------------------------------------------------------ synth gold


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("['location']", "location"),
        ("['description and abstract concept']", "description and abstract concept"),
        ("[47]", 47),
        ("[94706]", 94706),
        ("['more common than']", "more common than"),
        ("['entity', 'location']", "entity"),  # ties: the first element is the gold
        ("  [47]\n", 47),
        ("[datetime.date(2023, 1, 5)]", dt.datetime(2023, 1, 5)),
        ("[datetime.date(2024, 12, 31)]", dt.datetime(2024, 12, 31)),
        ("location", "location"),  # hand-written, unquoted
        ("47", 47),
    ],
)
def test_parse_synth_gold(answer: str, gold: object) -> None:
    assert parse_synth_gold(answer) == gold


@pytest.mark.parametrize(
    "answer", ["[]", "[datetime.date(2023, 13, 5)]", "[datetime.datetime(2023, 1, 5, 10, 0)]"]
)
def test_parse_synth_gold_rejects(answer: str) -> None:
    with pytest.raises(ValueError):
        parse_synth_gold(answer)


def test_date_gold_is_parsed_without_eval() -> None:
    # a gold that would run code under eval() is refused, not executed
    with pytest.raises(ValueError):
        parse_synth_gold("[datetime.date(2023, 1, 5)] + [__import__('os').getcwd()]")


# ------------------------------------------------------------ synth candidate


def test_no_colon_short_output_is_taken_whole() -> None:
    text = "human being is best"
    assert len(text) == 19
    assert extract_synth_candidate(text) == "human being is best"


def test_no_colon_output_of_20_chars_gives_its_last_word() -> None:
    text = "human being is best!"
    assert len(text) == 20
    assert extract_synth_candidate(text) == "best!"


def test_no_colon_long_output_gives_its_last_word() -> None:
    assert extract_synth_candidate("After counting every line I found 44") == "44"


def test_no_colon_output_keeps_stars_and_brackets() -> None:
    # removing * and brackets only happens after a colon
    assert extract_synth_candidate("**location**") == "**location**"
    assert extract_synth_candidate("[47]") == "[47]"


def test_no_colon_long_output_is_not_rewritten_to_a_phrase() -> None:
    text = "human being is more common than location"
    assert extract_synth_candidate(text) == "location"


def test_short_whole_output_is_stripped() -> None:
    assert extract_synth_candidate("  location\n") == "location"
    assert score_answer("location\n", "['location']", LABEL) == 1.0


def test_20_char_boundary_counts_surrounding_whitespace() -> None:
    # as in the authors' code, the length is that of the output as given
    assert extract_synth_candidate("the location" + "\n" * 8) == "location"
    assert extract_synth_candidate("the location" + "\n" * 7) == "the location"
    assert extract_synth_candidate(" " * 25) == ""


def test_boundary_for_the_phrase_rewrite_is_before_the_extra_strip() -> None:
    # " less common than x " is 20 characters once the stars are gone
    assert extract_synth_candidate("Answer: ** less common than x **") == "less common"
    assert extract_synth_candidate("Answer: ** less common than **") == "less common than"


def test_colon_takes_the_text_after_the_last_colon() -> None:
    assert extract_synth_candidate("Label: location") == "location"
    assert extract_synth_candidate("Counts: 3 and 4. Answer:   47  ") == "47"
    assert extract_synth_candidate("line 1: skip\nline 2: skip\nAnswer: entity\n") == "entity"


def test_colon_removes_stars_and_brackets() -> None:
    assert extract_synth_candidate("Answer: **location**") == "location"
    assert extract_synth_candidate("User: [48213]") == "48213"
    assert extract_synth_candidate("Answer: [**47**]") == "47"
    assert extract_synth_candidate("Answer: ** location **") == "location"


def test_colon_at_the_end_gives_an_empty_candidate() -> None:
    assert extract_synth_candidate("The answer is:") == ""


@pytest.mark.parametrize(
    ("output", "candidate"),
    [
        ("Answer: human being is more common than location", "more common"),
        ("Answer: **entity is less common than abbreviation**", "less common"),
        ("Answer: entity is same frequency as location", "same frequency"),
        ("Answer: label 'spam' is the same frequency before then", "same frequency"),
    ],
)
def test_long_candidate_becomes_its_phrase(output: str, candidate: str) -> None:
    assert extract_synth_candidate(output) == candidate


def test_short_candidate_keeps_its_wording() -> None:
    assert extract_synth_candidate("Answer: more common than") == "more common than"
    assert extract_synth_candidate("Answer: less common") == "less common"


def test_long_candidate_without_a_phrase_is_kept() -> None:
    text = "the label that occurs most is location"
    assert extract_synth_candidate(f"Answer: {text}") == text


# ---------------------------------------------------------------- synth score


def test_exact_string_match_scores_one() -> None:
    assert score_answer("Label: location", "['location']", LABEL) == 1.0
    assert score_answer("location", "['location']", LABEL) == 1.0
    assert score_answer("User: 94706", "[94706]", USER) == 1.0
    assert score_answer("Answer: more common than", "['more common than']", COMPARISON) == 1.0


def test_label_match_is_case_sensitive_and_has_no_partial_credit() -> None:
    assert score_answer("Label: Location", "['location']", LABEL) == 0.0
    assert score_answer("Label: human", "['human being']", LABEL) == 0.0


def test_user_answers_get_no_partial_credit() -> None:
    assert score_answer("User: 94707", "[94706]", USER) == 0.0


@pytest.mark.parametrize(
    ("output", "gold", "score"),
    [
        ("Answer: numeric value is more common than entity", "['more common than']", 1.0),
        ("Answer: numeric value is less common than entity", "['less common than']", 1.0),
        ("Answer: numeric value is same frequency as entity", "['same frequency as']", 1.0),
        ("Answer: numeric value is less common than entity", "['more common than']", 0.0),
        ("Answer: less common", "['less common than']", 1.0),  # short phrase, occurs in gold
        ("Answer: more common", "['less common than']", 0.0),
        # timeline before/after questions have golds without "than"
        ("Answer: spam is more common before 2024-07-24", "['more common']", 1.0),
        ("Answer: spam is the same frequency before 2024-07-24", "['the same frequency']", 1.0),
    ],
)
def test_comparison_phrase_occurring_in_gold(output: str, gold: str, score: float) -> None:
    assert score_answer(output, gold, COMPARISON) == score


@pytest.mark.parametrize(
    ("output", "score"),
    [
        ("Answer: 47", 1.0),
        ("47", 1.0),
        ("Answer: 48", 0.75),
        ("Answer: 46", 0.75),
        ("Answer: 45", 0.5625),
        ("Answer: 50", 0.421875),
        ("Answer: 37", 0.75**10),
        ("After counting every line I found 44", 0.421875),
        ("Answer: **47**", 1.0),
        ("Answer: [47]", 1.0),
    ],
)
def test_numeric_partial_credit(output: str, score: float) -> None:
    assert score_answer(output, "[47]", NUMERIC) == pytest.approx(score)


@pytest.mark.parametrize(
    "output", ["Answer: 47.0", "Answer: about 47", "Answer: forty-seven", "Answer: 4 7", "Answer:"]
)
def test_numeric_non_integer_candidate_scores_zero(output: str) -> None:
    assert score_answer(output, "[47]", NUMERIC) == 0.0


def test_partial_credit_only_for_numeric_type() -> None:
    # the same near-miss number is worth nothing when the question is not NUMERIC
    assert score_answer("Answer: 48", "[47]", USER) == 0.0
    assert score_answer("Answer: 48", "[47]", LABEL) == 0.0


@pytest.mark.parametrize(
    "output",
    [
        "Date: 01/05/2023",
        "Date: 1/5/2023",
        "Date: 2023-01-05",
        "Date: January 5, 2023",
        "Date: Jan 05, 2023",
        "Date: **01/05/2023**",
        "Date: [01/05/2023]",
        "2023-01-05",
        "The date that appears most often is 01/05/2023",
    ],
)
def test_date_candidate_parsing_to_the_gold_date_scores_one(output: str) -> None:
    assert score_answer(output, "[datetime.date(2023, 1, 5)]", DATE) == 1.0


@pytest.mark.parametrize(
    "output",
    [
        "Date: 01/06/2023",
        "Date: 05/01/2023",  # read month first: May 1
        "Date: not a date",
        "Date:",
    ],
)
def test_date_candidate_not_the_gold_date_scores_zero(output: str) -> None:
    assert score_answer(output, "[datetime.date(2023, 1, 5)]", DATE) == 0.0


def test_other_types_score_zero_on_mismatch() -> None:
    assert score_answer("Answer: entity", "['location']", LABEL) == 0.0
    assert score_answer("", "['location']", LABEL) == 0.0


def test_answer_type_prefix_and_whitespace_are_optional() -> None:
    assert score_answer("Answer: 48", "[47]", "NUMERIC") == 0.75
    assert score_answer("Answer: 48", "[47]", " ANSWER_TYPE.NUMERIC ") == 0.75


def test_detail_reports_candidate_and_gold() -> None:
    detail = score_answer_detail("Answer: **45**", "[47]", NUMERIC)
    assert detail.score == pytest.approx(0.5625)
    assert detail.candidate == 45
    assert detail.gold == 47


def test_unknown_split_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown OOLONG split"):
        score_answer("x", "['x']", LABEL, split="validation")


# ------------------------------------------------------------------------ real


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("7", 7),
        (" 12 ", 12),
        ("-3", -3),
        ("Fireball, Magic Missile", ["Fireball", "Magic Missile"]),
        ("Fireball, , Shield,", ["Fireball", "Shield"]),
        ("Vex'ahlia", "Vex'ahlia"),
        ("7.5", "7.5"),
    ],
)
def test_parse_real_answer(text: str, parsed: object) -> None:
    assert parse_real_answer(text) == parsed


@pytest.mark.parametrize(
    ("output", "candidate"),
    [
        ("So the total is \\boxed{7}.", 7),
        ("\\boxed{\\text{Fireball}}", "Fireball"),
        ("Final: \\boxed{\\text{Fireball, Magic Missile}}", ["Fireball", "Magic Missile"]),
        ("\\boxed{Fireball, Shield}", ["Fireball", "Shield"]),
        ("first \\boxed{3} then \\boxed{4}", 3),
        ("7", 7),  # no box: the raw output, parsed
        ("  12 \n", 12),
        ("Fireball, Shield", ["Fireball", "Shield"]),
        ("Vex", "Vex"),
        ("Answer: 7", "Answer: 7"),
    ],
)
def test_extract_real_candidate(output: str, candidate: object) -> None:
    assert extract_real_candidate(output) == candidate


@pytest.mark.parametrize(
    ("output", "gold", "score"),
    [
        ("\\boxed{7}", "7", 1.0),
        ("\\boxed{8}", "7", 0.75),
        ("\\boxed{5}", "7", 0.5625),
        ("\\boxed{9}", "7", 0.5625),
        ("7", "7", 1.0),
        ("Answer: 7", "7", 0.0),  # unboxed text is a string, the gold an int
        ("\\boxed{seven}", "7", 0.0),
        ("\\boxed{\\text{vex'ahlia}}", "Vex'ahlia", 1.0),
        ("\\boxed{ VEX'AHLIA }", "Vex'ahlia", 1.0),
        ("\\boxed{Percy}", "Vex'ahlia", 0.0),
        ("\\boxed{Fireball, Shield}", "Fireball, Magic Missile, Shield", 2 / 3),
        ("\\boxed{Shield, Fireball, Magic Missile}", "Fireball, Magic Missile, Shield", 1.0),
        ("\\boxed{Fireball, Shield, Bless, Cure Wounds}", "Fireball, Magic Missile, Shield", 2 / 3),
        ("\\boxed{fireball, shield}", "Fireball, Magic Missile, Shield", 0.0),  # items exact
        ("\\boxed{Fireball}", "Fireball, Shield", 0.0),  # a string against a list
        ("\\boxed{3}", "Fireball, Shield", 0.0),
    ],
)
def test_real_scores(output: str, gold: str, score: float) -> None:
    assert score_answer(output, gold, "", split="real") == pytest.approx(score)


def test_dnd_is_an_alias_for_real() -> None:
    assert score_answer("\\boxed{8}", "7", "", split="dnd") == 0.75
    assert score_answer("\\boxed{8}", "7", "", split="REAL") == 0.75
