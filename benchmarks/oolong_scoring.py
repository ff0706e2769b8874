"""Score answers to OOLONG questions exactly as the OOLONG authors' code scores them.

The rules are those of ``synth_process_response`` and ``dnd_process_response``
in the authors' evaluation helpers (github.com/abertsch72/oolong,
``src/eval/eval_helpers.py``, as of the version whose real-split parser reads
doubled braces). This is our own code, written from reading theirs, and by
default it gives the same score on every input. Anything more forgiving is a
named departure (:data:`LENIENT_DEPARTURES`) applied only with ``lenient=True``
(``--lenient`` on the command line), and every results record says which rules
scored it. OOLONG-Pairs rows (``split="pairs"``) are scored by F1 over pairs
(:mod:`benchmarks.oolong_pairs`).

oolong-synth (``split="synth"``)
    gold
        With ``datetime`` in the row's ``answer``: ``strptime`` with the format
        ``[datetime.date(%Y, %m, %d)]`` (midnight of that day). Otherwise the
        first element of the Python literal (:func:`ast.literal_eval`, never
        ``eval``): ``"['location']"`` → ``"location"``, ``"[47]"`` → ``47``.
    prediction
        With no ``:`` in the output: the whole output, as it is, if it is shorter
        than 20 characters, else its last whitespace-separated word. Otherwise
        the text after the last ``:``, stripped, then with every ``*``, ``[`` and
        ``]`` removed; such a candidate of 20 or more characters that contains
        ``more common``, ``less common`` or ``same frequency`` (tried in that
        order) becomes that phrase.
    score
        1 if ``str(candidate) == str(gold)``; else, if the candidate is one of
        the three phrases, 1 when it occurs in ``str(gold)`` and 0 otherwise;
        else, when ``answer_type`` is exactly ``ANSWER_TYPE.NUMERIC``,
        ``0.75 ** |int(gold) - int(candidate)|`` (0 when either is no integer);
        else, when it is exactly ``ANSWER_TYPE.DATE``, 1 when ``dateutil``
        parses the candidate to the gold datetime; else 0.

oolong-real, D&D (``split="real"``, also ``"dnd"`` / ``"toy_dnd"``)
    prediction
        The content of the first ``\\boxed{\\text{...}}``, else of the first
        ``\\boxed{...}`` (any number of braces, so ``\\boxed{{7}}`` reads ``7``),
        parsed; with no box, the whole output as raw text, not parsed.
    parsing
        An int if ``int()`` accepts it; else, with a comma, the list of stripped,
        non-empty comma-separated items; else the text.
    score
        Two ints: ``0.75 ** |diff|``; two strings: 1 when equal ignoring case and
        surrounding whitespace; two lists: ``|set(gold) & set(pred)| / |gold|``
        (items compared exactly); any other pairing (an unboxed ``7`` is a string
        against an int gold): 0.

Where the authors' code raises instead of scoring (a gold it cannot parse; an
output of 20+ characters with no ``:`` that is all whitespace), we do not
crash the benchmark: a bad gold raises :class:`ValueError`, which the runner
records as a row scored 0 with the reason, and the empty output scores 0.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal

import dateutil.parser

__all__ = [
    "COMPARISON_PHRASES",
    "LENIENT_DEPARTURES",
    "SCORING_AUTHORS",
    "SCORING_LENIENT",
    "Departure",
    "ScoredAnswer",
    "extract_real_candidate",
    "extract_synth_candidate",
    "parse_real_answer",
    "parse_synth_gold",
    "score_answer",
    "score_answer_detail",
    "scoring_name",
]

#: The name a results record gives the default rules, and the forgiving ones.
SCORING_AUTHORS = "authors"
SCORING_LENIENT = "lenient"
Scoring = Literal["authors", "lenient"]

#: Phrases a long comparison answer is reduced to, in the order they are tried.
COMPARISON_PHRASES: tuple[str, ...] = ("more common", "less common", "same frequency")

#: A synth candidate this long or longer is checked for a comparison phrase; a
#: colon-less output this long or longer is reduced to its last word.
_LONG_CANDIDATE = 20

#: Partial credit per unit of error for numeric answers.
_NUMERIC_BASE = 0.75

_NUMERIC = "ANSWER_TYPE.NUMERIC"
_DATE = "ANSWER_TYPE.DATE"
_DATE_GOLD_FORMAT = "[datetime.date(%Y, %m, %d)]"
_LENIENT_DATE_GOLD = re.compile(
    r"^\[\s*datetime\.date\(\s*(\d{1,4})\s*,\s*(\d{1,2})\s*,\s*(\d{1,2})\s*\)\s*,?\s*\]$"
)
_BOXED_TEXT = re.compile(r"\\boxed\{\\text\{([^}]*)\}\}")
_BOXED = re.compile(r"\\boxed\{+([^}]*)\}+")

_SYNTH_SPLITS = frozenset({"synth"})
_REAL_SPLITS = frozenset({"real", "dnd", "toy_dnd"})
_PAIRS_SPLITS = frozenset({"pairs"})


@dataclass(frozen=True)
class Departure:
    """One way ``--lenient`` scores differently from the authors' code."""

    name: str
    split: str
    rule: str


