"""Score answers to OOLONG questions with the rules the OOLONG authors published.

The rules follow ``synth_process_response`` and ``dnd_process_response`` in the
authors' evaluation helpers (github.com/abertsch72/oolong, ``src/eval``). This is
our own code, written to give the same score on the same input; the deliberate
differences are listed at the end and are about whitespace and lenient input.

oolong-synth (``split="synth"``)
    gold
        The row's ``answer`` is a Python-literal list (``"['location']"``,
        ``"[47]"``); the gold is its first element. A date gold reads
        ``"[datetime.date(2023, 1, 5)]"`` and becomes midnight of that day (the
        authors parse it with ``strptime`` into a ``datetime``). Parsed without
        ``eval``: :func:`ast.literal_eval` plus a regular expression for dates.
    prediction
        With no ``:`` in the output: the whole output if it is shorter than 20
        characters, else its last word. Otherwise: the text after the last ``:``,
        stripped, with ``*``, ``[`` and ``]`` removed; such a candidate of 20 or
        more characters that contains ``more common``, ``less common`` or
        ``same frequency`` becomes that phrase.
    score
        1 if the candidate equals the gold as strings; else, if the candidate is
        one of those three phrases, 1 when it occurs in the gold and 0 otherwise;
        else for ``ANSWER_TYPE.NUMERIC`` ``0.75 ** |gold - candidate|`` (0 when the
        candidate is not an integer); else for ``ANSWER_TYPE.DATE`` 1 when
        ``dateutil`` parses the candidate to the gold date (midnight); else 0.

oolong-real, D&D (``split="real"``, also ``"dnd"`` / ``"toy_dnd"``)
    The prediction is the content of the first ``\\boxed{\\text{...}}`` or, failing
    that, the first ``\\boxed{...}``; without one, the whole output. Gold and
    prediction are each parsed as an int, else (when they contain a comma) as a
    comma-separated list of stripped, non-empty items, else kept as a string.
    Two ints score ``0.75 ** |diff|``; two strings 1 when equal ignoring case and
    surrounding whitespace; two lists ``|set(gold) & set(pred)| / |gold|``
    (items compared exactly); any other pairing 0.

Whitespace. The only departures from the authors' code; each can raise a
score the authors' code would give, never lower one (the 20-character
boundary and the phrase rewrite see exactly the text the authors' code sees):

- a short synth output taken whole (no ``:``) is stripped, so a trailing newline
  (every ``answer.md`` ends with one) does not turn ``"location\\n"`` into a miss;
- the synth candidate after a ``:`` is stripped again once ``*`` and brackets
  are removed, so ``"Answer: ** location **"`` yields ``"location"``;
- an output of 20+ characters that is all whitespace yields ``""`` (the authors'
  code raises ``IndexError``);
- the gold string and ``answer_type`` are stripped; ``answer_type`` may be given
  with or without its ``ANSWER_TYPE.`` prefix; a gold that is not a list literal
  (hand-written files) is used as it is instead of failing.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import dateutil.parser

__all__ = [
    "COMPARISON_PHRASES",
    "ScoredAnswer",
    "extract_real_candidate",
    "extract_synth_candidate",
    "parse_real_answer",
    "parse_synth_gold",
    "score_answer",
    "score_answer_detail",
]

#: Phrases a long comparison answer is reduced to, in the order they are tried.
COMPARISON_PHRASES: tuple[str, ...] = ("more common", "less common", "same frequency")

#: A synth candidate this long or longer is checked for a comparison phrase.
_LONG_CANDIDATE = 20

#: Partial credit per unit of error for numeric answers.
_NUMERIC_BASE = 0.75

_DATE_GOLD = re.compile(
    r"^\[\s*datetime\.date\(\s*(\d{1,4})\s*,\s*(\d{1,2})\s*,\s*(\d{1,2})\s*\)\s*,?\s*\]$"
)
_BOXED_TEXT = re.compile(r"\\boxed\{\\text\{([^}]*)\}\}")
_BOXED = re.compile(r"\\boxed\{([^}]*)\}")

_SYNTH_SPLITS = frozenset({"synth"})
_REAL_SPLITS = frozenset({"real", "dnd", "toy_dnd"})


@dataclass(frozen=True)
class ScoredAnswer:
    """One scored answer: the score and what the scorer compared.

    ``candidate`` and ``gold`` are the parsed values (a string, int, list or
    ``datetime``), kept so a results file can show why a row scored what it did.
    """

    score: float
    candidate: Any
    gold: Any


# --------------------------------------------------------------------------- synth


def parse_synth_gold(answer: str) -> Any:
    """Return the gold value of an oolong-synth ``answer`` field.

    ``"['location']"`` → ``"location"``, ``"[47]"`` → ``47``,
    ``"[datetime.date(2023, 1, 5)]"`` → ``datetime.datetime(2023, 1, 5, 0, 0)``.

    A bare literal that is not a list (``"47"``) is returned as parsed, and text
    that is not a Python literal at all (``"location"``) is returned stripped, so
    hand-written files need not quote their answers.

    Raises:
        ValueError: the answer mentions ``datetime`` but is not a
            ``[datetime.date(Y, M, D)]`` list, names an impossible date, or is an
            empty list.
    """
    text = answer.strip()
    if "datetime" in text:
        match = _DATE_GOLD.match(text)
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


def extract_synth_candidate(output: str) -> str:
    """Return the part of a model's output that is compared with a synth gold.

    >>> extract_synth_candidate("Answer: **location**")
    'location'
    >>> extract_synth_candidate("I counted them all and the total is 47")
    '47'
    """
    if ":" not in output:
        if len(output) < _LONG_CANDIDATE:
            return output.strip()
        words = output.split()
        return words[-1] if words else ""
    candidate = output.split(":")[-1].strip()
    candidate = candidate.replace("*", "").replace("[", "").replace("]", "")
    if len(candidate) >= _LONG_CANDIDATE:
        for phrase in COMPARISON_PHRASES:
            if phrase in candidate:
                return phrase
    return candidate.strip()


def _score_synth(output: str, gold_answer: str, answer_type: str) -> ScoredAnswer:
    gold = parse_synth_gold(gold_answer)
    candidate = extract_synth_candidate(output)
    gold_text = str(gold)
    if candidate == gold_text:
        return ScoredAnswer(1.0, candidate, gold)
    if candidate in COMPARISON_PHRASES:
        return ScoredAnswer(1.0 if candidate in gold_text else 0.0, candidate, gold)
    kind = _normalise_answer_type(answer_type)
    if kind == "ANSWER_TYPE.NUMERIC":
        try:
            predicted, expected = int(candidate), int(gold)
        except (ValueError, TypeError):
            return ScoredAnswer(0.0, candidate, gold)
        return ScoredAnswer(_NUMERIC_BASE ** abs(expected - predicted), predicted, gold)
    if kind == "ANSWER_TYPE.DATE":
        try:
            predicted_date = dateutil.parser.parse(candidate)
        except (ValueError, OverflowError, TypeError):
            return ScoredAnswer(0.0, candidate, gold)
        return ScoredAnswer(1.0 if predicted_date == gold else 0.0, predicted_date, gold)
    return ScoredAnswer(0.0, candidate, gold)


def _normalise_answer_type(answer_type: str) -> str:
    kind = answer_type.strip()
    if kind and not kind.startswith("ANSWER_TYPE."):
        kind = f"ANSWER_TYPE.{kind}"
    return kind


# ---------------------------------------------------------------------------- real


def parse_real_answer(text: str) -> int | list[str] | str:
    """Parse an oolong-real answer (gold or prediction) as an int, a list or a string.

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


