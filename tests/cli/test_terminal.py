"""Agent text made safe for a terminal."""

from __future__ import annotations

from fsrlm.cli.progress import ProgressState
from fsrlm.cli.terminal import printable
from fsrlm.events import RLMEvent


def test_printable_drops_every_control_character() -> None:
    hostile = "a\x1b[2Jb\x1b]0;title\x07c\x9b31md\re\x00f\u202eg\u2066h\x7fi"
    assert printable(hostile) == "a[2Jb]0;titlec31mdefghi"
    assert printable("line 1\n\tline 2") == "line 1\n\tline 2"
    assert printable("line 1\n\tline 2", one_line=True) == "line 1 line 2"
    assert printable("naïve ✓ 日本") == "naïve ✓ 日本"


def test_progress_lines_are_printable() -> None:
    state = ProgressState()
    line = state.update(RLMEvent(kind="tool_use", run_id="r", tool="Bash", detail="ls\x1b[2J\nrm -rf /"))
    assert line == "Bash: ls[2J rm -rf /" and state.last == line
    line = state.update(RLMEvent(kind="script_started", run_id="r", detail="scratch/\x1b]52;c;eA==\x07x.py"))
    assert line == "script started: scratch/]52;c;eA==x.py"
