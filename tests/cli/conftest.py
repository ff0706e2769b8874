"""Fixtures of the command-line tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import log_lines


@pytest.fixture
def input_file(tmp_path: Path) -> tuple[Path, int]:
    """A log file and how many of its lines hold ERROR."""
    text, count = log_lines()
    path = tmp_path / "app.log"
    path.write_text(text)
    return path, count
