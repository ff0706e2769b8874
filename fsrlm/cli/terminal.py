"""Text from the agent, made safe to show on a terminal.

Anything the agent wrote — its answer, a Bash command, a script's name, an error
that quotes it — may hold escape sequences that move the cursor, clear the
screen, set the window title, write to the clipboard (OSC 52) or hide text, and
bidirectional overrides that show text in another order than it is. ``printable``
drops them all (C0 and C1 controls but newline and tab, DEL, Unicode bidi
controls), so what the terminal shows is what the agent's text says.
"""

from __future__ import annotations

import re

# C0 controls but \t and \n; DEL; C1 controls; bidi embeddings, overrides and isolates; line/paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_BLANKS = re.compile(r"[\t\n]+")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` without terminal control characters (``one_line``: tabs and newlines become one space)."""
    text = _CONTROL.sub("", text)
    return _BLANKS.sub(" ", text) if one_line else text
