"""Live progress of a run on stderr: a rich panel on a terminal, plain lines otherwise.

Every text shown comes from the agent's run (commands, script names, errors) and is
passed through ``terminal.printable`` (no escape sequences reach the terminal) and, in
the panel, shown as plain text (never read as rich markup).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from fsrlm.cli.terminal import printable
from fsrlm.events import RLMEvent
from fsrlm.executors.base import SandboxInfo


class ProgressState:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tool_uses = 0
        self.scripts = 0
        self.subcalls = 0
        self.cached = 0
        self.refused = 0
        self.failed = 0
        self.tokens = 0
        self.dollars = 0.0
        self.last = ""

    def update(self, event: RLMEvent) -> str | None:
        """Fold ``event`` in; return a one-line description worth printing (terminal-safe), if any."""
        message = self._update(event)
        return printable(message, one_line=True) if message else None

    def _update(self, event: RLMEvent) -> str | None:
        if event.kind == "run_started" and event.data and isinstance(event.data.get("sandbox"), dict):
            return f"sandbox: {SandboxInfo.model_validate(event.data['sandbox']).label()}"
        if event.kind == "tool_use":
            self.tool_uses += 1
            self.last = printable(f"{event.tool}: {event.detail or ''}", one_line=True)[:80]
            return self.last
        if event.kind == "script_started":
            self.scripts += 1
            return f"script started: {event.detail}"
        if event.kind == "script_finished":
            return f"script finished: {event.detail}" + (" (error)" if event.is_error else "")
        if event.kind == "upstream_retry":
            data = event.data or {}
            self.last = (f"model API: {event.detail}; retrying in {data.get('wait_seconds', 0):.1f} s "
                         f"(attempt {int(data.get('attempt', 0)) + 1})")
            return self.last
        if event.kind == "subcall" and event.record is not None:
            r = event.record
            self.tokens += r.input_tokens + r.output_tokens
            if event.totals:
                self.dollars = float(event.totals.get("spent_usd", self.dollars))
            if r.kind != "subcall":
                return None
            if r.status == "ok":
                self.subcalls += 1
            elif r.status == "cached":
                self.cached += 1
            elif r.status == "refused":
                self.refused += 1
                return f"subcall refused ({r.limit}) from {r.script}"
            else:
                self.failed += 1
                return f"subcall failed from {r.script}: {r.error}"
            done = self.subcalls + self.cached
            return f"{done} subcalls" if done % 25 == 0 else None
        return None

    def line(self) -> str:
        return (f"tool uses {self.tool_uses} | scripts {self.scripts} | subcalls {self.subcalls} "
                f"(+{self.cached} cached, {self.refused} refused, {self.failed} failed) | "
                f"{self.tokens:,} tokens | ${self.dollars:.4f} | {time.monotonic() - self.started:.0f}s")


class PlainProgress:
    """One line per notable event, for logs and CI."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.state = ProgressState()
        self.stream = stream

    def __call__(self, event: RLMEvent) -> None:
        message = self.state.update(event)
        if message:
            print(f"[fsrlm {time.monotonic() - self.state.started:6.1f}s] {message}", file=self.stream, flush=True)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:  # a run that never started (bad input, no key) has nothing to sum up
            print(f"[fsrlm] {self.state.line()}", file=self.stream, flush=True)


class RichProgress:
    """A live status panel on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.state = ProgressState()
        self._console = Console(stderr=True)
        self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=True)

    def _render(self):
        from rich.text import Text

        return Text.assemble(("fsrlm ", "bold cyan"), self.state.line(), "\n", (self.state.last[:120], "dim"))

    def __call__(self, event: RLMEvent) -> None:
        from rich.text import Text

        message = self.state.update(event)
        if message and event.kind in ("script_started", "script_finished", "subcall", "upstream_retry"):
            self._live.console.print(Text(message, style="dim"))  # a Text: "[...]" in it is not markup
        self._live.update(self._render())

    def __enter__(self) -> RichProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)


def make_progress(*, quiet: bool, as_json: bool):
    if quiet:
        return None
    if as_json or not sys.stderr.isatty():
        return PlainProgress()
    return RichProgress()
