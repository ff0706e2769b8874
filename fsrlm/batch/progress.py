"""Progress of a batch on stderr: a rich panel on a terminal, one line per job otherwise.

Shows done, failed, running, retried, dollars so far, and an estimate of the
rest (time from the pace so far, dollars from the mean cost of a finished job).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from fsrlm.batch.driver import BatchProgressSink
from fsrlm.batch.results import JobResult
from fsrlm.batch.runner import FanOutEvent


class BatchState:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.total = 0
        self.slots = 0
        self.done = 0
        self.failed = 0
        self.running = 0
        self.retried = 0
        self.spent = 0.0
        self.waiting = False
        self.nodes: Counter[str] = Counter()
        self.last = ""

    def event(self, event: FanOutEvent) -> str | None:
        if event.kind == "started":
            self.running += 1
            self.waiting = False
            return None
        if event.kind == "retrying":
            self.running -= 1
            self.retried += 1
            self.last = f"retrying {event.item.job.id}: {event.detail}"
            return self.last
        if event.kind == "waiting":
            self.waiting = True
        return None

    def finished(self, result: JobResult) -> str:
        self.running = max(0, self.running - 1)
        self.done += 1
        self.failed += not result.success
        self.spent += result.metrics.total_cost_usd
        if result.node:
            self.nodes[result.node] += 1
        state = "ok" if result.success else result.stop_reason
        self.last = f"{result.id}: {state} on {result.node or '?'} ({result.metrics.wall_seconds:.1f}s)"
        if not result.success and result.errors:
            self.last += f": {result.errors[0][:160]}"
        return self.last

    def estimate(self) -> str:
        left = self.total - self.done
        if not self.done or left <= 0:
            return ""
        elapsed = time.monotonic() - self.started
        seconds = elapsed / self.done * left
        dollars = self.spent / self.done * left
        return f" | about {_duration(seconds)} and ${dollars:.2f} to go"

    def line(self) -> str:
        wait = " | waiting for the total budget" if self.waiting else ""
        return (f"{self.done}/{self.total} done ({self.failed} failed) | {self.running} running on {self.slots} "
                f"slots | {self.retried} retried | ${self.spent:.4f} | {_duration(time.monotonic() - self.started)}"
                f"{self.estimate()}{wait}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class PlainBatchProgress(BatchProgressSink):
    """One line per finished job (and per retry), for logs and CI."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.state = BatchState()
        self.stream = stream

    def _print(self, text: str) -> None:
        print(f"[fsrlm batch {time.monotonic() - self.state.started:7.1f}s] {text}", file=self.stream, flush=True)

    def start(self, total: int, slots: int) -> None:
        self.state.total, self.state.slots = total, slots
        self._print(f"{total} job(s) to run on {slots} slot(s)")

    def event(self, event: FanOutEvent) -> None:
        message = self.state.event(event)
        if event.kind == "started" and event.node is not None:
            self._print(f"started {event.item.job.id} on {event.node.name}")
        elif message:
            self._print(message)

    def finished(self, result: JobResult) -> None:
        self._print(self.state.finished(result) + f" | {self.state.line()}")

    def stop(self) -> None:
        if self.state.total:
            self._print(self.state.line())


class RichBatchProgress(BatchProgressSink):
    """A live panel on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.state = BatchState()
        self._console = Console(stderr=True)
        self._live = Live(self._render(), console=self._console, refresh_per_second=4, transient=True)
        self._open = False

    def _render(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.add_row(Text("fsrlm batch", style="bold cyan"),
                     ProgressBar(total=max(1, self.state.total), completed=self.state.done, width=40))
        grid.add_row("", self.state.line())
        grid.add_row("", Text(self.state.last[:160], style="dim"))
        return grid

    def start(self, total: int, slots: int) -> None:
        self.state.total, self.state.slots = total, slots
        self._live.__enter__()
        self._open = True

    def event(self, event: FanOutEvent) -> None:
        message = self.state.event(event)
        if message and self._open:
            self._live.console.print(f"[yellow]{message}[/yellow]")
        if self._open:
            self._live.update(self._render())

    def finished(self, result: JobResult) -> None:
        self.state.finished(result)
        if not result.success and self._open:
            self._live.console.print(f"[red]{self.state.last}[/red]")
        if self._open:
            self._live.update(self._render())

    def stop(self) -> None:
        if self._open:
            self._open = False
            self._live.__exit__(None, None, None)


def make_batch_progress(*, quiet: bool, as_json: bool) -> BatchProgressSink | None:
    if quiet:
        return None
    if as_json or not sys.stderr.isatty():
        return PlainBatchProgress()
    return RichBatchProgress()
