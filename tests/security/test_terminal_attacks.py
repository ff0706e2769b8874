"""What the agent writes never drives the user's terminal: ``fsrlm run`` on a real pseudo-terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import FAKE_UPSTREAM_KEY

from fsrlm.testing.plans import FinalStep, Plan, ToolStep

pytestmark = pytest.mark.docker

# Clear the screen, set the window title, write the clipboard (OSC 52), show text reversed (bidi override).
HOSTILE = ["\x1b[2J", "\x1b]0;OWNED-TITLE\x07", "\x1b]52;c;cm0gLXJmIH4=\x07", "\u202e", "\x9b2J", "\r"]
ANSWER = "".join(HOSTILE) + "the answer" + "\x1b[8mhidden\x1b[0m"
SCRIPT = f"""
open("output/answer.md", "w").write({ANSWER!r})
"""


def _run_on_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, bytes]:
    """Run ``argv`` with stdout and stderr on one pseudo-terminal; return its exit code and all it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal (EIO)
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_agent_text_on_the_terminal_has_no_control_sequences(scripted, tmp_path, finding):
    f = finding(
        "terminal", "escape sequences from the agent on the user's terminal",
        tried="`fsrlm run` on a pseudo-terminal (the live panel); the agent asks for a Bash command (shown in the "
              "panel; the CLI itself refuses to run it) that carries clear-screen, window-title and clipboard (OSC 52) sequences, a C1 CSI, a bidi "
              "override and a carriage return, and writes an answer made of them",
        expected="none of those sequences reaches the terminal (the text around them does); `--json` escapes them",
    )
    command = "true " + "".join(HOSTILE) + " shown-command"
    script_path = "scratch/scripts/job.py"
    scripted.plan = Plan([
        ToolStep("Bash", {"command": command, "description": "x"}),
        ToolStep("Write", {"file_path": f"/workspace/{script_path}", "content": SCRIPT}),
        ToolStep("Bash", {"command": f"python3 {script_path}", "description": "y"}),
        FinalStep("done"),
    ], name="terminal")
    input_file = tmp_path / "input.txt"
    input_file.write_text("input\n")
    env = {**os.environ, "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": scripted.url,
           "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
           "FSRLM_WORKSPACE_DIR": str(tmp_path / "runs"), "FSRLM_ROOT_MODEL": "scripted-root",
           "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_TIMEOUT_SECONDS": "120", "TERM": "xterm-256color",
           "COLUMNS": "200"}
    fsrlm = str(Path(sys.executable).parent / "fsrlm")
    code, out = _run_on_a_terminal([fsrlm, "run", str(input_file), "--executor", "docker", "-q", "q"], env)
    text = out.decode("utf-8", "replace")
    assert code == 0, text
    assert "the answer" in text and "OWNED-TITLE" in text  # shown, as text
    # (the terminal itself turns each newline into "\r\n": a carriage return is no finding here)
    found = [repr(seq) for seq in HOSTILE + ["\x1b[8m", "\x1b]"] if seq != "\r" and seq in text]
    f.observed = f"sequences that reached the terminal: {found or 'none'}; answer text shown"
    assert found == []

    proc = subprocess.run([fsrlm, "run", str(input_file), "--executor", "docker", "--json", "-q", "q"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\\u001b[2J" in proc.stdout
