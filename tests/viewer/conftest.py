"""Fixtures for the viewer: a real recorded run, and the viewer serving it on a loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import log_lines

from fsrlm import RLM
from fsrlm.events import EVENTS_LOG, RLMEvent
from fsrlm.testing.plans import count_label_plan
from fsrlm.viewer import ViewerSettings, serve

QUESTION = "How many lines contain ERROR?"


@dataclass
class RecordedRun:
    path: Path  # the run folder
    expected: int  # the right answer
    subcalls: int  # subcall lines in its audit log
    question: str = QUESTION

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.path / "state" / "subcalls.jsonl").read_text().splitlines()]

    def event_lines(self) -> list[str]:
        return (self.path / EVENTS_LOG).read_text().splitlines()

    def append_event(self, **fields: Any) -> None:
        event = RLMEvent(run_id=self.path.name, **fields)
        with (self.path / EVENTS_LOG).open("a") as f:
            f.write(event.model_dump_json(exclude_none=True) + "\n")


@pytest.fixture
def record_run(scripted, make_config) -> Callable[..., RecordedRun]:
    """Make a real run (the real agent CLI, the broker, the scripted model) and return its folder."""

    def run(**config: Any) -> RecordedRun:
        text, expected = log_lines(300)
        scripted.plan = count_label_plan(chunk_size=4000)
        result = RLM(make_config("local", **config)).invoke(text, question=QUESTION)
        assert result.success, result.errors
        assert result.answer == str(expected)
        path = result.workspace_path
        subcalls = sum(1 for line in (path / "state" / "subcalls.jsonl").read_text().splitlines()
                       if json.loads(line)["kind"] == "subcall")
        return RecordedRun(path=path, expected=expected, subcalls=subcalls)

    return run


@pytest.fixture
def recorded_run(record_run) -> RecordedRun:
    return record_run()


@contextmanager
def running_viewer(path: Path, **settings: Any) -> Iterator[str]:
    """Serve ``path`` on 127.0.0.1 (any free port) in a thread; yield the URL; stop it afterwards."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def on_ready(url: str) -> None:
        box["url"] = url
        ready.set()

    async def main() -> None:
        box["task"] = asyncio.current_task()
        await serve(ViewerSettings(path=path, **settings), "127.0.0.1", 0, on_ready=on_ready)

    def target() -> None:
        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            box["error"] = e
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="fsrlm-viewer", daemon=True)
    thread.start()
    assert ready.wait(20) and "url" in box, f"the viewer did not start: {box.get('error')!r}"
    try:
        yield box["url"]
    finally:
        loop.call_soon_threadsafe(box["task"].cancel)
        thread.join(15)
        assert not thread.is_alive(), "the viewer did not stop"


@pytest.fixture
def start_viewer() -> Iterator[Callable[..., str]]:
    """``start_viewer(path, **settings) -> url``: a real viewer server, stopped after the test."""
    with ExitStack() as stack:
        yield lambda path, **settings: stack.enter_context(running_viewer(path, **settings))
