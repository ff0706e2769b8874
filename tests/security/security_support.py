"""Helpers of the security suite (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsrlm.results import RLMResult

# Prepended to every attack script: a findings dict saved to scratch/findings.json.
PREAMBLE = textwrap.dedent("""
    import json, os, sys
    WS = os.environ.get("FSRLM_WORKSPACE", os.getcwd())
    F = {}
    def save():
        with open(os.path.join(WS, "scratch", "findings.json"), "w") as fh:
            json.dump(F, fh, default=str)
""")


@dataclass
class AttackRun:
    result: RLMResult
    findings: dict[str, Any]

    @property
    def workspace(self) -> Path:
        assert self.result.workspace_path is not None
        return self.result.workspace_path


def read_findings(result: RLMResult) -> dict[str, Any]:
    if result.workspace_path is None:
        return {}
    path = result.workspace_path / "scratch" / "findings.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def host_ip() -> str:
    """An address of this host other than loopback (the route to the outside), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"