#: Every departure from the authors' rules; all of them apply with ``lenient=True``,
#: none without. Each can only raise a score the authors' code gives, but one:
#: for a gold written as a quoted string (``"'location'"``) the authors compare
#: with its first character, ``plain-gold`` with the whole string.
LENIENT_DEPARTURES: tuple[Departure, ...] = (
    Departure("strip-short-output", "synth",
              "an output with no ':' shorter than 20 characters is compared stripped "
              "(the authors compare it as given: 'location\\n' scores 0 there)"),
    Departure("strip-after-removal", "synth",
              "the candidate after the last ':' is stripped again once '*', '[' and ']' are removed "
              "(the authors: 'Answer: ** location **' leaves ' location ' and scores 0)"),
    Departure("answer-type-spelling", "synth",
              "answer_type may lack its 'ANSWER_TYPE.' prefix or carry surrounding whitespace "
              "(the authors match the exact string, so 'NUMERIC' gets no partial credit)"),
    Departure("plain-gold", "synth",
              "a gold that is not a list literal ('location', '47') is used as it is; a date gold "
              "may have any spacing (the authors fail on it, or take the first character of a "
              "quoted string)"),
    Departure("parse-unboxed-real", "real",
              "an answer with no \\boxed{} is stripped and parsed as an int or a list "
              "(the authors compare the raw text as a string: an unboxed 7 for gold 7 scores 0)"),
)


def scoring_name(lenient: bool) -> Scoring:
    """What a results record calls the rules that scored it."""
    return SCORING_LENIENT if lenient else SCORING_AUTHORS


@dataclass(frozen=True)
class ScoredAnswer:
    """One scored answer: the score and what the scorer compared.

    ``candidate`` and ``gold`` are the parsed values (a string, int, list or
    ``datetime``; for OOLONG-Pairs a summary), kept so a results file can show
    why a row scored what it did.
    """

    score: float
    candidate: Any
    gold: Any


# --------------------------------------------------------------------------- synth


def parse_synth_gold(answer: str, *, lenient: bool = False) -> Any:
    """Return the gold value of an oolong-synth ``answer`` field.

    ``"['location']"`` → ``"location"``, ``"[47]"`` → ``47``,
    ``"[datetime.date(2023, 1, 5)]"`` → ``datetime.datetime(2023, 1, 5, 0, 0)``.

    With ``lenient``, text that is not a list literal is used as it is
    (``"47"`` → ``47``, ``"location"`` → ``"location"``).

    Raises:
        ValueError: the authors' code would fail on this gold too (not a
            literal, not indexable, an empty list, a malformed date); with
            ``lenient``, only a malformed or impossible date or an empty list.
    """
    if lenient:
        return _lenient_synth_gold(answer)
    if "datetime" in answer:
        try:
            return dt.datetime.strptime(answer, _DATE_GOLD_FORMAT)
        except ValueError as exc:
            raise ValueError(f"date gold is not of the form [datetime.date(Y, M, D)]: {answer!r}") from exc
    try:
        value = ast.literal_eval(answer)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(f"gold answer is not a Python literal: {answer!r} (--lenient accepts plain text)") from exc
    try:
        return value[0]
    except (TypeError, IndexError, KeyError) as exc:
        raise ValueError(f"gold answer is not a non-empty list: {answer!r} (--lenient accepts plain text)") from exc


def _lenient_synth_gold(answer: str) -> Any:
    text = answer.strip()
    if "datetime" in text:
        match = _LENIENT_DATE_GOLD.match(text)
        if match is None:
            raise ValueError(f"date gold is not of the form [datetime.date(Y, M, D)]: {answer!r}")
        year, month, day = (int(part) for part in match.groups())
        return dt.datetime(year, month, day)
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"gold answer is an empty list: {answer!r}")
        return value[0]
    return value


def extract_synth_candidate(output: str, *, lenient: bool = False) -> str:
    """Return the part of a model's output that is compared with a synth gold.

    >>> extract_synth_candidate("Answer: **location**")
    'location'
    >>> extract_synth_candidate("I counted them all and the total is 47")
    '47'
    """
    if ":" not in output:
        if len(output) < _LONG_CANDIDATE:
            return output.strip() if lenient else output
        words = output.split()
        return words[-1] if words else ""  # the authors' code raises IndexError here
    candidate = output.split(":")[-1].strip()
    candidate = candidate.replace("*", "").replace("[", "").replace("]", "")
    if len(candidate) >= _LONG_CANDIDATE:
        for phrase in COMPARISON_PHRASES:
            if phrase in candidate:
                return phrase
    return candidate.strip() if lenient else candidate


