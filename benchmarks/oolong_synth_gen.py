"""Make OOLONG-style synth rows offline, at any context length, deterministically.

The rows have the fields of ``oolongbench/oolong-synth`` and load through
:func:`benchmarks.oolong_data.load_rows`; the questions and the gold answers use
the OOLONG authors' templates and formats, so :func:`score_answer` scores them
exactly like the real thing. They are marked as what they are: every row says
``synthetic: true`` and its dataset is ``synthetic-<name>``
(``synthetic-trec_coarse``), so no report ever sets them beside a published
figure.

Context window
    A short preamble (how many items, the label names, that the labels are not
    given), then one item a line, in the dataset's format::

        Date: Mar 07, 2023 || User: 48213 || Instance: Which location is home to Vobaki ?

    ``context_window_text_with_labels`` is the same text with `` || Label: <label>``
    at the end of each line, as in the real dataset.

How a scripted sub-model recovers the hidden label
    Every ``Instance`` text contains exactly one of the dataset's label names as
    whole words (the rest is a template of ordinary words plus invented
    consonant-vowel words that cannot spell a label), so the label of a line is
    the one label name found in its ``Instance`` text by a whole-word,
    case-sensitive match. :func:`recover_label` does exactly this and
    :func:`parse_context_line` splits a line into its fields. Classify line by
    line: the preamble names every label.

Questions (``task_group``, ``answer_type``, gold format)
    - counting, NUMERIC: how many data points have label 'x'? → ``"[47]"``
    - counting, LABEL: which label is the most / least common? → ``"['location']"``
    - counting, COMPARISON: is label 'x' more common, less common, or the same
      frequency as label 'y'? → ``"['more common than']"``
    - user, USER: which user has the most instances with the label x / is
      represented most often? → ``"[48213]"``
    - timeline, DATE: which date is represented (the second) most often?
      → ``"[datetime.date(2023, 3, 7)]"``; timeline, NUMERIC: how many dates are
      represented exactly n times? → ``"[3]"``

    Label counts are all different, and the generator moves single lines between
    users or dates where needed, so every question asked has one right answer.

Size
    ``context_len_tokens`` is reached approximately, estimating 4 characters a
    token; a window always holds enough lines for its questions (at least
    ``k (k + 1) / 2 + 3`` for ``k`` labels), so tiny targets come out larger.

Command line::

    fsrlm bench synth --rows 20 --context-len 8192 --out rows.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsrlm.benchmarks.oolong_data import SYNTHETIC_PREFIX

__all__ = [
    "DATASETS",
    "ContextLine",
    "DatasetSpec",
    "generate_rows",
    "main",
    "parse_context_line",
    "recover_label",
]

_CHARS_PER_TOKEN = 4
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_FIRST_DAY = dt.date(2022, 1, 1)
_DAYS_SPAN = 3 * 365
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_DEFAULT_QUESTIONS_PER_WINDOW = 5


@dataclass(frozen=True)
class DatasetSpec:
    """What a synthetic dataset looks like: its labels and how its items read.

    Each template holds ``{label}`` once and ``{word}`` (an invented word) once;
    no template word may equal a word of any label.
    """

    labels: tuple[str, ...]
    item_noun: str
    templates: tuple[str, ...]


DATASETS: dict[str, DatasetSpec] = {
    "trec_coarse": DatasetSpec(
        labels=(
            "description and abstract concept",
            "entity",
            "human being",
            "numeric value",
            "location",
            "abbreviation",
        ),
        item_noun="general-knowledge questions",
        templates=(
            "Which {label} is known as {word} ?",
            "What {label} did the old report on {word} mention ?",
            "Name the {label} that people link to {word} .",
            "Can you tell me the {label} behind {word} ?",
            "Where would I read about the {label} called {word} ?",
            "What is the {label} for {word} in the guide ?",
        ),
    ),
    "spam": DatasetSpec(
        labels=("ham", "spam"),
        item_noun="SMS messages",
        templates=(
            "hey {word} this one is {label} , call me later",
            "reminder from {word} : filed under {label} today",
            "{word} says the inbox marked it {label} again",
        ),
    ),
}


@dataclass(frozen=True)
class ContextLine:
    """One item line of a context window."""

    date: dt.date
    user: int
    instance: str


_LINE = re.compile(
    r"^Date: (?P<mon>[A-Z][a-z]{2}) (?P<day>\d{1,2}), (?P<year>\d{4}) \|\| "
    r"User: (?P<user>\d+) \|\| Instance: (?P<instance>.*?)(?: \|\| Label: .*)?$"
)


def parse_context_line(line: str) -> ContextLine | None:
    """Split a ``Date: … || User: … || Instance: …`` line; ``None`` for other lines."""
    match = _LINE.match(line.rstrip("\r\n"))
    if match is None or match["mon"] not in _MONTHS:
        return None
    date = dt.date(int(match["year"]), _MONTHS.index(match["mon"]) + 1, int(match["day"]))
    return ContextLine(date=date, user=int(match["user"]), instance=match["instance"])


def _label_pattern(label: str) -> re.Pattern[str]:
    return re.compile(r"(?<![\w-])" + re.escape(label) + r"(?![\w-])")


def recover_label(instance: str, dataset: str = "trec_coarse") -> str | None:
    """Return the label hidden in a generated ``Instance`` text, or ``None``.

    The label is the one label name of ``dataset`` that occurs in the text as
    whole words; ``None`` when none or several do (never, for generated text).
    """
    spec = _spec(dataset)
    found = [label for label in spec.labels if _label_pattern(label).search(instance)]
    return found[0] if len(found) == 1 else None


def _spec(dataset: str) -> DatasetSpec:
    try:
        return DATASETS[dataset]
    except KeyError:
        valid = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown synthetic dataset {dataset!r}; choose one of: {valid}") from None


def _format_date(date: dt.date) -> str:
    return f"{_MONTHS[date.month - 1]} {date.day:02d}, {date.year}"


def _word(rng: random.Random) -> str:
    syllables = rng.randint(2, 4)
    text = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
    return text.capitalize()


# ------------------------------------------------------------------ one window


@dataclass
class _Item:
    date: dt.date
    user: int
    label: str
    text: str


@dataclass(frozen=True)
class _Task:
    question: str
    gold: Any
    task_group: str
    task: str
    answer_type: str


def _distinct_counts(total: int, k: int, rng: random.Random) -> list[int]:
    """``k`` different positive counts summing to ``total`` (``total >= k(k+1)/2``)."""
    counts = list(range(1, k + 1))
    spare = total - sum(counts)
    weights = sorted(rng.uniform(0.3, 1.7) for _ in range(k))
    extra = [int(spare * w / sum(weights)) for w in weights]
    counts = [c + e for c, e in zip(counts, extra, strict=True)]
    counts[-1] += total - sum(counts)
    return counts


def _pick_weighted(rng: random.Random, values: Sequence[Any], weights: Sequence[float]) -> Any:
    return rng.choices(values, weights=weights, k=1)[0]


def _make_unique_top(items: list[_Item], key: str, among: list[_Item] | None = None) -> None:
    """Move one line so the most frequent value of ``key`` is unique.

    ``among`` restricts both the count and the move to those items (e.g. the
    lines of one label); by default all lines are used.
    """
    pool = items if among is None else among
    counts = Counter(getattr(item, key) for item in pool)
    ranked = counts.most_common()
    if len(ranked) < 2 or ranked[0][1] > ranked[1][1]:
        return
    winner, runner_up = ranked[0][0], ranked[1][0]
    moved = next(item for item in pool if getattr(item, key) == runner_up)
    setattr(moved, key, winner)


def _build_items(spec: DatasetSpec, n_lines: int, rng: random.Random) -> list[_Item]:
    labels = list(spec.labels)
    rng.shuffle(labels)
    counts = _distinct_counts(n_lines, len(labels), rng)
    sequence = [label for label, count in zip(labels, counts, strict=True) for _ in range(count)]
    rng.shuffle(sequence)

    n_users = max(3, n_lines // 6)
    users = rng.sample(range(10000, 100000), n_users)
    user_weights = [1.0 / (rank + 1) for rank in range(n_users)]
    n_dates = min(_DAYS_SPAN, max(4, n_lines // 4))  # long contexts reuse dates
    dates = sorted(
        _FIRST_DAY + dt.timedelta(days=offset) for offset in rng.sample(range(_DAYS_SPAN), n_dates)
    )
    date_weights = [rng.uniform(0.5, 2.0) for _ in dates]

    items = []
    for label in sequence:
        template = rng.choice(spec.templates)
        items.append(
            _Item(
                date=_pick_weighted(rng, dates, date_weights),
                user=_pick_weighted(rng, users, user_weights),
                label=label,
                text=template.format(label=label, word=_word(rng)),
            )
        )
    return items


_NUMERIC, _LABEL, _COMPARISON, _USER, _DATE = (
    f"ANSWER_TYPE.{name}" for name in ("NUMERIC", "LABEL", "COMPARISON", "USER", "DATE")
)


def _counting_tasks(spec: DatasetSpec, items: list[_Item], rng: random.Random) -> list[list[_Task]]:
    """Counting questions, as three kinds: NUMERIC, LABEL and COMPARISON."""
    counts = Counter(item.label for item in items)
    numeric = [
        _Task(
            f"In the above data, how many data points should be classified as label '{label}'? "
            "Give your final answer in the form 'Answer: number'.",
            counts[label], "counting", "TASK_TYPE.NUMERIC_ONE_CLASS", _NUMERIC,
        )
        for label in spec.labels
    ]
    ranked = counts.most_common()
    extremes = [
        _Task(
            f"In the above data, which of the labels is the {which} common? Give your final answer "
            f"in the form 'Label: answer' where answer is one of the labels: {', '.join(spec.labels)}.",
            label, "counting", task, _LABEL,
        )
        for which, label, task in (
            ("most", ranked[0][0], "TASK_TYPE.MOST_FREQ"),
            ("least", ranked[-1][0], "TASK_TYPE.LEAST_FREQ"),
        )
    ]
    comparisons = []
    for first, second in itertools.combinations(spec.labels, 2):
        if rng.random() < 0.5:
            first, second = second, first
        a, b = counts[first], counts[second]
        relation = "more common than" if a > b else "less common than" if a < b else "same frequency as"
        question = (
            f"In the above data, is label '{first}' more common, less common, or the same frequency "
            f"as label '{second}'? Give your final answer in the form 'Answer: {first} is [X] "
            f"{second}', where [X] is 'more common than', 'less common than', or 'same frequency as'."
        )
        comparisons.append(_Task(question, relation, "counting", "TASK_TYPE.RELATIVE_FREQ", _COMPARISON))
    for group in (numeric, extremes, comparisons):
        rng.shuffle(group)
    return [numeric, extremes, comparisons]


def _is_unique_top(ranked: list[tuple[Any, int]]) -> bool:
    return len(ranked) == 1 or (len(ranked) > 1 and ranked[0][1] > ranked[1][1])


def _user_tasks(spec: DatasetSpec, items: list[_Item], rng: random.Random) -> list[_Task]:
    """User questions; the first (always present) is about a label with one top user."""
    form = " Give your final answer in the form 'User: [X]', where [X] is the user ID."
    labels = list(spec.labels)
    rng.shuffle(labels)
    _make_unique_top(items, "user", among=[item for item in items if item.label == labels[0]])
    tasks = []
    for label in labels:
        ranked = Counter(item.user for item in items if item.label == label).most_common()
        if _is_unique_top(ranked):
            question = f"In the above data, which user has the most instances with the label {label}?"
            tasks.append(_Task(question + form, ranked[0][0], "user", "TASK_TYPE.MOST_FREQ", _USER))
    rest = tasks[1:]
    ranked = Counter(item.user for item in items).most_common()
    if _is_unique_top(ranked):
        question = "In the above data, which user is represented most often?"
        rest.append(_Task(question + form, ranked[0][0], "user", "TASK_TYPE.MOST_FREQ", _USER))
    rng.shuffle(rest)
    return tasks[:1] + rest


def _timeline_tasks(items: list[_Item], rng: random.Random) -> list[_Task]:
    """Timeline questions; the first (always present) asks for the most frequent date."""

    def which_date(which: str) -> str:
        return (
            f"In the above data, which date is represented {which}? Give your final answer in the "
            "form 'Date: [X]', where [X] is the date in the format MM/DD/YYYY."
        )

    _make_unique_top(items, "date")
    ranked = Counter(item.date for item in items).most_common()
    most = _Task(which_date("most often"), ranked[0][0], "timeline", "TASK_TYPE.MOST_FREQ", _DATE)
    rest = []
    if len(ranked) > 2 and ranked[1][1] > ranked[2][1]:
        second = which_date("the second most often")
        rest.append(_Task(second, ranked[1][0], "timeline", "TASK_TYPE.SECOND_MOST_FREQ", _DATE))
    times = ranked[min(3, len(ranked) - 1)][1]
    question = (
        f"In the above data, how many dates are represented exactly {times} times? Give your final "
        f"answer in the form 'Answer: [X]', where [X] is the number of dates represented exactly "
        f"{times} times."
    )
    gold = sum(1 for _, count in ranked if count == times)
    rest.append(_Task(question, gold, "timeline", "TASK_TYPE.REPRESENTED_N_TIMES", _NUMERIC))
    rng.shuffle(rest)
    return [most, *rest]


def _choose(kinds: list[list[_Task]], how_many: int) -> list[_Task]:
    """Round-robin over the kinds, first task of each kind first."""
    chosen: list[_Task] = []
    for round_tasks in itertools.zip_longest(*kinds):
        for task in round_tasks:
            if task is not None:
                chosen.append(task)
                if len(chosen) == how_many:
                    return chosen
    return chosen


def _preamble(spec: DatasetSpec, n_items: int) -> str:
    names = ", ".join(f"'{label}'" for label in spec.labels)
    return (
        f"The following lines contain {n_items} {spec.item_noun}, one per line. Each line has a "
        "date, a User ID, which is not necessarily unique (one user can be associated with "
        f"several lines), and an instance. Each instance can be labelled as one of "
        f"{len(spec.labels)} categories: {names}. The labels are not given in the data: work "
        "out each instance's label from its text. You will be asked to answer questions about "
        "the aggregate label statistics across all lines. Do not guess, estimate or "
        "approximate: calculate the exact answer.\n\n"
    )


def _render(spec: DatasetSpec, items: list[_Item], with_labels: bool) -> str:
    lines = []
    for item in items:
        line = f"Date: {_format_date(item.date)} || User: {item.user} || Instance: {item.text}"
        if with_labels:
            line += f" || Label: {item.label}"
        lines.append(line)
    return _preamble(spec, len(items)) + "\n".join(lines) + "\n"


def _lines_for(spec: DatasetSpec, context_len_tokens: int, rng: random.Random) -> int:
    sample = _build_items(spec, 200, random.Random(rng.random()))
    average = len(_render(spec, sample, with_labels=False)) / len(sample)
    budget = context_len_tokens * _CHARS_PER_TOKEN - len(_preamble(spec, 100000))
    k = len(spec.labels)
    return max(k * (k + 1) // 2 + 3, int(budget / average))


def _window(
    spec: DatasetSpec, context_len_tokens: int, rng: random.Random
) -> tuple[list[_Item], list[list[_Task]]]:
    items = _build_items(spec, _lines_for(spec, context_len_tokens, rng), rng)
    counting = _counting_tasks(spec, items, rng)
    return items, [*counting, _user_tasks(spec, items, rng), _timeline_tasks(items, rng)]


# ------------------------------------------------------------------------ rows


def generate_rows(
    n: int,
    context_len_tokens: int,
    seed: int,
    dataset: str = "trec_coarse",
    *,
    questions_per_window: int = _DEFAULT_QUESTIONS_PER_WINDOW,
) -> list[dict[str, Any]]:
    """Return ``n`` OOLONG-synth-style rows (plain dicts with the dataset's fields).

    Rows come in context windows of ``questions_per_window`` questions (the last
    window may have fewer); within a window the questions cycle through
    counting (NUMERIC, LABEL, COMPARISON), user and timeline, so five questions
    cover every kind. The same arguments always give the same rows.

    Raises:
        ValueError: ``dataset`` is unknown, or ``n``, ``context_len_tokens`` or
            ``questions_per_window`` is not positive.
    """
    spec = _spec(dataset)
    if n < 0:
        raise ValueError("n must not be negative")
    if context_len_tokens <= 0:
        raise ValueError("context_len_tokens must be positive")
    if questions_per_window <= 0:
        raise ValueError("questions_per_window must be positive")
    rows: list[dict[str, Any]] = []
    window = 0
    while len(rows) < n:
        rng = random.Random(f"oolong-synth-gen:{seed}:{dataset}:{context_len_tokens}:{window}")
        items, kinds = _window(spec, context_len_tokens, rng)
        text = _render(spec, items, with_labels=False)
        text_with_labels = _render(spec, items, with_labels=True)
        window_id = context_len_tokens * 1000 + window
        tasks = _choose(kinds, min(questions_per_window, n - len(rows)))
        for number, task in enumerate(tasks):
            rows.append(
                {
                    "id": window_id * 1000 + number,
                    "context_len": context_len_tokens,
                    "dataset": SYNTHETIC_PREFIX + dataset,
                    "synthetic": True,
                    "context_window_text": text,
                    "context_window_text_with_labels": text_with_labels,
                    "question": task.question,
                    "task_group": task.task_group,
                    "task": task.task,
                    "answer": str([task.gold]),
                    "answer_type": task.answer_type,
                    "input_subset": "False",
                    "num_labels": len(spec.labels),
                    "context_window_id": window_id,
                }
            )
        window += 1
    return rows


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out)
        return
    with out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Write generated rows to a JSONL (or ``.parquet``) file."""
    parser = argparse.ArgumentParser(
        prog="fsrlm bench synth",
        description="Make OOLONG-style synth rows offline (labels recoverable by a scripted model).",
    )
    parser.add_argument("--rows", type=int, required=True, help="number of rows (questions)")
    parser.add_argument("--context-len", type=int, default=8192, help="target context size in tokens")
    parser.add_argument("--out", type=Path, required=True, help="output file (.jsonl or .parquet)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="trec_coarse", choices=sorted(DATASETS))
    parser.add_argument(
        "--questions-per-window", type=int, default=_DEFAULT_QUESTIONS_PER_WINDOW,
        help="questions asked about each context window",
    )
    args = parser.parse_args(argv)
    try:
        rows = generate_rows(
            args.rows, args.context_len, args.seed, args.dataset,
            questions_per_window=args.questions_per_window,
        )
        _write(rows, args.out)
    except (ValueError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    windows = len({row["context_window_id"] for row in rows})
    print(f"wrote {len(rows)} rows ({windows} context windows) to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
