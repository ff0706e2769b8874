"""A mistyped or dead upstream fails in seconds, naming the configured URL; retries show as they happen."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from dockerd import free_port
from support import FAKE_UPSTREAM_KEY, log_lines

from fsrlm.broker.upstreams.retry import with_retries
from fsrlm.testing.plans import count_label_plan
from fsrlm.testing.scripted_model import Fault


def _env(tmp_path: Path, base_url: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("FSRLM_", "ANTHROPIC_"))},
            "FSRLM_UPSTREAM": "compatible", "FSRLM_UPSTREAM_BASE_URL": base_url,
            "FSRLM_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY, "FSRLM_CACHE_DIR": str(tmp_path / "cache"),
            "FSRLM_ROOT_MODEL": "scripted-root", "FSRLM_SUBMODEL": "scripted-sub", "FSRLM_EXECUTOR": "local"}


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:{port}", "http://no-such-host.invalid:8080"],
                         ids=["refused", "no-such-host"])
def test_a_dead_upstream_fails_in_seconds_before_anything_starts(tmp_path: Path, base_url: str) -> None:
    url = base_url.format(port=free_port())
    (tmp_path / "in.txt").write_text("some input\n")
    # Time to fail: the bug took 233 s of retries; a run that waits on the dead upstream at all (a sandbox
    # start, one retry) ends in TimeoutExpired here. No finer timed assertion: this machine's load varies.
    proc = subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "run", str(tmp_path / "in.txt"), "-q", "q",
                           "--workspace", str(tmp_path / "runs")],
                          env=_env(tmp_path, url), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr  # a model API error
    message = proc.stderr.strip().splitlines()[-1]
    assert f"Cannot reach the model API at {url} (upstream.base_url / FSRLM_UPSTREAM_BASE_URL)" in message
    assert "8080" not in message.replace(url, "")  # never the in-sandbox relay's address
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_retries_show_in_the_progress_display_as_they_happen(scripted, tmp_path: Path) -> None:
    text, expected = log_lines(300)
    scripted.plan = count_label_plan(chunk_size=4000)
    scripted.inject(Fault(status=529), Fault(status=529))
    (tmp_path / "in.txt").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "fsrlm.cli.main", "run", str(tmp_path / "in.txt"), "-q",
                           "How many lines contain ERROR?", "--workspace", str(tmp_path / "runs")],
                          env=_env(tmp_path, scripted.url), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(expected)
    retries = [line for line in proc.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 2, proc.stderr
    assert "model API: upstream answered 529; retrying in" in retries[0] and "(attempt 2)" in retries[0]


async def test_an_address_that_never_answered_is_not_retried() -> None:
    port = free_port()
    calls = []

    async with aiohttp.ClientSession() as session:
        async def attempt():
            calls.append(time.monotonic())
            return await session.get(f"http://127.0.0.1:{port}/")

        with pytest.raises(aiohttp.ClientConnectorError):
            await with_retries(attempt, max_retries=4, base_wait=0.01, retry_connect=lambda: False)
        assert len(calls) == 1
        with pytest.raises(aiohttp.ClientConnectorError):
            await with_retries(attempt, max_retries=2, base_wait=0.01, retry_connect=lambda: True)
        assert len(calls) == 1 + 3  # an upstream that answered before: a refusal may be transient
    await asyncio.sleep(0)