def extract_real_candidate(output: str) -> int | list[str] | str:
    """Return the parsed prediction in a model's answer to an oolong-real question.

    The content of the first ``\\boxed{\\text{...}}``, else the first ``\\boxed{...}``,
    else the whole (stripped) output, parsed by :func:`parse_real_answer`.
    """
    text = output.strip()
    match = _BOXED_TEXT.search(text) or _BOXED.search(text)
    if match is not None:
        text = match.group(1)
    return parse_real_answer(text)


def _score_real(output: str, gold_answer: str) -> ScoredAnswer:
    gold = parse_real_answer(gold_answer.strip())
    candidate = extract_real_candidate(output)
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
    output: str, gold: str, answer_type: str, split: str = "synth"
) -> ScoredAnswer:
    """Score one answer and return the score with the parsed candidate and gold.

    Args:
        output: the model's whole answer.
        gold: the row's ``answer`` field.
        answer_type: the row's ``answer_type`` (``"ANSWER_TYPE.NUMERIC"``, …);
            only oolong-synth uses it.
        split: ``"synth"`` for oolong-synth, ``"real"`` (or ``"dnd"``) for
            oolong-real.

    Raises:
        ValueError: ``split`` is not one of the names above, or a synth gold
            cannot be parsed (see :func:`parse_synth_gold`).
    """
    kind = split.strip().lower()
    if kind in _SYNTH_SPLITS:
        return _score_synth(output, gold, answer_type)
    if kind in _REAL_SPLITS:
        return _score_real(output, gold)
    valid = ", ".join(sorted(_SYNTH_SPLITS | _REAL_SPLITS))
    raise ValueError(f"unknown OOLONG split {split!r}; expected one of: {valid}")


def score_answer(output: str, gold: str, answer_type: str, split: str = "synth") -> float:
    """Score one answer between 0 and 1 with the OOLONG authors' rules.

    See the module docstring for the rules and :func:`score_answer_detail` for
    the arguments and errors.
    """
    return score_answer_detail(output, gold, answer_type, split).score
