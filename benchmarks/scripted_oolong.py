"""A SCRIPTED root agent and sub-model that solve generated OOLONG-synth rows, offline.

Nothing here is a real model. With :class:`~fsrlm.testing.scripted_model.ScriptedModelServer`
serving :func:`oolong_plan` (the root agent's moves) and :func:`oolong_responder`
(the sub-model's answers), the whole benchmark path runs with no key and no
network — rows from :mod:`benchmarks.oolong_synth_gen`, the real Claude Code CLI,
broker, sandbox, cache and audit log, the scorer and the report.

The root agent does what an RLM should: it writes a script that chunks
``input/prompt.md`` by lines, asks the sub-model (``llm_batch``) to label the
lines of each chunk, counts in Python and writes the answer to the question in
``input/question.md`` in the OOLONG answer format (``Answer: 47``, ``Label: location``,
``User: 48213``, ``Date: 03/07/2023``). The sub-model labels a line with
:func:`benchmarks.oolong_synth_gen.recover_label`.

Asked a whole context window and a question (``benchmarks.compare``, the root
model alone: the window in the system prompt, the question as the message), the
responder answers the question from what it was shown, so a truncated context
gives the answers a truncated context deserves. OOLONG-Pairs questions are
answered by :mod:`benchmarks.scripted_pairs`, both by the agent and alone.

The solving functions below (``parse_items`` … ``answer_question``) run both here
and, copied verbatim, inside the agent's script: keep them standard-library only.

Offline demo::

    fsrlm bench scripted-oolong --rows 10 --context-len 8192
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fsrlm.benchmarks.oolong_synth_gen import DATASETS, generate_rows, recover_label
from fsrlm.benchmarks.scripted_pairs import (
    PAIRS_SOLVERS,
    answer_pairs_question,
    is_pairs_question,
)

from fsrlm.testing.plans import Plan, default_responder, last_user_text, script_plan

__all__ = [
    "LABELLING_PROMPT_HEAD",
    "answer_question",
    "label_names",
    "labelling_prompt",
    "main",
    "oolong_plan",
    "oolong_responder",
    "oolong_script",
    "parse_items",
    "parse_labelling_reply",
    "solve_question",
]

#: The first words of every labelling subcall; the responder recognises them.
LABELLING_PROMPT_HEAD = "Label each numbered line below with exactly one of these labels:"

# --------------------------------------------------- solving (copied into the script)


def parse_items(text):
    """``(date, user, instance)`` of every ``Date: … || User: … || Instance: …`` line of ``text``."""
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    pattern = re.compile(
        r"^Date: ([A-Z][a-z]{2}) (\d{1,2}), (\d{4}) \|\| User: (\d+) \|\| Instance: (.*?)(?: \|\| Label: .*)?$"
    )
    items = []
    for line in text.splitlines():
        match = pattern.match(line.rstrip("\r"))
        if match and match.group(1) in months:
            date = datetime.date(int(match.group(3)), months.index(match.group(1)) + 1, int(match.group(2)))
            items.append((date, int(match.group(4)), match.group(5)))
    return items


def label_names(text):
    """The label names a context window's preamble lists ("… categories: 'a', 'b', 'c'.")."""
    match = re.search(r"categories: ((?:'[^']+'(?:, )?)+)", text)
    return re.findall(r"'([^']+)'", match.group(1)) if match else []


def labelling_prompt(names, instances):
    """The subcall that asks for one label per numbered instance."""
    listed = ", ".join("'" + name + "'" for name in names)
    numbered = "\n".join(str(i) + ": " + instance for i, instance in enumerate(instances, start=1))
    return (
        "Label each numbered line below with exactly one of these labels: " + listed + ".\n"
        "Reply with one line per input line, in the form '<number>: <label>', and nothing else.\n\n"
        + numbered
    )


def parse_labelling_reply(reply, count):
    """``count`` labels (``None`` where the reply gave none) from '<number>: <label>' lines."""
    labels = [None] * count
    for line in reply.splitlines():
        number, sep, label = line.partition(":")
        if sep and number.strip().isdigit() and 1 <= int(number) <= count:
            labels[int(number) - 1] = label.strip().strip("'\"") or None
    return labels


