"""OOLONG-Pairs: the Recursive Language Models paper's pairwise task, gold and F1 scorer.

The paper (Zhang, Kraska, Khattab, arXiv:2512.24601, §3.1 and Appendix D.1)
built OOLONG-Pairs from OOLONG's ``trec_coarse`` windows with 20 new queries,
each asking for every pair of user IDs meeting a condition on the labels of
their instances, scored by F1 over the answer. :data:`PAIRS_QUERIES` holds those
20 queries word for word (Appendix D.1, CC BY 4.0), each with the condition it
states written out as data (:class:`PairsQuery`); the gold is computed from a
window's labelled text (``context_window_text_with_labels``).

What is ours (the paper publishes the queries, not its gold or scorer code):

- how the conditions are read: "at least one instance with a X or Y" means at
  least one instance labelled X or Y; "all instances that are a Z for both users
  must be after D" means every Z-instance of each user is dated strictly after D
  (true for a user with none); "one user has A, and the other user has B" is
  symmetric: ``(u, v)`` qualifies when u meets A and v meets B, or the reverse;
  a user is never paired with itself;
- the F1 scorer: pairs are read from the answer as ``(id, id)`` with any
  spacing, order within a pair and repeats ignored; precision and recall over
  the sets of pairs; an empty gold scores 1 for an answer with no pair in it
  ("none") and 0 otherwise (an empty answer is no answer, scored 0, as everywhere);
- which window the paper's slice uses: the first ``trec_coarse`` window of the
  chosen length in the dataset's order (the paper gives the length, 32K, not
  the window).

Rows made here have the fields of OOLONG rows (``split="pairs"``, ``task_group
"pairs"``, ``task`` ``PAIRS_<n>``, ``answer`` the gold pairs one ``(a, b)`` a line),
so the OOLONG runner, the baseline and the report take them unchanged.

Command line (make Pairs rows from a labelled window, or generated offline)::

    fsrlm bench pairs --data validation.parquet --context-len 32768 --out pairs.jsonl
    fsrlm bench pairs --generate --context-len 8192 --out pairs.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dateutil.parser
from fsrlm.benchmarks.oolong_scoring import ScoredAnswer

__all__ = [
    "PAIRS_QUERIES",
    "PAIRS_SOURCE",
    "Count",
    "DateRule",
    "LabelledItem",
    "PairsF1",
    "PairsQuery",
    "format_pairs",
    "gold_pairs",
    "main",
    "pairs_f1",
    "pairs_rows",
    "parse_labelled_window",
    "parse_pairs",
    "score_pairs",
]

PAIRS_SOURCE = "Recursive Language Models, arXiv:2512.24601, Appendix D.1"

Pair = tuple[int, int]

_LABELS = ("description and abstract concept", "entity", "human being", "numeric value", "location",
           "abbreviation")
_HEAD = "In the above data, list all pairs of user IDs (no duplicate pairs, list lower ID first) "
_TAIL = (". Each of the questions can be labelled as one of the labels (the data does not provide the labels, "
         "you need to figure out the label from the semantics of the question): " + ", ".join(_LABELS) + ". "
         "In your answer, list all pairs in the format (user_id_1, user_id_2), separated by newlines.")


@dataclass(frozen=True)
class Count:
    """A user has ``op`` ``n`` instances labelled ``label`` (``at_least`` or ``exactly``)."""

    label: str
    op: Literal["at_least", "exactly"]
    n: int

    def holds(self, counts: Mapping[str, int]) -> bool:
        have = counts.get(self.label, 0)
        return have >= self.n if self.op == "at_least" else have == self.n


@dataclass(frozen=True)
class DateRule:
    """Every instance of a user labelled ``label`` is dated strictly ``side`` ``date``."""

    label: str
    side: Literal["after", "before"]
    date: dt.date

    def holds(self, dates: Iterable[dt.date]) -> bool:
        if self.side == "after":
            return all(day > self.date for day in dates)
        return all(day < self.date for day in dates)


@dataclass(frozen=True)
class PairsQuery:
    """One OOLONG-Pairs query: its text and the condition it states.

    Symmetric queries (1–10) set ``any_of`` (each user has an instance with one of
    these labels) and maybe ``date_rule``; the others set ``one`` and ``other``.
    """

    number: int
    condition: str
    any_of: tuple[str, ...] = ()
    date_rule: DateRule | None = None
    one: tuple[Count, ...] = ()
    other: tuple[Count, ...] = ()

    @property
    def text(self) -> str:
        """The question as the paper words it."""
        return _HEAD + self.condition + _TAIL

    @property
    def task(self) -> str:
        return f"PAIRS_{self.number}"


def _at_least(label: str, n: int = 1) -> Count:
    return Count(label, "at_least", n)


def _exactly(label: str, n: int = 1) -> Count:
    return Count(label, "exactly", n)


_DESC, _ENT, _HUM, _NUM, _LOC, _ABBR = _LABELS

#: The paper's 20 queries (Appendix D.1), in its order; ``condition`` is its wording.
PAIRS_QUERIES: tuple[PairsQuery, ...] = (
    PairsQuery(1, "where both users have at least one instance with a numeric value or location",
               any_of=(_NUM, _LOC)),
    PairsQuery(2, "where both users have at least one instance with an entity or human being",
               any_of=(_ENT, _HUM)),
    PairsQuery(3, "where both users have at least one instance with a description and abstract concept or "
                  "abbreviation", any_of=(_DESC, _ABBR)),
    PairsQuery(4, "where both users have at least one instance with a human being or location, and all instances "
                  "that are a human being for both users must be after January 6, 2023",
               any_of=(_HUM, _LOC), date_rule=DateRule(_HUM, "after", dt.date(2023, 1, 6))),
    PairsQuery(5, "where both users have at least one instance with an entity or numeric value, and all instances "
                  "that are an entity for both users must be before March 15, 2023",
               any_of=(_ENT, _NUM), date_rule=DateRule(_ENT, "before", dt.date(2023, 3, 15))),
    PairsQuery(6, "where both users have at least one instance with a location or abbreviation",
               any_of=(_LOC, _ABBR)),
    PairsQuery(7, "where both users have at least one instance with a description and abstract concept or numeric "
                  "value, and all instances that are a numeric value for both users must be after February 1, 2023",
               any_of=(_DESC, _NUM), date_rule=DateRule(_NUM, "after", dt.date(2023, 2, 1))),
    PairsQuery(8, "where both users have at least one instance with a human being or description and abstract "
                  "concept", any_of=(_HUM, _DESC)),
    PairsQuery(9, "where both users have at least one instance with an entity or location, and all instances that "
                  "are a location for both users must be after April 10, 2023",
               any_of=(_ENT, _LOC), date_rule=DateRule(_LOC, "after", dt.date(2023, 4, 10))),
    PairsQuery(10, "where both users have at least one instance with a numeric value or abbreviation, and all "
                   "instances that are an abbreviation for both users must be before May 20, 2023",
               any_of=(_NUM, _ABBR), date_rule=DateRule(_ABBR, "before", dt.date(2023, 5, 20))),
    PairsQuery(11, "such that one user has at least one instance with entity and one with abbreviation, and the "
                   "other user has exactly one instance with entity",
               one=(_at_least(_ENT), _at_least(_ABBR)), other=(_exactly(_ENT),)),
    PairsQuery(12, "such that one user has at least two instances with numeric value, and the other user has at "
                   "least one instance with location and at least one instance with human being",
               one=(_at_least(_NUM, 2),), other=(_at_least(_LOC), _at_least(_HUM))),
    PairsQuery(13, "such that one user has exactly one instance with description and abstract concept, and the "
                   "other user has at least one instance with abbreviation and at least one instance with entity",
               one=(_exactly(_DESC),), other=(_at_least(_ABBR), _at_least(_ENT))),
    PairsQuery(14, "such that one user has at least one instance with human being and at least one instance with "
                   "numeric value, and the other user has exactly two instances with location",
               one=(_at_least(_HUM), _at_least(_NUM)), other=(_exactly(_LOC, 2),)),
    PairsQuery(15, "such that one user has at least one instance with entity, at least one instance with location, "
                   "and at least one instance with abbreviation, and the other user has exactly one instance with "
                   "numeric value",
               one=(_at_least(_ENT), _at_least(_LOC), _at_least(_ABBR)), other=(_exactly(_NUM),)),
    PairsQuery(16, "such that one user has at least one instance with description and abstract concept and at least "
                   "one instance with human being, and the other user has at least two instances with entity and "
                   "exactly one instance with abbreviation",
               one=(_at_least(_DESC), _at_least(_HUM)), other=(_at_least(_ENT, 2), _exactly(_ABBR))),
    PairsQuery(17, "such that one user has exactly one instance with numeric value, and the other user has at least "
                   "one instance with location and at least one instance with description and abstract concept",
               one=(_exactly(_NUM),), other=(_at_least(_LOC), _at_least(_DESC))),
    PairsQuery(18, "such that one user has at least one instance with abbreviation and exactly one instance with "
                   "human being, and the other user has at least one instance with entity and at least one instance "
                   "with numeric value",
               one=(_at_least(_ABBR), _exactly(_HUM)), other=(_at_least(_ENT), _at_least(_NUM))),
    PairsQuery(19, "such that one user has at least two instances with location and at least one instance with "
                   "entity, and the other user has exactly one instance with description and abstract concept and "
                   "exactly one instance with abbreviation",
               one=(_at_least(_LOC, 2), _at_least(_ENT)), other=(_exactly(_DESC), _exactly(_ABBR))),
    PairsQuery(20, "such that one user has at least one instance with numeric value and at least one instance with "
                   "human being, and the other user has at least one instance with location, at least one instance "
                   "with entity, and exactly one instance with abbreviation",
               one=(_at_least(_NUM), _at_least(_HUM)), other=(_at_least(_LOC), _at_least(_ENT), _exactly(_ABBR))),
)


# ----------------------------------------------------------------- labelled window


@dataclass(frozen=True)
class LabelledItem:
    """One line of a labelled context window."""

    date: dt.date
    user: int
    label: str


_LABELLED_LINE = re.compile(
    r"^Date: (?P<date>[^|]+?) \|\| User: (?P<user>\d+) \|\| Instance: .* \|\| Label: (?P<label>[^|]+?)\s*$"
)


def _parse_date(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%b %d, %Y").date()
    except ValueError:
        return dateutil.parser.parse(text).date()


def parse_labelled_window(text: str) -> list[LabelledItem]:
    """The items of a ``context_window_text_with_labels``: one per ``Date: … || Label: …`` line.

    Raises:
        ValueError: no line has that shape, or a line's date cannot be read.
    """
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LABELLED_LINE.match(line.strip())
        if match is None:
            continue
        try:
            date = _parse_date(match["date"])
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"labelled window line {number}: unreadable date {match['date']!r}") from exc
        items.append(LabelledItem(date=date, user=int(match["user"]), label=match["label"]))
    if not items:
        raise ValueError("the labelled window has no 'Date: … || User: … || Instance: … || Label: …' lines")
    return items


def gold_pairs(items: Sequence[LabelledItem], query: PairsQuery) -> list[Pair]:
    """Every pair ``(a, b)``, ``a < b``, of users meeting ``query``'s condition, sorted."""
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    dates: dict[int, dict[str, list[dt.date]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        counts[item.user][item.label] += 1
        dates[item.user][item.label].append(item.date)
    users = sorted(counts)

    if query.any_of:
        rule = query.date_rule
        qualifying = [u for u in users
                      if any(counts[u][label] for label in query.any_of)
                      and (rule is None or rule.holds(dates[u][rule.label]))]
        return list(itertools.combinations(qualifying, 2))
    side_a = {u for u in users if all(c.holds(counts[u]) for c in query.one)}
    side_b = {u for u in users if all(c.holds(counts[u]) for c in query.other)}
    return sorted({(min(a, b), max(a, b)) for a in side_a for b in side_b if a != b})


def format_pairs(pairs: Iterable[Pair]) -> str:
    """Pairs one ``(a, b)`` a line, the answer format the queries ask for."""
    return "\n".join(f"({a}, {b})" for a, b in pairs)


# ------------------------------------------------------------------------- scoring


_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")


def parse_pairs(text: str) -> set[Pair]:
    """The set of pairs in an answer: every ``(id, id)``, as ``(lower, higher)``; self-pairs dropped."""
    pairs = set()
    for match in _PAIR.finditer(text):
        a, b = int(match.group(1)), int(match.group(2))
        if a != b:
            pairs.add((min(a, b), max(a, b)))
    return pairs


@dataclass(frozen=True)
class PairsF1:
    """Precision, recall and F1 of predicted pairs against the gold."""

    precision: float
    recall: float
    f1: float
    predicted: int
    gold: int
    correct: int


def pairs_f1(predicted: set[Pair], gold: set[Pair]) -> PairsF1:
    """F1 over sets of pairs; an empty gold scores 1 only for a prediction with no pairs."""
    correct = len(predicted & gold)
    if not gold or not predicted:
        score = 1.0 if not gold and not predicted else 0.0
        return PairsF1(score, score, score, len(predicted), len(gold), correct)
    precision, recall = correct / len(predicted), correct / len(gold)
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return PairsF1(precision, recall, f1, len(predicted), len(gold), correct)


def score_pairs(output: str, gold_answer: str) -> ScoredAnswer:
    """Score an answer to an OOLONG-Pairs row (its ``answer`` is the gold, one pair a line)."""
    result = pairs_f1(parse_pairs(output), parse_pairs(gold_answer))
    summary = {"pairs": result.predicted, "correct": result.correct,
               "precision": round(result.precision, 4), "recall": round(result.recall, 4)}
    return ScoredAnswer(result.f1, summary, {"pairs": result.gold})


# ---------------------------------------------------------------------------- rows


def pairs_rows(window: Mapping[str, Any], queries: Sequence[PairsQuery] = PAIRS_QUERIES) -> list[dict[str, Any]]:
    """One OOLONG-Pairs row per query over one labelled window (a row of OOLONG data).

    ``window`` needs ``context_window_text``, ``context_window_text_with_labels``,
    ``context_window_id`` and ``context_len``; a ``synthetic`` window gives
    synthetic rows (dataset ``synthetic-oolong-pairs``).

    Raises:
        ValueError: the window lacks its labelled text, or it cannot be parsed.
    """
    labelled = window.get("context_window_text_with_labels")
    if not isinstance(labelled, str) or not labelled:
        raise ValueError(f"window {window.get('context_window_id')!r} has no context_window_text_with_labels: "
                         "OOLONG-Pairs gold is computed from the labelled window")
    items = parse_labelled_window(labelled)
    synthetic = bool(window.get("synthetic"))
    window_id = window["context_window_id"]
    rows = []
    for query in queries:
        rows.append({
            "id": f"{window_id}-pairs-{query.number:02d}",
            "dataset": "synthetic-oolong-pairs" if synthetic else "oolong-pairs",
            "synthetic": synthetic,
            "split": "pairs",
            "context_len": window["context_len"],
            "context_window_id": window_id,
            "context_window_text": window["context_window_text"],
            "question": query.text,
            "task_group": "pairs",
            "task": query.task,
            "answer": format_pairs(gold_pairs(items, query)),
            "answer_type": "ANSWER_TYPE.PAIRS",
        })
    return rows


# ------------------------------------------------------------------- command line


def _first_window(args: argparse.Namespace) -> dict[str, Any]:
    from fsrlm.benchmarks.oolong_data import load_windows
    from fsrlm.benchmarks.oolong_synth_gen import generate_rows

    if args.generate:
        rows = generate_rows(1, args.context_len, args.seed)
        return rows[0]
    windows = load_windows(data=args.data, dataset_name=args.dataset_name, split=args.split,
                           dataset=args.dataset, context_len=args.context_len, limit=1)
    if not windows:
        raise ValueError(f"no {args.dataset} window of context_len {args.context_len} in the data")
    return windows[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Write the 20 OOLONG-Pairs rows over one labelled window to a JSONL file."""
    from fsrlm.errors import InputError

    parser = argparse.ArgumentParser(prog="fsrlm bench pairs", description=main.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="local JSONL/Parquet OOLONG-synth rows with labelled windows")
    source.add_argument("--hub", action="store_true", help="read the window from the Hugging Face hub")
    source.add_argument("--generate", action="store_true", help="a generated (synthetic) window, offline")
    parser.add_argument("--dataset-name", default="oolongbench/oolong-synth")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--dataset", default="trec_coarse", help="the OOLONG dataset of the window")
    parser.add_argument("--context-len", type=int, default=32768, help="the window's context_len (default 32768)")
    parser.add_argument("--seed", type=int, default=0, help="with --generate")
    parser.add_argument("--out", type=Path, required=True, help="output JSONL")
    args = parser.parse_args(argv)
    try:
        rows = pairs_rows(_first_window(args))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    except (ValueError, OSError, InputError) as exc:
        print(f"pairs: {exc}", file=sys.stderr)
        return 2
    sizes = ", ".join(str(len(parse_pairs(row["answer"]))) for row in rows)
    print(f"wrote {len(rows)} OOLONG-Pairs rows (window {rows[0]['context_window_id']}) to {args.out}; "
          f"gold pairs per query: {sizes}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