def _answer_kind(answer_type: str, lenient: bool) -> str:
    if not lenient:
        return answer_type
    kind = answer_type.strip()
    if kind and not kind.startswith("ANSWER_TYPE."):
        kind = f"ANSWER_TYPE.{kind}"
    return kind


def _score_synth(output: str, gold_answer: str, answer_type: str, lenient: bool) -> ScoredAnswer:
    gold = parse_synth_gold(gold_answer, lenient=lenient)
    candidate = extract_synth_candidate(output, lenient=lenient)
    if candidate == str(gold):
        return ScoredAnswer(1.0, candidate, gold)
    if candidate in COMPARISON_PHRASES:
        return ScoredAnswer(1.0 if candidate in str(gold) else 0.0, candidate, gold)
    kind = _answer_kind(answer_type, lenient)
    if kind == _NUMERIC:
        try:
            predicted, expected = int(candidate), int(gold)
        except (ValueError, TypeError):
            return ScoredAnswer(0.0, candidate, gold)
        return ScoredAnswer(_NUMERIC_BASE ** abs(expected - predicted), predicted, gold)
    if kind == _DATE:
        try:
            predicted_date = dateutil.parser.parse(candidate)
        except (ValueError, OverflowError, TypeError):
            return ScoredAnswer(0.0, candidate, gold)
        return ScoredAnswer(1.0 if predicted_date == gold else 0.0, predicted_date, gold)
    return ScoredAnswer(0.0, candidate, gold)


# ---------------------------------------------------------------------------- real


def parse_real_answer(text: str) -> int | list[str] | str:
    """Parse an oolong-real answer (gold or boxed prediction) as an int, a list or a string.

    ``"7"`` → ``7``; ``"Fireball, Magic Missile"`` → ``["Fireball", "Magic Missile"]``;
    anything else is returned unchanged.
    """
    try:
        return int(text)
    except (ValueError, TypeError):
        pass
    if "," in text:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def extract_real_candidate(output: str, *, lenient: bool = False) -> int | list[str] | str:
    """Return the prediction in a model's answer to an oolong-real question.

    The parsed content of the first ``\\boxed{\\text{...}}``, else of the first
    ``\\boxed{...}``; with no box the raw output (``lenient``: stripped and parsed).
    """
    match = _BOXED_TEXT.search(output) or _BOXED.search(output)
    if match is not None:
        return parse_real_answer(match.group(1))
    return parse_real_answer(output.strip()) if lenient else output


def _score_real(output: str, gold_answer: str, lenient: bool) -> ScoredAnswer:
    gold = parse_real_answer(gold_answer)
    candidate = extract_real_candidate(output, lenient=lenient)
    score = 0.0
    if isinstance(gold, int) and isinstance(candidate, int):
        score = _NUMERIC_BASE ** abs(gold - candidate)
    elif isinstance(gold, str) and isinstance(candidate, str):
        score = 1.0 if gold.strip().lower() == candidate.strip().lower() else 0.0
    elif isinstance(gold, list) and isinstance(candidate, list):
        score = len(set(gold) & set(candidate)) / len(gold) if gold else 0.0
    return ScoredAnswer(float(score), candidate, gold)


# ---------------------------------------------------------------------------- both


def score_answer_detail(
    output: str, gold: str, answer_type: str, split: str = "synth", *, lenient: bool = False
) -> ScoredAnswer:
    """Score one answer and return the score with the parsed candidate and gold.

    Args:
        output: the model's whole answer, as it returned it.
        gold: the row's ``answer`` field.
        answer_type: the row's ``answer_type`` (``"ANSWER_TYPE.NUMERIC"``, …);
            only oolong-synth uses it.
        split: ``"synth"`` for oolong-synth, ``"real"`` (or ``"dnd"``) for
            oolong-real, ``"pairs"`` for OOLONG-Pairs.
        lenient: apply :data:`LENIENT_DEPARTURES` (default: the authors' rules).

    Raises:
        ValueError: ``split`` is not one of the names above, or the gold cannot
            be parsed (see :func:`parse_synth_gold`).
    """
    kind = split.strip().lower()
    if kind in _SYNTH_SPLITS:
        return _score_synth(output, gold, answer_type, lenient)
    if kind in _REAL_SPLITS:
        return _score_real(output, gold, lenient)
    if kind in _PAIRS_SPLITS:
        from fsrlm.benchmarks.oolong_pairs import score_pairs

        return score_pairs(output, gold)
    valid = ", ".join(sorted(_SYNTH_SPLITS | _REAL_SPLITS | _PAIRS_SPLITS))
    raise ValueError(f"unknown OOLONG split {split!r}; expected one of: {valid}")


def score_answer(
    output: str, gold: str, answer_type: str, split: str = "synth", *, lenient: bool = False
) -> float:
    """Score one answer between 0 and 1 with the OOLONG authors' rules (or ``lenient`` ones).

    See the module docstring for the rules and :func:`score_answer_detail` for
    the arguments and errors.
    """
    return score_answer_detail(output, gold, answer_type, split, lenient=lenient).score