def answer_question(question, items, labels, names):
    """Answer an OOLONG-synth question from labelled items, in the dataset's answer format."""
    counts = Counter({name: 0 for name in names})
    counts.update(label for label in labels if label)
    dates = Counter(date for date, _, _ in items)

    match = re.search(r"how many data points should be classified as label '([^']+)'", question)
    if match:
        return "Answer: " + str(counts[match.group(1)])
    match = re.search(r"which of the labels is the (most|least) common", question)
    if match and counts:
        ranked = counts.most_common()
        return "Label: " + (ranked[0][0] if match.group(1) == "most" else ranked[-1][0])
    match = re.search(r"is label '([^']+)' more common, less common, or the same frequency as label '([^']+)'",
                      question)
    if match:
        first, second = match.group(1), match.group(2)
        a, b = counts[first], counts[second]
        relation = "more common than" if a > b else "less common than" if a < b else "same frequency as"
        return "Answer: " + first + " is " + relation + " " + second
    match = re.search(r"which user has the most instances with the label (.+?)\?", question)
    if match:
        users = Counter(user for (_, user, _), label in zip(items, labels) if label == match.group(1))
        return "User: " + (str(users.most_common(1)[0][0]) if users else "unknown")
    if re.search(r"which user is represented most often", question):
        users = Counter(user for _, user, _ in items)
        return "User: " + (str(users.most_common(1)[0][0]) if users else "unknown")
    match = re.search(r"which date is represented (the second )?most often", question)
    if match:
        ranked = dates.most_common()
        index = 1 if match.group(1) else 0
        return "Date: " + (ranked[index][0].strftime("%m/%d/%Y") if len(ranked) > index else "unknown")
    match = re.search(r"how many dates are represented exactly (\d+) times", question)
    if match:
        times = int(match.group(1))
        return "Answer: " + str(sum(1 for count in dates.values() if count == times))
    return "Answer: unknown"


_SOLVERS = (parse_items, label_names, labelling_prompt, parse_labelling_reply, answer_question, *PAIRS_SOLVERS)


def solve_question(question, items, labels, names):
    """The answer to an OOLONG or an OOLONG-Pairs question from labelled items."""
    if is_pairs_question(question):
        return answer_pairs_question(question, items, labels, names)
    return answer_question(question, items, labels, names)

# ---------------------------------------------------------------- the root agent

_SCRIPT_HEAD = '''\
"""Label every line with the sub-model, count in Python, answer the OOLONG question.

Written by the SCRIPTED root agent of benchmarks/scripted_oolong.py.
"""
import datetime
import math
import re
from collections import Counter

from chunking import chunk_lines, file_stats
from llm_client import append_artifact, llm_batch, write_answer

LINES_PER_CHUNK = {lines_per_chunk!r}
MAX_CHUNKS = {max_chunks!r}
'''

_SCRIPT_MAIN = '''

def main():
    with open("input/question.md", encoding="utf-8") as handle:
        question = handle.read()
    with open("input/prompt.md", encoding="utf-8", errors="replace") as handle:
        names = label_names(handle.read(16384))
    lines = file_stats("input/prompt.md")["lines"]
    per_chunk = max(LINES_PER_CHUNK, math.ceil(lines / MAX_CHUNKS))
    chunks = []
    for chunk in chunk_lines("input/prompt.md", per_chunk):
        found = parse_items(chunk.text)
        if found:
            chunks.append((chunk, found))
    replies = llm_batch([labelling_prompt(names, [item[2] for item in found]) for _, found in chunks])
    items, labels = [], []
    for (chunk, found), reply in zip(chunks, replies):
        chunk_labels = parse_labelling_reply(reply, len(found))
        items.extend(found)
        labels.extend(chunk_labels)
        append_artifact({"chunk": chunk.index, "start": chunk.start, "end": chunk.end, "lines": len(found),
                         "counts": dict(Counter(label for label in chunk_labels if label))})
    answer = solve_question(question, items, labels, names)
    write_answer(answer + "\\n")
    print(f"{len(items)} lines in {len(chunks)} chunks; {answer[:200]}")


main()
'''


def oolong_script(lines_per_chunk: int = 40, max_chunks: int = 50) -> str:
    """The Python script the scripted root agent writes and runs.

    Chunks hold ``lines_per_chunk`` lines, or more when that would make more
    than ``max_chunks`` subcalls (keep it under ``max_subcalls_per_script``).
    """
    solvers = "\n\n".join(inspect.getsource(function) for function in (*_SOLVERS, solve_question))
    head = _SCRIPT_HEAD.format(lines_per_chunk=lines_per_chunk, max_chunks=max_chunks)
    return f"{head}\n\n{solvers}{_SCRIPT_MAIN}"


def oolong_plan(lines_per_chunk: int = 40, max_chunks: int = 50) -> Plan:
    """The scripted root agent: write the labelling script, run it, finish."""
    plan = script_plan(
        oolong_script(lines_per_chunk, max_chunks),
        script_path="scratch/scripts/oolong.py",
        final_text="Labelled every line with the sub-model and counted; the answer is in output/answer.md.",
    )
    plan.name = "oolong"
    return plan


# ---------------------------------------------------------------- the sub-model


def _dataset_for(names: Sequence[str]) -> str | None:
    for dataset, spec in DATASETS.items():
        if set(spec.labels) == set(names):
            return dataset
    return None


