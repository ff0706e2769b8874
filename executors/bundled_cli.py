"""Where the Claude Code CLI is: the copy bundled in the installed claude-agent-sdk wheel.

Found without importing the SDK (it takes about a second to import), so that
``fsrlm gc`` and the executors' checks stay quick.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def bundled_cli() -> Path | None:
    """``claude_agent_sdk/_bundled/claude`` of the installed wheel; None when the SDK is not installed."""
    spec = importlib.util.find_spec("claude_agent_sdk")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "_bundled" / "claude"
