"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

# A key the broker holds in tests: it must reach the scripted upstream and never the sandbox.
FAKE_UPSTREAM_KEY = "sk-ant-test-UPSTREAM-SECRET-do-not-leak"


def log_lines(n: int = 600, label: str = "ERROR", every: int = 13) -> tuple[str, int]:
    """A log of ``n`` lines where every ``every``-th line has ``label``; returns (text, count)."""
    lines = [
        f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d} host-{i % 7} {label if i % every == 0 else 'INFO'} "
        f"request {i} finished with payload {'x' * 48}"
        for i in range(n)
    ]
    return "\n".join(lines) + "\n", sum(1 for i in range(n) if i % every == 0)


TOOLS_DIR = Path(__file__).resolve().parents[1] / "tools"


def load_tool(name: str):
    """Import ``tools/<name>.py`` as the sandbox would: standalone, not as part of a package."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"fsrlm_tools_{name}", TOOLS_DIR / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