def _label(instance: str, names: Sequence[str]) -> str | None:
    dataset = _dataset_for(names)
    if dataset is not None:
        return recover_label(instance, dataset)
    found = [name for name in names if re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", instance)]
    return found[0] if len(found) == 1 else None


def _answer_labelling(text: str) -> str:
    header, _, body = text.partition("\n\n")
    names = re.findall(r"'([^']+)'", header.split(":", 1)[1].split("\n", 1)[0])
    lines = []
    for line in body.splitlines():
        number, sep, instance = line.partition(": ")
        if sep and number.isdigit():
            lines.append(f"{number}: {_label(instance, names) or 'unknown'}")
    return "\n".join(lines)


def _system_text(body: dict) -> str:
    system = body.get("system")
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "\n".join(block.get("text", "") for block in system if isinstance(block, dict))
    return ""


def _answer_whole_context(body: dict) -> str | None:
    """The model alone: the window in the system prompt (the authors' layout), the question as the message."""
    context, question = _system_text(body), last_user_text(body)
    items = parse_items(context)
    if not items:  # the window and the question in one message
        text = question
        items = parse_items(text)
        if not items:
            return None
        lines = text.splitlines()
        last_item_line = max(i for i, line in enumerate(lines) if parse_items(line))
        context, question = text, "\n".join(lines[last_item_line + 1:])
    names = label_names(context)
    labels = [_label(instance, names) for _, _, instance in items]
    return solve_question(question, items, labels, names)


def oolong_responder(body: dict) -> str | dict[str, Any]:
    """The scripted sub-model: labels numbered lines, or answers a whole-context question.

    Anything else (the CLI's own side requests) gets
    :func:`~fsrlm.testing.plans.default_responder`'s answer.
    """
    text = last_user_text(body)
    if text.startswith(LABELLING_PROMPT_HEAD):
        return _answer_labelling(text)
    answer = _answer_whole_context(body)
    return answer if answer is not None else default_responder(body)


# ------------------------------------------------------------------------- demo


def _rows_for(args: argparse.Namespace) -> list[dict[str, Any]]:
    from fsrlm.benchmarks.oolong_pairs import pairs_rows

    if args.paper:
        oolong = generate_rows(args.rows, 131072, args.seed, questions_per_window=25)
        return oolong + generate_rows(1, 32768, args.seed)
    if args.pairs:
        return pairs_rows(generate_rows(1, args.context_len, args.seed)[0])[: args.rows]
    return generate_rows(args.rows, args.context_len, args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the OOLONG benchmark offline on generated rows against the SCRIPTED model."""
    from fsrlm.benchmarks import oolong

    from fsrlm.testing.scripted_model import ScriptedModelServer

    parser = argparse.ArgumentParser(prog="fsrlm bench scripted-oolong", description=main.__doc__)
    parser.add_argument("--rows", type=int, default=10, help="rows (with --paper: rows of each slice)")
    parser.add_argument("--context-len", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--executor", default="local", choices=["local", "docker", "remote-docker"])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--pairs", action="store_true", help="OOLONG-Pairs rows over one generated window")
    mode.add_argument("--paper", action="store_true",
                      help="the paper-slice command (fsrlm bench oolong --paper) over generated rows")
    args = parser.parse_args(argv)

    try:
        rows = _rows_for(args)
    except ValueError as exc:
        print(f"scripted_oolong: cannot generate rows: {exc}", file=sys.stderr)
        return 2
    print("OOLONG demo — the model is SCRIPTED (no key, no network) and the rows are SYNTHETIC; the CLI,\n"
          "broker, sandbox, cache, scorer and report are real. Scores say the pipeline works, not how good a "
          "model is.\n")
    with tempfile.TemporaryDirectory(prefix="fsrlm-oolong-demo-") as tmp, \
            ScriptedModelServer(oolong_plan(), oolong_responder) as model:
        folder = Path(tmp)
        data = folder / "rows.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        config = folder / "fsrlm.toml"
        config.write_text(
            f'root_model = "scripted-root"\nsubmodel = "scripted-sub"\ncache_dir = "{folder / "cache"}"\n'
            f'workspace_dir = "{folder / "runs"}"\n\n[upstream]\ntype = "compatible"\n'
            f'base_url = "{model.url}"\n',
            encoding="utf-8",
        )
        common = ["--data", str(data), "--fsrlm-config", str(config), "--executor", args.executor,
                  "--concurrency", str(args.concurrency)]
        if args.paper:
            return oolong.main(["--paper", *common, "--limit", str(args.rows), "--max-output-tokens", "8192",
                                "--out-dir", str(folder / "paper")])
        return oolong.main([*common, "--out", str(folder / "results.jsonl")])


if __name__ == "__main__":
    raise SystemExit(main())
