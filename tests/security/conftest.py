"""Fixtures of the security suite: findings for SECURITY.md, attack runs, a scoped leftover check.

Every attack is a real run: the real Claude Code CLI inside the hardened Docker
sandbox, driven by the scripted model, whose plan makes the root agent write and
run the attack with its own tools (Write, Bash). The attack script reports what
it saw in ``scratch/findings.json``; the test reads that from the host and
checks the host itself.

Each test declares its row of the SECURITY.md table with the ``finding``
fixture::

    f = finding("network", "interfaces besides loopback", tried="...", expected="...")
    ...
    f.observed = "only lo"

``tests/security/report.py`` (a pytest plugin) turns those rows and the tests'
outcomes into the table.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from security_support import PREAMBLE, AttackRun, our_containers, read_findings
from support import run_ids_under, run_processes

from fsrlm import RLM
from fsrlm.testing.plans import script_plan

FINDING_KEY = "security_finding"


class Finding:
    """One row of the SECURITY.md table; the test fills in ``observed``.

    The row lives in the test item's ``user_properties``, where the report plugin
    (``tests/security/report.py``) finds it next to the test's outcome.
    """

    def __init__(self, row: dict[str, str]) -> None:
        self.row = row

    @property
    def observed(self) -> str:
        return self.row["observed"]

    @observed.setter
    def observed(self, text: str) -> None:
        self.row["observed"] = text


@pytest.fixture
def finding(request: pytest.FixtureRequest) -> Callable[..., Finding]:
    """``finding(area, name, tried=..., expected=...)`` declares this test's row of the table."""

    def declare(area: str, name: str, *, tried: str, expected: str) -> Finding:
        row = {"area": area, "name": name, "tried": tried, "expected": expected, "observed": ""}
        request.node.user_properties.append((FINDING_KEY, row))
        return Finding(row)

    return declare


# -- running attacks ---------------------------------------------------------------------


@pytest.fixture
def attack_run(docker_image, scripted, make_config) -> Callable[..., AttackRun]:
    """``attack_run(script, **config)``: run ``script`` as the root agent's job in the Docker sandbox.

    ``script`` is Python; ``PREAMBLE`` (``F`` dict, ``save()``) is prepended.
    ``prompt``, ``question``, ``executor`` (the type) and ``sandbox`` (more executor
    settings, e.g. ``{"memory": "256m"}``) may be given; the rest are config overrides.
    """

    def run(script: str, *, prompt: Any = "input", question: str = "q", executor: str = "docker",
            sandbox: dict[str, Any] | None = None, **overrides: Any) -> AttackRun:
        scripted.plan = script_plan(PREAMBLE + textwrap.dedent(script))
        config = make_config(executor, **overrides)
        if sandbox:
            config.executor = {"type": executor, **sandbox}  # validated on assignment
        result = RLM(config).invoke(prompt, question=question)
        return AttackRun(result, read_findings(result))

    return run


# -- nothing left behind (scoped to this test's own runs) ----------------------------------


@pytest.fixture(autouse=True)
def nothing_left_behind(tmp_path: Path) -> Iterator[None]:
    """After each test: no container and no agent process of this test's runs is left."""
    yield
    deadline = time.monotonic() + 10
    while True:
        containers = our_containers(tmp_path)
        processes = run_processes(run_ids_under(tmp_path))
        if not (containers or processes) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not containers, f"containers left behind: {containers}"
    assert not processes, f"agent processes left running: {processes}"
