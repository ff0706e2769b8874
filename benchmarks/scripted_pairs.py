"""How the SCRIPTED root agent answers OOLONG-Pairs questions, offline.

Nothing here is a model. These functions read an OOLONG-Pairs question the way
a careful solver would — from its words, not from :data:`PAIRS_QUERIES` — turn
it into conditions on each user's label counts and dates, and list every pair
of users that meets them. They run inside the scripted agent's script (copied
verbatim by :func:`benchmarks.scripted_oolong.oolong_script`, so they use the
standard library only) after the sub-model has labelled every line, and in the
scripted model answering a whole window (the baseline). Because they parse the
text independently of the gold's structured conditions, the tests also check
that each of the paper's 20 queries says what :data:`PAIRS_QUERIES` encodes.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter

__all__ = ["PAIRS_SOLVERS", "answer_pairs_question", "is_pairs_question", "label_conditions", "pairs_conditions"]


def is_pairs_question(question):
    """Whether ``question`` asks for pairs of users (an OOLONG-Pairs question)."""
    return "list all pairs of user IDs" in question


def label_conditions(clause, names):
    """``(label, "exactly" | "at_least", n)`` for each label named in ``clause``, in order.

    The words before each label name say how many: "exactly two instances with
    location" → ``("location", "exactly", 2)``; "one with abbreviation" →
    ``("abbreviation", "at_least", 1)``.
    """
    quantities = {"one": 1, "two": 2, "three": 3, "four": 4}
    found = []
    for name in sorted(names, key=len, reverse=True):
        for match in re.finditer(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", clause):
            if not any(start < match.end() and match.start() < end for start, end, _ in found):
                found.append((match.start(), match.end(), name))
    found.sort()
    conditions = []
    previous = 0
    for start, end, name in found:
        words = re.findall(r"[a-z]+", clause[previous:start].lower())
        op = "exactly" if "exactly" in words else "at_least"
        n = next((quantities[word] for word in reversed(words) if word in quantities), 1)
        conditions.append((name, op, n))
        previous = end
    return conditions


def pairs_conditions(question, names):
    """What a Pairs question asks, as ``("both", labels, date_rule)`` or ``("split", one, other)``.

    ``date_rule`` is ``(label, "after" | "before", date)`` or ``None``; ``one`` and
    ``other`` are lists of :func:`label_conditions`.
    """
    months = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December")
    condition = question.split(" Each of the questions")[0].rstrip(". ")
    match = re.search(r"such that one user has (.+), and the other user has (.+)$", condition)
    if match:
        return ("split", label_conditions(match.group(1), names), label_conditions(match.group(2), names))
    match = re.search(r"both users have at least one instance with (.+?)"
                      r"(?:, and all instances that are (.+?) for both users must be (after|before) "
                      r"([A-Z][a-z]+) (\d{1,2}), (\d{4}))?$", condition)
    if not match:
        raise ValueError("not an OOLONG-Pairs question: " + condition[:120])
    labels = [name for name, _, _ in label_conditions(match.group(1), names)]
    rule = None
    if match.group(2):
        (label, _, _), = label_conditions(match.group(2), names)
        day = datetime.date(int(match.group(6)), months.index(match.group(4)) + 1, int(match.group(5)))
        rule = (label, match.group(3), day)
    return ("both", labels, rule)


def answer_pairs_question(question, items, labels, names):
    """Every pair of users meeting the question's condition, one ``(a, b)`` a line, lower ID first."""
    counts, dates = {}, {}
    for (date, user, _), label in zip(items, labels):
        counts.setdefault(user, Counter())
        dates.setdefault(user, {})
        if label:
            counts[user][label] += 1
            dates[user].setdefault(label, []).append(date)

    def meets(user, conditions):
        have = counts[user]
        return all(have[label] == n if op == "exactly" else have[label] >= n for label, op, n in conditions)

    kind, first, second = pairs_conditions(question, names)
    users = sorted(counts)
    if kind == "both":
        def qualifies(user):
            if not any(counts[user][label] for label in first):
                return False
            if second is None:
                return True
            label, side, day = second
            seen = dates[user].get(label, [])
            return all(d > day for d in seen) if side == "after" else all(d < day for d in seen)

        chosen = [user for user in users if qualifies(user)]
        pairs = [(a, b) for i, a in enumerate(chosen) for b in chosen[i + 1:]]
    else:
        side_a = [user for user in users if meets(user, first)]
        side_b = [user for user in users if meets(user, second)]
        pairs = sorted({(min(a, b), max(a, b)) for a in side_a for b in side_b if a != b})
    return "\n".join("(" + str(a) + ", " + str(b) + ")" for a, b in pairs) or "No pair of users meets the condition."


#: The functions the scripted agent's script carries, in the order they are defined there.
PAIRS_SOLVERS = (is_pairs_question, label_conditions, pairs_conditions, answer_pairs_question)
